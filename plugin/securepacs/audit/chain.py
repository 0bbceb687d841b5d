"""The trail's line format and hash chain, shared by the writer, the verifier, search and the forwarder.

Line = canonical JSON of {"body", "hash", "kind", "prev", "seq"} followed by LF, where
    hash = hex SHA-256( prev as 64 ASCII hex digits || canonical_json({"body", "kind", "seq"}) )
and prev is the hash of the previous line (GENESIS for seq 1). seq counts lines from 1.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from securepacs.audit.record import AuditRecord, canonical_json

GENESIS = "0" * 64
KIND_RECORD = "record"
KIND_CHECKPOINT = "checkpoint"
KINDS = frozenset({KIND_RECORD, KIND_CHECKPOINT})
_TAIL_CHUNK = 64 * 1024


class LineError(ValueError):
    """A line that is not a well-formed trail entry (the message says why, never what it contained)."""


def entry_hash(prev: str, seq: int, kind: str, body: dict[str, Any]) -> str:
    payload = canonical_json({"body": body, "kind": kind, "seq": seq})
    return hashlib.sha256(prev.encode("ascii") + payload).hexdigest()


@dataclass(frozen=True, slots=True)
class TrailEntry:
    seq: int
    prev: str
    hash: str
    kind: str
    body: dict[str, Any]

    @property
    def is_checkpoint(self) -> bool:
        return self.kind == KIND_CHECKPOINT

    def record(self) -> AuditRecord:
        if self.kind != KIND_RECORD:
            raise ValueError(f"trail entry seq {self.seq} is a {self.kind}, not an audit record")
        return AuditRecord.from_dict(self.body)

    def line(self) -> bytes:
        return encode_line(self.seq, self.prev, self.hash, self.kind, self.body)


def encode_line(seq: int, prev: str, hash_: str, kind: str, body: dict[str, Any]) -> bytes:
    return canonical_json({"body": body, "hash": hash_, "kind": kind, "prev": prev, "seq": seq}) + b"\n"


def make_entry(seq: int, prev: str, kind: str, body: dict[str, Any]) -> tuple[TrailEntry, bytes]:
    """Chain ``body`` after ``prev``: the new entry and its exact line.

    The body is encoded once and spliced into both canonical objects (keys in sorted order, as
    canonical_json writes them): every stored instance passes here, and encoding it twice was a third of
    the trail's cost per record. ``entry_hash``/``encode_line`` remain the definition (tested equal)."""
    encoded = canonical_json(body)
    kind_json, seq_json = canonical_json(kind), canonical_json(seq)
    payload = b'{"body":' + encoded + b',"kind":' + kind_json + b',"seq":' + seq_json + b"}"
    digest = hashlib.sha256(prev.encode("ascii") + payload).hexdigest()
    entry = TrailEntry(seq, prev, digest, kind, body)
    line = (b'{"body":' + encoded + b',"hash":"' + digest.encode("ascii") + b'","kind":' + kind_json
            + b',"prev":"' + prev.encode("ascii") + b'","seq":' + seq_json + b"}\n")
    return entry, line


def _is_hex64(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def parse_line(raw: bytes) -> TrailEntry:
    """Parse one line (with or without its LF) structurally; chain and hash checks are the verifier's."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise LineError(f"not valid JSON ({type(exc).__name__} at {getattr(exc, 'pos', '?')})") from None
    if not isinstance(data, dict) or set(data) != {"body", "hash", "kind", "prev", "seq"}:
        raise LineError("not a trail entry (needs exactly body, hash, kind, prev, seq)")
    seq, kind, body = data["seq"], data["kind"], data["body"]
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise LineError("seq is not a positive integer")
    if kind not in KINDS or not isinstance(body, dict):
        raise LineError("unknown kind or body is not an object")
    if not _is_hex64(data["prev"]) or not _is_hex64(data["hash"]):
        raise LineError("prev/hash are not 64 lowercase hex digits")
    return TrailEntry(seq, data["prev"], data["hash"], kind, body)


@dataclass(frozen=True, slots=True)
class RawLine:
    number: int  # 1-based line number in the file
    offset: int  # byte offset of the line's first byte
    data: bytes  # the line including its LF, if it has one

    @property
    def complete(self) -> bool:
        return self.data.endswith(b"\n")

    @property
    def end(self) -> int:
        return self.offset + len(self.data)


def iter_raw_lines(stream: BinaryIO, offset: int = 0, first_number: int = 1) -> Iterator[RawLine]:
    """Stream lines from ``offset``; constant memory apart from the longest line."""
    stream.seek(offset)
    number = first_number
    for data in stream:
        yield RawLine(number, offset, data)
        offset += len(data)
        number += 1


def iter_entries(path: str | os.PathLike[str], *, complete_only: bool = True) -> Iterator[TrailEntry]:
    """Parse every line of a trail; a torn last line is skipped, any other bad line raises LineError."""
    with open(path, "rb") as stream:
        for raw in iter_raw_lines(stream):
            if not raw.complete and complete_only:
                return
            try:
                yield parse_line(raw.data)
            except LineError as exc:
                raise LineError(f"{path}: line {raw.number}: {exc}") from None


def read_last_line(fd: int, size: int) -> tuple[int, bytes]:
    """The offset and bytes of the last line of the first ``size`` bytes of ``fd`` (which may lack LF).

    Reads backwards in chunks so a long last line costs what it weighs and nothing more.
    """
    if size == 0:
        return 0, b""
    end = size
    # Skip the final LF so the search finds the LF that *starts* the last line.
    search_end = size - 1 if os.pread(fd, 1, size - 1) == b"\n" else size
    pos = search_end
    while pos > 0:
        start = max(0, pos - _TAIL_CHUNK)
        chunk = os.pread(fd, pos - start, start)
        idx = chunk.rfind(b"\n")
        if idx >= 0:
            line_start = start + idx + 1
            return line_start, os.pread(fd, end - line_start, line_start)
        pos = start
    return 0, os.pread(fd, end, 0)


def last_entry(path: Path) -> TrailEntry | None:
    """The last complete entry of a trail (None for an empty or missing file)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        size = os.fstat(fd).st_size
        offset, data = read_last_line(fd, size)
        while data and not data.endswith(b"\n"):
            if offset == 0:
                return None
            offset, data = read_last_line(fd, offset)
        return parse_line(data) if data else None
    finally:
        os.close(fd)
