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
from orthanc_stub import (
    FakeFindAnswers,
    FakeFindQuery,
    FakeReceivedInstance,
    FakeRestOutput,
    FakeStoredInstance,
    OrthancException,
    OrthancStub,
    StubNotImplemented,
    installed,
)

from securepacs.access import passwords
from securepacs.archive.move_scp import MoveRefused
from securepacs.config.plugin_settings import ConfigError, PluginConfig
from securepacs.dicom import status_codes
from securepacs.web.messages import Request, Response

PLUGIN_DIR = Path(__file__).resolve().parents[2] / "plugin"
ENTRY_SCRIPT = PLUGIN_DIR / "securepacs_plugin.py"


def valid_config(store: Path) -> dict[str, Any]:
    return {
        "DicomTlsEnabled": True,
        "DicomTlsRemoteCertificateRequired": True,
        "SecurePACS": {"Store": str(store), "LogLevel": "WARNING", "AuditTrail": None},
    }


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[OrthancStub]:
    with installed(OrthancStub(valid_config(tmp_path / "data" / "securepacs.db"))) as stub:
        yield stub
    assert "orthanc" not in sys.modules
    assert "securepacs.archive.adapter" not in sys.modules


@pytest.fixture
def adapter(orthanc: OrthancStub) -> ModuleType:
    module = importlib.import_module("securepacs.archive.adapter")
    assert module.orthanc is orthanc
    return module


# -- the stub itself ---------------------------------------------------------------------------------------
def test_stub_raises_on_anything_not_stubbed(orthanc: OrthancStub) -> None:
    with pytest.raises(StubNotImplemented, match=r"orthanc\.RegisterStorageArea is not stubbed"):
        _ = orthanc.RegisterStorageArea
    with pytest.raises(AttributeError, match="NEW_STUDY"):
        _ = orthanc.ChangeType.NEW_STUDY
    with pytest.raises(AttributeError, match="not stubbed"):
        orthanc.RestApiGet("/patients")
    with pytest.raises(AttributeError, match="not stubbed"):
        orthanc.RestApiPost("/tools/find", "{}")
    assert not hasattr(orthanc, "RestApiGetAfterPlugins")
    with pytest.raises(OrthancException):
        orthanc.LookupStudy("1.2.3")
    with pytest.raises(AttributeError):
        FakeRestOutput().SendHttpStatusCode(404)  # an output method the stub does not provide
    with pytest.raises(TypeError):
        FakeRestOutput().SendHttpStatus(403, b"bytes body", 10)  # plugin 4.0 wants a str body


def test_stub_refuses_a_second_find_or_move_handler(orthanc: OrthancStub) -> None:
    orthanc.RegisterFindCallback(lambda *_: None)
    orthanc.RegisterMoveCallback(lambda **_: None)
    with pytest.raises(OrthancException):
        orthanc.RegisterFindCallback(lambda *_: None)
    with pytest.raises(OrthancException):
        orthanc.RegisterMoveCallback(lambda **_: None)


def test_stub_is_removed_after_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with installed(OrthancStub(valid_config(tmp_path / "sp.db"))):
        importlib.import_module("securepacs.archive.adapter")
        logging.getLogger("securepacs").propagate = False
    assert "orthanc" not in sys.modules
    assert "securepacs.archive.adapter" not in sys.modules
    assert logging.getLogger("securepacs").propagate is True
    # `python -m pytest` puts the checkout on sys.path, where the orthanc/ deployment directory would import
    # as an empty namespace package: look only where a real ``orthanc`` module could come from.
    monkeypatch.setattr(sys, "path", [p for p in sys.path if not (Path(p or ".") / "orthanc").is_dir()])
    try:
        with pytest.raises(ModuleNotFoundError, match="orthanc"):
            importlib.import_module("securepacs.archive.adapter")
    finally:
        for name in ("orthanc", "securepacs.archive.adapter"):
            sys.modules.pop(name, None)


def test_only_the_adapter_imports_orthanc() -> None:
    importers = sorted(
        str(p.relative_to(PLUGIN_DIR))
        for p in (PLUGIN_DIR / "securepacs").rglob("*.py")
        if re.search(r"^\s*(import|from)\s+orthanc\b", p.read_text(encoding="utf-8"), re.MULTILINE)
    )
    assert importers == ["securepacs/archive/adapter.py"]


# -- HTTP filter -------------------------------------------------------------------------------------------
def test_http_filter_passes_the_request_through(adapter: ModuleType, orthanc: OrthancStub) -> None:
    seen: list[tuple[Any, ...]] = []

    def check(uri: str, method: int, ip: str, headers: dict[str, str], get: dict[str, str]) -> bool:
        seen.append((uri, method, ip, headers, get))
        return True

    adapter.register_http_filter(check)
    assert len(orthanc.http_filters) == 1
    # Orthanc's Python plugin calls filter(uri, method=<int>, ip=..., headers={...}, get={...}).
    result = orthanc.http_filters[0]("/wado", method=1, ip="127.0.0.1", headers={"authorization": "x"},
                                     get={"objectUID": "1.2.3"})
    assert result is True
    assert seen == [("/wado", 1, "127.0.0.1", {"authorization": "x"}, {"objectUID": "1.2.3"})]


def test_http_filter_defaults_for_missing_fields(adapter: ModuleType, orthanc: OrthancStub) -> None:
    seen: list[tuple[Any, ...]] = []
    adapter.register_http_filter(lambda *args: seen.append(args) or False)
    assert orthanc.http_filters[0]("/system") is False
    assert seen == [("/system", 0, "", {}, {})]


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
    logging.getLogger("securepacs.archive.app").info("ready")
    assert orthanc.logs == [("info", "securepacs.archive.app: ready")]


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


def test_rest_api_reads_and_posts(adapter: ModuleType, orthanc: OrthancStub) -> None:
    rest = adapter.RestApi()
    orthanc.rest_get["/instances/abc/file"] = b"DICM\x00\xff"
    orthanc.rest_post["/tools/find"] = b'["s1", "s2"]'
    orthanc.rest_post["/instances"] = b'{"ID": "abc"}'
    assert rest.get_json("/system")["DicomAet"] == "SECUREPACS"
    assert rest.get_bytes("/instances/abc/file") == b"DICM\x00\xff"  # binary answers are not decoded
    assert rest.post_json("/tools/find", {"Level": "Study", "Query": {}}) == ["s1", "s2"]
    assert rest.post_bytes("/instances", b"\x00DICOM") == b'{"ID": "abc"}'
    assert orthanc.posted == [("/tools/find", b'{"Level": "Study", "Query": {}}'), ("/instances", b"\x00DICOM")]


@pytest.mark.parametrize("level", ["study", "series", "instance"])
def test_rest_api_lookup(adapter: ModuleType, orthanc: OrthancStub, level: str) -> None:
    orthanc.resources[(level, "1.2.3")] = f"{level}-id"
    rest = adapter.RestApi()
    assert rest.lookup(level, "1.2.3") == f"{level}-id"
    assert rest.lookup(level, "1.2.4") is None  # Orthanc raises for an unknown UID: that is "not found"
    other = "instance" if level == "study" else "study"
    assert rest.lookup(other, "1.2.3") is None  # the level is honoured


# -- DIMSE -------------------------------------------------------------------------------------------------
def test_find_converts_the_query_and_adds_every_answer(adapter: ModuleType, orthanc: OrthancStub) -> None:
    seen: list[tuple[Any, ...]] = []

    def handler(items: list[tuple[int, int, str]], calling: str, called: str) -> list[bytes]:
        seen.append((items, calling, called))
        return [b"answer-1", b"answer-2", b"answer-3"]

    adapter.register_find(handler)
    [callback] = orthanc.find_callbacks
    items = [(0x0008, 0x0052, "STUDY"), (0x0010, 0x0010, "DOE^*"), (0x0020, 0x000D, "1.2\\1.3")]
    answers = FakeFindAnswers()
    callback(answers, FakeFindQuery(items), "NORTH_CT", "SECUREPACS")
    assert seen == [(items, "NORTH_CT", "SECUREPACS")]
    assert answers.answers == [b"answer-1", b"answer-2", b"answer-3"]


def test_find_handler_errors_reach_orthanc(adapter: ModuleType, orthanc: OrthancStub) -> None:
    # A refusal must fail the C-FIND (Orthanc turns the exception into a failure status), not look like
    # a successful search with no matches.
    def refuse(*_: Any) -> list[bytes]:
        raise PermissionError("not an enrolled clinic")

    adapter.register_find(refuse)
    answers = FakeFindAnswers()
    with pytest.raises(PermissionError):
        orthanc.find_callbacks[0](answers, FakeFindQuery([(0x0008, 0x0052, "STUDY")]), "EVIL", "SECUREPACS")
    assert answers.answers == []


class FakeOperation:
    """What app.start_move returns: ``count`` sub-operations, of which the last ``failed`` fail."""

    def __init__(self, count: int, failed: int = 0) -> None:
        self.count, self.failed, self.done, self.runs = count, failed, 0, 0

    def run(self) -> int:
        self.runs += 1
        return self.failed

    def next(self) -> bool:
        self.done += 1
        return self.done <= self.count - self.failed


class FakeConnection:
    """orthanc.DicomConnection (plugin >= 7.0): the association a C-FIND/C-MOVE arrived on."""

    def GetConnectionRemoteAet(self) -> str:
        return "NORTH_CT"

    def GetConnectionCalledAet(self) -> str:
        return "SECUREPACS"

    def GetConnectionRemoteIp(self) -> str:
        return "127.0.0.1"


MOVE_KWARGS = {"Level": "STUDY", "PatientID": None, "AccessionNumber": "", "StudyInstanceUID": "1.2.3",
               "SeriesInstanceUID": None, "SOPInstanceUID": None, "TargetAET": "NORTH_WS", "OriginatorID": 7}
MOVE_REQUEST = {"Level": "STUDY", "PatientID": "", "AccessionNumber": "", "StudyInstanceUID": "1.2.3",
                "SeriesInstanceUID": "", "SOPInstanceUID": "", "OriginatorAET": "NORTH_CT", "SourceAET": "SECUREPACS",
                "TargetAET": "NORTH_WS", "OriginatorID": "7"}


def test_move_passes_every_argument_as_str(adapter: ModuleType, orthanc: OrthancStub) -> None:
    seen: list[dict[str, str]] = []
    operation = FakeOperation(3)

    def start(request: Any) -> FakeOperation:
        seen.append(dict(request))
        return operation

    adapter.register_move(start)
    [callback] = orthanc.move_callbacks
    # Plugin 4.0 passes these keyword arguments; OriginatorID is an int, absent tags None.
    callback(**MOVE_KWARGS, OriginatorAET="NORTH_CT", SourceAET="SECUREPACS")
    assert seen == [MOVE_REQUEST]
    assert all(isinstance(v, str) for v in seen[0].values())
    assert operation.runs == 1  # plugin 4.0: the whole move in the one callback


def test_move_handler_errors_reach_orthanc(adapter: ModuleType, orthanc: OrthancStub) -> None:
    def refuse(_: Any) -> None:
        raise RuntimeError("not the clinic's study")

    adapter.register_move(refuse)
    with pytest.raises(RuntimeError, match="not the clinic's"):
        orthanc.move_callbacks[0](Level="STUDY", OriginatorAET="EVIL")


def test_plugin_4_0_fails_the_move_when_instances_failed(adapter: ModuleType, orthanc: OrthancStub) -> None:
    adapter.register_move(lambda _: FakeOperation(4, failed=1))
    with pytest.raises(MoveRefused, match="1 instance"):
        orthanc.move_callbacks[0](**MOVE_KWARGS, OriginatorAET="NORTH_CT", SourceAET="SECUREPACS")


def _move_callbacks(orthanc: OrthancStub, monkeypatch: pytest.MonkeyPatch, name: str) -> list[tuple[Any, ...]]:
    """Make the stub offer ``name`` (plugin 4.2: RegisterMoveCallback2, 7.0: RegisterMoveCallback3)."""
    registered: list[tuple[Any, ...]] = []
    monkeypatch.setattr(orthanc, name, lambda *callbacks: registered.append(callbacks), raising=False)
    return registered


@pytest.mark.parametrize("name", ["RegisterMoveCallback3", "RegisterMoveCallback2"])
def test_newer_plugins_drive_one_sub_operation_per_instance(adapter: ModuleType, orthanc: OrthancStub,
                                                            monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    if name == "RegisterMoveCallback3":
        _move_callbacks(orthanc, monkeypatch, "RegisterMoveCallback2")  # 7.1 has both: the newest is used
    registered = _move_callbacks(orthanc, monkeypatch, name)
    seen: list[dict[str, str]] = []
    operation = FakeOperation(3, failed=1)
    adapter.register_move(lambda request: seen.append(dict(request)) or operation)
    assert orthanc.move_callbacks == []  # not the legacy callback
    [(create, size, apply, free)] = registered
    if name == "RegisterMoveCallback3":  # the AE titles come from the association
        driver = create(FakeConnection(), **MOVE_KWARGS)
    else:
        driver = create(**MOVE_KWARGS, OriginatorAET="NORTH_CT", SourceAET="SECUREPACS")
    assert seen == [MOVE_REQUEST]
    assert driver is operation and size(driver) == 3
    apply(driver)
    apply(driver)
    with pytest.raises(adapter.MoveSubOperationFailed) as failed:
        apply(driver)  # the third instance failed: Orthanc counts a failed sub-operation
    assert failed.value.__traceback__ is None or failed.value.__traceback__.tb_next is None
    free(driver)


def test_a_refused_move_leaves_the_callback_without_its_frames(adapter: ModuleType, orthanc: OrthancStub,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # Orthanc answers 0xC000 when the create callback raises; the plugin logs the exception with its
    # traceback. An expected refusal leaves only its class and message (the app logged why).
    registered = _move_callbacks(orthanc, monkeypatch, "RegisterMoveCallback3")

    def refuse(_: Any) -> None:
        raise MoveRefused("move destination 'X' is not registered to clinic 'north'")

    adapter.register_move(refuse)
    create = registered[0][0]
    with pytest.raises(MoveRefused) as refused:
        create(FakeConnection(), **MOVE_KWARGS)
    # Only this test's own frame (the caller; in Orthanc the caller is C and adds none).
    assert refused.value.__traceback__ is not None and refused.value.__traceback__.tb_next is None

    def broken(_: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(orthanc, "RegisterMoveCallback3", lambda *callbacks: registered.append(callbacks))
    adapter.register_move(broken)
    with pytest.raises(RuntimeError) as bug:
        registered[-1][0](FakeConnection(), **MOVE_KWARGS)
    assert bug.value.__traceback__.tb_next is not None  # a bug keeps its traceback


def test_find_reads_the_ae_titles_from_the_association_on_plugin_7(adapter: ModuleType, orthanc: OrthancStub,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    registered: list[Any] = []
    monkeypatch.setattr(orthanc, "RegisterFindCallback2", registered.append, raising=False)
    seen: list[tuple[Any, ...]] = []
    adapter.register_find(lambda items, calling, called: seen.append((items, calling, called)) or [b"answer"])
    assert orthanc.find_callbacks == []
    answers = FakeFindAnswers()
    items = [(0x0008, 0x0052, "STUDY")]
    registered[0](answers, FakeFindQuery(items), FakeConnection())
    assert seen == [(items, "NORTH_CT", "SECUREPACS")] and answers.answers == [b"answer"]


@pytest.mark.parametrize("status", [status_codes.SUCCESS, status_codes.REFUSED_NOT_AUTHORIZED, 0xA700])
def test_cstore_filter_returns_the_handlers_status(adapter: ModuleType, orthanc: OrthancStub, status: int) -> None:
    seen: list[tuple[bytes, str]] = []

    def handler(data: bytes, aet: str) -> int:
        seen.append((data, aet))
        return status

    adapter.register_cstore_filter(handler)
    [callback] = orthanc.cstore_filters
    assert callback(FakeReceivedInstance(b"DICM-bytes", "NORTH_CT")) == status
    assert seen == [(b"DICM-bytes", "NORTH_CT")]


@pytest.mark.parametrize(("origin", "name", "aet"), [("DICOM_PROTOCOL", "dicom", "NORTH_CT"),
                                                   ("REST_API", "rest", ""), ("PLUGIN", "plugin", ""),
                                                   ("WEB_DAV", "webdav", "")])
def test_stored_instance_callback_names_the_origin(adapter: ModuleType, orthanc: OrthancStub, origin: str,
                                                   name: str, aet: str) -> None:
    seen: list[tuple[str, str, str, Any]] = []
    adapter.register_stored_instance(lambda *args: seen.append((*args[:3], args[3]())))
    [callback] = orthanc.stored_callbacks
    callback(FakeStoredInstance(origin, "NORTH_CT", {"PatientID": "P1"}), "0a-b")
    assert seen == [("0a-b", name, aet, {"PatientID": "P1"})]


def test_stored_instance_callback_errors_are_logged(adapter: ModuleType, orthanc: OrthancStub,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    def broken(*_: Any) -> None:
        raise RuntimeError("store unavailable")

    adapter.register_stored_instance(broken)
    orthanc.stored_callbacks[0](FakeStoredInstance("DICOM_PROTOCOL", "NORTH_CT"), "0a-b")
    assert "stored-instance check failed for Orthanc instance '0a-b'" in caplog.text


def test_rest_api_delete_goes_to_orthanc(adapter: ModuleType, orthanc: OrthancStub) -> None:
    adapter.RestApi().delete("/instances/0a-b")
    assert orthanc.deleted == ["/instances/0a-b"]


def test_cstore_filter_fails_closed(adapter: ModuleType, orthanc: OrthancStub,
                                    caplog: pytest.LogCaptureFixture) -> None:
    def broken(_data: bytes, _aet: str) -> int:
        raise RuntimeError("store unavailable")

    adapter.register_cstore_filter(broken)
    assert orthanc.cstore_filters[0](FakeReceivedInstance(b"x", "NORTH_CT")) == 0xC000
    assert "C-STORE filter failed; instance refused" in caplog.text
    assert "store unavailable" in caplog.text  # with the traceback


# -- plugin routes -----------------------------------------------------------------------------------------
def call_route(orthanc: OrthancStub, pattern: str, uri: str, **request: Any) -> FakeRestOutput:
    output = FakeRestOutput()
    orthanc.rest_callbacks[pattern](output, uri, **request)
    assert output.calls == 1, "exactly one answer per request"
    return output


def test_route_builds_the_request(adapter: ModuleType, orthanc: OrthancStub) -> None:
    seen: list[Request] = []
    adapter.register_route(r"/securepacs/api/users/([^/]+)/(disable|enable)",
                           lambda req: seen.append(req) or Response.json({"ok": True}))
    output = call_route(orthanc, r"/securepacs/api/users/([^/]+)/(disable|enable)", "/securepacs/api/users/bob/disable",
                        method="POST", headers={"Content-Type": "application/json", "X-Real-IP": "10.0.0.9"},
                        body=b'{"a": 1}', groups=("bob", "disable"))
    [req] = seen
    assert req.method == "POST"
    assert req.uri == "/securepacs/api/users/bob/disable"
    assert req.groups == ("bob", "disable")
    assert req.headers == {"content-type": "application/json", "x-real-ip": "10.0.0.9"}
    assert req.body == b'{"a": 1}'
    assert req.get == {}
    assert req.client_ip == ""  # decided by the app from the trusted proxy's header, not here
    assert json.loads(output.answers[0][0]) == {"ok": True}


def test_route_passes_get_arguments_and_defaults(adapter: ModuleType, orthanc: OrthancStub) -> None:
    seen: list[Request] = []
    adapter.register_route(r"/securepacs/api/studies", lambda req: seen.append(req) or Response())
    call_route(orthanc, r"/securepacs/api/studies", "/securepacs/api/studies", method="GET",
               get={"PatientName": "DOE*"})
    call_route(orthanc, r"/securepacs/api/studies", "/securepacs/api/studies")
    assert seen[0].get == {"PatientName": "DOE*"}
    assert (seen[1].method, seen[1].headers, seen[1].get, seen[1].body, seen[1].groups) == ("GET", {}, {}, b"", ())


def test_route_answers_200_with_body_and_type(adapter: ModuleType, orthanc: OrthancStub) -> None:
    adapter.register_route("/r", lambda _req: Response(200, '[{"x": "\u00e9"}]', "application/dicom+json",
                                                       {"Cache-Control": "no-store"}))
    output = call_route(orthanc, "/r", "/r", method="GET")
    assert output.answers == [('[{"x": "\u00e9"}]', "application/dicom+json")]
    assert output.headers == [("Cache-Control", "no-store")]


@pytest.mark.parametrize(("status", "field", "expected"), [
    (401, "statuses", [(401, "SecurePACS")]),
    (405, "not_allowed", ["GET, POST"]),
    (301, "redirects", ["/app/"]),
])
def test_route_uses_orthancs_dedicated_answers(adapter: ModuleType, orthanc: OrthancStub, status: int, field: str,
                                               expected: list[Any]) -> None:
    headers = {"Allow": "GET, POST"} if status == 405 else {"Location": "/app/"} if status == 301 else {}
    adapter.register_route("/r", lambda _req: Response(status, b"ignored", headers=headers))
    output = call_route(orthanc, "/r", "/r", method="POST")
    assert getattr(output, field) == expected
    assert output.answers == []


@pytest.mark.parametrize("status", [201, 400, 403, 404, 409, 413, 500])
def test_route_sends_other_statuses_with_a_text_body(adapter: ModuleType, orthanc: OrthancStub, status: int) -> None:
    adapter.register_route("/r", lambda _req: Response.json({"error": "nöpe"}, status, {"Cache-Control": "no-store"}))
    output = call_route(orthanc, "/r", "/r", method="POST")
    [(sent, body)] = output.statuses
    assert sent == status
    assert isinstance(body, str) and json.loads(body) == {"error": "nöpe"}
    assert output.headers == [("Cache-Control", "no-store")]


def test_route_turns_a_handler_error_into_500(adapter: ModuleType, orthanc: OrthancStub,
                                              caplog: pytest.LogCaptureFixture) -> None:
    def broken(_req: Request) -> Response:
        raise RuntimeError("secret detail /var/lib/x")

    adapter.register_route("/r", broken)
    output = call_route(orthanc, "/r", "/r", method="GET")
    [(status, body)] = output.statuses
    assert status == 500
    assert json.loads(body) == {"error": "internal error"}
    assert "secret detail" not in body  # the client never sees the exception
    assert "handler for '/r' failed" in caplog.text and "secret detail" in caplog.text


# -- entry script ------------------------------------------------------------------------------------------
def load_entry_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("securepacs_plugin", ENTRY_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_entry_script_only_wires(orthanc: OrthancStub, tmp_path: Path) -> None:
    plugin = load_entry_script()
    adapter = sys.modules["securepacs.archive.adapter"]
    try:
        # 1. logging into Orthanc's log
        assert any(isinstance(h, adapter.OrthancLogHandler) for h in logging.getLogger("securepacs").handlers)
        # 2. the request filter, bound to the app's policy
        [http_filter] = orthanc.http_filters
        assert http_filter("/securepacs/health", method=1, ip="127.0.0.1", headers={}, get={}) is True
        assert http_filter("/system", method=1, ip="127.0.0.1", headers={}, get={}) is False
        # 3. the anonymous health endpoint and the app's own routes, nothing else
        assert list(orthanc.rest_callbacks) == ["/securepacs/health", *(p for p, _ in plugin.app.routes())]
        assert {"/securepacs/login", "/securepacs/api/studies",
                "/securepacs/dicom-web/(studies|series|instances)"} <= set(orthanc.rest_callbacks)
        # 4. DIMSE: one C-FIND and one C-MOVE handler, one C-STORE filter, all bound to the app
        assert (len(orthanc.find_callbacks), len(orthanc.move_callbacks), len(orthanc.cstore_filters),
                len(orthanc.stored_callbacks)) == (1, 1, 1, 1)
        with pytest.raises(PermissionError):
            orthanc.find_callbacks[0](FakeFindAnswers(), FakeFindQuery([(0x0008, 0x0052, "STUDY")]), "EVIL",
                                      "SECUREPACS")
        assert orthanc.cstore_filters[0](FakeReceivedInstance(b"x", "EVIL")) == status_codes.REFUSED_NOT_AUTHORIZED
        with pytest.raises(MoveRefused, match="not an enrolled clinic"):
            orthanc.move_callbacks[0](Level="STUDY", StudyInstanceUID="1.2.3", OriginatorAET="EVIL",
                                      TargetAET="EVIL", OriginatorID=1)
        # 5. the lifecycle
        assert len(orthanc.change_callbacks) == 1
        assert plugin.app.store.path == tmp_path / "data" / "securepacs.db"

        # A plugin route refuses a request without credentials (it authenticates again itself).
        output = FakeRestOutput()
        orthanc.rest_callbacks["/securepacs/api/studies"](output, "/securepacs/api/studies", method="GET",
                                                          headers={}, get={})
        assert [status for status, _ in output.statuses] == [403]

        plugin.app.store.add_user("alice", passwords.hash_password("admin-password-1", n=2**10), "admin")
        plugin.app.store.add_clinic("north", ["NORTH_CT"])
        orthanc.fire("ORTHANC_STARTED")
        assert list(orthanc.modalities) == ["sp-north-0"]
        output = FakeRestOutput()
        orthanc.rest_get["/plugins/python"] = b'{"ID": "python", "Version": "4.0"}'
        orthanc.rest_get["/plugins/dicom-web"] = b'{"ID": "dicom-web", "Version": "1.7"}'
        orthanc.rest_callbacks["/securepacs/health"](output, "/securepacs/health", method="GET", headers={})
        report = json.loads(output.answers[0][0])
        # Anonymous: statuses only; the stub's Orthanc 1.10.1 has known CVEs, so the platform is degraded.
        assert report["status"] == "degraded", report
        assert report["components"].pop("platform") == {"status": "degraded"}
        assert all(c == {"status": "ok"} for c in report["components"].values()), report
        assert "1.10.1" not in output.answers[0][0]
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
    assert orthanc.find_callbacks == orthanc.move_callbacks == orthanc.cstore_filters == []
    assert any(level == "error" and "Refusing to start" in message for level, message in orthanc.logs)


class Plugin42RestOutput(FakeRestOutput):
    """RestOutput of plugin >= 4.2 (Debian 13's 5.0, forky's 7.1): SendHttpStatus(status, body)."""

    def SendHttpStatus(self, status: int, body: bytes, *extra: Any) -> None:  # type: ignore[override]
        if extra or not (isinstance(status, int) and isinstance(body, bytes | str)):
            raise TypeError("Bad types for the arguments (2 arguments expected)")
        self.statuses.append((status, body.decode() if isinstance(body, bytes) else body))


@pytest.mark.parametrize("status", [303, 403, 409])
def test_route_sends_statuses_in_the_form_plugin_4_2_and_later_take(orthanc: OrthancStub, status: int) -> None:
    orthanc.RegisterMoveCallback2 = lambda *_callbacks: None  # what plugin >= 4.2 has and 4.0 lacks
    adapter = importlib.import_module("securepacs.archive.adapter")
    assert adapter.SEND_HTTP_STATUS_TAKES_LENGTH is False
    adapter.register_route("/r", lambda _req: Response.json({"error": "nöpe"}, status, {"Location": "/x"}))
    output = Plugin42RestOutput()
    orthanc.rest_callbacks["/r"](output, "/r", method="POST")
    [(sent, body)] = output.statuses
    assert sent == status
    assert body == ("" if status == 303 else json.dumps({"error": "nöpe"}, indent=2))


def test_plugin_4_0_is_detected_as_taking_the_length(adapter: ModuleType) -> None:
    assert adapter.SEND_HTTP_STATUS_TAKES_LENGTH is True
