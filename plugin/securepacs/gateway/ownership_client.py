"""Asks the archive whether the UIDs of a C-GET belong to a clinic: the gateway's side of the ownership check.

The plugin knows who owns what (``securepacs.tenancy.ownership``); the gateway only knows the clinic on the wire.
So for each C-GET the gateway calls the plugin over loopback HTTP:

    POST /securepacs/internal/ownership          (HTTP Basic: the gateway's service account, svc-gateway-...)
    Content-Type: application/json
    {"clinic": "north", "level": "STUDY",
     "keys": {"StudyInstanceUID": ["1.2.3", ...], "SeriesInstanceUID": [...], "SOPInstanceUID": [...],
              "PatientID": [...]}}

The request goes straight to Orthanc's loopback HTTP port and carries no proxy headers: the plugin accepts
the service account, and this route, only on such internal requests (never through nginx).

The header ``X-SecurePACS-Calling-AET`` carries the association's calling AE title (already bound to the
clinic's certificate by the gateway) so the archive's retrieve record names the device, not only the clinic.

``level`` is PATIENT, STUDY, SERIES or IMAGE; ``keys`` holds only the keys present in the identifier, each
a non-empty list (PatientID only at PATIENT level). The answer is ``200`` with
``{"allowed": true|false, "reason": "..."}``, the reason naming no identifier. Anything else (another
status, a body that is not exactly that, a refused connection, a timeout) counts as a refusal: the check
fails closed.

The client is a few lines of HTTP/1.1 over ``asyncio.open_connection`` rather than urllib in a thread:
a timeout then really ends the request (a thread cannot be cancelled and would hold a pool worker until
its own socket timeout), and many associations waiting on checks cost no threads. One connection per
check (``Connection: close``): on loopback that is ~0.1 ms, and there is no keep-alive state to get wrong.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import re
from typing import Any

log = logging.getLogger(__name__)

PATH = "/securepacs/internal/ownership"
MAX_HEAD_BYTES = 16 * 1024
MAX_BODY_BYTES = 64 * 1024  # the answer is a two-field object
# A JSON list of UIDs is at most ~70 bytes per UID; the inspector bounds a request to 10,000 keys.
MAX_REQUEST_BYTES = 2 * 1024 * 1024
CALLING_AET_HEADER = "X-SecurePACS-Calling-AET"  # read by securepacs.archive.app (ownership)
_AET = re.compile(r"[ -\[\]-~]{1,16}")  # PS3.5 6.2: at most 16 printable ASCII characters, no backslash


class OwnershipError(Exception):
    """The ownership endpoint could not give a valid answer."""


class OwnershipClient:
    def __init__(self, port: int, username: str, password: str, *, host: str = "127.0.0.1",
                 timeout: float = 5.0, path: str = PATH):
        self._host, self._port, self._path = host, port, path
        self._timeout = timeout
        token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
        self._authorization = f"Basic {token}"

    async def authorize(self, clinic: str, level: str, keys: dict[str, list[str]], calling_aet: str = "") -> bool:
        """True only if the plugin answered that every key belongs to ``clinic``; False on any error."""
        body = json.dumps({"clinic": clinic, "level": level, "keys": keys}, separators=(",", ":")).encode()
        # Anything that is not an AE title is not sent (it goes into an HTTP header).
        aet = calling_aet.strip() if _AET.fullmatch(calling_aet) else ""
        try:
            if len(body) > MAX_REQUEST_BYTES:
                raise OwnershipError(f"request of {len(body)} bytes exceeds {MAX_REQUEST_BYTES}")
            status, answer = await asyncio.wait_for(self._post(body, aet), self._timeout)
            allowed, reason = _verdict(status, answer)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OwnershipError,
                ValueError) as exc:
            # The exception text is ours or the socket's: no identifiers in it.
            log.warning("ownership check for clinic %r failed closed: %s: %s", clinic, type(exc).__name__, exc)
            return False
        if not allowed:
            log.info("ownership check for clinic %r at %s level: refused (%s)", clinic, level, reason)
        return allowed

    async def _post(self, body: bytes, calling_aet: str = "") -> tuple[int, bytes]:
        reader, writer = await asyncio.open_connection(self._host, self._port)
        try:
            head = (
                f"POST {self._path} HTTP/1.1\r\n"
                f"Host: {self._host}:{self._port}\r\n"
                f"Authorization: {self._authorization}\r\n"
                "Content-Type: application/json\r\n"
                "Accept: application/json\r\n"
                f"Content-Length: {len(body)}\r\n"
                + (f"{CALLING_AET_HEADER}: {calling_aet}\r\n" if calling_aet else "")
                + "Connection: close\r\n\r\n"
            )
            writer.write(head.encode("ascii") + body)
            await writer.drain()
            return await _read_response(reader)
        finally:
            writer.close()
            # The answer is already read (or the failure already raised): a reset while closing changes nothing.
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    if len(head) > MAX_HEAD_BYTES:
        raise OwnershipError("response head too large")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise OwnershipError("not an HTTP/1.x response")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, sep, value = line.partition(":")
            if not sep:
                raise OwnershipError("malformed response header")
            headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = await _read_chunked(reader)
    elif "content-length" in headers:
        length = int(headers["content-length"])
        if not 0 <= length <= MAX_BODY_BYTES:
            raise OwnershipError(f"response body of {length} bytes")
        body = await reader.readexactly(length)
    else:
        body = await reader.read(MAX_BODY_BYTES + 1)  # Connection: close delimits the body
        if len(body) > MAX_BODY_BYTES:
            raise OwnershipError("response body too large")
    return int(parts[1]), body


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            return bytes(body)
        if len(body) + size > MAX_BODY_BYTES:
            raise OwnershipError("response body too large")
        body += await reader.readexactly(size)
        if await reader.readexactly(2) != b"\r\n":
            raise OwnershipError("malformed chunked body")


def _verdict(status: int, body: bytes) -> tuple[bool, str]:
    if status != 200:
        raise OwnershipError(f"HTTP status {status}")
    answer: Any = json.loads(body)
    if not isinstance(answer, dict) or not isinstance(answer.get("allowed"), bool):
        raise OwnershipError("the answer has no boolean 'allowed'")
    reason = answer.get("reason")
    return answer["allowed"], str(reason)[:200] if reason is not None else ""
