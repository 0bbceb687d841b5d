"""STOW-RS (PS3.18 10.5) for clinic accounts: each instance is attributed to the uploader's clinic.

Orthanc's DICOMweb plugin cannot tell who uploaded, so clinic uploads come here instead (nginx routes
``POST /dicom-web/studies`` to this handler): every part is admitted by the same tenancy rule as a
C-STORE, then handed to Orthanc's ``/instances``. The answer is the standard Store Instances Response.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any, Protocol

from securepacs import dicom_status
from securepacs.identity import Principal
from securepacs.tenancy import NotDicom, Tenancy, read_ids
from securepacs.web import Request, Response

log = logging.getLogger(__name__)

DICOM_JSON = "application/dicom+json"
_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.IGNORECASE)


class OrthancUpload(Protocol):
    def post_bytes(self, uri: str, body: bytes) -> bytes: ...


class StowError(ValueError):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def iter_parts(content_type: str, body: bytes) -> Iterator[bytes]:
    """The application/dicom parts of a multipart/related body."""
    if not content_type.lower().startswith("multipart/related"):
        raise StowError(415, f"Content-Type {content_type!r}: expected multipart/related; type=\"application/dicom\"")
    if not _BOUNDARY.search(content_type):
        raise StowError(400, f"Content-Type {content_type!r} has no boundary parameter")
    message = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    if not message.is_multipart():
        raise StowError(400, "the body is not a multipart/related message")
    for part in message.iter_parts():
        if part.get_content_type() != "application/dicom":
            raise StowError(415, f"part of type {part.get_content_type()!r}: only application/dicom is accepted")
        payload = part.get_payload(decode=True)
        if payload:
            yield payload


def _sop_item(sop_class: str, sop_uid: str, **extra: Any) -> dict[str, Any]:
    item: dict[str, Any] = {
        "00081150": {"vr": "UI", "Value": [sop_class]},
        "00081155": {"vr": "UI", "Value": [sop_uid]},
    }
    item.update(extra)
    return item


class StowService:
    def __init__(self, tenancy: Tenancy, orthanc: OrthancUpload):
        self._tenancy = tenancy
        self._orthanc = orthanc

    def handle(self, req: Request, principal: Principal) -> Response:
        if req.method != "POST":
            return Response(405, headers={"Allow": "POST"})
        if principal.clinic is None and not principal.is_admin:
            return Response.error(403, "uploads need a clinic account")
        try:
            parts = list(iter_parts(req.headers.get("content-type", ""), req.body))
        except StowError as exc:
            return Response.error(exc.status, str(exc))
        stored: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        for part in parts:
            self._store_one(part, principal, stored, failed)
        log.info("STOW-RS by %r: %d stored, %d refused", principal.name, len(stored), len(failed))
        body: dict[str, Any] = {}
        if stored:
            body["00081199"] = {"vr": "SQ", "Value": stored}
        if failed:
            body["00081198"] = {"vr": "SQ", "Value": failed}
        # PS3.18 10.5.3: 200 all stored, 202 some failed, 409 none stored.
        status = 200 if not failed else (409 if not stored else 202)
        return Response(status, json.dumps(body), DICOM_JSON)

    def _store_one(self, part: bytes, principal: Principal, stored: list, failed: list) -> None:
        try:
            ids = read_ids(part)
        except NotDicom:
            failed.append(_sop_item("", "", **_reason(dicom_status.STORE_ERROR_CANNOT_UNDERSTAND)))
            return
        # Admins (no clinic) upload unattributed: such studies are visible to admins only.
        if principal.clinic is not None:
            admission = self._tenancy.admit(part, principal.clinic, f"stow:{principal.name}")
            if not admission.admitted:
                failed.append(_sop_item(ids.sop_class_uid, ids.sop_uid, **_reason(admission.status)))
                return
        try:
            self._orthanc.post_bytes("/instances", part)
        except Exception as exc:  # Orthanc refused it (storage full, unsupported, ...)
            log.warning("STOW-RS: Orthanc refused an instance: %s", exc)
            failed.append(_sop_item(ids.sop_class_uid, ids.sop_uid, **_reason(dicom_status.PROCESSING_FAILURE)))
            return
        stored.append(_sop_item(ids.sop_class_uid, ids.sop_uid))


def _reason(status: int) -> dict[str, Any]:
    return {"00081197": {"vr": "US", "Value": [status]}}
