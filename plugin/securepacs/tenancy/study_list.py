"""The physicians' study list: the caller's clinic's studies, searchable and paged.

Built on the same tenant-scoped query engine as C-FIND, so a study a clinic cannot query over DICOM
cannot show up here either.
"""

from __future__ import annotations

import re
from typing import Any

from pydicom import Dataset

from securepacs.access.principal import Principal
from securepacs.dicom.identifiers import orthanc_id
from securepacs.tenancy.find_engine import QueryEngine
from securepacs.web.messages import Request, Response

MAX_LIMIT = 200
_DATE = re.compile(r"\d{8}")
_FIELDS = {
    "StudyInstanceUID": "", "PatientName": "", "PatientID": "", "PatientBirthDate": "", "PatientSex": "",
    "StudyDate": "", "StudyTime": "", "StudyDescription": "", "AccessionNumber": "", "ModalitiesInStudy": "",
    "NumberOfStudyRelatedSeries": None, "NumberOfStudyRelatedInstances": None,
}


class StudyQueryError(ValueError):
    pass


def _int(params: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = params.get(name, str(default))
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise StudyQueryError(f"parameter {name}={raw!r}: expected an integer {low}-{high}")
    return int(raw)


def _wildcard(value: str) -> str:
    # Free text search: substring match, case-insensitive as Orthanc matches person names.
    value = value.replace("*", "").replace("?", "").strip()
    return f"*{value}*" if value else ""


def build_identifier(params: dict[str, str]) -> Dataset:
    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    for keyword, default in _FIELDS.items():
        setattr(ident, keyword, default)
    if params.get("name"):
        ident.PatientName = _wildcard(params["name"])
    if params.get("patient"):
        ident.PatientID = params["patient"].strip()
    if params.get("accession"):
        ident.AccessionNumber = params["accession"].strip()
    if params.get("modality"):
        modality = params["modality"].strip().upper()
        if not re.fullmatch(r"[A-Z0-9]{1,16}", modality):
            raise StudyQueryError(f"parameter modality={params['modality']!r}: expected a modality code like CT")
        ident.ModalitiesInStudy = modality
    start, end = params.get("from", ""), params.get("to", "")
    for name, value in (("from", start), ("to", end)):
        if value and not _DATE.fullmatch(value):
            raise StudyQueryError(f"parameter {name}={value!r}: expected a date YYYYMMDD")
    if start or end:
        ident.StudyDate = f"{start}-{end}"
    return ident


def _row(ds: Dataset) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for keyword in _FIELDS:
        value = ds.get(keyword)
        if value is None or value == "":
            row[keyword] = None
        elif keyword == "ModalitiesInStudy":
            row[keyword] = list(value) if not isinstance(value, str) else [v for v in value.split("\\") if v]
        elif keyword.startswith("NumberOf"):
            row[keyword] = int(value)
        else:
            row[keyword] = str(value)
    # Orthanc's ID of the study, for the tenant-checked /studies/{id}/... endpoints.
    row["ID"] = orthanc_id(row["PatientID"] or "", row["StudyInstanceUID"] or "")
    return row


class StudyList:
    def __init__(self, engine: QueryEngine):
        self._engine = engine

    def handle(self, req: Request, principal: Principal, scope: frozenset[str] | None) -> Response:
        if req.method != "GET":
            return Response(405, headers={"Allow": "GET"})
        params = dict(req.get)
        try:
            limit = _int(params, "limit", 50, 1, MAX_LIMIT)
            offset = _int(params, "offset", 0, 0, 10**9)
            ident = build_identifier(params)
        except StudyQueryError as exc:
            return Response.error(400, str(exc))
        rows = [_row(ds) for ds in self._engine.find("STUDY", ident, scope)]
        # Newest first; ties broken by UID so paging is stable.
        rows.sort(key=lambda r: (r["StudyDate"] or "", r["StudyTime"] or "", r["StudyInstanceUID"] or ""),
                  reverse=True)
        return Response.json({"total": len(rows), "offset": offset, "limit": limit,
                              "studies": rows[offset : offset + limit]})
