"""The only module that imports ``orthanc``: translates between Orthanc's plugin API and ``app``."""

from __future__ import annotations

import json
import logging
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

import orthanc  # provided by Orthanc's Python plugin at run time

from securepacs import plugin_config

log = logging.getLogger(__name__)


class OrthancLogHandler(logging.Handler):
    """Bridge Python logging into Orthanc's log so operators see one stream."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = f"{record.name}: {self.format(record)}"
            if record.levelno >= logging.ERROR:
                orthanc.LogError(message)
            elif record.levelno >= logging.WARNING:
                orthanc.LogWarning(message)
            else:
                orthanc.LogInfo(message)
        except Exception:
            self.handleError(record)


def install_logging(level: str = "INFO") -> None:
    root = logging.getLogger("securepacs")
    if not any(isinstance(h, OrthancLogHandler) for h in root.handlers):
        root.addHandler(OrthancLogHandler())
    root.setLevel(level)
    root.propagate = False


def read_config() -> plugin_config.PluginConfig:
    """Read and validate our section once; on error, log it plainly and raise so Orthanc stops."""
    try:
        config = plugin_config.parse(json.loads(orthanc.GetConfiguration()))
    except plugin_config.ConfigError as exc:
        orthanc.LogError(f"SecurePACS: {exc}. Refusing to start.")
        raise
    logging.getLogger("securepacs").setLevel(config.log_level)
    return config


class RestModalityApi:
    def list(self) -> dict[str, dict[str, Any]]:
        return json.loads(orthanc.RestApiGet("/modalities?expand"))

    def put(self, name: str, body: dict[str, Any]) -> None:
        orthanc.RestApiPut(f"/modalities/{urllib.parse.quote(name, safe='')}", json.dumps(body))

    def delete(self, name: str) -> None:
        orthanc.RestApiDelete(f"/modalities/{urllib.parse.quote(name, safe='')}")


def orthanc_system() -> Mapping[str, Any]:
    return json.loads(orthanc.RestApiGet("/system"))


def register_http_filter(check: Callable[[str, int, str, Mapping[str, str]], bool]) -> None:
    def _filter(uri: str, **request: Any) -> bool:
        try:
            return check(uri, request.get("method", 0), request.get("ip", ""), request.get("headers", {}))
        except Exception:
            # Fail closed: an error in the policy must never let a request through.
            log.exception("HTTP filter failed; request refused")
            return False

    orthanc.RegisterIncomingHttpRequestFilter(_filter)


def register_json_get(uri: str, producer: Callable[[], Mapping[str, Any]]) -> None:
    def _callback(output: Any, _uri: str, **request: Any) -> None:
        if request.get("method") != "GET":
            output.SendMethodNotAllowed("GET")
            return
        output.AnswerBuffer(json.dumps(producer(), indent=2), "application/json")

    orthanc.RegisterRestCallback(uri, _callback)


def register_lifecycle(on_started: Callable[[], None], on_stopped: Callable[[], None]) -> None:
    def _on_change(change_type: int, _level: int, _resource: str) -> None:
        if change_type == orthanc.ChangeType.ORTHANC_STARTED:
            on_started()
        elif change_type == orthanc.ChangeType.ORTHANC_STOPPED:
            on_stopped()

    orthanc.RegisterOnChangeCallback(_on_change)
