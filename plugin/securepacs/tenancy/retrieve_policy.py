"""Who may C-GET what: the decision behind the gateway's ownership endpoint (``POST /securepacs/internal/ownership``).

The gateway sends ``{"clinic", "level", "keys"}`` (see ``securepacs.gateway.ownership_client`` for the contract);
``parse_request`` validates it, ``decide`` answers it. A C-GET is allowed only if every UID it names lies
in a study the clinic owns; unknown and foreign UIDs are refused alike, so an answer never tells a clinic
whether another tenant has some UID. Ownership of studies, series and instances is fixed once recorded
(``securepacs.tenancy.ownership``), so an allowed answer cannot be invalidated before Orthanc serves the request.

PATIENT level is refused. Orthanc merges equal Patient IDs of different clinics into one patient and a
PATIENT-level C-GET sends every study of that patient. Checking that all of them are the clinic's today
would not be enough: another clinic can store a study under the same Patient ID between our answer and
Orthanc's lookup, and it would be sent. Clinics retrieve at STUDY level (their viewers and ``getscu``
do so after a C-FIND, which already lists only their studies).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from securepacs.access.principal import CLINIC_DEVICE, Principal
from securepacs.dicom.identifiers import LEVEL_KEY, QR_LEVELS
from securepacs.pki.certificates import CLINIC_NAME_RE
from securepacs.tenancy.ownership import Tenancy

LEVELS = QR_LEVELS
KEYS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "PatientID")
# key -> tenancy level of the UID; the level's own key must be present (Orthanc resolves by it alone).
UID_LEVELS = (("StudyInstanceUID", "study"), ("SeriesInstanceUID", "series"), ("SOPInstanceUID", "instance"))
# C-GET names UIDs; a PATIENT-level C-GET is not allowed (one Patient ID can span clinics).
UID_LEVEL_KEY = {level: key for level, key in LEVEL_KEY.items() if level != "PATIENT"}
MAX_UIDS = 10_000
_UID = re.compile(r"[0-9]+(?:\.[0-9]+)*")


@dataclass(frozen=True)
class RetrieveRequest:
    clinic: str
    level: str
    keys: dict[str, list[str]]


def parse_request(body: Any) -> RetrieveRequest:
    """The gateway's JSON request, validated; ValueError (with a message naming no identifier) if not."""
    if not isinstance(body, Mapping):
        raise ValueError("expected a JSON object")
    clinic, level, keys = body.get("clinic"), body.get("level"), body.get("keys")
    if not isinstance(clinic, str) or not CLINIC_NAME_RE.fullmatch(clinic):
        raise ValueError("'clinic' must be a clinic name")
    if level not in LEVELS:
        raise ValueError(f"'level' must be one of {', '.join(LEVELS)}")
    if not isinstance(keys, Mapping) or not set(keys) <= set(KEYS):
        raise ValueError(f"'keys' must be an object with keys among {', '.join(KEYS)}")
    checked: dict[str, list[str]] = {}
    for name, values in keys.items():
        if not isinstance(values, list) or not values or not all(isinstance(v, str) and v for v in values):
            raise ValueError(f"'keys.{name}' must be a non-empty list of non-empty strings")
        checked[name] = list(values)
    if sum(len(v) for v in checked.values()) > MAX_UIDS:
        raise ValueError(f"at most {MAX_UIDS} keys per request")
    return RetrieveRequest(clinic, level, checked)


def clinic_principal(clinic: str) -> Principal:
    """The principal a gateway request acts for: the clinic's DICOM device (the caller must check that the
    clinic exists and is active, and that the HTTP caller is the gateway's service account)."""
    return Principal(f"gateway:{clinic}", CLINIC_DEVICE, clinic, via="dicom")


def decide(tenancy: Tenancy, principal: Principal, level: str, keys: Mapping[str, list[str]]) -> tuple[bool, str]:
    """(allowed, reason) for a C-GET at ``level`` naming ``keys``; the reason names no identifier."""
    level = level.upper()
    if level == "PATIENT":
        return False, ("PATIENT-level C-GET is not supported: a patient may hold other clinics' studies; "
                       "retrieve at STUDY level")
    if level not in UID_LEVEL_KEY:
        return False, f"unknown retrieve level {level!r}"
    if not principal.is_admin and principal.clinic is None:
        return False, "the principal acts for no clinic"
    if not keys.get(UID_LEVEL_KEY[level]):
        return False, f"{level}-level C-GET without {UID_LEVEL_KEY[level]}"
    total = sum(len(keys.get(name) or []) for name, _ in UID_LEVELS)
    if total > MAX_UIDS:
        return False, f"more than {MAX_UIDS} UIDs in one C-GET"
    # PatientID below PATIENT level is ignored: Orthanc does not use it to select what it sends.
    for name, uid_level in UID_LEVELS:
        for uid in keys.get(name) or []:
            if len(uid) > 64 or not _UID.fullmatch(uid):
                return False, f"{name} holds an invalid UID"
            if not tenancy.owns_uid(principal, uid_level, uid):
                return False, f"a {uid_level} named by {name} is not the clinic's"
    return True, f"all {total} UID(s) belong to the clinic"
