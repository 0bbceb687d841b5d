"""A stand-in for the ``orthanc`` module that Orthanc's Python plugin provides at run time.

Only what the adapter uses is stubbed; touching anything else raises ``AttributeError`` naming the
missing attribute, so a new call into Orthanc cannot pass silently in a unit test. The stub records
what the code registers (request filter, REST callbacks, change callback) and what it logs, and backs
``RestApiGet/Put/Delete`` with a small in-memory "Orthanc" (``/system`` and ``/modalities``).

``installed(stub)`` puts it in ``sys.modules`` for the duration of a ``with`` block and afterwards removes
it together with every module that imported it (``securepacs.adapter``, ``securepacs_plugin``) and restores
the ``securepacs`` logger, so nothing outside the block ever sees the stub.
"""

from __future__ import annotations

import json
import logging
import sys
import types
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

# Values of OrthancPluginChangeType / OrthancPluginHttpMethod in the C SDK (what the real module exposes).
CHANGE_TYPES = {"NEW_INSTANCE": 3, "ORTHANC_STARTED": 10, "ORTHANC_STOPPED": 11, "UPDATED_MODALITIES": 15}
HTTP_METHODS = {"GET": 1, "POST": 2, "PUT": 3, "DELETE": 4}

# Modules that hold a reference to the stub once imported under it.
DEPENDENT_MODULES = ("securepacs.adapter", "securepacs_plugin")


class StubNotImplemented(AttributeError):
    """Raised for any ``orthanc.X`` the stub does not provide."""


class _Strict(types.SimpleNamespace):
    def __getattr__(self, name: str) -> Any:
        raise StubNotImplemented(f"orthanc stub: enumeration member {name!r} is not stubbed")


class OrthancStub(types.ModuleType):
    """The fake ``orthanc`` module. Unknown attributes raise ``StubNotImplemented`` (an AttributeError)."""

    def __init__(self, configuration: dict[str, Any] | None = None) -> None:
        super().__init__("orthanc")
        self.configuration: dict[str, Any] = configuration or {}
        self.ChangeType = _Strict(**CHANGE_TYPES)
        self.HttpMethod = _Strict(**HTTP_METHODS)
        self.logs: list[tuple[str, str]] = []
        self.http_filters: list[Callable[..., Any]] = []
        self.rest_callbacks: dict[str, Callable[..., Any]] = {}
        self.change_callbacks: list[Callable[..., Any]] = []
        self.system: dict[str, Any] = {"Name": "SecurePACS", "Version": "1.10.1", "DicomAet": "SECUREPACS"}
        self.modalities: dict[str, dict[str, Any]] = {}
        self.rest_calls: list[tuple[str, str]] = []

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup failed, i.e. for something this stub does not provide.
        raise StubNotImplemented(f"orthanc stub: orthanc.{name} is not stubbed (add it to tests/unit/orthanc_stub.py)")

    # -- configuration and logging ---------------------------------------------------------------------
    def GetConfiguration(self) -> str:
        return json.dumps(self.configuration)

    def LogInfo(self, message: str) -> None:
        self.logs.append(("info", message))

    def LogWarning(self, message: str) -> None:
        self.logs.append(("warning", message))

    def LogError(self, message: str) -> None:
        self.logs.append(("error", message))

    # -- registrations ---------------------------------------------------------------------------------
    def RegisterIncomingHttpRequestFilter(self, callback: Callable[..., Any]) -> None:
        self.http_filters.append(callback)

    def RegisterRestCallback(self, uri: str, callback: Callable[..., Any]) -> None:
        if uri in self.rest_callbacks:
            raise AssertionError(f"orthanc stub: REST callback {uri!r} registered twice")
        self.rest_callbacks[uri] = callback

    def RegisterOnChangeCallback(self, callback: Callable[..., Any]) -> None:
        self.change_callbacks.append(callback)

    # -- a tiny in-memory Orthanc REST API -------------------------------------------------------------
    def _modality(self, uri: str) -> str:
        prefix = "/modalities/"
        if not uri.startswith(prefix):
            raise StubNotImplemented(f"orthanc stub: REST {uri!r} is not stubbed")
        return urllib.parse.unquote(uri[len(prefix):])

    def RestApiGet(self, uri: str) -> str:
        self.rest_calls.append(("GET", uri))
        if uri == "/system":
            return json.dumps(self.system)
        if uri == "/modalities?expand":
            return json.dumps(self.modalities)
        raise StubNotImplemented(f"orthanc stub: REST GET {uri!r} is not stubbed")

    def RestApiPut(self, uri: str, body: str) -> str:
        self.rest_calls.append(("PUT", uri))
        self.modalities[self._modality(uri)] = json.loads(body)
        return "{}"

    def RestApiDelete(self, uri: str) -> None:
        self.rest_calls.append(("DELETE", uri))
        del self.modalities[self._modality(uri)]

    # -- helpers for tests (not part of the orthanc API) ------------------------------------------------
    def fire(self, change: str) -> None:
        """Deliver a change (e.g. "ORTHANC_STARTED") to every registered change callback, as Orthanc does."""
        for callback in self.change_callbacks:
            callback(CHANGE_TYPES[change], 0, "")


class FakeRestOutput:
    """What Orthanc passes as ``output`` to a REST callback; records the answer."""

    def __init__(self) -> None:
        self.answers: list[tuple[str, str]] = []
        self.not_allowed: list[str] = []

    def AnswerBuffer(self, body: str | bytes, mime: str) -> None:
        self.answers.append((body.decode() if isinstance(body, bytes) else body, mime))

    def SendMethodNotAllowed(self, allowed: str) -> None:
        self.not_allowed.append(allowed)


@contextmanager
def installed(stub: OrthancStub) -> Iterator[OrthancStub]:
    """Make ``import orthanc`` return ``stub`` inside the block; undo everything afterwards."""
    import securepacs

    saved = {name: sys.modules.get(name) for name in ("orthanc", *DEPENDENT_MODULES)}
    saved_attr = securepacs.__dict__.get("adapter")
    logger = logging.getLogger("securepacs")
    saved_logger = (list(logger.handlers), logger.level, logger.propagate)
    for name in DEPENDENT_MODULES:
        sys.modules.pop(name, None)
    sys.modules["orthanc"] = stub
    try:
        yield stub
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
        if saved_attr is None:
            securepacs.__dict__.pop("adapter", None)
        else:
            securepacs.adapter = saved_attr  # type: ignore[attr-defined]
        logger.handlers[:] = saved_logger[0]
        logger.setLevel(saved_logger[1])
        logger.propagate = saved_logger[2]
