"""``GET /securepacs/api/audit``: the trail searched over HTTPS, for auditors only, itself audited.

Query parameters (all optional, combined with AND): ``patient``, ``study``, ``user``, ``clinic``, ``aet``,
``event`` (name or DCM code), ``outcome`` (0, 4, 8 or 12), ``since`` and ``until`` (ISO 8601, UTC),
``limit`` (default 1000, at most 100000) and ``format`` (``jsonl``, the default, or ``dicom-xml``).
"""

from __future__ import annotations

import io
import itertools

from securepacs.access.principal import AUDITOR, Principal
from securepacs.audit import Filters, codes, export_messages, search_entries
from securepacs.audit.record import parse_time
from securepacs.audit.recorder import Auditor
from securepacs.web.messages import Request, Response

DEFAULT_LIMIT = 1000
MAX_LIMIT = 100_000
FORMATS = {"jsonl": ("jsonl", "application/x-ndjson"), "dicom-xml": ("xml", "application/xml")}
_PARAMS = {"patient": "patient_id", "study": "study_uid", "user": "user", "clinic": "clinic", "aet": "ae_title",
           "event": "event"}


class AuditApi:
    def __init__(self, auditor: Auditor):
        self._auditor = auditor

    def handle(self, req: Request, principal: Principal | None) -> Response:
        # Separation of duties: the auditors read the trail; admins, who could change what it records, do not.
        if principal is None or principal.role != AUDITOR:
            return Response.error(403, "auditor role required")
        if req.method != "GET":
            return Response(405, headers={"Allow": "GET"})
        trail = self._auditor.trail
        if trail is None:
            return Response.error(503, "the audit trail is disabled on this archive")
        try:
            filters, limit, fmt = parse_query(req.get)
        except ValueError as exc:
            return Response.error(400, str(exc))
        # Recorded before the answer: reading the trail leaves a trace even if the transfer fails.
        self._auditor.log_used(principal, req.client_ip, "search", {k: v for k, v in req.get.items()})
        trail.flush()
        out = io.BytesIO()
        kind, content_type = FORMATS[fmt]
        export_messages(itertools.islice(search_entries(trail.path, filters), limit), out, kind)
        return Response(200, out.getvalue(), content_type, headers={"Cache-Control": "no-store"})


def parse_query(get: dict[str, str]) -> tuple[Filters, int, str]:
    unknown = sorted(set(get) - {*_PARAMS, "outcome", "since", "until", "limit", "format"})
    if unknown:
        raise ValueError(f"unknown query parameter {unknown[0]!r}: expected among patient, study, user, clinic, "
                         "aet, event, outcome, since, until, limit, format")
    values: dict[str, object] = {field: get[name] for name, field in _PARAMS.items() if get.get(name)}
    if get.get("outcome"):
        if get["outcome"] not in ("0", "4", "8", "12"):
            raise ValueError(f"outcome={get['outcome']!r}: expected 0, 4, 8 or 12")
        values["outcome"] = int(get["outcome"])
    for name in ("since", "until"):
        if get.get(name):
            try:
                values[name] = parse_time(get[name])
            except ValueError:
                raise ValueError(f"{name}={get[name]!r}: expected an ISO 8601 time such as "
                                 "2026-11-26T10:00:00Z") from None
    if "event" in values:
        codes.resolve_event(str(values["event"]))  # ValueError naming the known events
    filters = Filters(**values)  # type: ignore[arg-type]
    raw_limit = get.get("limit", str(DEFAULT_LIMIT))
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_LIMIT:
        raise ValueError(f"limit={raw_limit!r}: expected an integer 1-{MAX_LIMIT}")
    fmt = get.get("format", "jsonl")
    if fmt not in FORMATS:
        raise ValueError(f"format={fmt!r}: expected jsonl or dicom-xml")
    return filters, int(raw_limit), fmt
