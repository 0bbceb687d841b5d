"""search(): every filter, their combination, time ranges, and robustness against bad lines."""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from securepacs.audit import (
    ActiveParticipant,
    AuditRecord,
    AuditSource,
    AuditTrail,
    Filters,
    codes,
    events,
    format_time,
    search,
    search_entries,
)

SOURCE = AuditSource("search-test")
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def at(minutes: int, record: AuditRecord) -> AuditRecord:
    return replace(record, time=format_time(T0 + timedelta(minutes=minutes)))


@pytest.fixture
def trail_path(tmp_path: Path) -> Path:
    alice = ActiveParticipant("alice", clinic="north", ae_title="NORTH_CT", network_access_point="192.0.2.1")
    bob = ActiveParticipant("bob", user_name="Bob B.", clinic="south", ae_title="SOUTH_MR")
    archive = ActiveParticipant("SECUREPACS", ae_title="SECUREPACS")
    s1, s2 = events.study("1.2.1", {"1.2.840.1": 2}), events.study("1.2.2", {"1.2.840.1": 5})
    p1, p2 = events.patient("P1", "One^Pat"), events.patient("P2", "Two^Pat")
    path = tmp_path / "audit" / "trail.jsonl"
    with AuditTrail(path, source=SOURCE) as trail:
        trail.append_many([
            at(0, events.instances_accessed(SOURCE, alice, [s1], p1, action="C")),
            at(1, events.instances_accessed(SOURCE, bob, [s2], p2)),
            at(2, events.query(SOURCE, alice, archive, "1.2.840.10008.5.1.4.1.2.2.1", b"P*")),
            at(3, events.user_authentication(SOURCE, bob, login=True, outcome=codes.OUTCOME_MINOR_FAILURE)),
            at(4, events.study_deleted(SOURCE, alice, [s1], p1)),
            at(5, events.security_alert(SOURCE, codes.NODE_AUTHENTICATION, archive,
                                        outcome=codes.OUTCOME_SERIOUS_FAILURE)),
        ])
    return path


def names(path: Path, **filters) -> list[str]:
    return [r.name for r in search(path, **filters)]


def test_no_filter_returns_every_record_in_order(trail_path: Path) -> None:
    assert names(trail_path) == [
        "SecurityAlert", "InstancesAccessed", "InstancesAccessed", "Query", "UserAuthentication", "StudyDeleted",
        "SecurityAlert",
    ]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"patient_id": "P1"}, ["InstancesAccessed", "StudyDeleted"]),
        ({"study_uid": "1.2.2"}, ["InstancesAccessed"]),
        ({"user": "bob"}, ["InstancesAccessed", "UserAuthentication"]),
        ({"user": "Bob B."}, ["InstancesAccessed", "UserAuthentication"]),
        ({"clinic": "north"}, ["InstancesAccessed", "Query", "StudyDeleted"]),
        ({"ae_title": "SECUREPACS"}, ["Query", "SecurityAlert"]),
        ({"event": "Query"}, ["Query"]),
        ({"event": "110105"}, ["StudyDeleted"]),
        ({"event": "dicom instances accessed"}, ["InstancesAccessed", "InstancesAccessed"]),
        ({"outcome": 4}, ["UserAuthentication"]),
        ({"outcome": [4, 8]}, ["UserAuthentication", "SecurityAlert"]),
        ({"clinic": "north", "event": "StudyDeleted"}, ["StudyDeleted"]),
        ({"patient_id": "P1", "user": "bob"}, []),
    ],
)
def test_filters(trail_path: Path, filters: dict, expected: list[str]) -> None:
    assert names(trail_path, **filters) == expected


def test_time_range_is_since_inclusive_until_exclusive(trail_path: Path) -> None:
    since, until = T0 + timedelta(minutes=1), T0 + timedelta(minutes=4)
    assert names(trail_path, since=since, until=until) == ["InstancesAccessed", "Query", "UserAuthentication"]
    # the trail's creation record (written now, first line) is later than all the back-dated ones
    assert names(trail_path, since="2024-05-01T12:04:00Z") == ["SecurityAlert", "StudyDeleted", "SecurityAlert"]
    assert names(trail_path, until="2024-05-01T14:00:30+02:00") == ["InstancesAccessed"]


def test_search_entries_carry_seq_and_hash(trail_path: Path) -> None:
    entries = list(search_entries(trail_path, Filters(event="Query")))
    assert [e.seq for e in entries] == [4] and len(entries[0].hash) == 64


def test_bad_filters_fail_before_reading(trail_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown audit event"):
        search(trail_path, event="Teleport")
    with pytest.raises(ValueError, match="ISO 8601"):
        search(trail_path, since="yesterday")
    with pytest.raises(TypeError):
        search(trail_path, Filters(), user="x")


def test_bad_lines_are_skipped_with_a_warning(trail_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    lines = trail_path.read_bytes().splitlines(keepends=True)
    trail_path.write_bytes(b"".join([lines[0], b"garbage\n", *lines[1:], b'{"torn']))
    with caplog.at_level(logging.WARNING):
        assert len(names(trail_path)) == 7
    assert "line 2 skipped" in caplog.text
    assert "P1" not in caplog.text  # no patient data in logs
