"""Tenant-scoped C-FIND: Orthanc's own matching, answers built only from the caller's studies.

Registering a find callback replaces Orthanc's whole C-FIND SCP, so this engine must answer like it. It
lets Orthanc do the matching (``/tools/find`` runs the same lookup as Orthanc 1.10's SCP: wildcards,
ranges, UID lists, PN case rules, tags read from files when they are not indexed) and restricts it to
the caller's studies; then it builds each answer the way Orthanc's SCP does (measured on 1.10.1, see
``tests/integration/test_find_parity.py``):

* every key of the identifier is returned, empty when unknown; Retrieve AE Title and the level are added;
* values come from Orthanc's index ("main DICOM tags") of the matched level and the levels above it; but
  when the identifier names any tag that is not indexed (or a sequence), *all* values come from one
  instance's stored tags instead (the first instance of the resource), as in Orthanc;
* NumberOf*Related*, ModalitiesInStudy and SOPClassesInStudy are computed, here within the scope.

Tenancy: Orthanc merges patients from different clinics that share a Patient ID into one patient
resource. Scoped PATIENT queries therefore match at the study level and answer from the copy of the
patient tags Orthanc keeps with each study; counts cover the caller's studies only.

The identifier side lives in ``find_identifier``, the matching in ``find_matcher``; this module builds
the answers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from securepacs.tenancy.find_identifier import (
    ALL_MAIN_TAGS,
    COMPUTED_TAGS,
    MODALITIES_IN_STUDY,
    N_PATIENT_INSTANCES,
    N_PATIENT_SERIES,
    N_PATIENT_STUDIES,
    N_SERIES_INSTANCES,
    N_STUDY_INSTANCES,
    N_STUDY_SERIES,
    NO_FILE_TAGS,
    QUERY_RETRIEVE_LEVEL,
    RETRIEVE_AE_TITLE,
    SOP_CLASSES_IN_STUDY,
    Request,
    make_element,
)
from securepacs.tenancy.find_matcher import FindSession, Match, ScopedMatcher
from securepacs.web.orthanc_api import OrthancRest


class QueryEngine:
    """C-FIND (and QIDO-RS) answers for a caller who may see ``scope`` (Orthanc study IDs; None = all)."""

    def __init__(
        self,
        rest: OrthancRest,
        *,
        case_sensitive_pn: bool = False,
        study_uids: Callable[[Iterable[str]], Mapping[str, str]] | None = None,
    ) -> None:
        # case_sensitive_pn: Orthanc's CaseSensitivePN option (default false), which its SCP applies.
        # study_uids: optional resolver Orthanc study ID -> StudyInstanceUID (e.g. the ownership store);
        # without it they are read from Orthanc once and remembered (the mapping never changes).
        self.rest = rest
        self.case_sensitive_pn = case_sensitive_pn
        self._matcher = ScopedMatcher(rest, case_sensitive_pn=case_sensitive_pn, study_uids=study_uids)
        self._aet: str | None = None

    # -- public API -------------------------------------------------------------------------------------
    def find(self, level: str, identifier: Dataset, scope: frozenset[str] | None) -> list[Dataset]:
        """C-FIND answers for ``identifier`` at ``level`` as Orthanc's SCP would give for ``scope``'s studies."""
        return self.query(level, identifier, scope)

    def query(
        self,
        level: str,
        identifier: Dataset,
        scope: frozenset[str] | None,
        *,
        select: Callable[[list[Match]], list[Match]] | None = None,
        orthanc_compat: bool = True,
    ) -> list[Dataset]:
        """``find`` with hooks for QIDO-RS: ``select`` orders/pages matches before answers are built;
        ``orthanc_compat=False`` reads stored tags only for the non-indexed keys instead of for all keys."""
        request = Request.of(level, identifier)
        session = FindSession(self.rest)
        matches = self._matcher.match(request, scope, session)
        if select is not None:
            matches = select(matches)
        answers = []
        for m in matches:
            answer = self._answer(request, m, scope, session, orthanc_compat)
            if answer is not None:
                answers.append(answer)
        return answers

    @property
    def retrieve_aet(self) -> str:
        if self._aet is None:
            self._aet = str(self.rest.get_json("/system").get("DicomAet", ""))
        return self._aet


    # -- answers ------------------------------------------------------------------------------------------
    def _answer(self, request: Request, m: Match, scope: frozenset[str] | None, session: FindSession,
                compat: bool) -> Dataset | None:
        ds = Dataset()
        if request.level_text is not None:
            ds.add(make_element(QUERY_RETRIEVE_LEVEL, request.level_text))
        # Orthanc answers an explicitly requested Retrieve AE Title with an empty value (a bug: PS3.4
        # C.4.1.1.3.2 requires it); we always give the AE title, which C-MOVE needs.
        ds.add(make_element(RETRIEVE_AE_TITLE, self.retrieve_aet))
        from_files = compat and request.reads_files
        for key in request.keys:
            if key.tag == RETRIEVE_AE_TITLE:
                continue
            if key.sequence:
                # Orthanc copies a requested sequence from the stored tags, and omits it when absent.
                entry = self._stored_tags(m, session).get(key.tag)
                if entry and entry.get("Type") == "Sequence":
                    ds.add(DataElement(key.tag, "SQ", _sequence(entry.get("Value") or [])))
                continue
            if from_files:
                text = _stored_text(self._stored_tags(m, session).get(key.tag))
            elif key.tag in m.tags:
                text = m.tags[key.tag]
            elif compat or key.tag in ALL_MAIN_TAGS or key.tag in NO_FILE_TAGS:
                text = ""
            else:
                text = _stored_text(self._stored_tags(m, session).get(key.tag))
            ds.add(make_element(key.tag, text))
        counters = self._counters(request, m, scope, session)
        if counters is None:
            return None
        for tag, text in counters.items():
            ds.add(make_element(tag, text))
        return ds

    def _stored_tags(self, m: Match, session: FindSession) -> dict[int, dict[str, Any]]:
        """Top-level tags of the match's first instance (Orthanc's "DICOM as JSON"), read once."""
        if "stored" not in m.extra:
            instance = self._first_instance(m, session)
            raw = session.get(f"/instances/{instance}/tags") if instance else None
            m.extra["stored"] = {int(k.replace(",", ""), 16): v for k, v in (raw or {}).items()}
        return m.extra["stored"]

    @staticmethod
    def _first_instance(m: Match, session: FindSession) -> str | None:
        # Orthanc takes the first-stored instance of the resource; child lists are in storage order.
        if m.level == "IMAGE":
            return m.resource["ID"]
        if m.level == "SERIES":
            series: dict[str, Any] | None = m.resource
        else:
            study = m.resource if m.study_id else session.study((m.resource.get("Studies") or [""])[0])
            series_ids = (study or {}).get("Series") or []
            series = session.series(series_ids[0]) if series_ids else None
        instances = (series or {}).get("Instances") or []
        return instances[0] if instances else None

    def _counters(self, request: Request, m: Match, scope: frozenset[str] | None,
                  session: FindSession) -> dict[int, str] | None:
        wanted = [t for t in COMPUTED_TAGS[m.level] if request.asks(t)]
        if not wanted:
            return {}
        out: dict[int, str] = {}
        if m.level == "SERIES":
            out[N_SERIES_INSTANCES] = str(len(m.resource.get("Instances") or []))
        elif m.level == "STUDY":
            out.update(self._study_counters(m.resource, wanted, session))
        elif m.level == "PATIENT":
            studies = self._patient_studies(m, scope, session)
            if studies is None:
                return None
            out[N_PATIENT_STUDIES] = str(len(studies))
            if N_PATIENT_SERIES in wanted or N_PATIENT_INSTANCES in wanted:
                series = [s for study in studies for s in session.study_series(study)]
                out[N_PATIENT_SERIES] = str(len(series))
                out[N_PATIENT_INSTANCES] = str(sum(len(s.get("Instances") or []) for s in series))
        return {t: v for t, v in out.items() if t in wanted}

    @staticmethod
    def _patient_studies(m: Match, scope: frozenset[str] | None, session: FindSession) -> list[str] | None:
        if scope is None:
            return list(m.resource.get("Studies") or [])
        patient = session.patient(m.patient_id or "")
        if patient is None:
            return None
        return [s for s in patient.get("Studies") or [] if s in scope]

    def _study_counters(self, study: dict[str, Any], wanted: list[int], session: FindSession) -> dict[int, str]:
        out = {N_STUDY_SERIES: str(len(study.get("Series") or []))}
        if wanted == [N_STUDY_SERIES]:
            return out
        series = session.study_series(study["ID"])
        out[N_STUDY_INSTANCES] = str(sum(len(s.get("Instances") or []) for s in series))
        # Distinct values, sorted and joined like Orthanc's std::set (an empty Modality counts as a value).
        modalities = {(s.get("MainDicomTags") or {}).get("Modality") for s in series}
        out[MODALITIES_IN_STUDY] = "\\".join(sorted(v for v in modalities if v is not None))
        if SOP_CLASSES_IN_STUDY in wanted:
            out[SOP_CLASSES_IN_STUDY] = "\\".join(sorted(self._sop_classes(series, session)))
        return out

    @staticmethod
    def _sop_classes(series: list[dict[str, Any]], session: FindSession) -> set[str]:
        # Orthanc keeps the SOP Class UID as instance metadata (an index read, ~20 µs each, no file read).
        classes: set[str] = set()
        for s in series:
            for instance in s.get("Instances") or []:
                metadata = session.get(f"/instances/{instance}/metadata?expand") or {}
                if metadata.get("SopClassUid"):
                    classes.add(metadata["SopClassUid"])
        return classes


def _stored_text(entry: Mapping[str, Any] | None) -> str:
    if entry and entry.get("Type") == "String" and entry.get("Value") is not None:
        return str(entry["Value"])
    return ""


def _sequence(items: Iterable[Mapping[str, Any]]) -> Sequence:
    """A pydicom Sequence from Orthanc's DICOM-as-JSON items (strings and nested sequences)."""
    out = []
    for item in items:
        ds = Dataset()
        for key, entry in item.items():
            tag = int(key.replace(",", ""), 16)
            if entry.get("Type") == "Sequence":
                ds.add(DataElement(tag, "SQ", _sequence(entry.get("Value") or [])))
            elif entry.get("Type") in ("String", "Null"):
                ds.add(make_element(tag, _stored_text(entry)))
        out.append(ds)
    return Sequence(out)
