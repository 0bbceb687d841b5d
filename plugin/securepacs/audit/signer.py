"""The audit signer: a process of its own, under its own uid, that holds the checkpoint key.

Why: the key must not be readable by the trail's writers (a compromised Orthanc could otherwise rewrite
the trail and re-sign it). The signer only reads the trail; it follows it, checks every new line's hash
chain as it goes (constant memory), and every ``interval`` seconds (or ``every`` entries, and at stop)
attests the last entry's (seq, hash) in its own file (:mod:`securepacs.audit.checkpoints`). When the trail
stops extending what it has seen — an edited or rewritten line, a cut tail, a chain that does not
continue — it writes a signed "diverged" line, logs an error and starts over from the trail's first line
(so it keeps attesting what is written next; ``verify`` keeps reporting the divergence).

``python -m securepacs.audit.signer --trail T --key K [--checkpoints C] [--interval S]``; ``securepacs
serve`` starts it as ``securepacs-audit`` (compose: the ``signer`` service).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from securepacs.audit.chain import GENESIS, LineError, TrailEntry, parse_line
from securepacs.audit.checkpoints import KIND_ATTEST, CheckpointFile, default_checkpoints_path
from securepacs.audit.keys import load_checkpoint_private_key
from securepacs.audit.verify import check_entry

log = logging.getLogger(__name__)

_READ_CHUNK = 1024 * 1024


class Signer:
    """Follows one trail file and attests it; ``poll`` and ``checkpoint`` are the whole loop."""

    def __init__(self, trail_path: str | os.PathLike[str], key: Ed25519PrivateKey,
                 checkpoints_path: str | os.PathLike[str], *, every: int = 1000) -> None:
        self.trail_path = Path(trail_path)
        self._last_divergence: tuple[int, str] | None = None
        self.key = key
        self.every = every
        self.file = CheckpointFile(checkpoints_path, key)
        self._reset()
        # What we attested before a restart, by seq: the trail must still have those hashes.
        self._expected = {a.seq: a.hash for a in self.file.attestations if a.kind == KIND_ATTEST}
        if self.file.attestations and self.file.attestations[-1].kind != KIND_ATTEST:
            self._expected = {}  # after a divergence only what follows it is compared
        self._max_expected = max(self._expected, default=0)

    def _reset(self) -> None:
        self.offset = 0  # bytes of complete, checked lines
        self.last: TrailEntry | None = None
        self.attested_seq = 0 if not self.file.attestations else self.file.attestations[-1].seq

    @property
    def last_seq(self) -> int:
        return self.last.seq if self.last else 0

    def poll(self) -> int:
        """Read and check what was appended since the last call; returns how many entries were new."""
        try:
            fd = os.open(self.trail_path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return 0
        new = 0
        try:
            size = os.fstat(fd).st_size
            if size < self.offset:
                self._diverge(self.last_seq, self.last.hash if self.last else GENESIS, GENESIS,
                              f"trail shrank to {size} bytes (was {self.offset})")
                return 0
            pos, buf = self.offset, b""
            while pos < size:
                chunk = os.pread(fd, min(_READ_CHUNK, size - pos), pos)
                if not chunk:
                    break
                pos += len(chunk)
                buf += chunk
                start = 0
                while (end := buf.find(b"\n", start)) >= 0:
                    raw = buf[start:end + 1]
                    if not self._take(raw, last_in_file=self.offset + len(raw) == size):
                        return new
                    self.offset += len(raw)
                    new += 1
                    start = end + 1
                buf = buf[start:]  # an unterminated line: read again, complete, at the next poll
        finally:
            os.close(fd)
        return new

    def _take(self, raw: bytes, *, last_in_file: bool) -> bool:
        """Check one line against the chain so far; False stops this poll (wait, or diverged)."""
        try:
            entry = parse_line(raw)
        except LineError as exc:
            if not last_in_file:
                self._diverge(self.last_seq + 1, GENESIS, GENESIS, f"unreadable line: {exc}")
            # else a torn last line: the next writer moves it aside (see trail.py); wait for that.
            return False
        reason = check_entry(entry, raw, self.last, self.key.public_key())
        expected = self._expected.get(entry.seq)
        if reason is None and expected is not None and expected != entry.hash:
            reason = f"hash differs from the one attested for seq {entry.seq}"
        if reason is not None:
            self._diverge(entry.seq, expected or GENESIS, entry.hash, reason)
            return False
        self.last = entry
        return True

    def _diverge(self, at_seq: int, expected: str, found: str, why: str) -> None:
        if (at_seq, found) == self._last_divergence:
            # Starting over met the same break: the file is broken there in itself. Recorded already; stay
            # before it (no rescan per poll) until the trail changes.
            return
        self._last_divergence = (at_seq, found)
        log.error("audit trail %s no longer extends what was attested (at seq %d: %s); recording the divergence "
                  "in %s and starting over", self.trail_path, at_seq, why, self.file.path)
        self.file.diverged(at_seq, expected, found)
        self._expected, self._max_expected = {}, 0
        self._reset()
        self.attested_seq = 0

    def due(self) -> bool:
        return self.last_seq - self.attested_seq >= self.every

    def checkpoint(self, reason: str) -> bool:
        """Attest the last entry read, if it is new and the trail has caught up with what we attested."""
        if self.last is None or self.last_seq <= self.attested_seq or self.last_seq < self._max_expected:
            return False
        self.file.attest(self.last.seq, self.last.hash, reason)
        self.attested_seq = self.last.seq
        return True

    def close(self) -> None:
        self.file.close()


def run(signer: Signer, stop: threading.Event, *, interval: float = 10.0, poll: float = 0.5) -> None:
    """Until ``stop``: poll the trail, attest every ``interval`` seconds (or ``every`` entries); at stop, once more."""
    next_time = time.monotonic() + interval
    while True:
        stopping = stop.wait(poll)
        try:
            signer.poll()
            if stopping:
                signer.checkpoint("stop")
                return
            if signer.due():
                signer.checkpoint("count")
            elif time.monotonic() >= next_time:
                signer.checkpoint("time")
        except OSError as exc:
            log.error("audit signer: cannot read %s or write %s: %s", signer.trail_path, signer.file.path,
                      exc.strerror or exc)
        if time.monotonic() >= next_time:
            next_time = time.monotonic() + interval


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m securepacs.audit.signer", description=__doc__.split("\n\n")[0])
    parser.add_argument("--trail", required=True, help="the audit trail to follow (read only)")
    parser.add_argument("--key", required=True, help="the Ed25519 checkpoint key (0600, this process's uid)")
    parser.add_argument("--checkpoints", help="where to append attestations (default: checkpoints.jsonl next "
                        "to the key)")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between attestations (default 10)")
    parser.add_argument("--every", type=int, default=1000, help="attest after this many entries (default 1000)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if args.interval <= 0 or args.every < 1:
        parser.error(f"--interval {args.interval!r} / --every {args.every!r} are invalid: expected seconds > 0 "
                     "and a count >= 1")
    try:
        key = load_checkpoint_private_key(args.key)
        signer = Signer(args.trail, key, args.checkpoints or default_checkpoints_path(args.key), every=args.every)
    except (OSError, ValueError) as exc:
        print(f"securepacs audit signer: error: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    log.info("audit signer: following %s, attesting to %s every %.0f s", signer.trail_path, signer.file.path,
             args.interval)
    try:
        run(signer, stop, interval=args.interval)
    finally:
        signer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
