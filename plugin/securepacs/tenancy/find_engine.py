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
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydicom.config import IGNORE
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

log = logging.getLogger(__name__)

LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")
# What Orthanc accepts for (0008,0052) (case-insensitive), mapped to our level names.
_LEVEL_NAMES = {"PATIENT": "PATIENT", "PATIENTS": "PATIENT", "STUDY": "STUDY", "STUDIES": "STUDY",
                "SERIES": "SERIES", "IMAGE": "IMAGE", "INSTANCE": "IMAGE", "INSTANCES": "IMAGE"}
_ORTHANC_LEVEL = {"PATIENT": "Patient", "STUDY": "Study", "SERIES": "Series", "IMAGE": "Instance"}

SPECIFIC_CHARACTER_SET = 0x00080005
QUERY_RETRIEVE_LEVEL = 0x00080052
RETRIEVE_AE_TITLE = 0x00080054
MODALITY = 0x00080060
MODALITIES_IN_STUDY = 0x00080061
SOP_CLASSES_IN_STUDY = 0x00080062
STUDY_INSTANCE_UID = 0x0020000D
N_PATIENT_STUDIES, N_PATIENT_SERIES, N_PATIENT_INSTANCES = 0x00201200, 0x00201202, 0x00201204
N_STUDY_SERIES, N_STUDY_INSTANCES, N_SERIES_INSTANCES = 0x00201206, 0x00201208, 0x00201209


def _tags(*keywords: str) -> frozenset[int]:
    return frozenset(int(tag_for_keyword(k)) for k in keywords)  # type: ignore[arg-type]


# Orthanc 1.10's indexed ("main") tags per level, as /patients, /studies, /series, /instances report them.
MAIN_TAGS: dict[str, frozenset[int]] = {
    "PATIENT": _tags("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "OtherPatientIDs"),
    "STUDY": _tags("StudyDate", "StudyTime", "StudyID", "StudyDescription", "AccessionNumber", "StudyInstanceUID",
                   "RequestedProcedureDescription", "InstitutionName", "RequestingPhysician",
                   "ReferringPhysicianName"),
    "SERIES": _tags("SeriesDate", "SeriesTime", "Modality", "Manufacturer", "StationName", "SeriesDescription",
                    "BodyPartExamined", "SequenceName", "ProtocolName", "SeriesNumber", "CardiacNumberOfImages",
                    "ImagesInAcquisition", "NumberOfTemporalPositions", "NumberOfSlices", "NumberOfTimeSlices",
                    "SeriesInstanceUID", "ImageOrientationPatient", "SeriesType", "OperatorsName",
                    "PerformedProcedureStepDescription", "AcquisitionDeviceProcessingDescription",
                    "ContrastBolusAgent"),
    "IMAGE": _tags("InstanceCreationDate", "InstanceCreationTime", "AcquisitionNumber", "ImageIndex",
                   "InstanceNumber", "NumberOfFrames", "TemporalPositionIdentifier", "SOPInstanceUID",
                   "ImagePositionPatient", "ImageComments", "ImageOrientationPatient"),
}
ALL_MAIN_TAGS = frozenset().union(*MAIN_TAGS.values())
# Main tags visible to a query at each level: its own and those of the levels above (Orthanc 1.6+).
VISIBLE_TAGS = {level: frozenset().union(*(MAIN_TAGS[lv] for lv in LEVELS[: i + 1])) for i, level in enumerate(LEVELS)}
COMPUTED_TAGS: dict[str, frozenset[int]] = {
    "PATIENT": frozenset({N_PATIENT_STUDIES, N_PATIENT_SERIES, N_PATIENT_INSTANCES}),
    "STUDY": frozenset({N_STUDY_SERIES, N_STUDY_INSTANCES, MODALITIES_IN_STUDY, SOP_CLASSES_IN_STUDY}),
    "SERIES": frozenset({N_SERIES_INSTANCES}),
    "IMAGE": frozenset(),
}
# Keys that never make Orthanc's SCP read the stored files (every other non-main key does).
_NO_FILE_TAGS = frozenset().union(*COMPUTED_TAGS.values()) | {SPECIFIC_CHARACTER_SET, QUERY_RETRIEVE_LEVEL}
_NAME_TO_TAG = {keyword: int(tag_for_keyword(keyword))  # type: ignore[arg-type]
                for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "OtherPatientIDs")}

SCOPE_CHUNK = 1000  # StudyInstanceUIDs per /tools/find call when restricting to a scope
_BINARY_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}
_INT_VRS = {"US", "SS", "UL", "SL", "UV", "SV"}
_FLOAT_VRS = {"FL", "FD"}


class OrthancRest(Protocol):
    """Orthanc's REST API called in-process (``adapter.RestApi``)."""

    def get_json(self, uri: str) -> Any: ...

    def post_json(self, uri: str, body: Any) -> Any: ...


class QueryError(ValueError):
    """The identifier cannot be answered (no or unknown Query/Retrieve Level, malformed value)."""


# -- identifiers ------------------------------------------------------------------------------------------
def vr_of(tag: int) -> str:
    try:
        return dictionary_VR(tag).split(" or ")[0]
    except KeyError:
        group, element = tag >> 16, tag & 0xFFFF
        # Private creators are LO by definition; other unknown tags travel as raw bytes.
        return "LO" if group % 2 and 0x10 <= element <= 0xFF else "UN"


def make_element(tag: int, text: str | None, vr: str | None = None) -> DataElement:
    """A data element from Orthanc's text form of a value (``\\``-separated for several values)."""
    vr = vr or vr_of(tag)
    if vr == "SQ":
        return DataElement(tag, vr, Sequence())
    if not text:
        return DataElement(tag, vr, None, validation_mode=IGNORE)
    try:
        if vr in _INT_VRS or vr in _FLOAT_VRS:
            kind = int if vr in _INT_VRS else float
            numbers = [kind(part) for part in text.split("\\")]
            return DataElement(tag, vr, numbers if len(numbers) > 1 else numbers[0], validation_mode=IGNORE)
        if vr in _BINARY_VRS or vr == "AT":
            return _raw_element(tag, text)
        # IGNORE: Orthanc's values are passed on as they are, even outside the VR's rules (no warnings).
        return DataElement(tag, vr, text, validation_mode=IGNORE)
    except (ValueError, OverflowError):
        # A value its VR cannot hold (e.g. IS "abc"): keep the bytes rather than drop or reject it.
        return _raw_element(tag, text)


def _raw_element(tag: int, text: str) -> DataElement:
    # Built as OB then relabelled: pydicom would turn a UN element of a known tag back into its VR.
    elem = DataElement(tag, "OB", text.encode("utf-8"))
    elem.VR = "UN"
    return elem


def _scalar_text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace").rstrip("\x00 ")
    if isinstance(value, float) and value.is_integer():
        return str(value)
    return str(value)


def element_text(elem: DataElement) -> str:
    """The value as Orthanc's FindQuery would give it: text, several values joined by ``\\``."""
    value = elem.value
    if value is None or value == "" or value == b"":
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(_scalar_text(v) for v in value)
    return _scalar_text(value)


PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"


def find_sop_class(level: str) -> str:
    """The C-FIND information model a query most likely used (the audit record's SOP Class UID): Orthanc does
    not pass it to the plugin; PATIENT level exists only in Patient Root, anything else is named Study Root."""
    return PATIENT_ROOT_FIND if level == "PATIENT" else STUDY_ROOT_FIND


def parse_find_query(items: list[tuple[int, int, str]]) -> tuple[str, Dataset]:
    """``(level, identifier)`` from Orthanc's FindQuery items ``(group, element, value)``.

    Orthanc 1.10 passes every key of the identifier including (0008,0005) and (0008,0052), drops group
    lengths, gives values as UTF-8 text (several values joined by ``\\``) and passes a sequence as its tag
    with an empty value (its items are lost). Level names are those Orthanc's own SCP accepts.
    """
    identifier = Dataset()
    for group, element, value in items:
        if element == 0x0000:
            continue  # group length: never a key (Orthanc's SCP ignores them too)
        tag = (group << 16) | element
        identifier.add(make_element(tag, value))
    raw = str(identifier.get("QueryRetrieveLevel", "") or "").strip()
    if not raw:
        raise QueryError("the identifier has no Query/Retrieve Level (0008,0052)")
    level = _LEVEL_NAMES.get(raw.upper())
    if level is None:
        raise QueryError(f"Query/Retrieve Level {raw!r} is not one of {', '.join(LEVELS)}")
    return level, identifier


def encode_answer(ds: Dataset) -> bytes:
    """Implicit VR Little Endian dataset bytes for ``answers.FindAddAnswer``.

    Written in Orthanc's default encoding (Latin-1, ISO_IR 100) whenever the values allow it: Orthanc
    converts any other character set into its own, and that conversion (DCMTK) re-pads UIDs with a space
    instead of NUL. Values Latin-1 cannot hold go as UTF-8; Orthanc then drops what Latin-1 lacks, exactly
    as its own SCP does.
    """
    for charset in ("ISO_IR 100", "ISO_IR 192"):
        out = Dataset()
        out.update(ds)
        out.SpecificCharacterSet = charset
        buffer = io.BytesIO()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # pydicom only warns when a value does not fit the charset
                dcmwrite(buffer, out, implicit_vr=True, little_endian=True)
        except (UnicodeError, UserWarning):
            continue
        return buffer.getvalue()
    raise QueryError("an answer cannot be encoded even as UTF-8")


@dataclass(frozen=True)
class Key:
    tag: int
    text: str  # "" = universal matching / return key
    sequence: bool = False


@dataclass(frozen=True)
class Request:
    """A parsed identifier: its keys (without character set/level), constraints and the level text."""

    level: str
    keys: tuple[Key, ...]
    level_text: str | None = None

    @classmethod
    def of(cls, level: str, identifier: Dataset) -> Request:
        if level not in LEVELS:
            raise QueryError(f"query level {level!r} is not one of {', '.join(LEVELS)}")
        keys = []
        level_text = None
        for elem in identifier:
            tag = int(elem.tag)
            if tag == QUERY_RETRIEVE_LEVEL:
                level_text = element_text(elem)
            elif tag != SPECIFIC_CHARACTER_SET and tag & 0xFFFF:
                keys.append(Key(tag, "" if elem.VR == "SQ" else element_text(elem), elem.VR == "SQ"))
        return cls(level, tuple(keys), level_text)

    @property
    def constraints(self) -> dict[int, str]:
        return {k.tag: k.text for k in self.keys if k.text and not k.sequence}

    def asks(self, tag: int) -> bool:
        return any(k.tag == tag for k in self.keys)

    @property
    def reads_files(self) -> bool:
        """Whether Orthanc's SCP answers this identifier from the stored tags rather than its index."""
        return any(k.sequence or (k.tag not in ALL_MAIN_TAGS and k.tag not in _NO_FILE_TAGS) for k in self.keys)


# -- matching ---------------------------------------------------------------------------------------------
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


class _Session:
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
        self._study_uids = study_uids
        self._uid_cache: dict[str, str] = {}
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
        session = _Session(self.rest)
        matches = self._match(request, scope, session)
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

    # -- matching -----------------------------------------------------------------------------------------
    def _match(self, request: Request, scope: frozenset[str] | None, session: _Session) -> list[Match]:
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
    def _resource_match(level: str, resource: dict[str, Any], session: _Session) -> Match | None:
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

    # -- answers ------------------------------------------------------------------------------------------
    def _answer(self, request: Request, m: Match, scope: frozenset[str] | None, session: _Session,
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
            elif compat or key.tag in ALL_MAIN_TAGS or key.tag in _NO_FILE_TAGS:
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

    def _stored_tags(self, m: Match, session: _Session) -> dict[int, dict[str, Any]]:
        """Top-level tags of the match's first instance (Orthanc's "DICOM as JSON"), read once."""
        if "stored" not in m.extra:
            instance = self._first_instance(m, session)
            raw = session.get(f"/instances/{instance}/tags") if instance else None
            m.extra["stored"] = {int(k.replace(",", ""), 16): v for k, v in (raw or {}).items()}
        return m.extra["stored"]

    @staticmethod
    def _first_instance(m: Match, session: _Session) -> str | None:
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
                  session: _Session) -> dict[int, str] | None:
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
    def _patient_studies(m: Match, scope: frozenset[str] | None, session: _Session) -> list[str] | None:
        if scope is None:
            return list(m.resource.get("Studies") or [])
        patient = session.patient(m.patient_id or "")
        if patient is None:
            return None
        return [s for s in patient.get("Studies") or [] if s in scope]

    def _study_counters(self, study: dict[str, Any], wanted: list[int], session: _Session) -> dict[int, str]:
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
    def _sop_classes(series: list[dict[str, Any]], session: _Session) -> set[str]:
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
