"""Clinics are tenants: which clinic owns a study, and which studies a principal may reach.

Ownership is decided when the first instance of a study arrives (C-STORE by an enrolled AE title, or
STOW-RS by a clinic account) and never changes. An instance is admitted only if its study, series and
SOP Instance UIDs do not already belong to a different study or clinic: otherwise a clinic could write
into, or shadow, another clinic's data by reusing its UIDs.

Orthanc names resources by hashing the DICOM identifiers, so the Orthanc IDs of a new instance are known
before Orthanc stores it; the store keeps the study's Orthanc ID next to its UID.
"""

from __future__ import annotations

import io
import logging
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.filereader import data_element_generator, read_partial, read_preamble
from pydicom.tag import Tag

from securepacs.access.principal import Principal
from securepacs.dicom import header_reader, status_codes
from securepacs.dicom.identifiers import InstanceIds
from securepacs.store.database import Store
from securepacs.web.orthanc_api import OrthancRest

log = logging.getLogger(__name__)

_IDENT_TAGS = ["PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"]
_IDENT_TAG_NUMBERS = [Tag(keyword) for keyword in _IDENT_TAGS]


class NotDicom(ValueError):
    """The bytes are not a DICOM instance with the identifiers an archive needs."""


class AmbiguousIds(NotDicom):
    """A repeated or out-of-order element where the identifiers are read: the data set could name one study
    to tenancy and another to Orthanc (DCMTK keeps the first copy, pydicom the last). ``read`` holds the
    identifiers read before it, for the audit trail."""

    def __init__(self, message: str, read: dict[str, str]):
        super().__init__(message)
        self.read = read


_PIXEL_DATA_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})


class _Ascending:
    """pydicom ``stop_when`` hook that sees every top-level tag in order and stops before the pixel data
    (what ``stop_before_pixels`` does). It refuses what the fast path refuses (a repeat or a step back up to
    the identifiers) and, since pydicom keeps the last copy, a repeat of any element anywhere it reads (a
    second Specific Character Set would change how the Patient ID decodes). A step back after the
    identifiers names no element twice, so both readers see the same values: it is let through."""

    def __init__(self, where: str):
        self.where = where
        self.previous = -1
        self.seen: set[int] = set()

    def __call__(self, tag: int, _vr: str | None, _length: int) -> bool:
        if tag in _PIXEL_DATA_TAGS:
            return True
        if tag in self.seen or (tag <= self.previous <= header_reader.LAST_IDENTIFIER_TAG):
            raise header_reader.out_of_order(int(tag), self.previous, self.where, {}, repeated=tag in self.seen)
        self.seen.add(int(tag))
        self.previous = int(tag)
        return False


def _check_meta_order(data: bytes) -> None:
    fp = io.BytesIO(data)
    read_preamble(fp, True)
    check = _Ascending("file meta information")
    for element in data_element_generator(fp, False, True, stop_when=lambda tag, _vr, _len: tag >> 16 != 0x0002):
        check(element.tag, None, 0)


def _parsed_ids(data: bytes) -> dict[str, str]:
    # pydicom keeps the last copy of a repeated element, DCMTK the first: watch the elements go by in order
    # and refuse a repeat anywhere pydicom reads (the top level before the pixel data), so the copy pydicom
    # keeps is the only copy, and a step back up to the identifiers, as the fast path does.
    def text(ds: Any, keyword: str) -> str:
        value = ds.get(keyword, "")  # decoded here, lazily: a damaged value raises only now
        return str(value).strip() if value is not None else ""

    try:
        _check_meta_order(data)
        ds = read_partial(io.BytesIO(data), _Ascending("data set"), force=True,
                          specific_tags=list(_IDENT_TAG_NUMBERS))
        return {k: text(ds, k) for k in _IDENT_TAGS}
    except header_reader.AmbiguousHeader as exc:
        raise AmbiguousIds(str(exc), exc.read) from None
    except (InvalidDicomError, BytesLengthException, EOFError, ValueError, TypeError, OSError, struct.error,
            NotImplementedError) as exc:  # pydicom's ways of saying "not DICOM I can read" (an unknown VR...)
        raise NotDicom(f"not a DICOM instance: {exc}") from None


def read_ids(data: bytes) -> InstanceIds:
    """The identifiers as Orthanc will index them; ``AmbiguousIds`` if the data set may say two things."""
    try:
        found = header_reader.identifiers(data)
    except header_reader.AmbiguousHeader as exc:
        raise AmbiguousIds(str(exc), exc.read) from None
    if found is None:  # not the common, plain case: let pydicom decide
        found = _parsed_ids(data)
    ids = InstanceIds(*(found.get(k, "") for k in _IDENT_TAGS))
    for keyword, value in zip(_IDENT_TAGS[1:4], (ids.study_uid, ids.series_uid, ids.sop_uid), strict=True):
        if not value:
            raise NotDicom(f"the instance has no {keyword}")
    return ids


@dataclass(frozen=True)
class Admission:
    status: int  # status_codes.SUCCESS or the failure to report
    reason: str
    ids: InstanceIds | None = None

    @property
    def admitted(self) -> bool:
        return self.status == status_codes.SUCCESS


class _Lru(OrderedDict):
    def __init__(self, size: int):
        super().__init__()
        self._size = size

    def put(self, key: str, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self._size:
            self.popitem(last=False)


class Tenancy:
    def __init__(self, store: Store, index: OrthancRest,
                 on_security_event: Callable[[str, dict[str, Any]], None] | None = None):
        self._store = store
        self._index = index
        self._on_event = on_security_event or (lambda _kind, _details: None)
        self._lock = threading.Lock()
        # Ownership never changes once recorded, so it caches safely: only the first instance of a study
        # or series costs a store transaction, the rest of a 300-slice series are dictionary hits.
        self._study_owner: _Lru = _Lru(50_000)  # study UID -> (clinic, orthanc study id)
        self._series_study: _Lru = _Lru(200_000)  # series UID -> study UID
        self._parent: _Lru = _Lru(200_000)  # orthanc series/instance id -> orthanc study id
        self._study_uid: _Lru = _Lru(50_000)  # orthanc study id -> study UID (the audit trail names UIDs)

    # -- writes ------------------------------------------------------------------------------------------
    def admit(self, data: bytes, clinic: str, source: str) -> Admission:
        """Decide whether ``clinic`` may store this instance; records ownership of a new study."""
        try:
            ids = read_ids(data)
        except AmbiguousIds as exc:
            # A malformed header that names two studies is how a cross-tenant write would be smuggled past
            # us: refuse it as undecodable and record it as a security event (no identifiers in the log).
            log.warning("ambiguous data set refused from clinic %r (%s): %s", clinic, source, exc)
            self._on_event("ambiguous-identifiers", {
                "clinic": clinic, "source": source, "reason": str(exc),
                "study_uid": exc.read.get("StudyInstanceUID", ""), "patient_id": exc.read.get("PatientID", ""),
                "sop_uid": exc.read.get("SOPInstanceUID", ""),
            })
            return Admission(status_codes.STORE_ERROR_CANNOT_UNDERSTAND, str(exc))
        except NotDicom as exc:
            return Admission(status_codes.STORE_ERROR_CANNOT_UNDERSTAND, str(exc))
        owner = self._claim_study(ids, clinic, source)
        if owner[0] != clinic:
            return self._refuse(ids, clinic, source, "study", f"the study belongs to another clinic ({owner[0]!r})")
        if owner[1] != ids.orthanc_study:
            return self._refuse(ids, clinic, source, "patient", "the Study Instance UID is already used with "
                                "a different Patient ID")
        if self._claim_series(ids) != ids.study_uid:
            return self._refuse(ids, clinic, source, "series", "the Series Instance UID belongs to another study")
        existing = self._index.lookup("instance", ids.sop_uid)
        if existing is not None and existing != ids.orthanc_instance:
            return self._refuse(ids, clinic, source, "instance", "the SOP Instance UID already exists in another "
                                "study or series")
        return Admission(status_codes.SUCCESS, "admitted", ids)

    def _claim_study(self, ids: InstanceIds, clinic: str, source: str) -> tuple[str, str]:
        with self._lock:
            hit = self._study_owner.get(ids.study_uid)
        if hit is None:
            rec = self._store.claim_study(ids.study_uid, clinic, ids.orthanc_study, source)
            hit = (rec.clinic, rec.orthanc_id)
            if rec.clinic == clinic and rec.source == source:
                log.info("study %r attributed to clinic %r", rec.orthanc_id, clinic)
            with self._lock:
                self._study_owner.put(ids.study_uid, hit)
                self._study_uid.put(rec.orthanc_id, ids.study_uid)
        return hit

    def _claim_series(self, ids: InstanceIds) -> str:
        with self._lock:
            hit = self._series_study.get(ids.series_uid)
        if hit is None:
            hit = self._store.claim_series(ids.series_uid, ids.study_uid)
            with self._lock:
                self._series_study.put(ids.series_uid, hit)
        return hit

    def _refuse(self, ids: InstanceIds, clinic: str, source: str, what: str, reason: str) -> Admission:
        # Operational log: no UIDs or patient identifiers, only who tried what; details go to the audit trail.
        log.warning("cross-tenant write refused: %s from clinic %r (%s): %s", what, clinic, source, reason)
        self._on_event("cross-tenant-write", {
            "clinic": clinic, "source": source, "reason": reason,
            "study_uid": ids.study_uid, "series_uid": ids.series_uid, "sop_uid": ids.sop_uid,
        })
        return Admission(status_codes.REFUSED_NOT_AUTHORIZED, reason, ids)

    # -- reads -------------------------------------------------------------------------------------------
    def scope(self, principal: Principal) -> frozenset[str] | None:
        """Orthanc study IDs the principal may see; None means all (admins)."""
        if principal.is_admin:
            return None
        if principal.clinic is None:
            return frozenset()
        return frozenset(self._store.clinic_orthanc_studies(principal.clinic))

    def owns_orthanc_study(self, principal: Principal, study_id: str) -> bool:
        if principal.is_admin:
            return True
        return principal.clinic is not None and self._store.owner_of_orthanc_study(study_id) == principal.clinic

    def owns_study_uid(self, principal: Principal, study_uid: str) -> bool:
        if principal.is_admin:
            return True
        rec = self._store.study_owner(study_uid)
        return rec is not None and principal.clinic is not None and rec.clinic == principal.clinic

    def study_of(self, level: str, orthanc_id: str) -> str | None:
        """The Orthanc study ID above a study/series/instance, or None if there is no such resource."""
        if level == "study":
            return orthanc_id
        with self._lock:
            hit = self._parent.get(orthanc_id)
        if hit is not None:
            return hit
        try:
            if level == "instance":
                series = self._index.get_json(f"/instances/{orthanc_id}")["ParentSeries"]
                study = self.study_of("series", series)
            elif level == "series":
                study = self._index.get_json(f"/series/{orthanc_id}")["ParentStudy"]
            else:
                raise ValueError(f"level {level!r}: expected study, series or instance")
        except (KeyError, LookupError, ValueError, TypeError) as exc:
            log.debug("no %s %r: %s", level, orthanc_id, exc)
            return None
        except Exception as exc:  # orthanc.OrthancException for an unknown resource
            log.debug("no %s %r: %s", level, orthanc_id, exc)
            return None
        if study is not None:
            with self._lock:
                self._parent.put(orthanc_id, study)
        return study

    def study_uid_of(self, study_id: str) -> str | None:
        """The Study Instance UID of an owned Orthanc study (None if no clinic owns it). Cached: it never
        changes, and the audit trail asks on every HTTP read of a study's data."""
        with self._lock:
            hit = self._study_uid.get(study_id)
        if hit is None:
            hit = self._store.study_uids_of([study_id]).get(study_id)
            if hit is not None:
                with self._lock:
                    self._study_uid.put(study_id, hit)
        return hit

    def owns_resource(self, principal: Principal, level: str, orthanc_id: str) -> bool:
        if principal.is_admin:
            return True
        study = self.study_of(level, orthanc_id)
        return study is not None and self.owns_orthanc_study(principal, study)

    def owns_uid(self, principal: Principal, level: str, uid: str) -> bool:
        """Does the DICOM UID at ``level`` (study|series|instance) lie in a study the principal owns?"""
        if principal.is_admin:
            return True
        if level == "study":
            return self.owns_study_uid(principal, uid)
        if level == "series":
            study_uid = self._store.study_of_series(uid)
            return study_uid is not None and self.owns_study_uid(principal, study_uid)
        resource = self._index.lookup(level, uid)
        return resource is not None and self.owns_resource(principal, level, resource)
