"""Coded vocabulary of the audit trail: DICOM PS3.16 CID 400-403 (DCM) and the RFC 3881 ID type codes.

Codes and meanings are those of the DICOM Standard (PS3.16 CID 400 "Audit Event ID", CID 401 "Audit
Event Type Code", CID 402 "Audit Active Participant Role ID Code", CID 403 "Security Alert Type Code",
CID 404 "Audit Participant Object ID Type Code"), used as PS3.15 A.5.3 prescribes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Code:
    """A coded value (csd-code, codeSystemName, originalText in the DICOM audit schema)."""

    code: str
    scheme: str
    meaning: str

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "meaning": self.meaning, "scheme": self.scheme}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Code:
        try:
            return cls(str(data["code"]), str(data["scheme"]), str(data["meaning"]))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"coded value needs code, scheme and meaning: {data!r}") from exc


def _dcm(code: str, meaning: str) -> Code:
    return Code(code, "DCM", meaning)


def _rfc3881(code: str, meaning: str) -> Code:
    return Code(code, "RFC-3881", meaning)


# --- CID 400 Audit Event ID (the events PS3.15 A.5.3 specialises and this archive emits) ---
APPLICATION_ACTIVITY = _dcm("110100", "Application Activity")
AUDIT_LOG_USED = _dcm("110101", "Audit Log Used")
INSTANCES_ACCESSED = _dcm("110103", "DICOM Instances Accessed")
INSTANCES_TRANSFERRED = _dcm("110104", "DICOM Instances Transferred")
STUDY_DELETED = _dcm("110105", "DICOM Study Deleted")
EXPORT = _dcm("110106", "Export")
QUERY = _dcm("110112", "Query")
SECURITY_ALERT = _dcm("110113", "Security Alert")
USER_AUTHENTICATION = _dcm("110114", "User Authentication")

# Short names: the RFC 5424 MSGID (at most 32 printable ASCII) and what search() accepts besides codes.
EVENT_NAMES: dict[str, Code] = {
    "ApplicationActivity": APPLICATION_ACTIVITY,
    "AuditLogUsed": AUDIT_LOG_USED,
    "InstancesAccessed": INSTANCES_ACCESSED,
    "InstancesTransferred": INSTANCES_TRANSFERRED,
    "StudyDeleted": STUDY_DELETED,
    "Export": EXPORT,
    "Query": QUERY,
    "SecurityAlert": SECURITY_ALERT,
    "UserAuthentication": USER_AUTHENTICATION,
}
_NAME_BY_CODE = {code.code: name for name, code in EVENT_NAMES.items()}

# --- CID 401 Audit Event Type Code (Application Activity, User Authentication) ---
APPLICATION_START = _dcm("110120", "Application Start")
APPLICATION_STOP = _dcm("110121", "Application Stop")
LOGIN = _dcm("110122", "Login")
LOGOUT = _dcm("110123", "Logout")

# --- CID 403 Security Alert Type Code ---
NODE_AUTHENTICATION = _dcm("110126", "Node Authentication")
EMERGENCY_OVERRIDE_STARTED = _dcm("110127", "Emergency Override Started")
NETWORK_CONFIGURATION = _dcm("110128", "Network Configuration")
SECURITY_CONFIGURATION = _dcm("110129", "Security Configuration")
HARDWARE_CONFIGURATION = _dcm("110130", "Hardware Configuration")
SOFTWARE_CONFIGURATION = _dcm("110131", "Software Configuration")
USE_OF_RESTRICTED_FUNCTION = _dcm("110132", "Use of Restricted Function")
AUDIT_RECORDING_STOPPED = _dcm("110133", "Audit Recording Stopped")
AUDIT_RECORDING_STARTED = _dcm("110134", "Audit Recording Started")
OBJECT_SECURITY_ATTRIBUTES_CHANGED = _dcm("110135", "Object Security Attributes Changed")
SECURITY_ROLES_CHANGED = _dcm("110136", "Security Roles Changed")
USER_SECURITY_ATTRIBUTES_CHANGED = _dcm("110137", "User Security Attributes Changed")

# --- CID 402 Audit Active Participant Role ID Code ---
ROLE_APPLICATION = _dcm("110150", "Application")
ROLE_APPLICATION_LAUNCHER = _dcm("110151", "Application Launcher")
ROLE_DESTINATION = _dcm("110152", "Destination Role ID")
ROLE_SOURCE = _dcm("110153", "Source Role ID")
ROLE_DESTINATION_MEDIA = _dcm("110154", "Destination Media")
ROLE_SOURCE_MEDIA = _dcm("110155", "Source Media")

# --- Participant Object ID Type Codes (PS3.15 A.5.1.2.4 / RFC 3881, and CID 404) ---
ID_PATIENT_NUMBER = _rfc3881("2", "Patient Number")
ID_USER_IDENTIFIER = _rfc3881("11", "User Identifier")
ID_URI = _rfc3881("12", "URI")
ID_STUDY_INSTANCE_UID = _dcm("110180", "Study Instance UID")
ID_SOP_CLASS_UID = _dcm("110181", "SOP Class UID")
ID_NODE_ID = _dcm("110182", "Node ID")

# Participant Object Type Code / Type Code Role values (PS3.15 A.5.1.2.2)
TYPE_PERSON, TYPE_SYSTEM_OBJECT, TYPE_ORGANIZATION, TYPE_OTHER = 1, 2, 3, 4
ROLE_PATIENT, ROLE_REPORT, ROLE_SECURITY_USER_ENTITY, ROLE_SECURITY_RESOURCE, ROLE_QUERY = 1, 3, 11, 13, 24

# EventActionCode and EventOutcomeIndicator (PS3.15 A.5.1)
ACTIONS = frozenset({"C", "R", "U", "D", "E"})
OUTCOME_SUCCESS, OUTCOME_MINOR_FAILURE, OUTCOME_SERIOUS_FAILURE, OUTCOME_MAJOR_FAILURE = 0, 4, 8, 12
OUTCOMES = frozenset({0, 4, 8, 12})

# AuditSourceTypeCode 4 = "Application Server process tier in a multi-tier system" (PS3.15 A.5.1.2.1)
SOURCE_TYPE_APPLICATION_SERVER = "4"


def event_name(event: Code | str) -> str:
    """The short name of an event ID or its code (the MSGID); unknown codes fall back to the code itself."""
    code = event.code if isinstance(event, Code) else event
    return _NAME_BY_CODE.get(code, code)


def resolve_event(value: str) -> str:
    """Map an event name ("Query"), code ("110112") or meaning ("DICOM Instances Accessed") to its code."""
    wanted = value.strip().lower()
    for name, code in EVENT_NAMES.items():
        if wanted in (name.lower(), code.code, code.meaning.lower()):
            return code.code
    raise ValueError(f"unknown audit event {value!r}: use one of {', '.join(EVENT_NAMES)} or a DCM code")
