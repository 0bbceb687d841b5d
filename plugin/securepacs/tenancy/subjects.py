"""The studies (and their patients) a request touches, named as the audit trail names them: by UID.

Requests name data in many ways: an Orthanc ID of any level (``/tools/create-archive``'s ``Resources``,
a C-MOVE's resolved resources), a SOP Instance UID alone (WADO-URI ``objectUID``), series or instance
UIDs below the study (C-GET and C-MOVE at SERIES or IMAGE level). An audit record must still say which
studies, and whose, were involved: PS3.15 A.5.3 records name the Study Instance UID and the Patient ID.

Lookups go to Orthanc's index in-process (and the store for series), and are cached: a study's UID and
Patient ID never change. Anything that cannot be resolved is left out rather than guessed; callers name
the raw identifier when they have nothing better.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from securepacs.store.database import Store
from securepacs.tenancy.ownership import Tenancy
from securepacs.web.orthanc_api import OrthancRest

log = logging.getLogger(__name__)

MAX_RESOLVED = 10_000  # bound the lookups one request can cause
_CACHE_SIZE = 50_000


@dataclass(frozen=True)
class StudyRef:
    uid: str
    patient_id: str | None = None


def patient_ids(studies: Iterable[StudyRef]) -> list[str]:
    """The distinct Patient IDs of ``studies``, in first-seen order."""
    return list(dict.fromkeys(s.patient_id for s in studies if s.patient_id))


class Subjects:
    def __init__(self, index: OrthancRest, tenancy: Tenancy, store: Store):
        self._index = index
        self._tenancy = tenancy
        self._store = store
        self._studies: dict[str, StudyRef] = {}  # Orthanc study ID -> ref (never changes once stored)

    def _get(self, uri: str) -> Any:
        try:
            return self._index.get_json(uri)
        except Exception as exc:  # orthanc.OrthancException for an unknown resource (no import here)
            log.debug("no resource %r: %s", uri, type(exc).__name__)
            return None

    def study(self, study_id: str) -> StudyRef | None:
        """The study with Orthanc ID ``study_id``, or None if Orthanc has no such study."""
        hit = self._studies.get(study_id)
        if hit is not None:
            return hit
        found = self._get(f"/studies/{study_id}")
        if not isinstance(found, Mapping):
            return None
        uid = (found.get("MainDicomTags") or {}).get("StudyInstanceUID") or self._tenancy.study_uid_of(study_id)
        if not uid:
            return None
        ref = StudyRef(str(uid), str((found.get("PatientMainDicomTags") or {}).get("PatientID") or "") or None)
        if len(self._studies) >= _CACHE_SIZE:
            self._studies.clear()
        self._studies[study_id] = ref
        return ref

    def _study_ids_of(self, orthanc_id: str) -> list[str]:
        """The Orthanc study IDs at or below the resource ``orthanc_id``, whatever its level."""
        if self.study(orthanc_id) is not None:
            return [orthanc_id]
        for level in ("series", "instance"):
            study = self._tenancy.study_of(level, orthanc_id)
            if study is not None:
                return [study]
        patient = self._get(f"/patients/{orthanc_id}")
        if isinstance(patient, Mapping):
            return [str(s) for s in patient.get("Studies") or []]
        return []

    def of_orthanc_ids(self, orthanc_ids: Iterable[str]) -> tuple[list[StudyRef], list[str]]:
        """(the studies the resources lie in, the IDs that name nothing Orthanc knows)."""
        studies: dict[str, StudyRef] = {}
        unknown: list[str] = []
        for orthanc_id in list(dict.fromkeys(orthanc_ids))[:MAX_RESOLVED]:
            refs = [r for r in (self.study(s) for s in self._study_ids_of(orthanc_id)) if r is not None]
            if not refs:
                unknown.append(orthanc_id)
            studies.update((r.uid, r) for r in refs)
        return list(studies.values()), unknown

    def of_instance_uid(self, sop_uid: str) -> StudyRef | None:
        """The study holding the instance with SOP Instance UID ``sop_uid``."""
        instance = self._index.lookup("instance", sop_uid)
        study = self._tenancy.study_of("instance", instance) if instance else None
        return self.study(study) if study else None

    def of_uids(self, keys: Mapping[str, list[str]]) -> list[StudyRef]:
        """The studies named by a retrieve's identifier keys (StudyInstanceUID, SeriesInstanceUID,
        SOPInstanceUID), at whatever level they name them."""
        study_uids: list[str] = list(keys.get("StudyInstanceUID") or [])
        study_uids += [s for s in (self._store.study_of_series(u) for u in keys.get("SeriesInstanceUID") or [])
                       if s]
        found: dict[str, StudyRef] = {}
        for uid in list(dict.fromkeys(study_uids))[:MAX_RESOLVED]:
            owner = self._store.study_owner(uid)
            ref = self.study(owner.orthanc_id) if owner else None
            found[uid] = ref or StudyRef(uid)
        for sop_uid in (keys.get("SOPInstanceUID") or [])[:MAX_RESOLVED]:
            ref = self.of_instance_uid(sop_uid)
            if ref is not None:
                found.setdefault(ref.uid, ref)
        return list(found.values())
