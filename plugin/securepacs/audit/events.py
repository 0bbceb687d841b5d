"""Builders for the events PS3.15 A.5.3 specialises, so callers get the required shape right once.

Each builder fills the EventID, EventActionCode, EventTypeCode and the participant roles the standard
prescribes for that event; callers supply who (ActiveParticipant) and what (ParticipantObject).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace

from securepacs.audit import codes
from securepacs.audit.codes import Code
from securepacs.audit.record import ActiveParticipant, AuditRecord, AuditSource, ParticipantObject, SopClassCount

Details = Mapping[str, str] | None


def _with_role(participant: ActiveParticipant, role: Code) -> ActiveParticipant:
    if role in participant.roles:
        return participant
    return replace(participant, roles=(*participant.roles, role))


def _objects(studies: Iterable[ParticipantObject], patient: ParticipantObject | None) -> tuple[ParticipantObject, ...]:
    return (*studies, *((patient,) if patient is not None else ()))


# --- participant objects -------------------------------------------------------------------------


def patient(patient_id: str, name: str | None = None) -> ParticipantObject:
    """The patient (A.5.3: Person / Patient / Patient Number); the name is the DICOM PN as stored."""
    return ParticipantObject(
        patient_id, codes.ID_PATIENT_NUMBER, type_code=codes.TYPE_PERSON, role=codes.ROLE_PATIENT, name=name
    )


def study(
    study_uid: str,
    sop_classes: Mapping[str, int] | Iterable[SopClassCount] = (),
    accessions: Iterable[str] = (),
    name: str | None = None,
) -> ParticipantObject:
    """A study (A.5.3: System Object / Report / Study Instance UID) with per-SOP-class instance counts."""
    counts = (
        tuple(SopClassCount(uid, n) for uid, n in sorted(sop_classes.items()))
        if isinstance(sop_classes, Mapping)
        else tuple(sop_classes)
    )
    return ParticipantObject(
        study_uid,
        codes.ID_STUDY_INSTANCE_UID,
        type_code=codes.TYPE_SYSTEM_OBJECT,
        role=codes.ROLE_REPORT,
        name=name,
        sop_classes=counts,
        accessions=tuple(accessions),
    )


def query_object(sop_class_uid: str, query: bytes, transfer_syntax: str | None = None) -> ParticipantObject:
    """The query (A.5.3.10: SOP Class UID as ID, the query bytes unchanged, TransferSyntax detail)."""
    details = {"TransferSyntax": transfer_syntax} if transfer_syntax else {}
    return ParticipantObject(
        sop_class_uid,
        codes.ID_SOP_CLASS_UID,
        type_code=codes.TYPE_SYSTEM_OBJECT,
        role=codes.ROLE_REPORT,
        query=query,
        details=tuple(details.items()),
    )


def audit_log(uri: str) -> ParticipantObject:
    """The audit log itself (A.5.3.2: System Object / Security Resource / URI)."""
    return ParticipantObject(
        uri, codes.ID_URI, type_code=codes.TYPE_SYSTEM_OBJECT, role=codes.ROLE_SECURITY_RESOURCE,
        name="Security Audit Log",
    )


def user_account(user_id: str, name: str | None = None, details: Details = None) -> ParticipantObject:
    """A user or clinic account that a security event is about (Security User Entity / User Identifier)."""
    return ParticipantObject(
        user_id, codes.ID_USER_IDENTIFIER, type_code=codes.TYPE_PERSON, role=codes.ROLE_SECURITY_USER_ENTITY,
        name=name, details=tuple((details or {}).items()),
    )


def node(node_id: str, name: str | None = None, details: Details = None) -> ParticipantObject:
    """A network node or configuration item a security alert is about (Node ID)."""
    return ParticipantObject(
        node_id, codes.ID_NODE_ID, type_code=codes.TYPE_SYSTEM_OBJECT, role=codes.ROLE_SECURITY_RESOURCE,
        name=name, details=tuple((details or {}).items()),
    )


# --- events --------------------------------------------------------------------------------------


def application_activity(
    source: AuditSource,
    application: ActiveParticipant,
    *,
    started: bool,
    launcher: ActiveParticipant | None = None,
    outcome: int = codes.OUTCOME_SUCCESS,
    details: Details = None,
) -> AuditRecord:
    """A.5.3.1: the application started or stopped (Execute); the launcher, if known, is the requestor."""
    participants = [_with_role(application, codes.ROLE_APPLICATION)]
    if launcher is not None:
        participants.append(_with_role(replace(launcher, is_requestor=True), codes.ROLE_APPLICATION_LAUNCHER))
    return AuditRecord(
        event=codes.APPLICATION_ACTIVITY, action="E", outcome=outcome, participants=tuple(participants),
        source=source, event_types=(codes.APPLICATION_START if started else codes.APPLICATION_STOP,),
        details=tuple((details or {}).items()),
    )


def audit_log_used(
    source: AuditSource, user: ActiveParticipant, log_uri: str, *, outcome: int = 0, details: Details = None
) -> AuditRecord:
    """A.5.3.2: someone read (searched, exported, verified) the audit log."""
    return AuditRecord(
        event=codes.AUDIT_LOG_USED, action="R", outcome=outcome, participants=(replace(user, is_requestor=True),),
        source=source, objects=(audit_log(log_uri),), details=tuple((details or {}).items()),
    )


def instances_accessed(
    source: AuditSource,
    requestor: ActiveParticipant,
    studies: Iterable[ParticipantObject],
    patient_object: ParticipantObject | None,
    *,
    action: str = "R",
    outcome: int = codes.OUTCOME_SUCCESS,
    description: str | None = None,
    details: Details = None,
) -> AuditRecord:
    """A.5.3.4: instances were created (C), read (R), updated (U) or deleted (D) by the requestor."""
    return AuditRecord(
        event=codes.INSTANCES_ACCESSED, action=action, outcome=outcome,
        participants=(replace(requestor, is_requestor=True),), source=source,
        objects=_objects(studies, patient_object), outcome_description=description,
        details=tuple((details or {}).items()),
    )


def instances_transferred(
    source: AuditSource,
    sender: ActiveParticipant,
    receiver: ActiveParticipant,
    studies: Iterable[ParticipantObject],
    patient_object: ParticipantObject | None,
    *,
    action: str = "R",
    outcome: int = codes.OUTCOME_SUCCESS,
    others: Iterable[ActiveParticipant] = (),
    description: str | None = None,
    details: Details = None,
) -> AuditRecord:
    """A.5.3.5: instances moved between nodes; C = received and stored here, R = sent from here."""
    participants = (
        _with_role(sender, codes.ROLE_SOURCE), _with_role(receiver, codes.ROLE_DESTINATION), *others,
    )
    return AuditRecord(
        event=codes.INSTANCES_TRANSFERRED, action=action, outcome=outcome, participants=participants,
        source=source, objects=_objects(studies, patient_object), outcome_description=description,
        details=tuple((details or {}).items()),
    )


def study_deleted(
    source: AuditSource,
    requestor: ActiveParticipant,
    studies: Iterable[ParticipantObject],
    patient_object: ParticipantObject | None,
    *,
    outcome: int = codes.OUTCOME_SUCCESS,
    details: Details = None,
) -> AuditRecord:
    """A.5.3.6: a study was deleted (Delete)."""
    return AuditRecord(
        event=codes.STUDY_DELETED, action="D", outcome=outcome, participants=(replace(requestor, is_requestor=True),),
        source=source, objects=_objects(studies, patient_object), details=tuple((details or {}).items()),
    )


def export(
    source: AuditSource,
    requestor: ActiveParticipant,
    destination: ActiveParticipant,
    studies: Iterable[ParticipantObject],
    patient_object: ParticipantObject | None,
    *,
    outcome: int = codes.OUTCOME_SUCCESS,
    details: Details = None,
) -> AuditRecord:
    """A.5.3.8: data left the archive on media or to another system (Read); destination = media/target."""
    participants = (replace(requestor, is_requestor=True), _with_role(destination, codes.ROLE_DESTINATION_MEDIA))
    return AuditRecord(
        event=codes.EXPORT, action="R", outcome=outcome, participants=participants, source=source,
        objects=_objects(studies, patient_object), details=tuple((details or {}).items()),
    )


def query(
    source: AuditSource,
    requestor: ActiveParticipant,
    archive: ActiveParticipant,
    sop_class_uid: str,
    query_bytes: bytes,
    *,
    transfer_syntax: str | None = None,
    outcome: int = codes.OUTCOME_SUCCESS,
    details: Details = None,
) -> AuditRecord:
    """A.5.3.10: a query was served (Execute); the requestor is the Source, the archive the Destination."""
    participants = (
        _with_role(replace(requestor, is_requestor=True), codes.ROLE_SOURCE),
        _with_role(archive, codes.ROLE_DESTINATION),
    )
    return AuditRecord(
        event=codes.QUERY, action="E", outcome=outcome, participants=participants, source=source,
        objects=(query_object(sop_class_uid, query_bytes, transfer_syntax),), details=tuple((details or {}).items()),
    )


def security_alert(
    source: AuditSource,
    alert_type: Code,
    reporter: ActiveParticipant,
    subjects: Iterable[ParticipantObject] = (),
    *,
    performer: ActiveParticipant | None = None,
    outcome: int = codes.OUTCOME_SUCCESS,
    description: str | None = None,
    details: Details = None,
) -> AuditRecord:
    """A.5.3.11: a security relevant event; ``alert_type`` from CID 403 (e.g. codes.NODE_AUTHENTICATION)."""
    participants = (reporter, *((replace(performer, is_requestor=True),) if performer is not None else ()))
    return AuditRecord(
        event=codes.SECURITY_ALERT, action="E", outcome=outcome, participants=participants, source=source,
        event_types=(alert_type,), objects=tuple(subjects), outcome_description=description,
        details=tuple((details or {}).items()),
    )


def user_authentication(
    source: AuditSource,
    user: ActiveParticipant,
    *,
    login: bool,
    outcome: int = codes.OUTCOME_SUCCESS,
    authenticator: ActiveParticipant | None = None,
    description: str | None = None,
    details: Details = None,
) -> AuditRecord:
    """A.5.3.12: a login or logout attempt (Execute); failed logins carry outcome 4/8/12."""
    participants = (replace(user, is_requestor=True), *((authenticator,) if authenticator is not None else ()))
    return AuditRecord(
        event=codes.USER_AUTHENTICATION, action="E", outcome=outcome, participants=participants, source=source,
        event_types=(codes.LOGIN if login else codes.LOGOUT,), outcome_description=description,
        details=tuple((details or {}).items()),
    )
