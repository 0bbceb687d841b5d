"""The lost C-STORE response (issue 17, item 4): pynetdicom's reactor pause race, made deterministic.

pynetdicom 3.0's association reactor thread takes a DIMSE response off the queue that ``send_c_store``
waits on if it was preempted right after passing its checkpoint and wakes up once the response is queued
but before the sending thread took it (see ``securepacs.client.reactor``). On a loaded machine that happens
about once in a few thousand stores. Here both threads stall at those very points, so without the fix
the first store loses its response.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _scp import TestSCP
from pydicom import dcmread
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import evt
from pynetdicom.presentation import build_context
from test_client import make_instance

from securepacs.client import Connection
from securepacs.client.connection import open_association

# The reactor stalls after its checkpoint long enough for a C-STORE round trip on localhost; the sending
# thread stalls between sending the request and waiting for the response for longer still.
_REACTOR_STALL = 0.05
_SENDER_STALL = 0.15
_STORES = 10


class _PreemptedAfterWait:
    """Wraps the association's reactor checkpoint: the reactor thread stalls right after passing it,
    as it does when the OS or the GIL switches threads there."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.passes = 0

    def wait(self, timeout: float | None = None) -> bool:
        passed = self.inner.wait(timeout)  # type: ignore[attr-defined]
        if passed:
            self.passes += 1
            time.sleep(_REACTOR_STALL)
        return bool(passed)

    def set(self) -> None:
        self.inner.set()  # type: ignore[attr-defined]

    def clear(self) -> None:
        self.inner.clear()  # type: ignore[attr-defined]

    def is_set(self) -> bool:
        return bool(self.inner.is_set())  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def plain_scp() -> Iterator[TestSCP]:
    # The race is in the association layer, not in TLS: a plain TCP server shows it the same way.
    scp = TestSCP(ssl_context=None).start()
    yield scp
    scp.stop()


def test_reactor_preempted_after_its_checkpoint_does_not_steal_the_response(
    plain_scp: TestSCP, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    plain_scp.reset()
    wrappers: list[_PreemptedAfterWait] = []

    def stall_reactor(event: evt.Event) -> None:
        # Bound after our own EVT_CONN_OPEN handlers, so it wraps whatever checkpoint they installed.
        wrapper = _PreemptedAfterWait(event.assoc._reactor_checkpoint)
        event.assoc._reactor_checkpoint = wrapper
        wrappers.append(wrapper)

    conn = Connection("127.0.0.1", plain_scp.port, acse_timeout=5.0, dimse_timeout=2.0)
    files = [tmp_path / f"{i}.dcm" for i in range(_STORES)]
    for path in files:
        make_instance(path)
    caplog.set_level(logging.WARNING, logger="pynetdicom")
    assoc = open_association(conn, [build_context(CTImageStorage, ExplicitVRLittleEndian)],
                             evt_handlers=[(evt.EVT_CONN_OPEN, stall_reactor)])
    get_msg = assoc.dimse.get_msg

    def late_get_msg(block: bool = False) -> object:
        if block:  # the sending thread; the reactor polls with block=False
            time.sleep(_SENDER_STALL)
        return get_msg(block)

    assoc.dimse.get_msg = late_get_msg  # type: ignore[method-assign]
    lost = []
    try:
        for msg_id, path in enumerate(files, start=1):
            status = assoc.send_c_store(dcmread(path), msg_id=msg_id)
            if "Status" not in status:
                lost.append(path.name)
                break  # pynetdicom aborts the association after a DIMSE timeout
    finally:
        if assoc.is_established:
            assoc.release()
    stolen = [r.getMessage() for r in caplog.records if "unexpected C-STORE" in r.getMessage()]
    assert wrappers and wrappers[0].passes > 0  # the stall was in place
    assert lost == [], f"responses lost: {lost}; the reactor logged {stolen}"
    assert stolen == []
    assert len(plain_scp.received) == _STORES
