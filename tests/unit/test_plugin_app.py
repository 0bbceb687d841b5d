"""The health report and the plugin's composition root (``SecurePacsApp``), without Orthanc."""

from __future__ import annotations

import base64
import json
import logging
import sqlite3
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from test_plugin_modalities import FakeModalityApi

from securepacs import __version__, health, passwords
from securepacs.app import SecurePacsApp
from securepacs.modalities import PREFIX
from securepacs.plugin_config import PluginConfig

ADMIN_PW = "admin-password-1234"
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
def app(tmp_path: Path, api: FakeModalityApi, system: FakeSystem) -> Iterator[SecurePacsApp]:
    a = SecurePacsApp(PluginConfig(store_path=tmp_path / "data" / "securepacs.db"), api, system)
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

    def spy(uri: str, m: str, peer: str, headers: Mapping[str, str]) -> Any:
        seen.append(m)
        return real(uri, m, peer, headers)

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
    headers = {**basic("alice", "wrong-password"), "x-securepacs-client-ip": "203.0.113.9"}
    assert not app.filter_http("/instances", 2, "127.0.0.1", headers)
    assert "HTTP POST '/instances' from '203.0.113.9' refused: no valid credentials" in caplog.text
    assert "wrong-password" not in caplog.text
    assert headers["authorization"].split()[1] not in caplog.text


def test_app_uses_the_configured_proxy_and_header(tmp_path: Path, api: FakeModalityApi, system: FakeSystem) -> None:
    config = PluginConfig(store_path=tmp_path / "sp.db", trusted_proxies=("10.0.0.2",), client_ip_header="x-real-ip",
                          auth_cache_seconds=0)
    a = SecurePacsApp(config, api, system)
    try:
        assert a.auth.client_ip("10.0.0.2", {"x-real-ip": "203.0.113.9"}) == "203.0.113.9"
        assert a.auth.client_ip("127.0.0.1", {"x-real-ip": "203.0.113.9"}) == "127.0.0.1"
        assert a.store.path == tmp_path / "sp.db"
    finally:
        a.store.close()


def test_health_before_start_is_degraded_while_modalities_start(app: SecurePacsApp) -> None:
    report = app.health()
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
    report = app.health()
    assert report["status"] == "ok", report
    assert report["components"]["modalities"] == {"status": "ok"}
    assert report["components"]["store"]["generation"] == 2


def test_health_reports_a_failing_orthanc(app: SecurePacsApp, system: FakeSystem) -> None:
    app.modalities.sync()
    system.error = RuntimeError("connection refused")
    report = app.health()
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
