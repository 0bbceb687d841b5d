"""QIDO-RS search (PS3.18 10.6) on the tenant-scoped query engine; results as DICOM JSON.

Matching is the engine's, i.e. Orthanc's C-FIND matching restricted to the caller's studies. Unlike
C-FIND answers, QIDO results read the stored tags of an instance only for requested attributes that
Orthanc does not index (its C-FIND SCP reads them for every attribute once one is not indexed).
Results are ordered deterministically (newest study first, then by series/instance number and UID) so
that ``limit``/``offset`` pages are stable; answers are built only for the requested page.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydicom.datadict import keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset

from securepacs.tenancy import find_identifier
from securepacs.tenancy.find_engine import QueryEngine
from securepacs.tenancy.find_identifier import COMPUTED_TAGS, VISIBLE_TAGS, make_element, vr_of
from securepacs.tenancy.find_matcher import Match

LEVELS = {"studies": "STUDY", "series": "SERIES", "instances": "IMAGE"}
_HEX_TAG = re.compile(r"[0-9A-Fa-f]{8}")
_CONTROL = frozenset({"includefield", "limit", "offset", "fuzzymatching", "emptyvaluematching",
                      "multiplevaluematching"})


def _kw(*keywords: str) -> tuple[int, ...]:
    return tuple(int(tag_for_keyword(k)) for k in keywords)  # type: ignore[arg-type]


# PS3.18 Table 10.6.3-3/-4/-5 (formerly 6.7.1-2a). Attributes Orthanc does not index are left out of the
# study and series defaults (reading a file per result for a usually absent attribute is too costly);
# ask for them with includefield. Instance results read the instance anyway (Rows, Columns...).
DEFAULT_KEYS: dict[str, tuple[int, ...]] = {
    "STUDY": _kw("StudyDate", "StudyTime", "AccessionNumber", "ModalitiesInStudy", "ReferringPhysicianName",
                 "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyID",
                 "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"),
    "SERIES": _kw("Modality", "SeriesDescription", "SeriesInstanceUID", "SeriesNumber",
                  "NumberOfSeriesRelatedInstances"),
    "IMAGE": _kw("SOPClassUID", "SOPInstanceUID", "TimezoneOffsetFromUTC", "InstanceNumber", "Rows", "Columns",
                 "BitsAllocated", "NumberOfFrames"),
}
SPECIFIC_CHARACTER_SET, INSTANCE_AVAILABILITY, RETRIEVE_URL = _kw("SpecificCharacterSet", "InstanceAvailability",
                                                                  "RetrieveURL")
STUDY_UID, SERIES_UID, SOP_UID = _kw("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
STUDY_DATE, STUDY_TIME, SERIES_NUMBER, INSTANCE_NUMBER = _kw("StudyDate", "StudyTime", "SeriesNumber", "InstanceNumber")
RETRIEVE_AE_TITLE = find_identifier.RETRIEVE_AE_TITLE


class QidoError(ValueError):
    """A request the search cannot run; ``status`` is the HTTP status to answer (400: bad parameter)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _values(raw: str | list[str] | tuple[str, ...]) -> list[str]:
    return [raw] if isinstance(raw, str) else list(raw)


def parse_attribute(name: str, what: str = "parameter") -> int:
    """A tag from a keyword (``PatientName``) or 8 hex digits (``00100010``)."""
    if "." in name:
        raise QidoError(f"{what} {name!r}: sequence attribute paths are not supported")
    if _HEX_TAG.fullmatch(name):
        return int(name, 16)
    tag = tag_for_keyword(name)
    if tag is None:
        raise QidoError(f"{what} {name!r} is neither a QIDO-RS parameter nor a DICOM keyword or tag")
    return int(tag)


def _flag(name: str, raw: str | list[str]) -> bool:
    values = _values(raw)
    if len(values) != 1 or values[0].lower() not in ("true", "false"):
        raise QidoError(f"parameter {name}={raw!r}: expected true or false")
    return values[0].lower() == "true"


def _count(name: str, raw: str | list[str], minimum: int) -> int:
    values = _values(raw)
    if len(values) != 1 or not values[0].isdigit() or int(values[0]) < minimum:
        raise QidoError(f"parameter {name}={raw!r}: expected an integer >= {minimum}")
    return int(values[0])


class SearchRequest:
    """Validated QIDO-RS parameters: constraints, return keys, paging."""

    def __init__(self, level: str, params: Mapping[str, str | list[str]], study_uid: str | None = None,
                 series_uid: str | None = None) -> None:
        if level not in LEVELS:
            raise QidoError(f"resource {level!r}: expected one of {', '.join(LEVELS)}")
        self.level = LEVELS[level]
        self.study_uid, self.series_uid = study_uid, series_uid
        self.limit: int | None = None
        self.offset = 0
        self.include_all = False
        self.constraints: dict[int, str] = {}
        self.includes: list[int] = []
        for name, raw in params.items():
            if name in _CONTROL:
                self._control(name, raw)
            else:
                self._match(name, raw)
        for tag, uid in ((STUDY_UID, study_uid), (SERIES_UID, series_uid)):
            if uid is None:
                continue
            given = self.constraints.get(tag)
            if given is not None and given not in ("", uid):
                raise QidoError(f"parameter {keyword_for_tag(tag)}={given!r} conflicts with the resource path")
            self.constraints[tag] = uid

    def _control(self, name: str, raw: str | list[str]) -> None:
        if name == "limit":
            self.limit = _count(name, raw, 1)
        elif name == "offset":
            self.offset = _count(name, raw, 0)
        elif name == "includefield":
            for value in _values(raw):
                for field in (f.strip() for f in value.split(",")):
                    if field == "all":
                        self.include_all = True
                    elif field:
                        self.includes.append(parse_attribute(field, "includefield"))
        else:
            # fuzzymatching and the empty/multiple value options: accepted, not supported (PS3.18 8.3.4
            # lets an origin server ignore them); matching stays literal.
            _flag(name, raw)

    def _match(self, name: str, raw: str | list[str]) -> None:
        tag = parse_attribute(name)
        vr = vr_of(tag)
        if vr == "SQ":
            raise QidoError(f"parameter {name}: matching on a sequence is not supported (use includefield)")
        values = _values(raw)
        if vr == "UI":
            # UID list matching: comma-separated in QIDO-RS, a backslash-separated list in C-FIND.
            uids = [u.strip() for v in values for u in re.split(r"[,\\]", v) if u.strip()]
            self.constraints[tag] = "\\".join(uids)
        elif len(values) != 1:
            raise QidoError(f"parameter {name} is given {len(values)} times: expected once")
        else:
            self.constraints[tag] = values[0]

    def return_keys(self) -> list[int]:
        levels = {"STUDY": ["STUDY"], "SERIES": ["SERIES"], "IMAGE": ["IMAGE"]}[self.level]
        if self.level == "SERIES" and self.study_uid is None:
            levels.append("STUDY")  # all series: study attributes too (PS3.18 10.6.3.3.2)
        if self.level == "IMAGE":
            if self.series_uid is None:
                levels.append("SERIES")
            if self.study_uid is None:
                levels.append("STUDY")
        keys = [t for level in levels for t in DEFAULT_KEYS[level]]
        if self.include_all:
            keys += sorted(VISIBLE_TAGS[self.level] | COMPUTED_TAGS[self.level])
        keys += self.includes
        # Counts of other levels are not computed at this one; do not promise empty values for them.
        other_counts = set().union(*(COMPUTED_TAGS[lv] for lv in COMPUTED_TAGS if lv != self.level))
        return [t for t in dict.fromkeys(keys) if t not in self.constraints and t not in other_counts]

    def identifier(self) -> Dataset:
        ds = Dataset()
        for tag, text in self.constraints.items():
            ds.add(make_element(tag, text))
        for tag in self.return_keys():
            ds.add(make_element(tag, ""))
        return ds


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("inf")


def order(matches: list[Match]) -> list[Match]:
    """Deterministic order; the Orthanc ID breaks ties (two studies may share a UID across patients)."""
    def uid_key(m: Match) -> tuple[Any, ...]:
        t = m.tags
        if m.level == "STUDY":
            return (t.get(STUDY_UID, ""), m.resource["ID"])
        if m.level == "SERIES":
            return (t.get(STUDY_UID, ""), _number(t.get(SERIES_NUMBER, "")), t.get(SERIES_UID, ""), m.resource["ID"])
        return (t.get(STUDY_UID, ""), t.get(SERIES_UID, ""), _number(t.get(INSTANCE_NUMBER, "")),
                t.get(SOP_UID, ""), m.resource["ID"])

    ordered = sorted(matches, key=uid_key)
    if ordered and ordered[0].level == "STUDY":
        # Newest study first; Python's sort is stable, so equal dates keep the UID order.
        ordered.sort(key=lambda m: (m.tags.get(STUDY_DATE, ""), m.tags.get(STUDY_TIME, "")), reverse=True)
    return ordered


def retrieve_url(base_url: str, ds: Dataset, level: str) -> str:
    url = f"{base_url.rstrip('/')}/studies/{ds.get('StudyInstanceUID', '')}"
    if level in ("SERIES", "IMAGE"):
        url += f"/series/{ds.get('SeriesInstanceUID', '')}"
    if level == "IMAGE":
        url += f"/instances/{ds.get('SOPInstanceUID', '')}"
    return url


def search(
    engine: QueryEngine,
    level: str,
    params: Mapping[str, str | list[str]],
    scope: frozenset[str] | None,
    study_uid: str | None = None,
    series_uid: str | None = None,
    *,
    base_url: str | None = None,
) -> list[dict[str, Any]]:
    """QIDO-RS results (DICOM JSON objects) for ``level`` (studies|series|instances) within ``scope``.

    ``base_url`` (the DICOMweb service root), when given, adds each result's Retrieve URL.
    """
    request = SearchRequest(level, params, study_uid, series_uid)

    def page(matches: list[Match]) -> list[Match]:
        ordered = order(matches)
        end = None if request.limit is None else request.offset + request.limit
        return ordered[request.offset:end]

    answers = engine.query(request.level, request.identifier(), scope, select=page, orthanc_compat=False)
    asked_aet = RETRIEVE_AE_TITLE in request.includes
    results = []
    for ds in answers:
        if not asked_aet:
            del ds[RETRIEVE_AE_TITLE]
        ds.SpecificCharacterSet = "ISO_IR 192"  # JSON is UTF-8
        ds.InstanceAvailability = "ONLINE"  # everything Orthanc holds is on its own storage
        if base_url is not None:
            ds.add(make_element(RETRIEVE_URL, retrieve_url(base_url, ds, request.level)))
        results.append(ds.to_json_dict())
    return results
