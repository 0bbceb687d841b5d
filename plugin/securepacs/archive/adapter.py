"""The only module that imports ``orthanc``: translates between Orthanc's plugin API and ``app``."""

from __future__ import annotations

import json
import logging
import re
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orthanc  # provided by Orthanc's Python plugin at run time

from securepacs.archive.move_scp import MoveOperation, MoveRefused
from securepacs.config import plugin_settings
from securepacs.web.messages import Request, Response

log = logging.getLogger(__name__)

# -- what the running plugin offers (feature detection lives here and nowhere else) ------------------------
# RestOutput.SendHttpStatus() took (status, body, byte length) up to plugin 4.1 and (status, body) since 4.2,
# the release that also added RegisterMoveCallback2 (Debian 12 ships 4.0; trixie 5.0; forky 7.1).
SEND_HTTP_STATUS_TAKES_LENGTH = not hasattr(orthanc, "RegisterMoveCallback2")


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


def read_config() -> plugin_settings.PluginConfig:
    """Read and validate our section once; on error, log it plainly and raise so Orthanc stops."""
    try:
        config = plugin_settings.parse(json.loads(orthanc.GetConfiguration()))
    except plugin_settings.ConfigError as exc:
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


# DCMTK's dcmdata as the dynamic linker mapped it into this (Orthanc's) process: libdcmdata.so.SOVERSION.X.Y.Z
_DCMDATA = re.compile(r"/libdcmdata\.so\.\d+\.(\d+\.\d+\.\d+)$")


def platform_versions() -> dict[str, str | None]:
    """Raw version facts of the running platform (None: not reported), for securepacs.platform.

    Orthanc's version from ``/system``, the plugins' from ``/plugins/<id>`` (1.10.1 and 1.13.0 alike).
    DCMTK's from the versioned file name of the libdcmdata this process runs with (Debian links Orthanc
    dynamically: what is loaded, also after a library update), else from ``/system``'s
    ``ThirdPartyVersions`` (Orthanc ≥ 1.12: the version it was built with; for static builds)."""
    system = json.loads(orthanc.RestApiGet("/system"))

    def plugin(plugin_id: str) -> str | None:
        try:
            return json.loads(orthanc.RestApiGet(f"/plugins/{plugin_id}")).get("Version")
        except orthanc.OrthancException:  # not loaded
            return None

    try:
        with open("/proc/self/maps", encoding="ascii", errors="replace") as maps:
            dcmtk = next((m.group(1) for m in map(_DCMDATA.search, (line.strip() for line in maps)) if m), None)
    except OSError:
        dcmtk = None
    dcmtk = dcmtk or (system.get("ThirdPartyVersions") or {}).get("dcmtk")
    return {"orthanc": system.get("Version"), "pythonPlugin": plugin("python"), "dicomWeb": plugin("dicom-web"),
            "dcmtk": dcmtk}


def _decoded(arguments: Mapping[str, str] | None) -> dict[str, str]:
    """GET arguments as values: the plugin hands them over still percent-encoded (and keeps only the last
    of a repeated key)."""
    return {urllib.parse.unquote_plus(k): urllib.parse.unquote_plus(v) for k, v in (arguments or {}).items()}


def register_http_filter(check: Callable[[str, int, str, Mapping[str, str], Mapping[str, str]], bool]) -> None:
    def _filter(uri: str, **request: Any) -> bool:
        try:
            return check(
                uri, request.get("method", 0), request.get("ip", ""), request.get("headers", {}),
                _decoded(request.get("get")),
            )
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


# -- Orthanc's own REST API, called in-process (no HTTP, no filter) ----------------------------------------
class RestApi:
    """Internal REST calls and index lookups, for services that need Orthanc's data."""

    def get_json(self, uri: str) -> Any:
        return json.loads(orthanc.RestApiGet(uri))

    def get_bytes(self, uri: str) -> bytes:
        return orthanc.RestApiGet(uri)

    def post_json(self, uri: str, body: Any) -> Any:
        return json.loads(orthanc.RestApiPost(uri, json.dumps(body)))

    def post_bytes(self, uri: str, body: bytes) -> bytes:
        return orthanc.RestApiPost(uri, body)

    def delete(self, uri: str) -> None:
        orthanc.RestApiDelete(uri)

    def lookup(self, level: str, uid: str) -> str | None:
        """Orthanc ID of the resource with this DICOM UID at ``level`` (study|series|instance), or None."""
        lookup = {"study": orthanc.LookupStudy, "series": orthanc.LookupSeries, "instance": orthanc.LookupInstance}
        try:
            return lookup[level](uid)
        except orthanc.OrthancException:  # unknown (or, for duplicated UIDs, ambiguous) resource
            return None


# -- DIMSE ---------------------------------------------------------------------------------------------
FindQuery = list[tuple[int, int, str]]  # (group, element, value) as Orthanc parsed the C-FIND identifier


def register_find(handler: Callable[[FindQuery, str, str], Iterable[bytes]]) -> None:
    """Replace Orthanc's C-FIND SCP; ``handler(query, calling_aet, called_aet)`` yields encoded answers.

    Plugin >= 7.0 (Orthanc SDK 1.12.10) hands over the association (RegisterFindCallback2): the AE titles are
    read from it. Its peer address is not passed on: Orthanc's DICOM port only ever sees the gateway, which
    audits the clinic's real address itself."""

    def _value(query: Any, i: int) -> str:
        try:
            return query.GetFindQueryValue(i)
        except orthanc.OrthancException:
            # Orthanc 1.10 raises for an empty key of a binary VR (e.g. "Rows" asked as a return key).
            return ""

    def _on_find(answers: Any, query: Any, issuer_aet: str, called_aet: str) -> None:
        items = [
            (query.GetFindQueryTagGroup(i), query.GetFindQueryTagElement(i), _value(query, i))
            for i in range(query.GetFindQuerySize())
        ]
        for answer in handler(items, issuer_aet, called_aet):
            answers.FindAddAnswer(answer)

    def _on_find2(answers: Any, query: Any, connection: Any) -> None:
        _on_find(answers, query, connection.GetConnectionRemoteAet(), connection.GetConnectionCalledAet())

    if hasattr(orthanc, "RegisterFindCallback2"):
        orthanc.RegisterFindCallback2(_on_find2)
    else:
        orthanc.RegisterFindCallback(_on_find)


class MoveSubOperationFailed(Exception):
    """An instance of an admitted C-MOVE did not reach its destination (the app logged why)."""


class _WithoutTraceback:
    """Let an expected refusal leave a callback without its stack frames.

    Orthanc's Python plugin can fail a move callback only through an exception, and it logs every one as
    "Error in the Python ... callback, traceback:" with the frames. A refusal is not a bug and the app has
    already logged why: clearing the traceback here, while the exception passes the callback's own frame
    (its last Python frame), leaves that log entry at the exception's class and message."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, _tb: object) -> bool:
        if isinstance(exc, (MoveRefused, MoveSubOperationFailed)):
            exc.with_traceback(None)
        return False


def _move_request(request: Mapping[str, Any]) -> dict[str, str]:
    return {k: "" if v is None else str(v) for k, v in request.items()}


def register_move(start: Callable[[Mapping[str, str]], MoveOperation]) -> None:
    """Replace Orthanc's C-MOVE SCP. ``start(request)`` plans the move or raises :class:`MoveRefused`; the
    operation it returns sends the instances.

    Plugin >= 4.2 takes Orthanc's four move callbacks (RegisterMoveCallback2; RegisterMoveCallback3 since 7.0,
    which also hands over the association): a move has one sub-operation per instance, a refusal makes
    Orthanc answer 0xC000 (UNABLE_TO_PROCESS) with no sub-operations, a failed instance counts as a failed
    sub-operation (final status 0xB000). Plugin 4.0 has only RegisterMoveCallback: the whole move is one
    sub-operation, and a refusal or failure is that sub-operation failing (0xB000)."""

    def _start(request: Mapping[str, Any]) -> MoveOperation:
        operation = start(_move_request(request))
        # Counted here: an error in the size callback would escape Orthanc's C-MOVE handler.
        log.info("C-MOVE admitted: %d sub-operation(s)", operation.count)
        return operation

    # Each callback is the exception's last Python frame: _WithoutTraceback must be in it, not deeper.
    def _create(**request: Any) -> MoveOperation:
        with _WithoutTraceback():
            return _start(request)

    def _create3(connection: Any, **request: Any) -> MoveOperation:
        with _WithoutTraceback():
            # The SDK 1.12.10 callback has no AE title arguments: they are the association's.
            return _start({**request, "OriginatorAET": connection.GetConnectionRemoteAet(),
                           "SourceAET": connection.GetConnectionCalledAet()})

    def _size(operation: MoveOperation) -> int:
        return operation.count

    def _apply(operation: MoveOperation) -> None:
        with _WithoutTraceback():
            if not operation.next():
                raise MoveSubOperationFailed("C-MOVE sub-operation failed (see the SecurePACS warning)")

    def _free(_operation: MoveOperation) -> None:
        return None

    def _on_move(**request: Any) -> None:
        failed = start(_move_request(request)).run()
        if failed:
            raise MoveRefused(f"C-MOVE failed: {'the transfer' if failed < 0 else f'{failed} instance(s)'}")

    if hasattr(orthanc, "RegisterMoveCallback3"):
        orthanc.RegisterMoveCallback3(_create3, _size, _apply, _free)
    elif hasattr(orthanc, "RegisterMoveCallback2"):
        orthanc.RegisterMoveCallback2(_create, _size, _apply, _free)
    else:
        orthanc.RegisterMoveCallback(_on_move)


def register_cstore_filter(handler: Callable[[bytes, str], int]) -> None:
    """``handler(dicom_bytes, calling_aet)`` returns 0 to store or the DIMSE failure status to send."""

    def _filter(received: Any) -> int:
        try:
            return handler(received.GetInstanceData(), received.GetInstanceRemoteAet())
        except Exception:
            log.exception("C-STORE filter failed; instance refused")
            return 0xC000  # Failure: Cannot understand (fail closed)

    orthanc.RegisterIncomingCStoreInstanceFilter(_filter)


# Orthanc's InstanceOrigin members (plugin 4.0 names) -> the origin names the app uses.
_ORIGINS = {"DICOM_PROTOCOL": "dicom", "REST_API": "rest", "PLUGIN": "plugin", "LUA": "lua", "WEB_DAV": "webdav"}


def register_stored_instance(handler: Callable[[str, str, str, Callable[[], Mapping[str, Any]]], None]) -> None:
    """``handler(instance_id, origin, remote_aet, tags)`` after Orthanc stored a new instance: ``origin`` is
    a name from ``_ORIGINS`` (or "unknown"), ``remote_aet`` the calling AE title of a DICOM store, and
    ``tags()`` reads the instance's tags as Orthanc parsed them (keyword -> value), only when asked."""
    origins = {getattr(orthanc.InstanceOrigin, name): value for name, value in _ORIGINS.items()
               if hasattr(orthanc.InstanceOrigin, name)}

    def _on_stored(dicom: Any, instance_id: str) -> None:
        try:
            origin = origins.get(dicom.GetInstanceOrigin(), "unknown")
            remote_aet = dicom.GetInstanceRemoteAet() if origin == "dicom" else ""
            handler(instance_id, origin, remote_aet, lambda: json.loads(dicom.GetInstanceSimplifiedJson()))
        except Exception:
            # Orthanc only logs what a stored-instance callback raises; say which instance it was.
            log.exception("stored-instance check failed for Orthanc instance %r", instance_id)

    orthanc.RegisterOnStoredInstanceCallback(_on_stored)


# -- HTTP routes served by the plugin --------------------------------------------------------------------
def register_route(pattern: str, handler: Callable[[Request], Response]) -> None:
    """Serve ``pattern`` (a regex; groups are passed on) with ``handler``. Errors become a JSON 500."""

    def _callback(output: Any, uri: str, **request: Any) -> None:
        match = re.fullmatch(pattern, uri)
        req = Request(
            method=request.get("method", "GET"),
            client_ip="",  # set by the app from headers (trusted proxy)
            uri=uri,
            groups=match.groups() if match else (),
            headers={k.lower(): v for k, v in (request.get("headers") or {}).items()},
            get=_decoded(request.get("get")),
            body=request.get("body") or b"",
        )
        try:
            resp = handler(req)
        except Exception:
            log.exception("handler for %r failed", pattern)
            resp = Response.error(500, "internal error")
        body = resp.body.encode() if isinstance(resp.body, str) else resp.body
        for name, value in resp.headers.items():
            output.SetHttpHeader(name, value)
        if resp.status == 200:
            output.AnswerBuffer(body, resp.content_type)
        elif resp.status == 401:
            output.SendUnauthorized("SecurePACS")
        elif resp.status == 405:
            output.SendMethodNotAllowed(resp.headers.get("Allow", "GET"))
        elif resp.status == 301:  # Orthanc's Redirect always sends 301
            output.Redirect(resp.headers.get("Location", "/"))
        else:
            # 303 (the web app's redirects, Location set above) and errors: the body (our JSON reason) reaches
            # the client because HttpDescribeErrors is on.
            _send_http_status(output, resp.status, b"" if resp.status == 303 else body)

    orthanc.RegisterRestCallback(pattern, _callback)


def _send_http_status(output: Any, status: int, body: bytes) -> None:
    if SEND_HTTP_STATUS_TAKES_LENGTH:  # plugin < 4.2: (status, str, byte length); bytes raise TypeError
        text = body.decode("utf-8", "replace")
        output.SendHttpStatus(status, text, len(text.encode("utf-8")))
    else:
        output.SendHttpStatus(status, body)
