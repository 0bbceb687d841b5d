"""Orthanc's admin tools that name their data in the request body, audited before Orthanc runs them.

``POST /tools/find`` carries its query, ``POST /tools/create-archive`` and ``/tools/create-media[-extended]``
the resources they export, in the JSON body. Orthanc's HTTP filter (python plugin 4.0: method, URI, client
address, headers, GET arguments) never sees a body, so the filter cannot say what was asked or exported.
These routes take over Orthanc's own URIs (a plugin's REST callback is matched before Orthanc's built-in
API), write the audit record from the body, then hand the unchanged body to Orthanc's built-in handler
in-process (``orthanc.RestApiPost`` reaches the built-in API, not this route again) and return its answer.
The HTTP filter has already authorised the request (admins only: ``securepacs.archive.http_policy``).

Limit: a synchronous archive passes through the plugin's memory once (Orthanc alone would stream it); for
large exports use ``"Asynchronous": true`` and ``GET /jobs/{id}/archive`` (the export record is written
when the job is created).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from typing import Any

from securepacs.access.principal import Principal
from securepacs.audit.recorder import Auditor
from securepacs.dicom.identifiers import ORTHANC_ID_PATTERN
from securepacs.tenancy.subjects import MAX_RESOLVED, Subjects, patient_ids
from securepacs.web.messages import Request, Response
from securepacs.web.orthanc_api import OrthancRest

log = logging.getLogger(__name__)

FIND_URI = "/tools/find"
EXPORT_PATTERN = r"/tools/create-(archive|media|media-extended)"
_ORTHANC_ID = re.compile(ORTHANC_ID_PATTERN)
# Orthanc error codes (OrthancException.args[0]) that are the client's fault, and their HTTP status.
_CLIENT_ERRORS = {8: 400, 17: 404}  # BadRequest, UnknownResource

Handler = Callable[[Request, "Principal | None"], Response]


def _orthanc_error(exc: Exception, what: str) -> Response:
    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
    status = _CLIENT_ERRORS.get(code, 500) if code is not None else 500
    if status == 500:
        log.error("Orthanc failed %s: %s", what, type(exc).__name__)
    return Response.error(status, f"Orthanc refused {what} (error {code})")


def _json_object(req: Request) -> dict[str, Any] | Response:
    try:
        body = json.loads(req.body or b"{}")
    except (ValueError, UnicodeDecodeError):
        return Response.error(400, f"{req.uri}: the body is not JSON")
    if not isinstance(body, dict):
        return Response.error(400, f"{req.uri}: expected a JSON object")
    return body


class OrthancTools:
    def __init__(self, rest: OrthancRest, subjects: Subjects, audit: Auditor):
        self._rest = rest
        self._subjects = subjects
        self._audit = audit

    def routes(self) -> list[tuple[str, Handler]]:
        return [(FIND_URI, self.find), (EXPORT_PATTERN, self.export)]

    @staticmethod
    def _refusal(req: Request, principal: Principal | None) -> Response | None:
        if principal is None or not principal.is_admin:  # the filter allows admins only; say so again
            return Response.error(403, "admin role required")
        if req.method != "POST":
            return Response(405, headers={"Allow": "POST"})
        return None

    def find(self, req: Request, principal: Principal | None) -> Response:
        refused = self._refusal(req, principal)
        body = refused or _json_object(req)
        if isinstance(body, Response):
            return body
        try:
            answer = self._rest.post_bytes(FIND_URI, req.body)
        except Exception as exc:  # orthanc.OrthancException (not importable here)
            return _orthanc_error(exc, "the search")
        found = json.loads(answer)
        criteria = body.get("Query") if isinstance(body.get("Query"), dict) else {}
        patient = criteria.get("PatientID")
        # Recorded before the answer leaves (as a C-FIND is): a failed write refuses the request.
        self._audit.http_query(principal, req.client_ip, req.uri, req.body, len(found) if isinstance(found, list)
                               else 0, level=str(body.get("Level", "")).upper(),
                               patient_id=patient if isinstance(patient, str) else None)
        return Response(200, answer, "application/json")

    def export(self, req: Request, principal: Principal | None) -> Response:
        refused = self._refusal(req, principal)
        body = refused or _json_object(req)
        if isinstance(body, Response):
            return body
        resources = body.get("Resources")
        if (not isinstance(resources, list) or not resources or len(resources) > MAX_RESOLVED
                or not all(isinstance(r, str) and _ORTHANC_ID.fullmatch(r) for r in resources)):
            return Response.error(400, f"{req.uri}: 'Resources' must be a list of 1-{MAX_RESOLVED} Orthanc IDs")
        studies, unknown = self._subjects.of_orthanc_ids(resources)
        # Recorded before Orthanc builds the archive: an export that cannot be recorded does not happen.
        self._audit.http_export(principal, req.client_ip, req.uri, [s.uid for s in studies], patient_ids(studies),
                                unknown)
        try:
            answer = self._rest.post_bytes(req.uri, req.body)
        except Exception as exc:
            return _orthanc_error(exc, "the export")
        if body.get("Asynchronous") is True:
            return Response(200, answer, "application/json")
        return Response(200, answer, "application/zip",
                        headers={"Content-Disposition": 'attachment; filename="archive.zip"'})
