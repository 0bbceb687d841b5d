"""The audit signer: attests a trail it only reads; a trail rewritten by its writers no longer verifies."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from securepacs.audit import ActiveParticipant, AuditSource, AuditTrail, create_checkpoint_key, events, verify
from securepacs.audit.chain import GENESIS, make_entry, parse_line
from securepacs.audit.checkpoints import KIND_ATTEST, KIND_DIVERGED, read_attestations
from securepacs.audit.keys import load_checkpoint_private_key
from securepacs.audit.signer import Signer, run

SOURCE = AuditSource("signer-test")


def write_records(trail_path: Path, n: int, start: int = 0) -> None:
    # Key-less, as the plugin and the gateway now write.
    with AuditTrail(trail_path, source=SOURCE) as trail:
        for i in range(start, start + n):
            trail.append(events.user_authentication(SOURCE, ActiveParticipant(f"user{i}"), login=True))


def rewrite_and_rehash(trail_path: Path, at: int) -> None:
    """What a writer without the key can do: edit line ``at`` (0-based) and recompute every hash after it."""
    entries = [parse_line(line) for line in trail_path.read_bytes().splitlines(keepends=True)]
    body = dict(entries[at].body)
    body["outcome"] = 12 if body.get("outcome") != 12 else 0
    out, prev = [], GENESIS
    for index, entry in enumerate(entries):
        new, line = make_entry(entry.seq, prev, entry.kind, body if index == at else entry.body)
        out.append(line)
        prev = new.hash
    trail_path.write_bytes(b"".join(out))


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path, Path]:
    key = tmp_path / "certs" / "audit" / "checkpoint.key"
    public = create_checkpoint_key(key)
    trail = tmp_path / "data" / "audit" / "trail.jsonl"
    return trail, key, public


def signer_for(trail: Path, key: Path, **kw) -> Signer:
    return Signer(trail, load_checkpoint_private_key(key), key.parent / "checkpoints.jsonl", **kw)


def test_attested_trail_verifies_and_the_attestation_covers_the_end(setup) -> None:
    trail, key, public = setup
    write_records(trail, 5)
    signer = signer_for(trail, key)
    assert signer.poll() == 6  # creation record + 5
    assert signer.checkpoint("time") and not signer.checkpoint("time")  # nothing new: no second attestation
    report = verify(trail, public)
    assert report.ok, report.summary()
    assert (report.attestations, report.last_attested_seq, report.unsigned_tail) == (1, 6, 0)
    assert "1 signer attestations (last at seq 6)" in report.summary()


def test_a_rewritten_and_rehashed_trail_fails_verification(setup) -> None:
    trail, key, public = setup
    write_records(trail, 5)
    signer = signer_for(trail, key)
    signer.poll()
    signer.checkpoint("time")
    signer.close()
    rewrite_and_rehash(trail, 2)
    # The chain alone cannot tell (that is the attack) ...
    assert verify(trail, public, checkpoints=None).ok
    # ... the signer's attestation can.
    report = verify(trail, public)
    assert not report.ok
    assert report.problem.seq == 6 and "attested" in report.problem.reason, report.summary()


def test_the_signer_records_a_divergence_once_and_verify_reports_it_for_ever(setup) -> None:
    trail, key, public = setup
    write_records(trail, 4)
    signer = signer_for(trail, key)
    signer.poll()
    signer.checkpoint("time")
    rewrite_and_rehash(trail, 1)
    write_records(trail, 2, start=10)  # the writer carries on, chaining on its rewritten history
    signer.poll()
    signer.poll()
    signer.poll()
    kinds = [a.kind for a in read_attestations(key.parent / "checkpoints.jsonl", None)]
    assert kinds == [KIND_ATTEST, KIND_DIVERGED]
    report = verify(trail, public)
    assert not report.ok and "diverge" in report.problem.reason, report.summary()


def test_a_line_edited_without_rehash_is_recorded_once_not_every_poll(setup) -> None:
    trail, key, _ = setup
    write_records(trail, 3)
    lines = trail.read_bytes().splitlines(keepends=True)
    record = json.loads(lines[2])
    record["body"]["outcome"] = 12
    lines[2] = (json.dumps(record, separators=(",", ":"), sort_keys=True) + "\n").encode()
    trail.write_bytes(b"".join(lines))
    signer = signer_for(trail, key)
    for _ in range(5):
        signer.poll()
    kinds = [a.kind for a in read_attestations(key.parent / "checkpoints.jsonl", None)]
    assert kinds == [KIND_DIVERGED]
    assert signer.last_seq == 2  # stays before the bad line


def test_a_rewrite_while_the_signer_was_down_is_found_at_its_restart(setup) -> None:
    trail, key, public = setup
    write_records(trail, 4)
    first = signer_for(trail, key)
    first.poll()
    first.checkpoint("stop")
    first.close()
    rewrite_and_rehash(trail, 3)
    second = signer_for(trail, key)
    second.poll()
    kinds = [a.kind for a in read_attestations(key.parent / "checkpoints.jsonl", None)]
    assert kinds == [KIND_ATTEST, KIND_DIVERGED]
    assert not verify(trail, public).ok


def test_a_restarted_signer_continues_where_it_left(setup) -> None:
    trail, key, public = setup
    write_records(trail, 3)
    first = signer_for(trail, key)
    first.poll()
    first.checkpoint("stop")
    first.close()
    write_records(trail, 3, start=3)
    second = signer_for(trail, key)
    second.poll()
    assert second.checkpoint("time")
    report = verify(trail, public)
    assert report.ok and report.attestations == 2 and report.unsigned_tail == 0, report.summary()


def test_a_torn_last_line_is_waited_for_not_reported(setup) -> None:
    trail, key, public = setup
    write_records(trail, 2)
    with trail.open("ab") as fh:
        fh.write(b'{"body":{"half')
    signer = signer_for(trail, key)
    assert signer.poll() == 3
    with trail.open("ab") as fh:
        fh.write(b' a line"}}\n')  # unparsable but now the complete LAST line: a writer will set it aside
    signer.poll()
    write_records(trail, 1, start=5)  # the next writer moves it aside and records the recovery
    assert signer.poll() == 2
    assert signer.checkpoint("time")
    assert [a.kind for a in read_attestations(key.parent / "checkpoints.jsonl", None)] == [KIND_ATTEST]
    assert verify(trail, public).ok


def test_a_tail_cut_back_behind_an_attestation_fails(setup) -> None:
    trail, key, public = setup
    write_records(trail, 5)
    signer = signer_for(trail, key)
    signer.poll()
    signer.checkpoint("time")
    signer.close()
    lines = trail.read_bytes().splitlines(keepends=True)
    trail.write_bytes(b"".join(lines[:-2]))
    report = verify(trail, public)
    assert not report.ok and "tail was cut" in report.problem.reason, report.summary()


def test_a_line_removed_from_the_checkpoint_file_fails(setup) -> None:
    trail, key, public = setup
    signer = signer_for(trail, key)
    for n in range(3):
        write_records(trail, 1, start=n)
        signer.poll()
        signer.checkpoint("time")
    signer.close()
    cps = key.parent / "checkpoints.jsonl"
    lines = cps.read_bytes().splitlines(keepends=True)
    cps.write_bytes(lines[0] + lines[2])
    report = verify(trail, public)
    assert not report.ok and "index" in report.problem.reason, report.summary()


def test_run_attests_on_count_and_at_stop(setup) -> None:
    trail, key, public = setup
    signer = signer_for(trail, key, every=5)
    stop = threading.Event()
    thread = threading.Thread(target=run, args=(signer, stop), kwargs={"interval": 3600, "poll": 0.05})
    thread.start()
    write_records(trail, 7)
    stop.set()
    thread.join(10)
    assert not thread.is_alive()
    signer.close()
    attestations = read_attestations(key.parent / "checkpoints.jsonl", None)
    assert attestations[-1].body["reason"] == "stop" and attestations[-1].seq == 8
    assert verify(trail, public).ok
