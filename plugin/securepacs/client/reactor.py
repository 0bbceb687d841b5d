"""A race-free pause for pynetdicom's association reactor, so it cannot take our DIMSE responses.

Why (pynetdicom 3.0.4, ``association.py``): besides the DUL thread, every association runs a reactor
thread (``Association._run_reactor``, lines 712-729) that loops::

    self._is_paused = True
    self._reactor_checkpoint.wait()
    self._is_paused = False
    context_id, msg = self.dimse.get_msg(block=False)   # serve a request, if one came in

``send_c_store`` (lines 1957-1964; ``send_c_echo``/``find``/``get``/``move`` do the same) pauses it with::

    self._reactor_checkpoint.clear()
    while not self._is_paused:
        time.sleep(0.0001)
    self.dimse.send_msg(req, context_id)
    cx_id, rsp = self.dimse.get_msg(block=True)

``_is_paused`` is not read under any lock. If the reactor is switched out (GIL or OS) after ``wait()``
returned but before it wrote ``_is_paused = False``, the sender reads the stale ``True``, sends the
request and waits; the reactor then wakes, calls ``get_msg(block=False)`` and, if the response is already
queued and the sender has not taken it yet, takes it: ``_serve_request`` logs "Received unexpected
C-STORE service message" and drops it (lines 3507-3509). The sender gets nothing, hits the DIMSE timeout
and aborts. It needs two untimely thread switches, so it shows up about once in a few thousand stores,
more often with ``--parallel`` on a loaded machine (more threads competing for the GIL), with or without
TLS, and never with DCMTK's single-threaded storescu.

The fix: replace ``_reactor_checkpoint`` with a gate whose ``wait()`` clears ``_is_paused`` under the same
lock as ``clear()``. Then the sender can only read ``_is_paused == True`` while the reactor is about to
block (or blocked) on the closed gate, never in the window after it passed an open one.
"""

from __future__ import annotations

import threading

from pynetdicom import evt
from pynetdicom.association import Association


class ReactorGate:
    """Drop-in for the association's ``threading.Event`` checkpoint (set / clear / is_set / wait)."""

    def __init__(self, assoc: Association) -> None:
        self._assoc = assoc
        self._cond = threading.Condition(threading.Lock())
        self._open = True  # pynetdicom starts with the checkpoint set (reactor running)

    def is_set(self) -> bool:
        return self._open

    def set(self) -> None:
        with self._cond:
            self._open = True
            self._cond.notify_all()

    def clear(self) -> None:
        with self._cond:
            self._open = False

    def wait(self, timeout: float | None = None) -> bool:
        """Called by the reactor thread only: block while closed; when passing, mark it running."""
        with self._cond:
            passed = self._cond.wait_for(lambda: self._open, timeout)
            if passed:
                # Under the lock, so a clear() that follows sees the reactor as running, and waits for it
                # to come back round to the gate, instead of trusting the "paused" it wrote before.
                self._assoc._is_paused = False
            return passed


def install_reactor_gate(event: evt.Event) -> None:
    """EVT_CONN_OPEN handler: fires before the association is negotiated, so before the reactor runs."""
    event.assoc._reactor_checkpoint = ReactorGate(event.assoc)  # type: ignore[assignment]
