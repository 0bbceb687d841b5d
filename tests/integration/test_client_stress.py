"""Many small C-STOREs with --parallel against the real archive over mutual TLS: no response may be lost.

Regression guard for the lost C-STORE response (issue 17, item 4, see ``securepacs.client.reactor``): a
race between pynetdicom's reactor thread and the sending thread that needs two untimely thread switches.
To make those switches frequent, the interpreter switches threads every 1 µs (instead of 5 ms) and three
pure-Python threads compete for the GIL, as a loaded machine does; the round is bounded in files and time.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from securepacs.client import store
from securepacs_tools.synth import StudySpec, write_study

pytestmark = pytest.mark.integration

ROUNDS = 8
FILES_PER_ROUND = 120
PARALLEL = 8
# A lost response costs one DIMSE timeout; keep it short so a failing run ends quickly.
DIMSE_TIMEOUT = 8.0
DEADLINE = 240.0  # seconds for all rounds: stop early (and pass what was sent) on a very slow machine


@pytest.fixture
def gil_pressure() -> Iterator[None]:
    saved = sys.getswitchinterval()
    stop = threading.Event()

    def spin() -> None:
        n = 0
        while not stop.is_set():
            n += 1

    spinners = [threading.Thread(target=spin, daemon=True) for _ in range(3)]
    sys.setswitchinterval(1e-6)
    for t in spinners:
        t.start()
    try:
        yield
    finally:
        stop.set()
        for t in spinners:
            t.join()
        sys.setswitchinterval(saved)


def test_parallel_small_stores_lose_no_response(native_archive, tmp_path, gil_pressure):
    clinic = native_archive.clinics["clinicA"]
    conn = dataclasses.replace(native_archive.conn(clinic), dimse_timeout=DIMSE_TIMEOUT)
    start = time.monotonic()
    sent = 0
    for round_no in range(ROUNDS):
        if time.monotonic() - start > DEADLINE:
            break
        spec = StudySpec(seed=f"stress-r{round_no}", slices=FILES_PER_ROUND, rows=8, columns=8,
                         patient_id=f"SYNSTRESS-{round_no}")
        folder = tmp_path / f"round{round_no}"
        write_study(spec, folder)
        summary = store(conn, [folder], parallel=PARALLEL)
        assert (summary.success, summary.failure, summary.not_sent) == (FILES_PER_ROUND, 0, 0), \
            f"round {round_no} after {sent} files: {summary.report()}"
        sent += summary.success
    assert sent >= FILES_PER_ROUND
