"""Verify a trail: hash chain, sequence, canonical form, record shape and checkpoint signatures.

Streaming and constant memory. Reports the FIRST bad line, because everything after a break in the
chain is unprovable anyway. What this cannot see on its own: entries removed after the last signed
checkpoint (the chain is still consistent, just shorter), or a whole tail cut back to a checkpoint.
Pass ``anchor`` = (seq, hash) known from elsewhere (the forwarder's cursor, the collector's copy) to
catch that too.

The signer's attestations (:mod:`.checkpoints`, ``checkpoints.jsonl`` next to the public key, found on
their own when ``public_key`` is a path) are such anchors, signed by a process the trail's writers cannot
impersonate: at every attested seq the trail must still have the attested hash, it must reach the last
attested seq, and a divergence the signer saw is reported even if the trail looks whole now.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from securepacs.audit.chain import (
    GENESIS,
    KIND_CHECKPOINT,
    LineError,
    TrailEntry,
    entry_hash,
    iter_raw_lines,
    parse_line,
)
from securepacs.audit.checkpoints import (
    KIND_ATTEST,
    Attestation,
    CheckpointFileError,
    default_checkpoints_path,
    read_attestations,
)
from securepacs.audit.keys import check_checkpoint_signature, load_checkpoint_public_key
from securepacs.audit.record import AuditRecord


@dataclass(frozen=True, slots=True)
class Problem:
    line: int  # 1-based line number (0: the file as a whole)
    seq: int | None  # the seq the bad line claims, if it could be read
    reason: str


@dataclass(slots=True)
class VerifyReport:
    path: Path
    lines: int = 0
    records: int = 0
    checkpoints: int = 0
    last_seq: int = 0
    last_hash: str = GENESIS
    last_checkpoint_seq: int = 0
    signatures_checked: bool = False
    attestations: int = 0  # the signer's, from its own file
    last_attested_seq: int = 0
    problem: Problem | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.problem is None

    @property
    def unsigned_tail(self) -> int:
        """Entries after the last checkpoint: covered by the chain only, not by a signature."""
        return self.last_seq - max(self.last_checkpoint_seq, min(self.last_attested_seq, self.last_seq))

    def summary(self) -> str:
        head = (
            f"{self.path}: {self.records} records, {self.checkpoints} checkpoints, last seq {self.last_seq}, "
            f"last checkpoint at seq {self.last_checkpoint_seq or 'none'}"
        )
        if self.attestations:
            head += f", {self.attestations} signer attestations (last at seq {self.last_attested_seq})"
        if self.problem is not None:
            p = self.problem
            head += f"\nFIRST BAD LINE {p.line} (seq {p.seq if p.seq is not None else '?'}): {p.reason}"
        else:
            head += "\nchain OK" + ("" if self.signatures_checked else " (checkpoint signatures NOT checked)")
        return "\n".join([head, *self.notes])


def check_entry(entry: TrailEntry, raw: bytes, prev: TrailEntry | None, key: Ed25519PublicKey | None) -> str | None:
    expected_seq = prev.seq + 1 if prev else 1
    prev_hash = prev.hash if prev else GENESIS
    if entry.seq != expected_seq:
        return f"seq {entry.seq} where {expected_seq} was expected (a line was deleted, inserted or moved)"
    if entry.prev != prev_hash:
        return "prev does not match the previous line's hash (a line was deleted, inserted or moved)"
    if entry_hash(entry.prev, entry.seq, entry.kind, entry.body) != entry.hash:
        return "hash does not match the line's content (the line was edited)"
    if entry.line() != raw:
        return "line is not in canonical form (the line was edited)"
    if entry.kind == KIND_CHECKPOINT:
        body = entry.body
        if prev is None or body.get("covers_seq") != prev.seq or body.get("covers_hash") != prev.hash:
            return "checkpoint does not cover the previous entry (entries before it were rewritten)"
        if key is not None:
            return check_checkpoint_signature(key, body)
        return None
    try:
        AuditRecord.from_dict(entry.body)
    except ValueError as exc:
        return f"body is not a valid audit record: {exc}"
    return None


def verify(
    trail_path: str | os.PathLike[str],
    public_key: Ed25519PublicKey | str | os.PathLike[str] | None,
    *,
    anchor: tuple[int, str] | None = None,
    checkpoints: str | os.PathLike[str] | None = "auto",
) -> VerifyReport:
    """Check the whole trail; ``public_key`` None checks everything except checkpoint signatures.

    ``checkpoints``: the signer's attestation file; "auto" (default) is ``checkpoints.jsonl`` next to a
    ``public_key`` given as a path, if it exists; None ignores attestations.
    """
    path = Path(trail_path)
    key = public_key if public_key is None or isinstance(public_key, Ed25519PublicKey) else (
        load_checkpoint_public_key(public_key)
    )
    report = VerifyReport(path, signatures_checked=key is not None)
    if checkpoints == "auto":
        found = default_checkpoints_path(public_key) if isinstance(public_key, str | os.PathLike) else None
        checkpoints = found if found is not None and found.exists() else None
    attested_hashes: dict[int, str] = {}
    if checkpoints is not None:
        try:
            attestations = read_attestations(checkpoints, key)
        except (OSError, CheckpointFileError) as exc:
            report.problem = Problem(0, None, f"signer checkpoints {checkpoints}: {exc}")
            return report
        diverged = _first_divergence(attestations)
        if diverged is not None:
            report.problem = Problem(0, diverged.seq, f"the signer saw the trail diverge at seq {diverged.seq} "
                                     f"on {diverged.body.get('time')} (rewritten, cut or edited); see {checkpoints}")
            return report
        attested_hashes = {a.seq: a.hash for a in attestations if a.kind == KIND_ATTEST}
        report.attestations = len(attested_hashes)
        report.last_attested_seq = max(attested_hashes, default=0)
    prev: TrailEntry | None = None
    with open(path, "rb") as stream:
        for raw in iter_raw_lines(stream):
            report.lines = raw.number
            if not raw.complete:
                report.problem = Problem(raw.number, None, "torn last line without line feed (crash during an "
                                         "append, or the file was cut); opening the trail for writing repairs it")
                break
            try:
                entry = parse_line(raw.data)
            except LineError as exc:
                report.problem = Problem(raw.number, None, f"unreadable line: {exc}")
                break
            reason = check_entry(entry, raw.data, prev, key)
            if reason is None and anchor is not None and entry.seq == anchor[0] and entry.hash != anchor[1]:
                reason = f"hash differs from the anchor known for seq {anchor[0]} (rewritten after it was delivered)"
            attested = attested_hashes.get(entry.seq)
            if reason is None and attested is not None and entry.hash != attested:
                reason = (f"hash differs from the one the signer attested for seq {entry.seq} (the trail was "
                          "rewritten after it was attested)")
            if reason is not None:
                report.problem = Problem(raw.number, entry.seq, reason)
                break
            prev = entry
            report.last_seq, report.last_hash = entry.seq, entry.hash
            if entry.kind == KIND_CHECKPOINT:
                report.checkpoints += 1
                report.last_checkpoint_seq = entry.seq
            else:
                report.records += 1
    if report.problem is None:
        if report.lines == 0:
            report.problem = Problem(0, None, "empty trail (every trail starts with its creation record)")
        elif anchor is not None and report.last_seq < anchor[0]:
            report.problem = Problem(report.lines + 1, None, f"trail ends at seq {report.last_seq} but seq "
                                     f"{anchor[0]} is known to have existed (the tail was cut)")
        elif report.last_seq < report.last_attested_seq:
            report.problem = Problem(report.lines + 1, None, f"trail ends at seq {report.last_seq} but the signer "
                                     f"attested seq {report.last_attested_seq} (the tail was cut)")
    if report.ok and report.unsigned_tail:
        report.notes.append(
            f"note: {report.unsigned_tail} entries after the last checkpoint are covered by the hash chain only; "
            "their removal cannot be detected from this file alone (compare with the forwarded copy)"
        )
    return report


def _first_divergence(attestations: list[Attestation]) -> Attestation | None:
    return next((a for a in attestations if a.kind != KIND_ATTEST), None)
