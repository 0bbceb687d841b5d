"""The trail writer: chaining, checkpoints, torn-line recovery, concurrency across processes, kill -9."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import stat
import time
from pathlib import Path

import pytest

from securepacs.audit import (
    ActiveParticipant,
    AuditSource,
    AuditTrail,
    CheckpointKeyError,
    codes,
    create_checkpoint_key,
    default_trail_path,
    events,
    iter_entries,
    last_entry,
    load_checkpoint_private_key,
    load_checkpoint_public_key,
    verify,
)

SOURCE = AuditSource("trail-test")
FORK = multiprocessing.get_context("fork")


def record(n: int = 0):
    return events.instances_accessed(
        SOURCE, ActiveParticipant(f"user-{n}", clinic="c1"), [events.study(f"1.2.3.{n}", {"1.2.840.1": 1})],
        events.patient(f"P{n}", "Doe^John"),
    )


@pytest.fixture
def key_path(tmp_path: Path) -> Path:
    path = tmp_path / "certs" / "audit" / "checkpoint.key"
    create_checkpoint_key(path)
    return path


@pytest.fixture
def trail_path(tmp_path: Path) -> Path:
    return default_trail_path(tmp_path / "data")


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def test_new_trail_starts_with_creation_record_and_chains(trail_path: Path) -> None:
    with AuditTrail(trail_path, source=SOURCE) as trail:
        first = trail.append(record(1))
        more = trail.append_many([record(2), record(3)])
    assert trail_path == trail_path.parent / "trail.jsonl" and trail_path.parent.name == "audit"
    entries = list(iter_entries(trail_path))
    assert [e.seq for e in entries] == [1, 2, 3, 4]
    assert entries[0].record().event_types == (codes.AUDIT_RECORDING_STARTED,)
    assert (first.seq, [e.seq for e in more]) == (2, [3, 4])
    assert entries[1].prev == entries[0].hash and entries[3].prev == entries[2].hash
    assert verify(trail_path, None).ok


def test_reopen_continues_the_chain(trail_path: Path) -> None:
    with AuditTrail(trail_path, source=SOURCE) as trail:
        trail.append(record())
    with AuditTrail(trail_path, source=SOURCE) as trail:
        assert trail.last is not None and trail.last.seq == 2
        assert trail.append(record()).seq == 3
    report = verify(trail_path, None)
    assert report.ok and report.records == 3


def test_checkpoints_every_n_and_on_close(trail_path: Path, key_path: Path) -> None:
    with AuditTrail(trail_path, source=SOURCE, signing_key=key_path, checkpoint_every=3) as trail:
        for n in range(7):
            trail.append(record(n))
    kinds = [e.kind for e in iter_entries(trail_path)]
    # creation + 2 records -> checkpoint, 3 -> checkpoint, 2 more -> checkpoint on close
    assert kinds.count("checkpoint") == 3 and kinds[-1] == "checkpoint"
    report = verify(trail_path, load_checkpoint_public_key(key_path.with_suffix(".pub")))
    assert report.ok, report.summary()
    assert report.checkpoints == 3 and report.unsigned_tail == 0 and report.signatures_checked


def test_checkpoint_on_time(trail_path: Path, key_path: Path) -> None:
    trail = AuditTrail(trail_path, source=SOURCE, signing_key=key_path, fsync_interval=0.02,
                       checkpoint_interval=0.05)
    try:
        trail.append(record())
        deadline = time.monotonic() + 5
        while trail.last is not None and not trail.last.is_checkpoint and time.monotonic() < deadline:
            time.sleep(0.02)
        assert trail.last is not None and trail.last.is_checkpoint
        assert trail.last.body["reason"] == "time"
    finally:
        trail.close()


def test_idle_keyed_writer_checkpoints_what_others_append(trail_path: Path, key_path: Path) -> None:
    keyed = AuditTrail(trail_path, source=SOURCE, signing_key=key_path, fsync_interval=0.02, checkpoint_interval=0.1)
    try:
        with AuditTrail(trail_path, source=AuditSource("key-less gateway")) as other:
            entry = other.append(record())
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            tail = last_entry(trail_path)
            if tail is not None and tail.is_checkpoint:
                break
            time.sleep(0.02)
        assert tail is not None and tail.is_checkpoint and tail.body["covers_seq"] == entry.seq
    finally:
        keyed.close()
    assert verify(trail_path, key_path.with_suffix(".pub")).ok


def test_no_checkpoint_without_new_records(trail_path: Path, key_path: Path) -> None:
    with AuditTrail(trail_path, source=SOURCE, signing_key=key_path) as trail:
        trail.append(record())
        assert trail.checkpoint() is not None
        assert trail.checkpoint() is None  # the last entry is a checkpoint already
    assert sum(e.is_checkpoint for e in iter_entries(trail_path)) == 1


def test_key_inside_trail_directory_is_refused(trail_path: Path) -> None:
    inside = trail_path.parent / "checkpoint.key"
    create_checkpoint_key(inside)
    with pytest.raises(ValueError, match="must not be inside the trail directory"):
        AuditTrail(trail_path, source=SOURCE, signing_key=inside)


def test_key_files_modes_and_errors(tmp_path: Path, key_path: Path) -> None:
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert key_path.with_suffix(".pub").read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    with pytest.raises(FileExistsError):
        create_checkpoint_key(key_path)
    key_path.chmod(0o644)
    with pytest.raises(CheckpointKeyError, match="accessible to group/others"):
        load_checkpoint_private_key(key_path)
    with pytest.raises(CheckpointKeyError, match=str(tmp_path / "missing.key")):
        load_checkpoint_private_key(tmp_path / "missing.key")


@pytest.mark.parametrize("torn", [b'{"body":{"act', b"not json at all\n", b"\x00\x00\x00\x00"])
def test_torn_last_line_is_moved_aside_and_recorded(trail_path: Path, torn: bytes) -> None:
    with AuditTrail(trail_path, source=SOURCE) as trail:
        trail.append(record())
    with open(trail_path, "ab") as f:
        f.write(torn)
    assert not verify(trail_path, None).ok
    with AuditTrail(trail_path, source=SOURCE) as trail:
        recovery = trail.last
        trail.append(record())
    assert recovery is not None and recovery.seq == 3
    alert = recovery.record()
    assert alert.event == codes.SECURITY_ALERT and alert.event_types == (codes.AUDIT_RECORDING_STARTED,)
    assert alert.outcome == codes.OUTCOME_MINOR_FAILURE and str(len(torn)) in (alert.outcome_description or "")
    side_files = list(trail_path.parent.glob("trail.jsonl.torn-*"))
    assert len(side_files) == 1 and side_files[0].read_bytes() == torn
    assert verify(trail_path, None).ok


def test_torn_line_left_by_another_writer_is_repaired_on_next_append(trail_path: Path) -> None:
    with AuditTrail(trail_path, source=SOURCE) as one, AuditTrail(trail_path, source=SOURCE) as two:
        one.append(record(1))
        with open(trail_path, "ab") as f:
            f.write(b'{"half a line')  # what a writer killed inside write() could leave
        entry = two.append(record(2))
        one.append(record(3))
    assert entry.seq == 4  # 1 creation, 2 record, 3 recovery alert, 4 this record
    report = verify(trail_path, None)
    assert report.ok and report.last_seq == 5


def test_two_instances_interleave_in_one_process(trail_path: Path) -> None:
    with AuditTrail(trail_path, source=SOURCE) as one, AuditTrail(trail_path, source=SOURCE) as two:
        for n in range(20):
            (one if n % 2 else two).append(record(n))
    report = verify(trail_path, None)
    assert report.ok and report.records == 21


def _append_many_times(path: str, worker: int, count: int) -> None:
    trail = AuditTrail(path, source=AuditSource(f"worker-{worker}"), fsync_interval=0.05)
    try:
        for n in range(count):
            trail.append(record(worker * 10_000 + n))
    finally:
        trail.close()


def test_concurrent_processes_keep_one_chain(trail_path: Path, key_path: Path) -> None:
    AuditTrail(trail_path, source=SOURCE).close()  # create it first so no worker races to write seq 1
    workers = [FORK.Process(target=_append_many_times, args=(str(trail_path), w, 150)) for w in (1, 2)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(60)
        assert p.exitcode == 0
    entries = list(iter_entries(trail_path))
    seqs = [e.seq for e in entries]
    assert seqs == list(range(1, len(entries) + 1))
    report = verify(trail_path, None)
    assert report.ok, report.summary()
    assert report.records == 301
    users = [e.record().participants[0].user_id for e in entries[1:]]
    assert len(set(users)) == 300  # every append of both workers is there exactly once


def _append_then_hang(path: str, conn) -> None:
    trail = AuditTrail(path, source=SOURCE, fsync_interval=60)  # no fsync: only the page cache holds it
    entry = trail.append(record(42))
    conn.send((entry.seq, entry.hash))
    time.sleep(60)


def test_record_survives_kill_9_of_the_writer(trail_path: Path) -> None:
    parent, child = FORK.Pipe()
    proc = FORK.Process(target=_append_then_hang, args=(str(trail_path), child))
    proc.start()
    try:
        assert parent.poll(20)
        seq, digest = parent.recv()
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(10)
    assert proc.exitcode == -signal.SIGKILL
    tail = last_entry(trail_path)
    assert tail is not None and (tail.seq, tail.hash) == (seq, digest)
    assert verify(trail_path, None).ok


def _use_inherited(trail: AuditTrail, conn) -> None:
    try:
        trail.append(record())
    except RuntimeError as exc:
        conn.send(str(exc))
    else:
        conn.send("appended")


def test_trail_inherited_across_fork_refuses_to_write(trail_path: Path) -> None:
    with AuditTrail(trail_path, source=SOURCE) as trail:
        parent, child = FORK.Pipe()
        proc = FORK.Process(target=_use_inherited, args=(trail, child))
        proc.start()
        proc.join(20)
        assert "open it again after fork" in parent.recv()


def test_durable_append_and_closed_trail(trail_path: Path) -> None:
    trail = AuditTrail(trail_path, source=SOURCE, fsync_interval=0)
    trail.append(record(), durable=True)
    trail.close()
    trail.close()
    with pytest.raises(ValueError, match="is closed"):
        trail.append(record())


def test_the_spliced_line_is_the_canonical_encoding() -> None:
    """make_entry encodes the body once; the result must equal the definitions byte for byte."""
    from securepacs.audit.chain import encode_line, entry_hash, make_entry

    body = {"z": [1, {"b": "é", "a": None}], "a": "x\\u2028y", "n": 1.5}
    for kind, seq, prev in (("record", 1, "0" * 64), ("checkpoint", 123456, "ab" * 32)):
        entry, line = make_entry(seq, prev, kind, body)
        assert entry.hash == entry_hash(prev, seq, kind, body)
        assert line == encode_line(seq, prev, entry.hash, kind, body)
