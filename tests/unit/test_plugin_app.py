"""The health report and the plugin's composition root (``SecurePacsApp``), without Orthanc."""

from __future__ import annotations

import base64
import io
import json
import logging
import sqlite3
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from test_plugin_modalities import FakeModalityApi

import securepacs.archive.app
from securepacs import __version__
from securepacs.access import passwords
from securepacs.access.principal import PHYSICIAN, Principal
from securepacs.archive.app import SecurePacsApp
from securepacs.archive.modalities import PREFIX
from securepacs.archive.move_scp import MoveRefused
from securepacs.config.plugin_settings import PluginConfig
from securepacs.dicom import status_codes
from securepacs.platform import health
from securepacs.tenancy.ownership import read_ids
from securepacs.web.messages import Request, Response
from securepacs_tools.synth import StudySpec, instance

ADMIN_PW = "admin-password-1234"
PROXY_SECRET = "test-proxy-secret-0123456789abcdefghijklmnop"
# What nginx adds to every request it forwards: its secret and the client's address.
THROUGH_NGINX = {"x-securepacs-proxy-secret": PROXY_SECRET, "x-securepacs-client-ip": "203.0.113.9"}
SYSTEM = {"Name": "SecurePACS", "Version": "1.10.1", "DicomAet": "SECUREPACS", "DatabaseVersion": 6}


# -- health.report -----------------------------------------------------------------------------------------
def test_report_all_ok() -> None:
    result = health.report("9.9.9", {"a": lambda: {}, "b": lambda: {"detail": 1, "status": "ok"}})
    assert result == {
        "service": "securepacs",
        "version": "9.9.9",
        "status": "ok",
        "components": {"a": {"status": "ok"}, "b": {"detail": 1, "status": "ok"}},
    }


def test_report_without_checks_is_ok() -> None:
    assert health.report("1", {})["status"] == "ok"


def test_a_non_ok_component_degrades_the_report() -> None:
    result = health.report("1", {"a": lambda: {}, "b": lambda: {"status": "starting"}})
    assert result["status"] == "degraded"
    assert result["components"]["b"] == {"status": "starting"}


def test_a_failing_check_is_an_error_without_details() -> None:
    def broken() -> Mapping[str, Any]:
        raise ConnectionError("password=hunter2 at /var/lib/secret")

    result = health.report("1", {"a": lambda: {}, "broken": broken})
    assert result["status"] == "degraded"
    assert result["components"]["broken"] == {"status": "error", "error": "ConnectionError"}
    assert result["components"]["a"] == {"status": "ok"}
    # The report is anonymous: the exception's message must not leak into it.
    assert "hunter2" not in json.dumps(result)


def test_every_check_runs_even_after_a_failure() -> None:
    ran: list[str] = []

    def first() -> Mapping[str, Any]:
        ran.append("first")
        raise RuntimeError

    def second() -> Mapping[str, Any]:
        ran.append("second")
        return {}

    health.report("1", {"first": first, "second": second})
    assert ran == ["first", "second"]


# -- SecurePacsApp -----------------------------------------------------------------------------------------
class FakeRest:
    """Orthanc's REST API and index as the app's services see them. Only what a test puts in answers;
    anything else fails the test, so an unexpected call into Orthanc is noticed."""

    def __init__(self) -> None:
        self.json: dict[str, Any] = {}  # GET uri -> answer
        self.uids: dict[tuple[str, str], str] = {}  # (level, DICOM UID) -> Orthanc ID
        self.calls: list[tuple[str, str]] = []

    def get_json(self, uri: str) -> Any:
        self.calls.append(("GET", uri))
        if uri not in self.json:
            raise LookupError(f"unknown resource {uri}")  # what Orthanc answers for a missing resource
        return self.json[uri]

    def post_json(self, uri: str, body: Any) -> Any:
        raise AssertionError(f"unexpected POST {uri} {body!r}")

    def post_bytes(self, uri: str, body: bytes) -> bytes:
        raise AssertionError(f"unexpected POST {uri} ({len(body)} bytes)")

    def delete(self, uri: str) -> None:
        raise AssertionError(f"unexpected DELETE {uri}")

    def lookup(self, level: str, uid: str) -> str | None:
        self.calls.append(("LOOKUP", f"{level}:{uid}"))
        return self.uids.get((level, uid))


class FakeSystem:
    def __init__(self) -> None:
        self.error: Exception | None = None

    def __call__(self) -> Mapping[str, Any]:
        if self.error:
            raise self.error
        return SYSTEM


@pytest.fixture
def api() -> FakeModalityApi:
    return FakeModalityApi()


@pytest.fixture
def system() -> FakeSystem:
    return FakeSystem()


@pytest.fixture
def rest() -> FakeRest:
    return FakeRest()


@pytest.fixture
def app(tmp_path: Path, rest: FakeRest, api: FakeModalityApi, system: FakeSystem) -> Iterator[SecurePacsApp]:
    a = SecurePacsApp(PluginConfig(store_path=tmp_path / "data" / "securepacs.db", proxy_secret=PROXY_SECRET), rest,
                      api, system)
    a.store.add_user("alice", passwords.hash_password(ADMIN_PW, n=2**10), "admin")
    yield a
    a.modalities.stop()
    a.store.close()


def basic(username: str, password: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()}


@pytest.mark.parametrize(("code", "method"), [(1, "GET"), (2, "POST"), (3, "PUT"), (4, "DELETE"), (0, "OTHER"),
                                              (99, "OTHER")])
def test_filter_maps_orthanc_method_codes(
    app: SecurePacsApp, monkeypatch: pytest.MonkeyPatch, code: int, method: str
) -> None:
    seen: list[str] = []
    real = app.auth.authorize

    def spy(uri: str, m: str, peer: str, headers: Mapping[str, str], get: Mapping[str, str]) -> Any:
        seen.append(m)
        return real(uri, m, peer, headers, get)

    monkeypatch.setattr(app.auth, "authorize", spy)
    app.filter_http("/system", code, "127.0.0.1", {})
    assert seen == [method]


@pytest.mark.parametrize(("code", "allowed"), [(1, True), (2, False), (3, False), (4, False), (99, False)])
def test_health_is_anonymous_only_for_get(app: SecurePacsApp, code: int, allowed: bool) -> None:
    assert app.filter_http("/securepacs/health", code, "127.0.0.1", {}) is allowed


def test_filter_allows_an_admin_and_refuses_others(app: SecurePacsApp) -> None:
    assert app.filter_http("/system", 1, "127.0.0.1", basic("alice", ADMIN_PW)) is True
    assert app.filter_http("/system", 1, "127.0.0.1", basic("alice", "wrong-password")) is False
    assert app.filter_http("/system", 2, "127.0.0.1", {}) is False


def test_refusal_is_logged_with_client_ip_but_no_secret(app: SecurePacsApp, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="securepacs")
    headers = {**basic("alice", "wrong-password"), **THROUGH_NGINX}
    assert not app.filter_http("/instances", 2, "127.0.0.1", headers)
    assert "HTTP POST '/instances' from '203.0.113.9' refused: no valid credentials" in caplog.text
    assert "wrong-password" not in caplog.text
    assert headers["authorization"].split()[1] not in caplog.text
    assert PROXY_SECRET not in caplog.text


def test_app_uses_the_configured_proxy_and_header(tmp_path: Path, rest: FakeRest, api: FakeModalityApi,
                                                  system: FakeSystem) -> None:
    config = PluginConfig(store_path=tmp_path / "sp.db", trusted_proxies=("10.0.0.2",), client_ip_header="x-real-ip",
                          auth_cache_seconds=0, proxy_secret=PROXY_SECRET)
    a = SecurePacsApp(config, rest, api, system)
    secret = {"x-securepacs-proxy-secret": PROXY_SECRET}
    try:
        assert a.auth.client_ip("10.0.0.2", {"x-real-ip": "203.0.113.9", **secret}) == "203.0.113.9"
        assert a.auth.client_ip("10.0.0.2", {"x-real-ip": "203.0.113.9"}) == "10.0.0.2"  # no secret: not nginx
        assert a.auth.client_ip("127.0.0.1", {"x-real-ip": "203.0.113.9", **secret}) == "127.0.0.1"
        assert a.store.path == tmp_path / "sp.db"
    finally:
        a.store.close()


def test_health_before_start_is_degraded_while_modalities_start(app: SecurePacsApp) -> None:
    report = app.health_detail()
    assert report["service"] == "securepacs" and report["version"] == __version__
    assert report["status"] == "degraded"
    assert report["components"] == {
        "orthanc": {"version": "1.10.1", "dicomAet": "SECUREPACS", "status": "ok"},
        "store": {"generation": 1, "status": "ok"},
        "dicom-tls": {"enabled": True, "status": "ok"},
        "modalities": {"status": "starting"},
    }
    json.dumps(report)  # answered as JSON


def test_health_after_start_is_ok_and_modalities_are_registered(app: SecurePacsApp, api: FakeModalityApi) -> None:
    app.store.add_clinic("north", ["NORTH_CT"])
    app.on_started()
    assert list(api.modalities) == [f"{PREFIX}north-0"]  # synced at start, not after the first interval
    report = app.health_detail()
    assert report["status"] == "ok", report
    assert report["components"]["modalities"] == {"status": "ok"}
    assert report["components"]["store"]["generation"] == 2


def test_health_reports_a_failing_orthanc(app: SecurePacsApp, system: FakeSystem) -> None:
    app.modalities.sync()
    system.error = RuntimeError("connection refused")
    report = app.health_detail()
    assert report["status"] == "degraded"
    assert report["components"]["orthanc"] == {"status": "error", "error": "RuntimeError"}


def test_health_reports_a_failing_modality_sync(app: SecurePacsApp) -> None:
    app.modalities.sync()  # no background thread: it could clear the error below
    app.modalities.last_error = "database is locked"
    report = app.health()
    assert report["status"] == "degraded"
    assert report["components"]["modalities"] == {"status": "error"}
    assert "locked" not in json.dumps(report)


def test_health_reports_a_closed_store(app: SecurePacsApp) -> None:
    app.store.close()
    report = app.health()
    assert report["status"] == "degraded"
    assert report["components"]["store"]["status"] == "error"


def test_stop_ends_the_sync_thread_and_closes_the_store(app: SecurePacsApp) -> None:
    app.on_started()
    thread = app.modalities._thread
    assert thread is not None and thread.is_alive()
    app.on_stopped()
    assert not thread.is_alive()
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        app.store.generation()


# -- DICOM ---------------------------------------------------------------------------------------------------
def dicom_bytes(spec: StudySpec, index: int = 0) -> bytes:
    buffer = io.BytesIO()
    instance(spec, index).save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


SPEC = StudySpec(seed="app-test", slices=1, rows=8, columns=8)


def test_cstore_from_an_unknown_aet_is_refused(app: SecurePacsApp, rest: FakeRest,
                                               caplog: pytest.LogCaptureFixture) -> None:
    app.store.add_clinic("north", ["NORTH_CT"])
    assert app.on_cstore(dicom_bytes(SPEC), "EVIL_CT") == status_codes.REFUSED_NOT_AUTHORIZED == 0x0124
    assert app.store.study_owner(SPEC.study_uid) is None  # nothing was claimed for the stranger
    assert rest.calls == []
    assert "C-STORE from 'EVIL_CT' refused: not an enrolled clinic" in caplog.text


def test_cstore_from_a_revoked_clinic_is_refused(app: SecurePacsApp) -> None:
    app.store.add_clinic("north", ["NORTH_CT"])
    app.store.revoke_clinic("north")
    assert app.on_cstore(dicom_bytes(SPEC), "NORTH_CT") == status_codes.REFUSED_NOT_AUTHORIZED
    assert app.store.study_owner(SPEC.study_uid) is None


def test_revocation_reaches_cstore_within_the_aet_cache_window(app: SecurePacsApp,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    app.store.add_clinic("north", ["NORTH_CT"])
    assert app.on_cstore(dicom_bytes(SPEC), "NORTH_CT") == status_codes.SUCCESS
    app.store.revoke_clinic("north")
    later = time.monotonic() + securepacs.archive.app.AET_CACHE_SECONDS + 0.01
    monkeypatch.setattr(securepacs.archive.app.time, "monotonic", lambda: later)
    assert app.on_cstore(dicom_bytes(SPEC, 1), "NORTH_CT") == status_codes.REFUSED_NOT_AUTHORIZED


def test_cstore_admits_an_enrolled_clinics_instance(app: SecurePacsApp) -> None:
    app.store.add_clinic("north", ["NORTH_CT"])
    app.store.add_clinic("south", ["SOUTH_CT"])
    assert app.on_cstore(dicom_bytes(SPEC), "NORTH_CT") == status_codes.SUCCESS
    owner = app.store.study_owner(SPEC.study_uid)
    assert owner is not None and owner.clinic == "north" and owner.source == "dicom:NORTH_CT"
    assert owner.orthanc_id == read_ids(dicom_bytes(SPEC)).orthanc_study
    # Another clinic cannot write into the study it now owns.
    assert app.on_cstore(dicom_bytes(SPEC, 1), "SOUTH_CT") == status_codes.REFUSED_NOT_AUTHORIZED


def test_cstore_of_garbage_cannot_be_understood(app: SecurePacsApp) -> None:
    app.store.add_clinic("north", ["NORTH_CT"])
    assert app.on_cstore(b"not dicom at all", "NORTH_CT") == status_codes.STORE_ERROR_CANNOT_UNDERSTAND


FIND_STUDIES = [(0x0008, 0x0052, "STUDY"), (0x0020, 0x000D, ""), (0x0010, 0x0010, "")]


def test_find_from_an_unknown_aet_is_refused(app: SecurePacsApp, rest: FakeRest) -> None:
    app.store.add_clinic("north", ["NORTH_CT"])
    with pytest.raises(PermissionError, match="'EVIL_CT' refused: not an enrolled clinic"):
        app.on_find(FIND_STUDIES, "EVIL_CT", "SECUREPACS")
    assert rest.calls == []  # refused before Orthanc is asked anything


def test_find_by_a_clinic_without_studies_finds_nothing(app: SecurePacsApp, rest: FakeRest) -> None:
    app.store.add_clinic("north", ["NORTH_CT"])
    assert list(app.on_find(FIND_STUDIES, "NORTH_CT", "SECUREPACS")) == []
    assert rest.calls == []  # an empty scope never reaches Orthanc (which would match every clinic's studies)


def test_move_from_an_unknown_aet_is_refused_and_logged(app: SecurePacsApp, caplog: pytest.LogCaptureFixture) -> None:
    request = {"Level": "STUDY", "StudyInstanceUID": SPEC.study_uid, "OriginatorAET": "EVIL_CT",
               "TargetAET": "EVIL_CT", "OriginatorID": "1"}
    with pytest.raises(MoveRefused):
        app.start_move(request)
    assert "C-MOVE refused: calling AE title 'EVIL_CT' is not an enrolled clinic" in caplog.text


# -- HTTP: filter with GET arguments, routes -------------------------------------------------------------------
PHYSICIAN_PW = "physician-password-1234"


def admit_to_orthanc(app: SecurePacsApp, rest: FakeRest, clinic: str, aet: str, spec: StudySpec) -> str:
    """Store ``spec``'s first instance as ``clinic`` and make the fake Orthanc index know it; its SOP UID."""
    data = dicom_bytes(spec)
    assert app.on_cstore(data, aet) == status_codes.SUCCESS
    ids = read_ids(data)
    series_id = f"series-of-{ids.orthanc_instance}"
    rest.uids[("instance", ids.sop_uid)] = ids.orthanc_instance
    rest.json[f"/instances/{ids.orthanc_instance}"] = {"ParentSeries": series_id}
    rest.json[f"/series/{series_id}"] = {"ParentStudy": ids.orthanc_study}
    return ids.sop_uid


def test_filter_passes_get_arguments_to_the_policy(app: SecurePacsApp, rest: FakeRest) -> None:
    # WADO-URI names the object only in its query string: the filter must see it to check ownership.
    app.store.add_clinic("north", ["NORTH_CT"])
    app.store.add_clinic("south", ["SOUTH_CT"])
    app.store.add_user("doc", passwords.hash_password(PHYSICIAN_PW, n=2**10), PHYSICIAN, "north")
    own = admit_to_orthanc(app, rest, "north", "NORTH_CT", SPEC)
    foreign = admit_to_orthanc(app, rest, "south", "SOUTH_CT", StudySpec(seed="south", slices=1, rows=8, columns=8))
    doc = basic("doc", PHYSICIAN_PW)
    assert app.filter_http("/wado", 1, "127.0.0.1", doc, {"requestType": "WADO", "objectUID": own}) is True
    assert app.filter_http("/wado", 1, "127.0.0.1", doc, {"requestType": "WADO", "objectUID": foreign}) is False
    assert app.filter_http("/wado", 1, "127.0.0.1", doc, {"requestType": "WADO"}) is False
    assert app.filter_http("/wado", 1, "127.0.0.1", doc) is False  # no arguments: nothing to check, refused


def test_routes_are_the_plugins_own_and_accounts(app: SecurePacsApp) -> None:
    patterns = [pattern for pattern, _ in app.routes()]
    assert patterns[:2] == ["/securepacs/api/studies", "/securepacs/dicom-web/(studies|series|instances)"]
    assert {"/securepacs/login", "/securepacs/logout", "/securepacs/api/me", "/securepacs/api/users"} <= set(patterns)
    assert len(patterns) == len(set(patterns))  # Orthanc refuses a pattern registered twice


def request(uri: str, method: str = "GET", headers: Mapping[str, str] | None = None,
            groups: tuple[str, ...] = ()) -> Request:
    return Request(method=method, uri=uri, groups=groups, headers=dict(headers or {}), get={}, body=b"")


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[Request, Principal | None]] = []

    def __call__(self, req: Request, principal: Principal | None) -> Response:
        self.calls.append((req, principal))
        return Response.json({"ok": True})


@pytest.mark.parametrize("access", ["authenticated", "admin"])
def test_bind_refuses_a_request_without_credentials(app: SecurePacsApp, access: str) -> None:
    handler = Recorder()
    response = app.bind(handler, access)(request("/securepacs/api/me"))
    assert response.status == 403
    assert json.loads(response.body) == {"error": "authentication required"}
    assert handler.calls == []


def test_bind_refuses_wrong_credentials(app: SecurePacsApp) -> None:
    handler = Recorder()
    response = app.bind(handler)(request("/securepacs/api/me", headers=basic("alice", "wrong-password")))
    assert response.status == 403
    assert handler.calls == []


def test_bind_gives_the_handler_the_principal_and_client_ip(app: SecurePacsApp) -> None:
    handler = Recorder()
    headers = {**basic("alice", ADMIN_PW), **THROUGH_NGINX}
    assert app.bind(handler)(request("/securepacs/api/me", headers=headers)).status == 200
    [(req, principal)] = handler.calls
    assert principal is not None and principal.name == "alice" and principal.is_admin
    assert req.client_ip == "203.0.113.9"  # the route comes through nginx (its secret), whose header is trusted

    # A local process cannot claim an address: without the secret the header is ignored ...
    handler.calls.clear()
    forged = {**basic("alice", ADMIN_PW), "x-securepacs-client-ip": "203.0.113.9"}
    assert app.bind(handler)(request("/securepacs/api/me", headers=forged)).status == 200
    assert handler.calls[0][0].client_ip == "127.0.0.1"
    # ... and a wrong secret is a forgery: refused before any handler runs.
    handler.calls.clear()
    wrong = {**forged, "x-securepacs-proxy-secret": "x" * 43}
    response = app.bind(handler)(request("/securepacs/api/me", headers=wrong))
    assert (response.status, handler.calls) == (403, [])


def test_internal_routes_only_for_local_services(app: SecurePacsApp) -> None:
    handler = Recorder()
    headers = basic("alice", ADMIN_PW)
    assert app.bind(handler, "internal")(request("/securepacs/internal/ownership", "POST", headers)).status == 200
    for extra in (THROUGH_NGINX, {"x-securepacs-client-ip": "203.0.113.9"}):
        response = app.bind(handler, "internal")(request("/securepacs/internal/ownership", "POST",
                                                         {**headers, **extra}))
        assert response.status == 403 and "internal route" in str(response.body)
    assert len(handler.calls) == 1


def test_bind_does_not_authenticate_anonymous_routes(app: SecurePacsApp) -> None:
    # A stale wrong Basic header on a login request must neither be checked nor count towards lockout.
    handler = Recorder()
    headers = basic("alice", "wrong-password")
    assert app.bind(handler, "anonymous")(request("/securepacs/login", "POST", headers)).status == 200
    [(_, principal)] = handler.calls
    assert principal is None
    user = app.store.get_user("alice")
    assert user is not None and user.failed_logins == 0


def test_login_route_works_without_credentials(app: SecurePacsApp) -> None:
    handlers = dict(app.routes())
    body = json.dumps({"username": "alice", "password": ADMIN_PW}).encode()
    login = Request(method="POST", uri="/securepacs/login", groups=(), body=body, get={},
                    headers={"content-type": "application/json", **THROUGH_NGINX})
    response = handlers["/securepacs/login"](login)
    assert response.status == 200, response.body
    token = json.loads(response.body)["token"]
    # The session it opened is accepted by the authenticated routes; no credentials at all are not.
    me = handlers["/securepacs/api/me"](request("/securepacs/api/me", headers={"authorization": f"Bearer {token}"}))
    assert me.status == 200, me.body
    assert handlers["/securepacs/api/me"](request("/securepacs/api/me")).status == 403
    assert handlers["/securepacs/api/studies"](request("/securepacs/api/studies")).status == 403


def test_dicomweb_allows_only_get_except_stow(app: SecurePacsApp) -> None:
    doc = Principal("doc", PHYSICIAN, "north")
    series = app.dicomweb(request("/securepacs/dicom-web/series", "DELETE", groups=("series",)), doc)
    assert (series.status, series.headers) == (405, {"Allow": "GET"})
    studies = app.dicomweb(request("/securepacs/dicom-web/studies", "PUT", groups=("studies",)), doc)
    assert (studies.status, studies.headers) == (405, {"Allow": "GET, POST"})
    assert app.dicomweb(request("/securepacs/dicom-web/studies", groups=("studies",)), None).status == 403
    assert app.study_list(request("/securepacs/api/studies"), None).status == 403
