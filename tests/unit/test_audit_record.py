"""Audit record model: canonical JSON, round trips, validation, the A.5.3 builders and the code tables."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from securepacs.audit import (
    ActiveParticipant,
    AuditRecord,
    AuditSource,
    canonical_json,
    codes,
    events,
    format_time,
)

SOURCE = AuditSource("archive-test", site="site-1")
ALICE = ActiveParticipant(
    "alice", clinic="clinic-a", ae_title="MOD1", cert_sha256="ab" * 32, network_access_point="192.0.2.7"
)
ARCHIVE = ActiveParticipant("SECUREPACS", ae_title="SECUREPACS", network_access_point="archive.example")
CT = "1.2.840.10008.5.1.4.1.1.2"


def sample_records() -> list[AuditRecord]:
    """One record of every event the archive emits (also used by the XML and search tests)."""
    study = events.study("1.2.3.4", {CT: 12, "1.2.840.10008.5.1.4.1.1.4": 3}, accessions=["ACC-9"])
    patient = events.patient("PAT-1", "Doe^Jane")
    return [
        events.application_activity(SOURCE, ARCHIVE, started=True, launcher=ActiveParticipant("root")),
        events.application_activity(SOURCE, ARCHIVE, started=False),
        events.audit_log_used(SOURCE, ActiveParticipant("auditor"), "file:///data/audit/trail.jsonl"),
        events.instances_accessed(SOURCE, ALICE, [study], patient, action="C"),
        events.instances_transferred(SOURCE, ARCHIVE, ALICE, [study], patient, action="R"),
        events.study_deleted(SOURCE, ALICE, [study], patient, details={"reason": "retention"}),
        events.export(SOURCE, ALICE, ActiveParticipant("https://dest.example/stow"), [study], patient),
        events.query(SOURCE, ALICE, ARCHIVE, "1.2.840.10008.5.1.4.1.2.2.1", b"\x10\x00\x20\x00PAT-*\x00",
                     transfer_syntax="1.2.840.10008.1.2.1"),
        events.security_alert(SOURCE, codes.NODE_AUTHENTICATION, ARCHIVE, [events.node("192.0.2.66")],
                              outcome=codes.OUTCOME_SERIOUS_FAILURE, description="unknown client certificate"),
        events.security_alert(SOURCE, codes.SECURITY_ROLES_CHANGED, ARCHIVE, [events.user_account("bob")],
                              performer=ALICE),
        events.user_authentication(SOURCE, ALICE, login=True, outcome=codes.OUTCOME_MINOR_FAILURE,
                                   description="bad TOTP"),
        events.user_authentication(SOURCE, ALICE, login=False),
    ]


def test_canonical_json_is_sorted_compact_utf8() -> None:
    assert canonical_json({"b": 1, "a": ["é", None]}) == '{"a":["é",null],"b":1}'.encode()
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


@pytest.mark.parametrize("record", sample_records(), ids=lambda r: r.name)
def test_round_trip_through_json(record: AuditRecord) -> None:
    again = AuditRecord.from_json(record.to_json())
    assert again == record
    assert again.to_json() == record.to_json()
    assert json.loads(record.to_json())["event"]["scheme"] == "DCM"


def test_time_is_utc_with_microseconds_and_z() -> None:
    record = sample_records()[0]
    assert record.time.endswith("Z") and len(record.time) == len("2024-01-02T03:04:05.123456Z")
    moment = datetime(2024, 1, 2, 4, 4, 5, 123456, tzinfo=timezone(timedelta(hours=1)))
    assert format_time(moment) == "2024-01-02T03:04:05.123456Z"
    with pytest.raises(ValueError, match="naive"):
        format_time(datetime(2024, 1, 1))
    assert format_time(datetime(2024, 1, 1, tzinfo=UTC)).startswith("2024-01-01T00:00:00.000000")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"action": "X"}, "EventActionCode"),
        ({"outcome": 3}, "EventOutcomeIndicator"),
        ({"time": "2024-01-01T00:00:00Z"}, "microseconds"),
        ({"participants": ()}, "at least one active participant"),
    ],
)
def test_invalid_records_are_refused(change: dict, message: str) -> None:
    fields = {"event": codes.QUERY, "action": "E", "outcome": 0, "participants": (ALICE,), "source": SOURCE}
    with pytest.raises(ValueError, match=message):
        AuditRecord(**(fields | change))


def test_from_dict_names_what_is_missing() -> None:
    with pytest.raises(ValueError, match="not an audit record"):
        AuditRecord.from_dict({"event": codes.QUERY.to_dict()})


def test_builders_follow_ps3_15_a_5_3() -> None:
    by_name = {}
    for record in sample_records():
        by_name.setdefault(record.name, record)
    assert by_name["ApplicationActivity"].event_types == (codes.APPLICATION_START,)
    assert by_name["ApplicationActivity"].participants[0].roles == (codes.ROLE_APPLICATION,)
    assert by_name["ApplicationActivity"].participants[1].is_requestor
    query = by_name["Query"]
    assert query.action == "E"
    assert [p.roles for p in query.participants] == [(codes.ROLE_SOURCE,), (codes.ROLE_DESTINATION,)]
    assert query.objects[0].id_type == codes.ID_SOP_CLASS_UID and query.objects[0].query is not None
    transferred = by_name["InstancesTransferred"]
    assert transferred.participants[0].roles == (codes.ROLE_SOURCE,)
    study, patient = by_name["InstancesAccessed"].objects
    assert (study.type_code, study.role, study.id_type.code) == (2, 3, "110180")
    assert (patient.type_code, patient.role, patient.id_type.code) == (1, 1, "2")
    assert by_name["StudyDeleted"].action == "D"
    assert by_name["UserAuthentication"].event_types == (codes.LOGIN,)
    assert by_name["SecurityAlert"].event_types == (codes.NODE_AUTHENTICATION,)


def test_dcm_codes_match_ps3_16() -> None:
    expected = {
        "110100": "Application Activity", "110101": "Audit Log Used", "110103": "DICOM Instances Accessed",
        "110104": "DICOM Instances Transferred", "110105": "DICOM Study Deleted", "110106": "Export",
        "110112": "Query", "110113": "Security Alert", "110114": "User Authentication",
    }
    assert {c.code: c.meaning for c in codes.EVENT_NAMES.values()} == expected
    assert (codes.APPLICATION_START.code, codes.APPLICATION_STOP.code) == ("110120", "110121")
    assert (codes.LOGIN.code, codes.LOGOUT.code) == ("110122", "110123")
    assert codes.NODE_AUTHENTICATION.code == "110126"
    assert codes.SECURITY_CONFIGURATION.code == "110129"
    assert codes.USE_OF_RESTRICTED_FUNCTION.code == "110132"
    assert codes.SECURITY_ROLES_CHANGED.code == "110136"
    assert codes.USER_SECURITY_ATTRIBUTES_CHANGED.code == "110137"


@pytest.mark.parametrize("value", ["Query", "query", "110112", "QUERY"])
def test_resolve_event(value: str) -> None:
    assert codes.resolve_event(value) == "110112"
    assert codes.resolve_event("DICOM Instances Accessed") == "110103"
    with pytest.raises(ValueError, match="unknown audit event 'nope'"):
        codes.resolve_event("nope")
