"""The signer's checkpoint file: signed (seq, hash) attestations of the trail, kept where the trail's writers
cannot write.

Why a second file: the trail's writers (Orthanc with the plugin, the gateway, the CLI) can rewrite the
trail and recompute every hash after an edit. Whoever holds the signing key can also re-sign it. So the
key belongs to a separate process under its own uid (:mod:`securepacs.audit.signer`), and its
attestations go to a file beside the key (``certs/audit/checkpoints.jsonl``), which that uid alone may
write. ``verify`` then checks that the trail still has, at every attested seq, the attested hash: a
rewritten-and-rehashed trail no longer matches. Entries after the last attestation are the known window.

Format: one canonical JSON object per line, LF-terminated, each signed (Ed25519, the checkpoint key,
domain-separated by :func:`securepacs.audit.keys.sign_checkpoint`) over all its other fields:

    {"covers_hash", "covers_seq", "index", "key_id", "kind": "attest", "reason", "signature", "time"}
    {"index", "key_id", "kind": "diverged", "at_seq", "expected", "found", "signature", "time"}

``index`` counts lines from 1, so a line removed from the middle or moved shows. "diverged" is what the
signer writes when the trail it follows stops extending what it attested (an edited, cut or rewritten
trail): ``verify`` reports it for ever after, because the evidence of that rewrite is gone from the trail.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from securepacs.audit.keys import check_checkpoint_signature, sign_checkpoint
from securepacs.audit.record import canonical_json, utc_now

CHECKPOINTS_FILE = "checkpoints.jsonl"
KIND_ATTEST = "attest"
KIND_DIVERGED = "diverged"


class CheckpointFileError(ValueError):
    """The signer's checkpoint file is unreadable, out of order or carries a bad signature."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(f"checkpoint file line {line}: {reason}")
        self.line = line
        self.reason = reason


def default_checkpoints_path(key_path: str | os.PathLike[str]) -> Path:
    """``checkpoints.jsonl`` next to the checkpoint key (or its public half)."""
    return Path(key_path).parent / CHECKPOINTS_FILE


@dataclass(frozen=True, slots=True)
class Attestation:
    index: int
    kind: str  # KIND_ATTEST or KIND_DIVERGED
    body: dict[str, Any]

    @property
    def seq(self) -> int:
        return int(self.body["covers_seq"] if self.kind == KIND_ATTEST else self.body["at_seq"])

    @property
    def hash(self) -> str:
        return str(self.body.get("covers_hash", ""))


def attest_line(key: Ed25519PrivateKey, index: int, seq: int, hash_: str, reason: str) -> bytes:
    body = {"covers_hash": hash_, "covers_seq": seq, "index": index, "kind": KIND_ATTEST, "reason": reason,
            "time": utc_now()}
    return canonical_json(sign_checkpoint(key, body)) + b"\n"


def diverged_line(key: Ed25519PrivateKey, index: int, at_seq: int, expected: str, found: str) -> bytes:
    body = {"at_seq": at_seq, "expected": expected, "found": found, "index": index, "kind": KIND_DIVERGED,
            "time": utc_now()}
    return canonical_json(sign_checkpoint(key, body)) + b"\n"


def read_attestations(path: str | os.PathLike[str], public_key: Ed25519PublicKey | None) -> list[Attestation]:
    """Every line, checked (signature when ``public_key`` is given, index order); a torn last line is skipped.

    Raises CheckpointFileError naming the first bad line.
    """
    out: list[Attestation] = []
    with open(path, "rb") as stream:
        for number, raw in enumerate(stream, start=1):
            if not raw.endswith(b"\n"):
                break  # the signer died mid-write: that attestation never happened
            try:
                body = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                raise CheckpointFileError(number, "not valid JSON") from None
            if not isinstance(body, dict) or body.get("kind") not in (KIND_ATTEST, KIND_DIVERGED):
                raise CheckpointFileError(number, "not an attestation (kind must be attest or diverged)")
            if body.get("index") != number:
                raise CheckpointFileError(number, f"index {body.get('index')!r} where {number} was expected "
                                          "(a line was removed, inserted or moved)")
            fields = ("covers_seq", "covers_hash") if body["kind"] == KIND_ATTEST else ("at_seq", "expected", "found")
            if any(name not in body for name in fields):
                raise CheckpointFileError(number, f"missing one of {', '.join(fields)}")
            if public_key is not None:
                reason = check_checkpoint_signature(public_key, body)
                if reason is not None:
                    raise CheckpointFileError(number, reason)
            out.append(Attestation(number, body["kind"], body))
    return out


class CheckpointFile:
    """The signer's append handle: one write() and an fsync per attestation."""

    def __init__(self, path: str | os.PathLike[str], key: Ed25519PrivateKey) -> None:
        self.path = Path(path)
        self._key = key
        existing = read_attestations(self.path, key.public_key()) if self.path.exists() else []
        self.attestations = existing
        # Owner read-write, readable by verifiers (no patient data here: seqs, hashes and times only).
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._drop_torn_tail()

    def _drop_torn_tail(self) -> None:
        size = os.fstat(self._fd).st_size
        good = sum(len(canonical_json(a.body)) + 1 for a in self.attestations)
        if size > good:
            os.ftruncate(self._fd, good)

    @property
    def next_index(self) -> int:
        return len(self.attestations) + 1

    def attest(self, seq: int, hash_: str, reason: str) -> Attestation:
        return self._append(attest_line(self._key, self.next_index, seq, hash_, reason))

    def diverged(self, at_seq: int, expected: str, found: str) -> Attestation:
        return self._append(diverged_line(self._key, self.next_index, at_seq, expected, found))

    def _append(self, line: bytes) -> Attestation:
        view = memoryview(line)
        while view:
            view = view[os.write(self._fd, view):]
        os.fsync(self._fd)
        body = json.loads(line)
        attestation = Attestation(body["index"], body["kind"], body)
        self.attestations.append(attestation)
        return attestation

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
