"""What the plugin writes to the audit trail: each service's events, in order, and the auditors' endpoint."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_plugin_app import (
    ADMIN_PW,
    FIND_STUDIES,
    PHYSICIAN_PW,
    SPEC,
    FakeRest,
    FakeSystem,
    admit_to_orthanc,
    basic,
    dicom_bytes,
)
from test_plugin_modalities import FakeModalityApi

from securepacs.access import passwords
from securepacs.access.principal import AUDITOR, PHYSICIAN
from securepacs.archive.app import SecurePacsApp
from securepacs.audit import create_checkpoint_key, iter_entries, public_key_path, verify
from securepacs.config.plugin_settings import PluginConfig
from securepacs.dicom import status_codes
from securepacs.tenancy.ownership import read_ids
from securepacs.web.messages import Request
from securepacs_tools.synth import StudySpec

AUDITOR_PW = "auditor-password-1234"
PROXY_SECRET = "auditing-test-proxy-secret-0123456789abcdef"
NGINX_SECRET = {"x-securepacs-proxy-secret": PROXY_SECRET}  # nginx's header: its client-IP header counts then
SOUTH = StudySpec(seed="south-audit", patient_id="SOUTH-P1", slices=1, rows=8, columns=8)


@pytest.fixture
def app(tmp_path: Path) -> Iterator[SecurePacsApp]:
    key = tmp_path / "certs" / "audit" / "checkpoint.key"
    create_checkpoint_key(key)
    config = PluginConfig(store_path=tmp_path / "data" / "securepacs.db",
                          audit_trail=tmp_path / "data" / "audit" / "trail.jsonl", audit_checkpoint_key=key,
                          proxy_secret=PROXY_SECRET)
    a = SecurePacsApp(config, FakeRest(), FakeModalityApi(), FakeSystem())
    a.store.add_user("alice", passwords.hash_password(ADMIN_PW, n=2**10), "admin")
    a.store.add_user("ann", passwords.hash_password(AUDITOR_PW, n=2**10), AUDITOR)
    a.store.add_clinic("north", ["NORTH_CT"])
    a.store.add_clinic("south", ["SOUTH_CT"])
    a.store.add_user("doc", passwords.hash_password(PHYSICIAN_PW, n=2**10), PHYSICIAN, "north")
    yield a
    a.on_stopped()


def records(app: SecurePacsApp) -> list[dict]:
    assert app.audit.trail is not None
    return [e.body for e in iter_entries(app.audit.trail.path) if not e.is_checkpoint]


def names(app: SecurePacsApp) -> list[tuple[str, str, int]]:
    """(event code, action, outcome) of every record after the trail's own start record."""
    return [(r["event"]["code"], r["action"], r["outcome"]) for r in records(app)[1:]]


def test_store_is_recorded_with_patient_study_and_instance(app: SecurePacsApp) -> None:
    data = dicom_bytes(SPEC)
    assert app.on_cstore(data, "NORTH_CT") == status_codes.SUCCESS
    [record] = records(app)[1:]
    assert (record["event"]["code"], record["action"], record["outcome"]) == ("110104", "C", 0)
    objects = {o["id_type"]["code"]: o for o in record["objects"]}
    assert objects["110180"]["object_id"] == SPEC.study_uid  # Study Instance UID
    assert objects["2"]["object_id"] == SPEC.patient_id  # Patient Number
    assert dict(record["details"])["sop_instance_uid"] == read_ids(data).sop_uid
    sender = record["participants"][0]
    assert (sender["ae_title"], sender["clinic"]) == ("NORTH_CT", "north")


def test_refused_and_cross_tenant_stores_are_recorded_as_failures_and_alerts(app: SecurePacsApp) -> None:
    assert app.on_cstore(dicom_bytes(SPEC), "EVIL_CT") == status_codes.REFUSED_NOT_AUTHORIZED
    assert app.on_cstore(dicom_bytes(SPEC), "NORTH_CT") == status_codes.SUCCESS
    assert app.on_cstore(dicom_bytes(SPEC, 1), "SOUTH_CT") == status_codes.REFUSED_NOT_AUTHORIZED
    assert names(app) == [("110104", "C", 8), ("110104", "C", 0), ("110113", "E", 8), ("110104", "C", 8)]
    alert = records(app)[3]
    assert alert["event_types"][0]["code"] == "110132"  # Use of Restricted Function
    assert "cross-tenant-write" in alert["outcome_description"]


def test_find_is_recorded_with_the_query_and_patient(app: SecurePacsApp) -> None:
    query = [*FIND_STUDIES, (0x0010, 0x0020, "SOUTH-P1")]
    assert list(app.on_find(query, "NORTH_CT", "SECUREPACS")) == []
    with pytest.raises(PermissionError):
        app.on_find(FIND_STUDIES, "EVIL_CT", "SECUREPACS")
    assert names(app) == [("110112", "E", 0), ("110112", "E", 8)]
    record = records(app)[1]
    assert dict(record["details"]) == {"level": "STUDY", "answers": "0", "patient_id": "SOUTH-P1"}
    assert record["objects"][0]["query"]  # the identifier itself, base64


def test_http_reads_denials_and_logins_are_recorded(app: SecurePacsApp, tmp_path: Path) -> None:
    rest = app.tenancy._index  # the fake index of this app
    assert isinstance(rest, FakeRest)
    admit_to_orthanc(app, rest, "north", "NORTH_CT", SPEC)
    foreign = admit_to_orthanc(app, rest, "south", "SOUTH_CT", SOUTH)
    own_study = read_ids(dicom_bytes(SPEC)).orthanc_study
    doc = {**basic("doc", PHYSICIAN_PW), "x-securepacs-client-ip": "203.0.113.7", **NGINX_SECRET}
    assert app.filter_http(f"/studies/{own_study}", 1, "127.0.0.1", doc) is True
    assert app.filter_http("/wado", 1, "127.0.0.1", doc, {"requestType": "WADO", "objectUID": foreign}) is False
    assert app.filter_http("/securepacs/api/studies", 1, "127.0.0.1", doc, {"PatientName": "X*"}) is True
    assert app.filter_http(f"/studies/{own_study}/archive", 1, "127.0.0.1", doc) is True
    assert app.filter_http(f"/studies/{own_study}", 4, "127.0.0.1", basic("alice", ADMIN_PW)) is True
    with pytest.raises(Exception):  # noqa: B017 (LoginFailed: the kind does not matter here)
        app.accounts.login("doc", "wrong", None, "203.0.113.7")
    app.accounts.login("doc", PHYSICIAN_PW, None, "203.0.113.7")
    assert names(app)[2:] == [
        ("110103", "R", 0),  # instances accessed (REST read of the own study)
        ("110113", "E", 4),  # security alert: the foreign WADO request
        ("110112", "E", 0),  # query: the study list
        ("110106", "R", 0),  # export: the archive download
        ("110105", "D", 0),  # study deleted by the admin
        ("110114", "E", 4),  # failed login
        ("110114", "E", 0),  # login
    ]
    accessed = records(app)[3]
    assert accessed["objects"][0]["object_id"] == SPEC.study_uid  # Orthanc ID resolved to the DICOM UID
    assert accessed["participants"][0]["network_access_point"] == "203.0.113.7"
    query = records(app)[5]
    assert query["objects"][0]["query"]


def test_lockout_is_a_security_alert(app: SecurePacsApp) -> None:
    for i in range(app.accounts.settings.max_login_failures):  # from several addresses (one is throttled first)
        with pytest.raises(Exception):  # noqa: B017
            app.accounts.login("doc", "wrong", None, f"198.51.100.{4 + i // 2}")
    assert names(app)[-1] == ("110113", "E", 8)
    assert records(app)[-1]["event_types"][0]["code"] == "110137"  # User Security Attributes Changed


def audit_request(get: dict[str, str], user: str = "ann", password: str = AUDITOR_PW) -> Request:
    return Request(method="GET", uri="/securepacs/api/audit", groups=(), get=get, body=b"",
                   headers={**basic(user, password), "x-securepacs-client-ip": "192.0.2.5", **NGINX_SECRET})


def test_auditors_search_the_trail_and_the_search_is_recorded(app: SecurePacsApp) -> None:
    handler = dict(app.routes())["/securepacs/api/audit"]
    assert app.on_cstore(dicom_bytes(SPEC), "NORTH_CT") == status_codes.SUCCESS
    assert app.filter_http("/securepacs/api/audit", 1, "127.0.0.1", basic("ann", AUDITOR_PW)) is True
    response = handler(audit_request({"patient": SPEC.patient_id}))
    assert response.status == 200 and response.content_type == "application/x-ndjson"
    [line] = response.body.decode().splitlines()
    assert json.loads(line)["record"]["objects"][1]["object_id"] == SPEC.patient_id
    used = records(app)[-1]
    assert used["event"]["code"] == "110101" and dict(used["details"])["patient"] == SPEC.patient_id
    xml = handler(audit_request({"event": "110104", "format": "dicom-xml"}))
    assert xml.status == 200 and xml.body.startswith(b'<?xml version="1.0" encoding="UTF-8"?><AuditMessage')


@pytest.mark.parametrize(("get", "message"), [
    ({"outcome": "3"}, "outcome='3': expected 0, 4, 8 or 12"),
    ({"since": "yesterday"}, "since='yesterday': expected an ISO 8601 time"),
    ({"event": "Coffee"}, "unknown audit event 'Coffee'"),
    ({"limit": "0"}, "limit='0': expected an integer"),
    ({"format": "csv"}, "format='csv': expected jsonl or dicom-xml"),
    ({"name": "x"}, "unknown query parameter 'name'"),
])
def test_bad_audit_searches_name_the_parameter(app: SecurePacsApp, get: dict[str, str], message: str) -> None:
    response = dict(app.routes())["/securepacs/api/audit"](audit_request(get))
    assert response.status == 400 and message in json.loads(response.body)["error"]


def test_only_auditors_read_the_trail(app: SecurePacsApp) -> None:
    handler = dict(app.routes())["/securepacs/api/audit"]
    assert handler(audit_request({}, "alice", ADMIN_PW)).status == 403  # separation of duties
    assert handler(audit_request({}, "doc", PHYSICIAN_PW)).status == 403
    assert app.filter_http("/securepacs/api/audit", 1, "127.0.0.1", basic("doc", PHYSICIAN_PW)) is False


def test_the_chain_of_a_session_verifies_with_a_signed_checkpoint(app: SecurePacsApp) -> None:
    app.on_started()
    assert app.on_cstore(dicom_bytes(SPEC), "NORTH_CT") == status_codes.SUCCESS
    trail = app.audit.trail
    assert trail is not None
    trail.checkpoint("test")
    key = public_key_path(app.config.audit_checkpoint_key)
    report = verify(trail.path, key)
    assert report.ok and report.checkpoints == 1 and report.records == 3, report.summary()


def test_an_access_that_cannot_be_recorded_does_not_happen(app: SecurePacsApp,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    def full_disk(*_a: object, **_k: object) -> None:
        raise OSError(28, "No space left on device")

    assert app.audit.trail is not None
    monkeypatch.setattr(app.audit.trail, "append", full_disk)
    # The adapter turns these exceptions into 0xC000 (C-STORE) and a refused request (HTTP filter).
    with pytest.raises(OSError):
        app.on_cstore(dicom_bytes(SPEC), "NORTH_CT")
    with pytest.raises(OSError):
        app.filter_http("/securepacs/api/studies", 1, "127.0.0.1", basic("doc", PHYSICIAN_PW))
