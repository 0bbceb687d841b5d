"""Matching for the tenant-scoped C-FIND: Orthanc's ``/tools/find`` restricted to the caller's studies.

Split from the engine because matching (which resources answer, with which indexed tags) is one job and
building the answers from them another. Orthanc does the matching; this restricts it to the
StudyInstanceUIDs of the scope, applies Orthanc's SCP rule that only PN matches case-insensitively, and
answers scoped PATIENT queries per study (Orthanc merges patients of different clinics that share a
Patient ID).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydicom.datadict import tag_for_keyword

from securepacs.tenancy.find_identifier import (
    ALL_MAIN_TAGS,
    MAIN_TAGS,
    MODALITIES_IN_STUDY,
    STUDY_INSTANCE_UID,
    VISIBLE_TAGS,
    Request,
    vr_of,
)
from securepacs.web.orthanc_api import OrthancRest

log = logging.getLogger(__name__)

_ORTHANC_LEVEL = {"PATIENT": "Patient", "STUDY": "Study", "SERIES": "Series", "IMAGE": "Instance"}
_NAME_TO_TAG = {keyword: int(tag_for_keyword(keyword))  # type: ignore[arg-type]
                for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "OtherPatientIDs")}

SCOPE_CHUNK = 1000  # StudyInstanceUIDs per /tools/find call when restricting to a scope


@dataclass
class Match:
    """One answer-to-be: the Orthanc resource it describes and its indexed tags visible at the level."""

    level: str
    resource: dict[str, Any]  # Orthanc's JSON of the resource (a study at a scoped PATIENT level)
    tags: dict[int, str]  # main tags of this level and above (patient tags: the study's copy)
    study_id: str | None  # Orthanc study (None for an unscoped PATIENT match)
    patient_id: str | None = None  # Orthanc patient (PATIENT level)
    extra: dict[str, Any] = field(default_factory=dict)  # per-match cache (sample instance, its tags)


def _named_tags(main: Mapping[str, Any] | None) -> dict[int, str]:
    out: dict[int, str] = {}
    for name, value in (main or {}).items():
        tag = _NAME_TO_TAG.get(name)
        if tag is None:
            found = tag_for_keyword(name)
            if found is None:
                continue
            tag = _NAME_TO_TAG[name] = int(found)
        out[tag] = "" if value is None else str(value)
    return out


def _merge(*levels: Mapping[int, str]) -> dict[int, str]:
    """Lowest level first: like Orthanc's index, a tag known at a lower level keeps that value."""
    merged: dict[int, str] = {}
    for tags in levels:
        for tag, value in tags.items():
            merged.setdefault(tag, value)
    return merged


class FindSession:
    """Per-query cache of Orthanc resources, so each is fetched at most once per C-FIND."""

    def __init__(self, rest: OrthancRest) -> None:
        self.rest = rest
        self._cache: dict[str, Any] = {}

    def get(self, uri: str) -> Any:
        if uri not in self._cache:
            try:
                self._cache[uri] = self.rest.get_json(uri)
            except Exception as exc:  # the resource was deleted since the lookup: leave it out
                log.warning("C-FIND: Orthanc could not answer %s (%s); resource skipped", uri, type(exc).__name__)
                self._cache[uri] = None
        return self._cache[uri]

    def study(self, orthanc_id: str) -> dict[str, Any] | None:
        return self.get(f"/studies/{orthanc_id}")

    def series(self, orthanc_id: str) -> dict[str, Any] | None:
        return self.get(f"/series/{orthanc_id}")

    def study_series(self, orthanc_id: str) -> list[dict[str, Any]]:
        return self.get(f"/studies/{orthanc_id}/series") or []

    def patient(self, orthanc_id: str) -> dict[str, Any] | None:
        return self.get(f"/patients/{orthanc_id}")



class ScopedMatcher:
    """The resources that match a request within ``scope`` (Orthanc study IDs; None = all)."""

    def __init__(
        self,
        rest: OrthancRest,
        *,
        case_sensitive_pn: bool = False,
        study_uids: Callable[[Iterable[str]], Mapping[str, str]] | None = None,
    ) -> None:
        self.rest = rest
        self.case_sensitive_pn = case_sensitive_pn
        self._study_uids = study_uids
        self._uid_cache: dict[str, str] = {}

    def match(self, request: Request, scope: frozenset[str] | None, session: FindSession) -> list[Match]:
        """The resources answering ``request`` within ``scope``, fetched through the query's ``session``."""
        constraints = request.constraints
        if scope is not None and not scope:
            return []
        if request.level == "PATIENT":
            if scope is None:
                return [self._patient_match(r) for r in self._lookup("Patient", constraints, None)]
            if any(t in ALL_MAIN_TAGS - MAIN_TAGS["PATIENT"] or t == MODALITIES_IN_STUDY for t in constraints):
                # Orthanc's SCP matches a PATIENT query against patient tags only: a constraint on a study,
                # series or instance tag matches nothing (checked on 1.10.1), so do the same.
                return []
            return self._scoped_patients(self._lookup("Study", constraints, scope), scope)
        found = self._lookup(_ORTHANC_LEVEL[request.level], constraints, scope)
        matches = []
        for resource in found:
            m = self._resource_match(request.level, resource, session)
            if m is not None and (scope is None or m.study_id in scope):
                matches.append(m)
        return matches

    def _lookup(self, level: str, constraints: dict[int, str], scope: frozenset[str] | None) -> list[dict[str, Any]]:
        """``/tools/find`` with ``constraints``, restricted to the StudyInstanceUIDs of ``scope``."""
        if scope is None:
            return self._find_case_exact(level, constraints)
        uids = sorted(set(self._scope_uids(scope).values()))
        asked = constraints.get(STUDY_INSTANCE_UID)
        if asked is not None:
            # UI values match exactly (no wildcards or ranges for UI in Orthanc): intersect here.
            wanted = set(asked.split("\\"))
            uids = [u for u in uids if u in wanted]
        results: dict[str, dict[str, Any]] = {}
        for start in range(0, len(uids), SCOPE_CHUNK):
            chunk = {**constraints, STUDY_INSTANCE_UID: "\\".join(uids[start:start + SCOPE_CHUNK])}
            for resource in self._find_case_exact(level, chunk):
                results.setdefault(resource["ID"], resource)
        return list(results.values())

    def _find_case_exact(self, level: str, constraints: dict[int, str]) -> list[dict[str, Any]]:
        """Match case-sensitively except PN (Orthanc's SCP rule); /tools/find has one switch for all VRs."""
        pn = {t: v for t, v in constraints.items() if vr_of(t) == "PN"}
        other = {t: v for t, v in constraints.items() if t not in pn}
        if self.case_sensitive_pn or not pn:
            return self._tools_find(level, constraints, case_sensitive=True)
        # Values without letters (dates, UIDs, numbers) match the same either way.
        caseless = {t: v for t, v in other.items() if v.lower() == v.upper()}
        if len(caseless) == len(other):
            return self._tools_find(level, constraints, case_sensitive=False)
        # Both PN and lettered keys: intersect a case-sensitive lookup without the names with a
        # case-insensitive one on the names (IDs only; the caseless keys, e.g. the scope, bound it).
        exact = self._tools_find(level, other, case_sensitive=True)
        names = set(self._tools_find(level, {**pn, **caseless}, case_sensitive=False, expand=False))
        return [r for r in exact if r["ID"] in names]

    def _tools_find(self, level: str, constraints: Mapping[int, str], *, case_sensitive: bool,
                    expand: bool = True) -> list[Any]:
        query = {f"{t >> 16:04X},{t & 0xFFFF:04X}": v for t, v in constraints.items()}
        body = {"Level": level, "Query": query, "Expand": expand, "CaseSensitive": case_sensitive}
        return list(self.rest.post_json("/tools/find", body))

    def _scope_uids(self, scope: frozenset[str]) -> dict[str, str]:
        missing = [s for s in scope if s not in self._uid_cache]
        if missing and self._study_uids is not None:
            self._uid_cache.update(self._study_uids(missing))
            missing = [s for s in scope if s not in self._uid_cache]
        for study_id in missing:
            try:
                study = self.rest.get_json(f"/studies/{study_id}")
            except Exception as exc:  # deleted from Orthanc but still listed in the scope
                log.debug("C-FIND scope: study %s unknown to Orthanc (%s)", study_id, type(exc).__name__)
                continue
            uid = (study.get("MainDicomTags") or {}).get("StudyInstanceUID")
            if uid:
                self._uid_cache[study_id] = uid
        return {s: self._uid_cache[s] for s in scope if s in self._uid_cache}

    @staticmethod
    def _patient_match(patient: dict[str, Any]) -> Match:
        tags = {t: v for t, v in _named_tags(patient.get("MainDicomTags")).items() if t in MAIN_TAGS["PATIENT"]}
        return Match("PATIENT", patient, tags, None, patient["ID"])

    @staticmethod
    def _scoped_patients(studies: list[dict[str, Any]], scope: frozenset[str]) -> list[Match]:
        # One answer per Orthanc patient; its tags come from the first matching study of the caller (in
        # Orthanc's order, i.e. storage order), as Orthanc's SCP takes them from the patient's first study.
        by_patient: dict[str, Match] = {}
        for study in studies:
            if study["ID"] not in scope or study["ParentPatient"] in by_patient:
                continue
            tags = {t: v for t, v in _named_tags(study.get("PatientMainDicomTags")).items()
                    if t in MAIN_TAGS["PATIENT"]}
            by_patient[study["ParentPatient"]] = Match("PATIENT", study, tags, study["ID"], study["ParentPatient"])
        return list(by_patient.values())

    @staticmethod
    def _resource_match(level: str, resource: dict[str, Any], session: FindSession) -> Match | None:
        own = _named_tags(resource.get("MainDicomTags"))
        series: dict[str, Any] | None = None
        if level == "STUDY":
            study: dict[str, Any] | None = resource
        elif level == "SERIES":
            study = session.study(resource["ParentStudy"])
        else:
            series = session.series(resource["ParentSeries"])
            study = session.study(series["ParentStudy"]) if series else None
        if study is None:
            return None
        levels = [own]
        if series is not None:
            levels.append(_named_tags(series.get("MainDicomTags")))
        if level != "STUDY":
            levels.append(_named_tags(study.get("MainDicomTags")))
        levels.append(_named_tags(study.get("PatientMainDicomTags")))
        visible = VISIBLE_TAGS[level]
        tags = {t: v for t, v in _merge(*levels).items() if t in visible}
        return Match(level, resource, tags, study["ID"])
