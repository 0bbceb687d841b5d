"""The Orthanc adapter and the entry script, against a strict stub of the ``orthanc`` module."""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from orthanc_stub import FakeRestOutput, OrthancStub, StubNotImplemented, installed

from securepacs import passwords
from securepacs.plugin_config import ConfigError, PluginConfig

PLUGIN_DIR = Path(__file__).resolve().parents[2] / "plugin"
ENTRY_SCRIPT = PLUGIN_DIR / "securepacs_plugin.py"


def valid_config(store: Path) -> dict[str, Any]:
    return {
        "DicomTlsEnabled": True,
        "DicomTlsRemoteCertificateRequired": True,
        "SecurePACS": {"Store": str(store), "LogLevel": "WARNING"},
    }


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[OrthancStub]:
    with installed(OrthancStub(valid_config(tmp_path / "data" / "securepacs.db"))) as stub:
        yield stub
    assert "orthanc" not in sys.modules
    assert "securepacs.adapter" not in sys.modules


@pytest.fixture
def adapter(orthanc: OrthancStub) -> ModuleType:
    module = importlib.import_module("securepacs.adapter")
    assert module.orthanc is orthanc
    return module


# -- the stub itself ---------------------------------------------------------------------------------------
def test_stub_raises_on_anything_not_stubbed(orthanc: OrthancStub) -> None:
    with pytest.raises(StubNotImplemented, match=r"orthanc\.RegisterOnStoredInstanceCallback is not stubbed"):
        _ = orthanc.RegisterOnStoredInstanceCallback
    with pytest.raises(AttributeError, match="NEW_STUDY"):
        _ = orthanc.ChangeType.NEW_STUDY
    with pytest.raises(AttributeError, match="not stubbed"):
        orthanc.RestApiGet("/patients")
    assert not hasattr(orthanc, "RestApiPost")


def test_stub_is_removed_after_use(tmp_path: Path) -> None:
    with installed(OrthancStub(valid_config(tmp_path / "sp.db"))):
        importlib.import_module("securepacs.adapter")
        logging.getLogger("securepacs").propagate = False
    assert "orthanc" not in sys.modules
    assert "securepacs.adapter" not in sys.modules
    assert logging.getLogger("securepacs").propagate is True
    with pytest.raises(ModuleNotFoundError, match="orthanc"):
        importlib.import_module("securepacs.adapter")


def test_only_the_adapter_imports_orthanc() -> None:
    importers = sorted(
        str(p.relative_to(PLUGIN_DIR))
        for p in (PLUGIN_DIR / "securepacs").rglob("*.py")
        if re.search(r"^\s*(import|from)\s+orthanc\b", p.read_text(encoding="utf-8"), re.MULTILINE)
    )
    assert importers == ["securepacs/adapter.py"]


# -- HTTP filter -------------------------------------------------------------------------------------------
def test_http_filter_passes_the_request_through(adapter: ModuleType, orthanc: OrthancStub) -> None:
    seen: list[tuple[Any, ...]] = []

    def check(uri: str, method: int, ip: str, headers: dict[str, str]) -> bool:
        seen.append((uri, method, ip, headers))
        return True

    adapter.register_http_filter(check)
    assert len(orthanc.http_filters) == 1
    # Orthanc's Python plugin calls filter(uri, method=<int>, ip=..., headers={...}, get={...}).
    result = orthanc.http_filters[0]("/system", method=2, ip="127.0.0.1", headers={"authorization": "x"}, get={})
    assert result is True
    assert seen == [("/system", 2, "127.0.0.1", {"authorization": "x"})]


def test_http_filter_defaults_for_missing_fields(adapter: ModuleType, orthanc: OrthancStub) -> None:
    seen: list[tuple[Any, ...]] = []
    adapter.register_http_filter(lambda *args: seen.append(args) or False)
    assert orthanc.http_filters[0]("/system") is False
    assert seen == [("/system", 0, "", {})]


def test_http_filter_fails_closed_when_the_check_raises(
    adapter: ModuleType, orthanc: OrthancStub, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*_: Any) -> bool:
        raise RuntimeError("store unavailable")

    adapter.register_http_filter(broken)
    result = orthanc.http_filters[0]("/system", method=1, ip="127.0.0.1", headers={})
    assert result is False  # a real bool: Orthanc rejects anything else as an error
    assert "HTTP filter failed; request refused" in caplog.text
    assert "store unavailable" in caplog.text  # with the traceback


# -- REST callback -----------------------------------------------------------------------------------------
def test_json_get_answers_json(adapter: ModuleType, orthanc: OrthancStub) -> None:
    adapter.register_json_get("/securepacs/health", lambda: {"status": "ok", "n": 1})
    output = FakeRestOutput()
    # REST callbacks get the method as a string (unlike the request filter).
    orthanc.rest_callbacks["/securepacs/health"](output, "/securepacs/health", method="GET", headers={}, get={},
                                                 groups=())
    [(body, mime)] = output.answers
    assert mime == "application/json"
    assert json.loads(body) == {"status": "ok", "n": 1}
    assert output.not_allowed == []


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_json_get_refuses_other_methods(adapter: ModuleType, orthanc: OrthancStub, method: str) -> None:
    produced: list[int] = []
    adapter.register_json_get("/securepacs/health", lambda: produced.append(1) or {})
    output = FakeRestOutput()
    orthanc.rest_callbacks["/securepacs/health"](output, "/securepacs/health", method=method, headers={},
                                                 body=b"{}", groups=())
    assert output.not_allowed == ["GET"]
    assert output.answers == []
    assert produced == []


# -- configuration -----------------------------------------------------------------------------------------
def test_read_config_parses_and_applies_the_log_level(adapter: ModuleType, orthanc: OrthancStub,
                                                     tmp_path: Path) -> None:
    config = adapter.read_config()
    assert isinstance(config, PluginConfig)
    assert config.store_path == tmp_path / "data" / "securepacs.db"
    assert logging.getLogger("securepacs").level == logging.WARNING
    assert orthanc.logs == []


def test_read_config_logs_and_raises_on_bad_config(adapter: ModuleType, orthanc: OrthancStub) -> None:
    orthanc.configuration["SecurePACS"]["AuthCacheSeconds"] = -5
    with pytest.raises(ConfigError, match=r"SecurePACS\.AuthCacheSeconds"):
        adapter.read_config()
    [(level, message)] = orthanc.logs
    assert level == "error"
    assert "SecurePACS.AuthCacheSeconds = -5 is invalid" in message
    assert message.endswith("Refusing to start.")


def test_read_config_refuses_plain_dicom(adapter: ModuleType, orthanc: OrthancStub) -> None:
    orthanc.configuration["DicomTlsEnabled"] = False
    with pytest.raises(ConfigError, match="DicomTlsEnabled"):
        adapter.read_config()
    assert orthanc.logs[0][0] == "error"


# -- logging -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("level", "expected"),
    [(logging.DEBUG, "info"), (logging.INFO, "info"), (logging.WARNING, "warning"), (logging.ERROR, "error"),
     (logging.CRITICAL, "error")],
)
def test_log_handler_routes_levels(adapter: ModuleType, orthanc: OrthancStub, level: int, expected: str) -> None:
    logger = logging.getLogger("securepacs.test-adapter")
    handler = adapter.OrthancLogHandler()
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        logger.log(level, "hello %s", "world")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
    assert orthanc.logs == [(expected, "securepacs.test-adapter: hello world")]


def test_log_handler_never_raises(adapter: ModuleType, orthanc: OrthancStub, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(_: str) -> None:
        raise RuntimeError("Orthanc is gone")

    monkeypatch.setattr(orthanc, "LogInfo", broken)
    monkeypatch.setattr(logging, "raiseExceptions", False)
    record = logging.LogRecord("securepacs.x", logging.INFO, __file__, 1, "message", None, None)
    adapter.OrthancLogHandler().handle(record)  # must not propagate into Orthanc's callback


def test_install_logging_is_idempotent(adapter: ModuleType, orthanc: OrthancStub) -> None:
    adapter.install_logging("DEBUG")
    adapter.install_logging("INFO")
    root = logging.getLogger("securepacs")
    assert sum(isinstance(h, adapter.OrthancLogHandler) for h in root.handlers) == 1
    assert root.level == logging.INFO
    assert root.propagate is False
    logging.getLogger("securepacs.app").info("ready")
    assert orthanc.logs == [("info", "securepacs.app: ready")]


# -- lifecycle ---------------------------------------------------------------------------------------------
def test_lifecycle_dispatches_start_and_stop(adapter: ModuleType, orthanc: OrthancStub) -> None:
    events: list[str] = []
    adapter.register_lifecycle(lambda: events.append("started"), lambda: events.append("stopped"))
    assert len(orthanc.change_callbacks) == 1
    orthanc.fire("NEW_INSTANCE")
    orthanc.fire("UPDATED_MODALITIES")
    assert events == []
    orthanc.fire("ORTHANC_STARTED")
    orthanc.fire("ORTHANC_STOPPED")
    assert events == ["started", "stopped"]


# -- REST access to Orthanc --------------------------------------------------------------------------------
def test_rest_modality_api(adapter: ModuleType, orthanc: OrthancStub) -> None:
    api = adapter.RestModalityApi()
    assert api.list() == {}
    api.put("sp-north clinic/0", {"AET": "NORTH_CT"})
    assert ("PUT", "/modalities/sp-north%20clinic%2F0") in orthanc.rest_calls  # name cannot escape the path
    assert api.list() == {"sp-north clinic/0": {"AET": "NORTH_CT"}}
    api.delete("sp-north clinic/0")
    assert ("DELETE", "/modalities/sp-north%20clinic%2F0") in orthanc.rest_calls
    assert api.list() == {}


def test_orthanc_system(adapter: ModuleType, orthanc: OrthancStub) -> None:
    assert adapter.orthanc_system()["Version"] == "1.10.1"


# -- entry script ------------------------------------------------------------------------------------------
def load_entry_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("securepacs_plugin", ENTRY_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_entry_script_only_wires(orthanc: OrthancStub, tmp_path: Path) -> None:
    plugin = load_entry_script()
    adapter = sys.modules["securepacs.adapter"]
    try:
        # 1. logging into Orthanc's log
        assert any(isinstance(h, adapter.OrthancLogHandler) for h in logging.getLogger("securepacs").handlers)
        # 2. the request filter, bound to the app's policy
        [http_filter] = orthanc.http_filters
        assert http_filter("/securepacs/health", method=1, ip="127.0.0.1", headers={}) is True
        assert http_filter("/system", method=1, ip="127.0.0.1", headers={}) is False
        # 3. the anonymous health endpoint
        assert list(orthanc.rest_callbacks) == ["/securepacs/health"]
        # 4. the lifecycle
        assert len(orthanc.change_callbacks) == 1
        assert plugin.app.store.path == tmp_path / "data" / "securepacs.db"

        plugin.app.store.add_user("alice", passwords.hash_password("admin-password-1", n=2**10), "admin")
        plugin.app.store.add_clinic("north", ["NORTH_CT"])
        orthanc.fire("ORTHANC_STARTED")
        assert list(orthanc.modalities) == ["sp-north-0"]
        output = FakeRestOutput()
        orthanc.rest_callbacks["/securepacs/health"](output, "/securepacs/health", method="GET", headers={})
        report = json.loads(output.answers[0][0])
        assert report["status"] == "ok", report
        assert report["components"]["orthanc"]["version"] == "1.10.1"
    finally:
        orthanc.fire("ORTHANC_STOPPED")
    assert plugin.app.modalities._thread is not None and not plugin.app.modalities._thread.is_alive()


def test_entry_script_refuses_to_load_with_bad_config(orthanc: OrthancStub) -> None:
    orthanc.configuration["DicomTlsRemoteCertificateRequired"] = False
    with pytest.raises(ConfigError, match="DicomTlsRemoteCertificateRequired"):
        load_entry_script()
    # Orthanc stops on the exception; nothing half-wired is left behind.
    assert orthanc.http_filters == []
    assert orthanc.rest_callbacks == {}
    assert orthanc.change_callbacks == []
    assert any(level == "error" and "Refusing to start" in message for level, message in orthanc.logs)
