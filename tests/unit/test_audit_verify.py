"""verify(): every kind of tampering is reported at the FIRST bad line, with its seq and a reason."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from securepacs.audit import (
    ActiveParticipant,
    AuditSource,
    AuditTrail,
    canonical_json,
    create_checkpoint_key,
    events,
    load_checkpoint_public_key,
    verify,
)
from securepacs.audit.chain import make_entry, parse_line
from securepacs.audit.keys import sign_checkpoint

SOURCE = AuditSource("verify-test")


@pytest.fixture
def signed(tmp_path: Path) -> tuple[Path, Path]:
    """A trail of 12 lines: creation, records, checkpoints after every 4 records and on close."""
    key = tmp_path / "keys" / "checkpoint.key"
    public = create_checkpoint_key(key)
    trail_path = tmp_path / "audit" / "trail.jsonl"
    with AuditTrail(trail_path, source=SOURCE, signing_key=key, checkpoint_every=4) as trail:
        for n in range(8):
            trail.append(events.user_authentication(SOURCE, ActiveParticipant(f"user{n}"), login=True))
    return trail_path, public


def rewrite(path: Path, change) -> None:
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(change(lines)))


def first_problem(path: Path, public: Path):
    report = verify(path, load_checkpoint_public_key(public))
    assert not report.ok
    return report.problem


def test_untouched_trail_verifies(signed) -> None:
    path, public = signed
    report = verify(path, public)
    assert report.ok, report.summary()
    assert (report.records, report.checkpoints, report.last_seq, report.unsigned_tail) == (9, 3, 12, 0)
    assert "chain OK" in report.summary()


def test_edited_field_is_reported_at_that_line(signed) -> None:
    path, public = signed

    def edit(lines):
        entry = json.loads(lines[6])
        entry["body"]["participants"][0]["user_id"] = "mallory"
        lines[6] = canonical_json(entry) + b"\n"
        return lines

    rewrite(path, edit)
    problem = first_problem(path, public)
    assert (problem.line, problem.seq) == (7, 7) and "edited" in problem.reason


def test_reformatted_line_is_reported(signed) -> None:
    path, public = signed
    rewrite(path, lambda lines: [*lines[:2], json.dumps(json.loads(lines[2]), indent=None).encode() + b"\n",
                                 *lines[3:]])
    problem = first_problem(path, public)
    assert (problem.line, problem.seq) == (3, 3) and "canonical" in problem.reason


def test_deleted_line_is_reported_at_the_next_line(signed) -> None:
    path, public = signed
    rewrite(path, lambda lines: lines[:4] + lines[5:])
    problem = first_problem(path, public)
    assert (problem.line, problem.seq) == (5, 6) and "expected" in problem.reason


def test_inserted_line_is_reported(signed) -> None:
    path, public = signed

    def insert(lines):
        _copy, line = make_entry(4, parse_line(lines[2]).hash, "record", parse_line(lines[3]).body)
        return [*lines[:3], line, *lines[3:]]  # a copy of line 4, correctly chained after line 3

    rewrite(path, insert)
    problem = first_problem(path, public)
    assert (problem.line, problem.seq) == (5, 4) and "expected" in problem.reason


def test_swapped_lines_are_reported_at_the_first(signed) -> None:
    path, public = signed
    rewrite(path, lambda lines: [*lines[:6], lines[7], lines[6], *lines[8:]])
    problem = first_problem(path, public)
    assert (problem.line, problem.seq) == (7, 8)


def test_forged_checkpoint_signature_is_reported(signed) -> None:
    path, public = signed
    other_key = Ed25519PrivateKey.generate()

    def forge(lines):
        index = next(i for i, raw in enumerate(lines) if parse_line(raw).is_checkpoint)
        entry = parse_line(lines[index])
        body = {k: v for k, v in entry.body.items() if k not in ("signature", "key_id")}
        body = sign_checkpoint(other_key, body) | {"key_id": entry.body["key_id"]}  # pretend the real key signed
        _, line = make_entry(entry.seq, entry.prev, "checkpoint", body)
        lines[index] = line
        return lines

    rewrite(path, forge)
    problem = first_problem(path, public)
    assert problem.seq == 5 and "signature does not verify" in problem.reason


def test_bit_flipped_signature_is_reported(signed) -> None:
    path, public = signed

    def flip(lines):
        entry = parse_line(lines[4])
        signature = bytearray(base64.b64decode(entry.body["signature"]))
        signature[0] ^= 1
        body = entry.body | {"signature": base64.b64encode(bytes(signature)).decode()}
        lines[4] = make_entry(entry.seq, entry.prev, "checkpoint", body)[1]
        return lines

    rewrite(path, flip)
    assert "signature" in first_problem(path, public).reason


def test_rechained_edit_is_caught_by_the_next_checkpoint(signed) -> None:
    """An attacker who recomputes every hash after an edit still cannot re-sign the checkpoint."""
    path, public = signed

    def rechain(lines):
        out, prev = [], None
        for raw in lines:
            entry = parse_line(raw)
            body = entry.body
            if entry.seq == 2:
                body = json.loads(json.dumps(body))
                body["participants"][0]["user_id"] = "mallory"
            new, line = make_entry(entry.seq, prev.hash if prev else entry.prev, entry.kind, body)
            out.append(line)
            prev = new
        return out

    rewrite(path, rechain)
    problem = first_problem(path, public)
    assert (problem.line, problem.seq) == (5, 5) and "does not cover" in problem.reason


def test_torn_tail_is_reported(signed) -> None:
    path, public = signed
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    problem = first_problem(path, public)
    assert problem.line == 12 and "torn" in problem.reason


def test_tail_cut_after_last_checkpoint_needs_an_anchor(tmp_path: Path) -> None:
    path = tmp_path / "audit" / "trail.jsonl"
    with AuditTrail(path, source=SOURCE) as trail:
        entries = [trail.append(events.user_authentication(SOURCE, ActiveParticipant("u"), login=True))
                   for _ in range(3)]
    anchor = (entries[-1].seq, entries[-1].hash)
    rewrite(path, lambda lines: lines[:-2])
    alone = verify(path, None)
    assert alone.ok and alone.unsigned_tail == 2 and "cannot be detected" in alone.summary()
    cut = verify(path, None, anchor=anchor)
    assert not cut.ok and "tail was cut" in cut.problem.reason


def test_anchor_hash_mismatch_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "audit" / "trail.jsonl"
    with AuditTrail(path, source=SOURCE) as trail:
        trail.append(events.user_authentication(SOURCE, ActiveParticipant("u"), login=True))
    report = verify(path, None, anchor=(2, "f" * 64))
    assert not report.ok and report.problem.seq == 2 and "anchor" in report.problem.reason


def test_empty_and_garbage_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    assert "empty trail" in verify(empty, None).problem.reason
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_bytes(b"hello\n")
    problem = verify(garbage, None).problem
    assert problem.line == 1 and "unreadable" in problem.reason


def test_signatures_unchecked_without_key(signed) -> None:
    path, _public = signed
    report = verify(path, None)
    assert report.ok and not report.signatures_checked and "NOT checked" in report.summary()


def test_wrong_public_key_is_reported(signed, tmp_path: Path) -> None:
    path, _public = signed
    other = create_checkpoint_key(tmp_path / "other" / "checkpoint.key")
    problem = verify(path, other).problem
    assert problem.seq == 5 and "key id" in problem.reason
