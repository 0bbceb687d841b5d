"""The append-only, hash-chained trail file and its writer (see the package docstring for the design)."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from securepacs.audit import codes, events
from securepacs.audit.chain import (
    GENESIS,
    KIND_CHECKPOINT,
    KIND_RECORD,
    LineError,
    TrailEntry,
    make_entry,
    parse_line,
    read_last_line,
)
from securepacs.audit.keys import load_checkpoint_private_key, sign_checkpoint
from securepacs.audit.record import ActiveParticipant, AuditRecord, AuditSource, utc_now
from securepacs.durable.atomic_file import fsync_dir

log = logging.getLogger(__name__)

TRAIL_FILE = "trail.jsonl"


def default_trail_path(data_dir: str | os.PathLike[str]) -> Path:
    """``<data>/audit/trail.jsonl``."""
    return Path(data_dir) / "audit" / TRAIL_FILE


class AuditTrail:
    """Appends records to one trail file; safe across threads and across processes (flock).

    Open one instance per process *after* any fork: flock locks belong to the open file description,
    which a forked child would share with its parent.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        source: AuditSource | None = None,
        signing_key: Ed25519PrivateKey | str | os.PathLike[str] | None = None,
        fsync_interval: float = 0.2,
        checkpoint_every: int = 1000,
        checkpoint_interval: float = 60.0,
    ) -> None:
        self.path = Path(path)
        self.source = source or AuditSource("securepacs")
        self.fsync_interval = fsync_interval
        self.checkpoint_every = checkpoint_every
        self.checkpoint_interval = checkpoint_interval
        self._key = self._load_key(signing_key)
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._dirty = False
        self._pid = os.getpid()
        self._end = 0  # file size after our last write or re-read: a different size means someone else wrote
        self._last: TrailEntry | None = None
        self._since_checkpoint = 0
        self._last_checkpoint_time = time.monotonic()
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            with self._locked() as created:
                if created:
                    self._write([self._alert(codes.AUDIT_RECORDING_STARTED, "trail created")])
                    self._fsync()
                    fsync_dir(self.path.parent)  # or a power loss could take the new file's name with it
        except BaseException:
            os.close(self._fd)
            raise
        if self._key is not None:
            self._start_flusher()  # time checkpoints also cover what other writers append

    def _load_key(self, key: Ed25519PrivateKey | str | os.PathLike[str] | None) -> Ed25519PrivateKey | None:
        if key is None or isinstance(key, Ed25519PrivateKey):
            return key
        key_path = Path(key).resolve()
        if key_path.is_relative_to(self.path.parent.resolve()):
            raise ValueError(f"checkpoint key {key_path} must not be inside the trail directory {self.path.parent}")
        return load_checkpoint_private_key(key_path)

    # --- public API ---------------------------------------------------------------------------

    @property
    def last(self) -> TrailEntry | None:
        """The last entry this process wrote or saw at the end of the file."""
        return self._last

    def append(self, record: AuditRecord, *, durable: bool = False) -> TrailEntry:
        """Append one record with a single write(); returns its entry (seq, hash).

        On return the line is in the page cache: it survives a kill of this process. It reaches the
        disk within ``fsync_interval`` seconds, or before returning when ``durable`` is true.
        """
        return self.append_many([record], durable=durable)[0]

    def append_many(self, records: Iterable[AuditRecord], *, durable: bool = False) -> list[TrailEntry]:
        """Append several records as consecutive seqs with one write()."""
        bodies = [r.to_dict() for r in records]
        if not bodies:
            return []
        with self._locked():
            entries = self._write(bodies)
            if self._key is not None and self._since_checkpoint >= self.checkpoint_every:
                self._checkpoint("count")
        if durable or self.fsync_interval <= 0:
            self.flush()  # outside the file lock: other processes need not wait for our disk
        self._start_flusher()
        return entries

    def checkpoint(self, reason: str = "requested") -> TrailEntry | None:
        """Write a signed checkpoint now (None without a key or when the last entry is one already)."""
        with self._locked():
            return self._checkpoint(reason)

    def flush(self) -> None:
        """fsync now. Unconditional: the flusher thread may be mid-sync of our bytes without the lock."""
        with self._lock:
            self._fsync(force=True)

    def close(self) -> None:
        """Checkpoint (if anything is unsigned), fsync and close. Idempotent."""
        with self._lock:
            if self._fd < 0 or self._stop.is_set():
                return  # closed, or another thread is closing it
            self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            try:
                if os.getpid() == self._pid:
                    with self._locked():
                        self._checkpoint("close")
                    self._fsync(force=True)
            finally:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> AuditTrail:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- locking and the tail ----------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[bool]:
        """Hold the thread lock and the file lock; re-read the tail if another process wrote.

        Yields True when the file was empty (a new trail).
        """
        with self._lock:
            if self._fd < 0:
                raise ValueError(f"audit trail {self.path} is closed")
            if os.getpid() != self._pid:
                raise RuntimeError(f"audit trail {self.path} was opened in pid {self._pid}: open it again after fork")
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                size = os.fstat(self._fd).st_size
                if size != self._end or self._last is None:
                    self._resync(size)
                yield self._last is None
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _resync(self, size: int) -> None:
        """Learn the last seq/hash from the file; move a torn last line aside and record that."""
        previous_seq = self._last.seq if self._last else 0
        torn = 0
        while size:
            offset, data = read_last_line(self._fd, size)
            try:
                if not data.endswith(b"\n"):
                    raise LineError("no line feed")
                entry = parse_line(data)
            except LineError as exc:
                self._set_aside(offset, size, str(exc))
                torn += size - offset
                size = offset
                continue
            self._last = entry
            if entry.kind == KIND_CHECKPOINT:
                self._since_checkpoint = 0
            else:
                self._since_checkpoint += max(0, entry.seq - previous_seq)
            break
        else:
            self._last = None
        self._end = size
        if torn:
            detail = f"{torn} bytes of a torn last line moved aside"
            self._write([self._alert(codes.AUDIT_RECORDING_STARTED, detail, outcome=codes.OUTCOME_MINOR_FAILURE)])
            self._fsync()

    def _set_aside(self, offset: int, size: int, why: str) -> None:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        side = self.path.with_name(f"{self.path.name}.torn-{stamp}-{os.getpid()}-{offset}")
        data = os.pread(self._fd, size - offset, offset)
        fd = os.open(side, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(side.parent)
        os.ftruncate(self._fd, offset)
        os.fsync(self._fd)
        log.warning("audit trail %s: last line at byte %d was torn (%s); %d bytes moved to %s",
                    self.path, offset, why, size - offset, side.name)

    def _alert(self, alert_type: codes.Code, detail: str, outcome: int = codes.OUTCOME_SUCCESS) -> dict[str, Any]:
        reporter = ActiveParticipant(self.source.source_id, is_requestor=False, user_name=f"pid {os.getpid()}")
        record = events.security_alert(
            self.source, alert_type, reporter, [events.audit_log(self.path.absolute().as_uri())],
            outcome=outcome, description=detail,
        )
        return record.to_dict()

    # --- writing ------------------------------------------------------------------------------

    def _write(self, bodies: list[dict[str, Any]], kind: str = KIND_RECORD) -> list[TrailEntry]:
        entries: list[TrailEntry] = []
        chunks: list[bytes] = []
        seq, prev = (self._last.seq, self._last.hash) if self._last else (0, GENESIS)
        for body in bodies:
            seq += 1
            entry, line = make_entry(seq, prev, kind, body)
            entries.append(entry)
            chunks.append(line)
            prev = entry.hash
        data = b"".join(chunks)
        view = memoryview(data)
        while view:  # a regular file may take fewer bytes than asked (e.g. a pending signal)
            view = view[os.write(self._fd, view):]
        self._end += len(data)
        self._last = entries[-1]
        self._dirty = True
        if kind == KIND_CHECKPOINT:
            self._since_checkpoint = 0
            self._last_checkpoint_time = time.monotonic()
        else:
            self._since_checkpoint += len(entries)
        return entries

    def _checkpoint(self, reason: str) -> TrailEntry | None:
        if self._key is None or self._last is None or self._last.kind == KIND_CHECKPOINT:
            return None
        body = {"covers_hash": self._last.hash, "covers_seq": self._last.seq, "reason": reason, "time": utc_now()}
        return self._write([sign_checkpoint(self._key, body)], KIND_CHECKPOINT)[0]

    def _fsync(self, *, force: bool = False) -> None:
        if (self._dirty or force) and self._fd >= 0:
            self._dirty = False
            os.fdatasync(self._fd)

    # --- background flusher -------------------------------------------------------------------

    def _start_flusher(self) -> None:
        if self._thread is None and not self._stop.is_set():
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._flush_loop, name="audit-trail-fsync", daemon=True)
                    self._thread.start()

    def _flush_loop(self) -> None:
        tick = self.fsync_interval if self.fsync_interval > 0 else min(1.0, self.checkpoint_interval)
        while not self._stop.wait(tick):
            try:
                with self._lock:
                    if self._fd < 0:
                        return
                    sync, self._dirty = self._dirty, False
                if sync:
                    # Outside the lock so appends never wait for the disk; close() joins this thread
                    # before it closes the descriptor, so the fd stays valid here.
                    try:
                        os.fdatasync(self._fd)
                    except OSError:
                        self._dirty = True
                        raise
                due = time.monotonic() - self._last_checkpoint_time >= self.checkpoint_interval
                if self._key is not None and due:
                    # Take the lock even if this process wrote nothing: the re-read tail shows whether
                    # other (perhaps key-less) writers appended since the last checkpoint.
                    with self._locked():
                        self._checkpoint("time")
                    self._last_checkpoint_time = time.monotonic()
            except OSError:
                log.exception("audit trail %s: background fsync/checkpoint failed", self.path)
