"""Who sees what of the health report: the anonymous view, the detailed one (admins, auditors, local
processes), the adapter's version facts, and what the launcher and ``securepacs health`` make of them."""

from __future__ import annotations

import argparse
import importlib
import json
import types
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from orthanc_stub import OrthancException, OrthancStub, installed
from test_platform import FACTS_1_10
from test_plugin_adapter import valid_config
from test_plugin_app import ADMIN_PW, PROXY_SECRET, SYSTEM, THROUGH_NGINX, FakeRest, FakeSystem, basic, request
from test_plugin_modalities import FakeModalityApi

from securepacs import __version__
from securepacs.access import passwords
from securepacs.archive.app import SecurePacsApp
from securepacs.cli import serve_cmd
from securepacs.config import environment
from securepacs.config.plugin_settings import PluginConfig
from securepacs.ops import launcher
from securepacs.platform import health
from securepacs.platform.cves import KNOWN

DETAIL, LOCAL, PUBLIC = health.DETAIL_URI, health.LOCAL_URI, health.PUBLIC_URI


@pytest.fixture
def facts() -> dict[str, str | None]:
    return dict(FACTS_1_10)


@pytest.fixture
def app(tmp_path: Path, facts: dict[str, str | None]) -> Iterator[SecurePacsApp]:
    calls: list[int] = []

    def versions() -> Mapping[str, str | None]:
        calls.append(1)
        return facts

    a = SecurePacsApp(PluginConfig(store_path=tmp_path / "sp.db", proxy_secret=PROXY_SECRET), FakeRest(),
                      FakeModalityApi(), FakeSystem(), platform_versions=versions)
    a.version_calls = calls  # type: ignore[attr-defined]
    for name, role in (("alice", "admin"), ("audrey", "auditor")):
        a.store.add_user(name, passwords.hash_password(ADMIN_PW, n=2**10), role)
    a.store.add_clinic("north", ["NORTH_CT"])
    a.store.add_user("doc", passwords.hash_password(ADMIN_PW, n=2**10), "physician", "north")
    a.modalities.sync()
    yield a
    a.modalities.stop()
    a.store.close()


# -- the two views -------------------------------------------------------------------------------------------
def test_detail_carries_versions_cves_and_counters(app: SecurePacsApp) -> None:
    report = app.health_detail()
    assert report["version"] == __version__ and report["status"] == "degraded"
    components = report["components"]
    assert components["orthanc"] == {"version": "1.10.1", "dicomAet": "SECUREPACS", "status": "ok"}
    assert components["store"]["generation"] >= 1
    platform = components["platform"]
    assert platform["status"] == "degraded" and platform["versions"] == FACTS_1_10
    assert [c["id"] for c in platform["cves"]] == [c.id for c in KNOWN]
    assert all(c["status"] == "ok" for name, c in components.items() if name != "platform")
    app.health_detail()
    assert app.version_calls == [1]  # type: ignore[attr-defined]  # read once: they do not change


def test_anonymous_view_has_statuses_only(app: SecurePacsApp) -> None:
    report = app.health()
    assert report == {"service": "securepacs", "status": "degraded", "components": {
        "orthanc": {"status": "ok"}, "store": {"status": "ok"}, "dicom-tls": {"status": "ok"},
        "modalities": {"status": "ok"}, "platform": {"status": "degraded"}}}
    text = json.dumps(report)
    for secret in ("1.10.1", "SECUREPACS", "CVE-", "3.6.7", __version__, "generation"):
        assert secret not in text


def test_a_platform_with_every_fix_is_ok(app: SecurePacsApp, facts: dict[str, str | None]) -> None:
    facts.update(orthanc="1.13.0", pythonPlugin="7.1", dicomWeb="1.24", dcmtk="3.7.1")
    assert app.health() == {**app.health(), "status": "ok"}
    assert app.health_detail()["components"]["platform"]["cves"] == []


def test_a_failing_version_probe_is_an_error_that_does_not_stop_serving(tmp_path: Path) -> None:
    def broken() -> Mapping[str, str | None]:
        raise RuntimeError("no /system")

    a = SecurePacsApp(PluginConfig(store_path=tmp_path / "sp.db", proxy_secret=PROXY_SECRET), FakeRest(),
                      FakeModalityApi(), FakeSystem(), platform_versions=broken)
    try:
        a.modalities.sync()
        report = a.health()
        assert report["components"]["platform"] == {"status": "error"}
        assert report["status"] == "degraded" and health.ready(report)
    finally:
        a.store.close()


def test_without_a_version_probe_there_is_no_platform_component(tmp_path: Path) -> None:
    a = SecurePacsApp(PluginConfig(store_path=tmp_path / "sp.db"), FakeRest(), FakeModalityApi(), FakeSystem())
    try:
        assert "platform" not in a.health_detail()["components"]
    finally:
        a.store.close()


@pytest.mark.parametrize(("components", "ready"), [
    ({"orthanc": {"status": "ok"}, "platform": {"status": "degraded"}}, True),
    ({"orthanc": {"status": "ok"}, "platform": {"status": "error"}}, True),
    ({"orthanc": {"status": "ok"}}, True),
    ({"orthanc": {"status": "error"}, "platform": {"status": "ok"}}, False),
    ({"modalities": {"status": "starting"}}, False),
    ({}, False),
])
def test_ready_ignores_only_advisory_components(components: dict[str, Any], ready: bool) -> None:
    assert health.ready({"status": "whatever", "components": components}) is ready


def test_ready_without_a_report() -> None:
    assert health.ready(None) is False and health.ready({"status": "ok"}) is False


# -- who reaches the detail ----------------------------------------------------------------------------------
def test_filter_lets_admins_and_auditors_read_the_detail_through_nginx(app: SecurePacsApp) -> None:
    for user in ("alice", "audrey"):
        assert app.filter_http(DETAIL, 1, "127.0.0.1", {**basic(user, ADMIN_PW), **THROUGH_NGINX}) is True
    assert app.filter_http(DETAIL, 1, "127.0.0.1", {**basic("doc", ADMIN_PW), **THROUGH_NGINX}) is False
    assert app.filter_http(DETAIL, 1, "127.0.0.1", THROUGH_NGINX) is False
    assert app.filter_http(DETAIL, 2, "127.0.0.1", {**basic("audrey", ADMIN_PW), **THROUGH_NGINX}) is False


def test_filter_serves_the_local_route_only_to_local_processes(app: SecurePacsApp) -> None:
    assert app.filter_http(LOCAL, 1, "127.0.0.1", {}) is True  # no credentials needed from this host
    assert app.filter_http(LOCAL, 1, "127.0.0.1", THROUGH_NGINX) is False  # never through nginx
    assert app.filter_http(LOCAL, 1, "127.0.0.1", {"x-securepacs-client-ip": "203.0.113.9"}) is False
    assert app.filter_http(LOCAL, 1, "10.0.0.7", {}) is False  # not loopback
    assert app.filter_http(LOCAL, 2, "127.0.0.1", {}) is False
    assert app.filter_http(LOCAL + "/", 1, "127.0.0.1", {}) is False


def test_no_proxy_secret_configured_means_no_local_route(tmp_path: Path) -> None:
    a = SecurePacsApp(PluginConfig(store_path=tmp_path / "sp.db"), FakeRest(), FakeModalityApi(), FakeSystem())
    try:
        assert a.filter_http(LOCAL, 1, "127.0.0.1", {}) is False  # fail closed, as for every internal route
    finally:
        a.store.close()


def test_detail_route_answers_admins_and_auditors_only(app: SecurePacsApp) -> None:
    routes = dict(app.routes())
    for user in ("alice", "audrey"):
        response = routes[DETAIL](request(DETAIL, headers={**basic(user, ADMIN_PW), **THROUGH_NGINX}))
        assert response.status == 200, response.body
        assert json.loads(response.body)["components"]["platform"]["versions"]["orthanc"] == "1.10.1"
    refused = routes[DETAIL](request(DETAIL, headers={**basic("doc", ADMIN_PW), **THROUGH_NGINX}))
    assert (refused.status, json.loads(refused.body)) == (403, {"error": "admin or auditor role required"})
    assert routes[DETAIL](request(DETAIL, headers=THROUGH_NGINX)).status == 403
    assert routes[DETAIL](request(DETAIL, "DELETE", headers=basic("alice", ADMIN_PW))).status == 405


def test_local_route_answers_without_credentials_but_never_through_nginx(app: SecurePacsApp) -> None:
    routes = dict(app.routes())
    response = routes[LOCAL](request(LOCAL))
    assert response.status == 200
    assert json.loads(response.body)["components"]["platform"]["status"] == "degraded"
    assert routes[LOCAL](request(LOCAL, headers=THROUGH_NGINX)).status == 403
    assert routes[LOCAL](request(LOCAL, "POST")).status == 405


# -- the adapter's facts -------------------------------------------------------------------------------------
@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[OrthancStub]:
    with installed(OrthancStub(valid_config(tmp_path / "sp.db"))) as stub:
        yield stub


def test_adapter_reads_versions_from_system_and_plugins(orthanc: OrthancStub) -> None:
    adapter = importlib.import_module("securepacs.archive.adapter")
    orthanc.system = {**SYSTEM, "Version": "1.13.0", "ThirdPartyVersions": {"dcmtk": "3.7.0", "boost": "1.92.0"}}
    orthanc.rest_get["/plugins/python"] = b'{"ID": "python", "Version": "7.1"}'
    orthanc.rest_get["/plugins/dicom-web"] = b'{"ID": "dicom-web", "Version": "1.24"}'
    assert adapter.platform_versions() == {"orthanc": "1.13.0", "pythonPlugin": "7.1", "dicomWeb": "1.24",
                                           "dcmtk": "3.7.0"}


def test_adapter_falls_back_to_the_mapped_libdcmdata(orthanc: OrthancStub, monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    adapter = importlib.import_module("securepacs.archive.adapter")
    maps = tmp_path / "maps"
    maps.write_text("7f00-7f01 r-xp 00000000 08:01 1 /usr/lib/x86_64-linux-gnu/libdcmimgle.so.17.3.6.7\n"
                    "7f02-7f03 r-xp 00000000 08:01 2 /usr/lib/x86_64-linux-gnu/libdcmdata.so.17.3.6.7\n")
    real_open = open
    monkeypatch.setattr("builtins.open", lambda path, *a, **k: real_open(maps if path == "/proc/self/maps" else path,
                                                                          *a, **k))
    orthanc.rest_get["/plugins/python"] = b'{"ID": "python", "Version": "4.0"}'
    orthanc.rest_get["/plugins/dicom-web"] = b'{"ID": "dicom-web", "Version": "1.7"}'
    assert adapter.platform_versions() == FACTS_1_10
    # What is loaded wins over what Orthanc was built with.
    orthanc.system = {**SYSTEM, "ThirdPartyVersions": {"dcmtk": "3.6.0"}}
    assert adapter.platform_versions()["dcmtk"] == "3.6.7"
    # A plugin that is not loaded: Orthanc answers "Unknown resource" (OrthancException).
    del orthanc.rest_get["/plugins/dicom-web"]
    monkeypatch.setattr(orthanc, "RestApiGet", _unknown_plugins(orthanc.RestApiGet))
    assert adapter.platform_versions()["dicomWeb"] is None


def _unknown_plugins(real: Any) -> Any:
    def get(uri: str) -> bytes:
        if uri.startswith("/plugins/") and uri != "/plugins/python":
            raise OrthancException(17, "Unknown resource")
        return real(uri)

    return get


# -- launcher and CLI ----------------------------------------------------------------------------------------
def detail_of(facts: Mapping[str, str | None]) -> dict[str, Any]:
    from securepacs.platform import exposure
    platform = exposure.component(facts)
    return {"service": "securepacs", "version": __version__, "status": platform["status"],
            "components": {"orthanc": {"status": "ok"}, "platform": platform}}


def test_wait_healthy_returns_a_serving_archive_with_a_degraded_platform(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = iter([None, {"status": "degraded", "components": {"modalities": {"status": "starting"}}},
                    detail_of(FACTS_1_10)])
    monkeypatch.setattr(launcher, "fetch_health", lambda url, context=None: next(answers))
    monkeypatch.setattr(launcher.time, "sleep", lambda _s: None)
    assert launcher.wait_healthy("http://127.0.0.1:1/x", [])["status"] == "degraded"


def test_banner_prints_versions_and_the_cve_warning(tmp_path: Path) -> None:
    s = environment.from_env({"SECUREPACS_DATA": str(tmp_path / "d"), "SECUREPACS_CERTS": str(tmp_path / "c")})
    text = launcher.banner(types.SimpleNamespace(settings=s, admin_created=False), detail_of(FACTS_1_10))
    assert f"SecurePACS {__version__} is running" in text
    assert "Platform: Orthanc 1.10.1, python plugin 4.0, DICOMweb 1.7, DCMTK 3.6.7" in text
    assert "WARNING: Orthanc 1.10.1 (DCMTK 3.6.7) has 10 known unfixed vulnerabilities" in text


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Any]:
    monkeypatch.setenv("SECUREPACS_DATA", str(tmp_path / "d"))
    monkeypatch.setenv("SECUREPACS_CERTS", str(tmp_path / "c"))
    answers: dict[str, Any] = {}
    monkeypatch.setattr(launcher, "https_context", lambda _ca: None)
    monkeypatch.setattr(launcher, "fetch_health",
                        lambda url, context=None: answers.get(LOCAL if url.endswith(LOCAL) else PUBLIC))
    return answers


def run_health(capsys: pytest.CaptureFixture[str], **flags: bool) -> tuple[int, str]:
    code = serve_cmd.check_health(argparse.Namespace(**{"internal": False, "json": False, "serving": False, **flags}))
    return code, capsys.readouterr().out


def test_cli_reports_versions_and_exits_3_on_exposure(cli_env: dict[str, Any],
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    cli_env[LOCAL] = detail_of(FACTS_1_10)
    cli_env[PUBLIC] = health.public(cli_env[LOCAL])
    code, out = run_health(capsys)
    assert code == serve_cmd.EXIT_EXPOSED == 3
    assert "Platform: Orthanc 1.10.1, python plugin 4.0, DICOMweb 1.7, DCMTK 3.6.7" in out
    assert "CVE-2026-10528" in out and "platform: degraded" in out
    code, out = run_health(capsys, json=True)
    assert code == 3 and json.loads(out)["components"]["platform"]["versions"] == FACTS_1_10
    code, out = run_health(capsys, serving=True)  # compose's healthcheck: serving is healthy
    assert code == 0 and "CVE-2026-10528" in out


def test_cli_exits_0_with_every_fix_and_1_when_not_serving(cli_env: dict[str, Any],
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    fixed = {"orthanc": "1.13.0", "pythonPlugin": "7.1", "dicomWeb": "1.24", "dcmtk": "3.7.1"}
    cli_env[LOCAL] = detail_of(fixed)
    cli_env[PUBLIC] = health.public(cli_env[LOCAL])
    code, out = run_health(capsys)
    assert code == 0 and "Orthanc 1.13.0" in out and "WARNING" not in out
    del cli_env[PUBLIC]  # nginx does not answer: not serving, whatever Orthanc says
    assert run_health(capsys)[0] == 1
    assert run_health(capsys, internal=True)[0] == 0  # --internal asks Orthanc's loopback port only
    cli_env[LOCAL] = {**cli_env[LOCAL], "status": "degraded", "components": {"orthanc": {"status": "error"}}}
    assert run_health(capsys, internal=True)[0] == 1
    assert run_health(capsys, internal=True, serving=True)[0] == 1  # --serving does not hide an outage
    cli_env.clear()
    code, out = run_health(capsys)
    assert (code, out.strip()) == (1, "SecurePACS: no answer")
