"""A stand-in for the ``orthanc`` module that Orthanc's Python plugin provides at run time.

Only what the adapter uses is stubbed; touching anything else raises ``AttributeError`` naming the
missing attribute, so a new call into Orthanc cannot pass silently in a unit test. The stub records
what the code registers (request filter, REST callbacks, C-FIND/C-MOVE handlers, C-STORE filters, change
callback, stored-instance callback) and what it logs, and backs ``RestApiGet/Post/Put/Delete`` and
``LookupStudy/Series/Instance`` with a small in-memory "Orthanc" (``/system``, ``/modalities``, and
whatever a test puts in ``rest_get``, ``rest_post`` and ``resources``). Like the real module, REST calls
answer ``bytes`` and lookups of an unknown UID raise ``OrthancException``.

``installed(stub)`` puts it in ``sys.modules`` for the duration of a ``with`` block and afterwards removes
it together with every module that imported it (``securepacs.archive.adapter``, ``securepacs_plugin``) and restores
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
# OrthancPluginInstanceOrigin (plugin 4.0 exposes these members on orthanc.InstanceOrigin).
INSTANCE_ORIGINS = {"UNKNOWN": 1, "DICOM_PROTOCOL": 2, "REST_API": 3, "PLUGIN": 4, "LUA": 5, "WEB_DAV": 6}

# Modules that hold a reference to the stub once imported under it.
DEPENDENT_MODULES = ("securepacs.archive.adapter", "securepacs_plugin")


class StubNotImplemented(AttributeError):
    """Raised for any ``orthanc.X`` the stub does not provide."""


class OrthancException(Exception):
    """Stand-in for ``orthanc.OrthancException``, which the real module raises when a call fails in Orthanc
    (e.g. ``LookupStudy`` of an unknown UID)."""


class _Strict(types.SimpleNamespace):
    def __getattr__(self, name: str) -> Any:
        raise StubNotImplemented(f"orthanc stub: enumeration member {name!r} is not stubbed")


class OrthancStub(types.ModuleType):
    """The fake ``orthanc`` module. Unknown attributes raise ``StubNotImplemented`` (an AttributeError)."""

    def __init__(self, configuration: dict[str, Any] | None = None) -> None:
        super().__init__("orthanc")
        self.configuration: dict[str, Any] = configuration or {}
        self.OrthancException = OrthancException
        self.ChangeType = _Strict(**CHANGE_TYPES)
        self.HttpMethod = _Strict(**HTTP_METHODS)
        self.InstanceOrigin = _Strict(**INSTANCE_ORIGINS)
        self.logs: list[tuple[str, str]] = []
        self.http_filters: list[Callable[..., Any]] = []
        self.rest_callbacks: dict[str, Callable[..., Any]] = {}
        self.change_callbacks: list[Callable[..., Any]] = []
        self.system: dict[str, Any] = {"Name": "SecurePACS", "Version": "1.10.1", "DicomAet": "SECUREPACS"}
        self.modalities: dict[str, dict[str, Any]] = {}
        self.rest_calls: list[tuple[str, str]] = []
        self.find_callbacks: list[Callable[..., Any]] = []
        self.move_callbacks: list[Callable[..., Any]] = []
        self.cstore_filters: list[Callable[..., Any]] = []
        self.stored_callbacks: list[Callable[..., Any]] = []
        self.deleted: list[str] = []  # resources deleted through RestApiDelete (not modalities)
        # What a test puts into "Orthanc": extra GET answers, POST answers, and the UID index for lookups.
        self.rest_get: dict[str, bytes] = {}
        self.rest_post: dict[str, bytes] = {}
        self.posted: list[tuple[str, bytes]] = []
        self.resources: dict[tuple[str, str], str] = {}  # (level, DICOM UID) -> Orthanc ID

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

    # Orthanc accepts a single C-FIND and a single C-MOVE handler; a second registration is an error there.
    def RegisterFindCallback(self, callback: Callable[..., Any]) -> None:
        if self.find_callbacks:
            raise OrthancException("orthanc stub: only one C-FIND callback can be registered")
        self.find_callbacks.append(callback)

    def RegisterMoveCallback(self, callback: Callable[..., Any]) -> None:
        if self.move_callbacks:
            raise OrthancException("orthanc stub: only one C-MOVE callback can be registered")
        self.move_callbacks.append(callback)

    def RegisterIncomingCStoreInstanceFilter(self, callback: Callable[..., Any]) -> None:
        self.cstore_filters.append(callback)

    def RegisterOnStoredInstanceCallback(self, callback: Callable[..., Any]) -> None:
        # Orthanc calls it as callback(dicom, instance_id) after storing a new instance.
        self.stored_callbacks.append(callback)

    # -- the index ---------------------------------------------------------------------------------------
    def _lookup(self, level: str, uid: str) -> str:
        if not isinstance(uid, str):
            raise TypeError(f"orthanc stub: Lookup{level.title()} expects a str, got {type(uid).__name__}")
        try:
            return self.resources[(level, uid)]
        except KeyError:
            raise OrthancException("Unknown resource") from None

    def LookupStudy(self, uid: str) -> str:
        return self._lookup("study", uid)

    def LookupSeries(self, uid: str) -> str:
        return self._lookup("series", uid)

    def LookupInstance(self, uid: str) -> str:
        return self._lookup("instance", uid)

    # -- a tiny in-memory Orthanc REST API -------------------------------------------------------------
    def _modality(self, uri: str) -> str:
        prefix = "/modalities/"
        if not uri.startswith(prefix):
            raise StubNotImplemented(f"orthanc stub: REST {uri!r} is not stubbed")
        return urllib.parse.unquote(uri[len(prefix):])

    def RestApiGet(self, uri: str) -> bytes:
        self.rest_calls.append(("GET", uri))
        if uri == "/system":
            return json.dumps(self.system).encode()
        if uri == "/modalities?expand":
            return json.dumps(self.modalities).encode()
        if uri in self.rest_get:
            return self.rest_get[uri]
        raise StubNotImplemented(f"orthanc stub: REST GET {uri!r} is not stubbed")

    def RestApiPost(self, uri: str, body: str | bytes) -> bytes:
        if not isinstance(body, str | bytes):
            raise TypeError(f"orthanc stub: RestApiPost body must be str or bytes, got {type(body).__name__}")
        self.rest_calls.append(("POST", uri))
        self.posted.append((uri, body.encode() if isinstance(body, str) else body))
        if uri in self.rest_post:
            return self.rest_post[uri]
        raise StubNotImplemented(f"orthanc stub: REST POST {uri!r} is not stubbed")

    def RestApiPut(self, uri: str, body: str) -> str:
        self.rest_calls.append(("PUT", uri))
        self.modalities[self._modality(uri)] = json.loads(body)
        return "{}"

    def RestApiDelete(self, uri: str) -> None:
        self.rest_calls.append(("DELETE", uri))
        if uri.startswith(("/instances/", "/series/", "/studies/", "/patients/")):
            self.deleted.append(uri)
            return
        del self.modalities[self._modality(uri)]

    # -- helpers for tests (not part of the orthanc API) ------------------------------------------------
    def fire(self, change: str) -> None:
        """Deliver a change (e.g. "ORTHANC_STARTED") to every registered change callback, as Orthanc does."""
        for callback in self.change_callbacks:
            callback(CHANGE_TYPES[change], 0, "")


class FakeFindQuery:
    """What Orthanc passes as ``query`` to a C-FIND callback: the identifier as (group, element, value)."""

    def __init__(self, items: list[tuple[int, int, str]]) -> None:
        self._items = list(items)

    def _item(self, index: int) -> tuple[int, int, str]:
        if not 0 <= index < len(self._items):
            raise OrthancException("Parameter out of range")
        return self._items[index]

    def GetFindQuerySize(self) -> int:
        return len(self._items)

    def GetFindQueryTagGroup(self, index: int) -> int:
        return self._item(index)[0]

    def GetFindQueryTagElement(self, index: int) -> int:
        return self._item(index)[1]

    def GetFindQueryValue(self, index: int) -> str:
        return self._item(index)[2]


class FakeFindAnswers:
    """What Orthanc passes as ``answers`` to a C-FIND callback; records each encoded answer."""

    def __init__(self) -> None:
        self.answers: list[bytes] = []

    def FindAddAnswer(self, answer: bytes) -> None:
        # The real method takes a DICOM buffer; a str or a pydicom Dataset would be a TypeError there.
        if not isinstance(answer, bytes):
            raise TypeError(f"orthanc stub: FindAddAnswer expects bytes, got {type(answer).__name__}")
        self.answers.append(answer)


class FakeReceivedInstance:
    """What Orthanc passes to an incoming C-STORE instance filter."""

    def __init__(self, data: bytes, remote_aet: str) -> None:
        self._data = data
        self._aet = remote_aet

    def GetInstanceData(self) -> bytes:
        return self._data

    def GetInstanceRemoteAet(self) -> str:
        return self._aet


class FakeStoredInstance:
    """What Orthanc passes as ``dicom`` to a stored-instance callback."""

    def __init__(self, origin: str, remote_aet: str = "", tags: dict[str, str] | None = None) -> None:
        self._origin = INSTANCE_ORIGINS[origin]
        self._aet = remote_aet
        self._tags = tags or {}

    def GetInstanceOrigin(self) -> int:
        return self._origin

    def GetInstanceRemoteAet(self) -> str:
        return self._aet

    def GetInstanceSimplifiedJson(self) -> str:
        return json.dumps(self._tags)


class FakeRestOutput:
    """What Orthanc passes as ``output`` to a REST callback; records the answer. Unstubbed methods raise
    AttributeError like any missing attribute."""

    def __init__(self) -> None:
        self.answers: list[tuple[str, str]] = []
        self.not_allowed: list[str] = []
        self.statuses: list[tuple[int, str]] = []
        self.headers: list[tuple[str, str]] = []
        self.redirects: list[str] = []

    def AnswerBuffer(self, body: str | bytes, mime: str) -> None:
        self.answers.append((body.decode() if isinstance(body, bytes) else body, mime))

    def SendMethodNotAllowed(self, allowed: str) -> None:
        self.not_allowed.append(allowed)

    def SendHttpStatus(self, status: int, body: str, size: int) -> None:
        # Python plugin 4.0 insists on exactly (int, str, int); mirror that so a wrong call fails here.
        if not (isinstance(status, int) and isinstance(body, str) and isinstance(size, int)):
            raise TypeError("Bad types for the arguments (3 arguments expected)")
        self.statuses.append((status, body))

    def SendUnauthorized(self, realm: str) -> None:
        self.statuses.append((401, realm))

    def SetHttpHeader(self, name: str, value: str) -> None:
        if not (isinstance(name, str) and isinstance(value, str)):
            raise TypeError("orthanc stub: SetHttpHeader expects (str, str)")
        self.headers.append((name, value))

    def Redirect(self, location: str) -> None:
        if not isinstance(location, str):
            raise TypeError("orthanc stub: Redirect expects a str")
        self.redirects.append(location)

    @property
    def calls(self) -> int:
        """How many answers were sent: Orthanc allows exactly one per request."""
        return len(self.answers) + len(self.not_allowed) + len(self.statuses) + len(self.redirects)


@contextmanager
def installed(stub: OrthancStub) -> Iterator[OrthancStub]:
    """Make ``import orthanc`` return ``stub`` inside the block; undo everything afterwards."""
    import securepacs.archive

    saved = {name: sys.modules.get(name) for name in ("orthanc", *DEPENDENT_MODULES)}
    saved_attr = securepacs.archive.__dict__.get("adapter")
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
            securepacs.archive.__dict__.pop("adapter", None)
        else:
            securepacs.archive.adapter = saved_attr  # type: ignore[attr-defined]
        logger.handlers[:] = saved_logger[0]
        logger.setLevel(saved_logger[1])
        logger.propagate = saved_logger[2]
