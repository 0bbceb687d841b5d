"""The identifiers every layer names studies by: DICOM UIDs and Orthanc's resource IDs derived from them.

Why here, at the bottom: the HTTP policy, tenancy, the audit recorder, the gateway's C-GET checks and the
client all match the same shapes; one definition keeps them agreeing on what a UID or an Orthanc ID is.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

# An Orthanc resource ID as it appears in URIs (five dash-separated groups of 8 hex digits).
ORTHANC_ID_PATTERN = r"[0-9a-f]{8}(?:-[0-9a-f]{8}){4}"

# A DICOM UID in a URI (PS3.5 9.1: digits and dots, at most 64 characters). Deliberately loose about
# leading zeros: the policy only needs to know where the UID ends, tenancy decides whether it exists.
UID_IN_URI_PATTERN = r"[0-9.]{1,64}"

# A well-formed UID, for ``fullmatch``: only digits and dots, so no wildcard, space or padding can hide in
# a UID we vouch for (the gateway's C-GET check) or send (the client).
UID_RE = re.compile(r"[0-9]+(?:\.[0-9]+)*")

# Each Query/Retrieve level and the key that names its resources (PS3.4 C.3).
LEVEL_KEY = {"PATIENT": "PatientID", "STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID",
             "IMAGE": "SOPInstanceUID"}
QR_LEVELS = tuple(LEVEL_KEY)


def orthanc_id(*parts: str) -> str:
    """Orthanc's resource ID: SHA-1 of the '|'-joined identifiers, as five dash-separated groups of 8."""
    digest = hashlib.sha1("|".join(parts).encode()).hexdigest()  # noqa: S324 (Orthanc's naming, not security)
    return "-".join(digest[i : i + 8] for i in range(0, 40, 8))


@dataclass(frozen=True)
class InstanceIds:
    """The identifying attributes of one instance, the values tenancy decides on."""

    patient_id: str
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str

    @property
    def orthanc_study(self) -> str:
        return orthanc_id(self.patient_id, self.study_uid)

    @property
    def orthanc_instance(self) -> str:
        return orthanc_id(self.patient_id, self.study_uid, self.series_uid, self.sop_uid)
