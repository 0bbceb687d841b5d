"""STOW-RS (PS3.18 10.5) for clinic accounts: each instance is attributed to the uploader's clinic.

Orthanc's DICOMweb plugin cannot tell who uploaded, so clinic uploads come here instead (nginx routes
``POST /dicom-web/studies`` to this handler): every part is admitted by the same tenancy rule as a
C-STORE, then handed to Orthanc's ``/instances``. The answer is the standard Store Instances Response.

Tenancy decides on the identifiers Orthanc itself indexes. Orthanc names an instance by hashing them, so
the ID in its answer proves which ones it used: an ID other than the admitted identifiers' means Orthanc
read the part differently from us, and the instance is removed again and refused. Each part gets its own
audit record (who, which instance, outcome), written before Orthanc stores it, and another if Orthanc then
fails or files it elsewhere.

Before anything parses a part (our tenancy reader, or DCMTK inside Orthanc), its sequence nesting is
checked on the bytes (``securepacs.dataset_limits``): a part nested too deeply for DCMTK's recursive
parser (CVE-2026-10528) is refused with 0xC000 (Cannot understand), for admins too.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

from securepacs.access.principal import Principal
from securepacs.audit.recorder import Auditor
from securepacs.dataset_limits.nesting import NestingError
from securepacs.dataset_limits.part10 import check_file
from securepacs.dicom import status_codes
from securepacs.dicom.identifiers import ORTHANC_ID_PATTERN, InstanceIds
from securepacs.tenancy.ownership import Admission, NotDicom, Tenancy, read_ids
from securepacs.web.messages import Request, Response
from securepacs.web.orthanc_api import OrthancRest

log = logging.getLogger(__name__)

DICOM_JSON = "application/dicom+json"
_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.IGNORECASE)


SecurityEvent = Callable[[str, dict[str, Any]], None]


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
    def __init__(self, tenancy: Tenancy, orthanc: OrthancRest, audit: Auditor,
                 on_security_event: SecurityEvent | None = None):
        self._tenancy = tenancy
        self._orthanc = orthanc
        self._audit = audit
        self._on_event = on_security_event or (lambda _kind, _details: None)

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
            status, ids = self._store_one(part, principal, req.client_ip)
            item = _sop_item(ids.sop_class_uid if ids else "", ids.sop_uid if ids else "")
            if status == status_codes.SUCCESS:
                stored.append(item)
            else:
                failed.append({**item, **_reason(status)})
        log.info("STOW-RS by %r: %d stored, %d refused", principal.name, len(stored), len(failed))
        body: dict[str, Any] = {}
        if stored:
            body["00081199"] = {"vr": "SQ", "Value": stored}
        if failed:
            body["00081198"] = {"vr": "SQ", "Value": failed}
        # PS3.18 10.5.3: 200 all stored, 202 some failed, 409 none stored.
        status = 200 if not failed else (409 if not stored else 202)
        return Response(status, json.dumps(body), DICOM_JSON)

    def _store_one(self, part: bytes, principal: Principal, client_ip: str) -> tuple[int, InstanceIds | None]:
        """Admit, record, store and verify one part: (status for the response, the part's identifiers)."""
        source = f"stow:{principal.name}"
        requestor = self._audit.http_user(principal, client_ip)

        def record(status: int, ids: InstanceIds | None, reason: str) -> tuple[int, InstanceIds | None]:
            self._audit.stored(principal.name, principal.clinic, ids, status, reason, requestor=requestor)
            return status, ids

        try:
            check_file(part)
        except NestingError as exc:
            reason = f"refused before parsing: {exc}"
            log.warning("STOW-RS by %r: a part refused before parsing: %s", principal.name, exc)
            self._on_event("dataset-nesting-refused", {"clinic": principal.clinic, "source": source, "reason": reason})
            return record(status_codes.STORE_ERROR_CANNOT_UNDERSTAND, None, reason)
        # Admins upload unattributed: such studies are visible to admins only.
        admission = (self._tenancy.admit(part, principal.clinic, source) if principal.clinic is not None
                     else _read(part))
        record(admission.status, admission.ids, admission.reason)
        if not admission.admitted or admission.ids is None:
            return admission.status, admission.ids
        ids = admission.ids
        try:
            answer = json.loads(self._orthanc.post_bytes("/instances", part))
        except Exception as exc:  # Orthanc refused it (storage full, unsupported, ...)
            log.warning("STOW-RS: Orthanc refused an instance: %s", exc)
            return record(status_codes.PROCESSING_FAILURE, ids, "Orthanc did not store the instance")
        indexed = answer.get("ID") if isinstance(answer, dict) else None
        if indexed == ids.orthanc_instance:
            return status_codes.SUCCESS, ids
        reason = "Orthanc indexed the instance under other identifiers than those admitted"
        # Only a newly stored instance is ours to remove: "AlreadyStored" names an instance that was
        # there before (perhaps another clinic's), which this upload did not change.
        if isinstance(answer, dict) and answer.get("Status") == "Success" and isinstance(indexed, str) \
                and re.fullmatch(ORTHANC_ID_PATTERN, indexed):
            try:
                self._orthanc.delete(f"/instances/{indexed}")
            except Exception:
                log.exception("STOW-RS: could not remove a mis-indexed instance (Orthanc ID %r)", indexed)
                reason += "; removing it failed"
        log.warning("STOW-RS by %r: Orthanc indexed an instance otherwise than admitted; refused", principal.name)
        self._on_event("indexed-identifiers-mismatch", {
            "clinic": principal.clinic, "source": source, "reason": reason, "study_uid": ids.study_uid,
            "sop_uid": ids.sop_uid, "expected_orthanc_id": ids.orthanc_instance, "indexed_orthanc_id": str(indexed),
        })
        return record(status_codes.REFUSED_NOT_AUTHORIZED, ids, reason)


def _read(part: bytes) -> Admission:
    try:
        return Admission(status_codes.SUCCESS, "admitted", read_ids(part))
    except NotDicom as exc:
        return Admission(status_codes.STORE_ERROR_CANNOT_UNDERSTAND, str(exc))


def _reason(status: int) -> dict[str, Any]:
    return {"00081197": {"vr": "US", "Value": [status]}}
