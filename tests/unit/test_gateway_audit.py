"""The gateway's audit records: accepted clinic associations and every refusal, without probes."""

from __future__ import annotations

from pathlib import Path

import pytest

from securepacs.audit import AuditTrail, iter_entries
from securepacs.gateway.association_audit import GatewayAudit
from securepacs.gateway.connection_events import ACCEPTED, REFUSED, ConnectionEvent, EventLog

FINGERPRINT = "ab" * 32


@pytest.fixture
def trail(tmp_path: Path) -> AuditTrail:
    return AuditTrail(tmp_path / "audit" / "trail.jsonl")


def bodies(trail: AuditTrail) -> list[dict]:
    return [e.body for e in iter_entries(trail.path)][1:]  # after "Audit Recording Started"


def event(**fields: object) -> ConnectionEvent:
    e = ConnectionEvent("ingress", "198.51.100.20", 50000)
    for k, v in fields.items():
        setattr(e, k, v)
    return e


def test_an_accepted_association_is_the_nodes_login(trail: AuditTrail, tmp_path: Path) -> None:
    log = EventLog(tmp_path / "events.jsonl", GatewayAudit(trail, "SECUREPACS", "host1"))
    log.emit(event(outcome=ACCEPTED, end="released", calling_aet="NORTH_CT", clinic="north",
                   fingerprint_sha256=FINGERPRINT, subject="CN=north", tls_version="TLSv1.3"))
    [record] = bodies(trail)
    assert (record["event"]["code"], record["outcome"]) == ("110114", 0)
    peer = record["participants"][0]
    assert peer == {"ae_title": "NORTH_CT", "cert_sha256": FINGERPRINT, "clinic": "north", "is_requestor": True,
                    "network_access_point": "198.51.100.20", "user_id": "NORTH_CT"}
    assert record["source"]["source_id"] == "securepacs-gateway@host1"
    assert dict(record["details"])["end"] == "released"


@pytest.mark.parametrize("reason", ["tls-handshake-failed: certificate verify failed", "calling-aet-not-bound",
                                    "revoked", "rate-limited"])
def test_every_refusal_is_a_node_authentication_alert(trail: AuditTrail, reason: str) -> None:
    GatewayAudit(trail, "SECUREPACS", "h").connection(event(outcome=REFUSED, reason=reason).as_dict())
    [record] = bodies(trail)
    assert (record["event"]["code"], record["event_types"][0]["code"], record["outcome"]) == ("110113", "110126", 8)
    assert reason in record["outcome_description"]


@pytest.mark.parametrize("data", [
    {"direction": "ingress", "outcome": REFUSED, "reason": "closed-during-tls-handshake"},  # a port probe
    {"direction": "egress", "outcome": ACCEPTED},  # Orthanc's own C-MOVE sub-association
])
def test_probes_and_egress_are_left_to_the_event_file(trail: AuditTrail, data: dict) -> None:
    GatewayAudit(trail, "SECUREPACS", "h").connection(data)
    assert bodies(trail) == []


def test_a_refused_cget_is_a_restricted_function_alert(trail: AuditTrail, tmp_path: Path) -> None:
    log = EventLog(None, GatewayAudit(trail, "SECUREPACS", "h"))
    log.record("cget-refused", {"clinic": "north", "level": "STUDY", "reason": "not the clinic's"})
    [record] = bodies(trail)
    assert record["event_types"][0]["code"] == "110132" and record["participants"][1]["clinic"] == "north"


def test_an_allowed_cget_is_not_a_security_alert(trail: AuditTrail, tmp_path: Path) -> None:
    # The archive's ownership endpoint writes the retrieve's Instances Transferred record; an allowed C-GET
    # used to add a Security Alert with outcome 8 (serious failure) as if it had been refused.
    log = EventLog(tmp_path / "events.jsonl", GatewayAudit(trail, "SECUREPACS", "h"))
    log.record("cget-allowed", {"clinic": "north", "level": "SERIES", "message_id": 1})
    assert bodies(trail) == []
    assert '"kind":"cget-allowed"' in (tmp_path / "events.jsonl").read_text()  # the event file keeps it


def test_a_trail_that_cannot_be_written_is_reported_not_raised(trail: AuditTrail,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    audit = GatewayAudit(trail, "SECUREPACS", "h")

    def broken(*_a: object, **_k: object) -> None:
        raise OSError(28, "No space left on device")

    trail.append = broken  # type: ignore[method-assign]
    audit.security("cget-refused", {"clinic": "north"})
    assert "cannot write to the audit trail" in caplog.text and "No space left" in caplog.text
