"""What the archive writes to its audit trail, said in the application's terms.

The services call these methods (a store admitted, a query answered, a login refused); this module turns
them into PS3.15 A.5.3 records (``securepacs.audit.events``) and appends them to the trail. It never
logs patient data itself: identifiers go to the trail only.

Write failures are not swallowed: an access that cannot be recorded must not happen, so the caller's
error path refuses it (the C-STORE filter answers 0xC000, the HTTP filter refuses the request).

HTTP accesses are recorded when the filter authorises the request, before Orthanc serves it: the record
says "authorised and handed to the archive", not whether Orthanc then found the resource.
"""

from __future__ import annotations

import logging
import re
import socket
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from securepacs.access.principal import Principal
from securepacs.audit import ActiveParticipant, AuditRecord, AuditSource, AuditTrail, codes, events
from securepacs.dicom.identifiers import ORTHANC_ID_PATTERN, InstanceIds

log = logging.getLogger(__name__)

QIDO_RS = "QIDO-RS"  # the query object's ID for HTTP searches (no SOP class; the query text says which)
ORTHANC_FIND = "ORTHANC-TOOLS-FIND"  # the query object's ID for Orthanc's POST /tools/find (its JSON body)

_ID = ORTHANC_ID_PATTERN
_ORTHANC_RESOURCE = re.compile(rf"/(studies|series|instances|patients)/({_ID})(/.*)?")
_DICOMWEB_STUDY = re.compile(r"/dicom-web/studies/([0-9.]{1,64})(?:/.*)?")
# POST /tools/find and /tools/create-archive|media name their data in the body, which the filter never
# sees: the plugin's routes over those URIs record them (``securepacs.archive.orthanc_tools``), not this filter.
_EXPORTS = re.compile(rf"/(?:studies|series|patients)/{_ID}/(?:archive|media)")
_QUERIES = re.compile(r"/securepacs/api/studies|/securepacs/dicom-web/(?:studies|series|instances)"
                      r"|/dicom-web/(?:studies|series|instances)")
_ACCOUNT_ADMIN = re.compile(r"/securepacs/api/users(?:/.*)?")
_CONFIGURATION = re.compile(r"/(?:modalities|peers|tools/(?:reset|shutdown|log-level|default-encoding))(?:/.*)?")

# (level of an Orthanc ID) -> the Orthanc study ID above it, or None; and Orthanc study ID -> study UID.
StudyOf = Callable[[str, str], "str | None"]
StudyUidOf = Callable[[str], "str | None"]
# SOP Instance UID -> the Study Instance UID of the study holding it (WADO-URI may name the object alone).
InstanceStudyUid = Callable[[str], "str | None"]


class Auditor:
    def __init__(self, trail: AuditTrail | None, archive_aet: str, *,
                 study_of: StudyOf | None = None, study_uid_of: StudyUidOf | None = None,
                 instance_study_uid: InstanceStudyUid | None = None):
        self.trail = trail
        self.source = AuditSource(f"securepacs@{socket.gethostname()}", site=archive_aet)
        self.archive = ActiveParticipant(archive_aet, ae_title=archive_aet)
        self._study_of = study_of or (lambda _level, _id: None)
        self._study_uid_of = study_uid_of or (lambda _id: None)
        self._instance_study_uid = instance_study_uid or (lambda _uid: None)
        if trail is None:
            log.error("audit trail DISABLED by configuration (SecurePACS.AuditTrail = null): not for production")

    def write(self, record: AuditRecord) -> None:
        if self.trail is not None:
            self.trail.append(record)

    # -- participants ----------------------------------------------------------------------------------
    @staticmethod
    def dicom_peer(calling_aet: str, clinic: str | None) -> ActiveParticipant:
        return ActiveParticipant(calling_aet, ae_title=calling_aet, clinic=clinic)

    @staticmethod
    def http_user(principal: Principal | None, client_ip: str, username: str | None = None) -> ActiveParticipant:
        name = principal.name if principal else (username or "anonymous")
        return ActiveParticipant(name, user_name=principal.role if principal else None,
                                 clinic=principal.clinic if principal else None,
                                 network_access_point=client_ip or None)

    # -- application -----------------------------------------------------------------------------------
    def application(self, started: bool) -> None:
        self.write(events.application_activity(self.source, self.archive, started=started))

    # -- DICOM -----------------------------------------------------------------------------------------
    def stored(self, calling_aet: str, clinic: str | None, ids: InstanceIds | None, status: int,
               reason: str = "", *, requestor: ActiveParticipant | None = None) -> None:
        """One C-STORE (or STOW-RS part, whose ``requestor`` is the HTTP user) decided: written before
        Orthanc acknowledges it."""
        studies = [events.study(ids.study_uid, {ids.sop_class_uid or "unknown": 1})] if ids else []
        patient = events.patient(ids.patient_id) if ids and ids.patient_id else None
        self.write(events.instances_transferred(
            self.source, requestor or self.dicom_peer(calling_aet, clinic), self.archive, studies, patient,
            action="C",
            outcome=codes.OUTCOME_SUCCESS if status == 0 else codes.OUTCOME_SERIOUS_FAILURE,
            description=None if status == 0 else f"refused with status 0x{status:04X}: {reason}",
            details={"sop_instance_uid": ids.sop_uid if ids else "", "status": f"0x{status:04X}"},
        ))

    def queried(self, requestor: ActiveParticipant, sop_class_uid: str, query: bytes, answers: int,
                *, level: str, patient_id: str | None = None, outcome: int = codes.OUTCOME_SUCCESS) -> None:
        details = {"level": level, "answers": str(answers)}
        if patient_id:
            details["patient_id"] = patient_id
        self.write(events.query(self.source, requestor, self.archive, sop_class_uid, query, outcome=outcome,
                                details=details))

    def retrieved(self, destination: ActiveParticipant, study_uids: Iterable[str], *, via: str,
                  outcome: int = codes.OUTCOME_SUCCESS, description: str | None = None,
                  patient_ids: Iterable[str] = (), others: Iterable[ActiveParticipant] = ()) -> None:
        """Instances sent from here (C-MOVE to a clinic's node, C-GET through the gateway); ``others``: who
        asked, when that is not the destination (the C-MOVE's requestor)."""
        subjects = [*(events.study(uid) for uid in study_uids), *(events.patient(p) for p in patient_ids)]
        self.write(events.instances_transferred(
            self.source, self.archive, destination, subjects, None, action="R", outcome=outcome,
            others=others, description=description, details={"via": via},
        ))

    # -- HTTP ------------------------------------------------------------------------------------------
    def http(self, principal: Principal | None, method: str, uri: str, get: Mapping[str, str],
             client_ip: str, allowed: bool, reason: str) -> None:
        """One authenticated HTTP request the filter decided on."""
        if principal is None:
            return  # no credentials: refused before any data; failed logins are recorded by the accounts hook
        user = self.http_user(principal, client_ip)
        if not allowed:
            self.write(events.security_alert(
                self.source, codes.USE_OF_RESTRICTED_FUNCTION, self.archive,
                [events.node(uri, details={"method": method})], performer=user,
                outcome=codes.OUTCOME_MINOR_FAILURE, description=reason))
            return
        record = self._http_record(user, method, uri, get)
        if record is not None:
            self.write(record)

    def http_query(self, principal: Principal | None, client_ip: str, uri: str, query: bytes, answers: int, *,
                   level: str, patient_id: str | None = None) -> None:
        """A search whose criteria are in the request body (POST /tools/find): the plugin's route records it."""
        details = {"method": "POST", "uri": uri, "level": level, "answers": str(answers)}
        if patient_id:
            details["patient_id"] = patient_id
        self.write(events.query(self.source, self.http_user(principal, client_ip), self.archive, ORTHANC_FIND,
                                query, details=details))

    def http_export(self, principal: Principal | None, client_ip: str, uri: str, study_uids: Iterable[str],
                    patient_ids: Iterable[str] = (), unknown: Iterable[str] = ()) -> None:
        """An archive or media export whose resources are in the request body (POST /tools/create-archive,
        /tools/create-media[-extended]): the plugin's route records it before Orthanc builds it."""
        user = self.http_user(principal, client_ip)
        subjects = [*(events.study(uid) for uid in study_uids), *(events.patient(p) for p in patient_ids)]
        details = {"method": "POST", "uri": uri}
        if unknown := list(unknown):
            details["unresolved_resources"] = ",".join(unknown)  # Orthanc IDs that name nothing stored
        self.write(events.export(self.source, user, ActiveParticipant(f"http-download:{user.user_id}"), subjects,
                                 None, details=details))

    def _http_record(self, user: ActiveParticipant, method: str, uri: str,
                     get: Mapping[str, str]) -> AuditRecord | None:
        details = {"method": method, "uri": uri}
        if uri == "/wado" and get.get("objectUID"):
            details["sop_instance_uid"] = get["objectUID"]  # the instance itself (the objects name its study)
        if method == "GET" and _QUERIES.fullmatch(uri):
            query = (uri + ("?" + urllib.parse.urlencode(sorted(get.items())) if get else "")).encode()
            return events.query(self.source, user, self.archive, QIDO_RS, query, details=details)
        if method == "POST" and uri == "/securepacs/dicom-web/studies":
            return events.instances_transferred(self.source, user, self.archive, [], None, action="C",
                                                details={**details, "via": "STOW-RS"})
        if _ACCOUNT_ADMIN.fullmatch(uri) and method != "GET":
            return events.security_alert(self.source, codes.USER_SECURITY_ATTRIBUTES_CHANGED, self.archive,
                                         [events.node(uri)], performer=user, details=details)
        if _CONFIGURATION.fullmatch(uri) and method != "GET":
            return events.security_alert(self.source, codes.SOFTWARE_CONFIGURATION, self.archive,
                                         [events.node(uri)], performer=user, details=details)
        studies = self._studies_named(uri, get)
        if studies is None:
            return None
        if method == "DELETE":
            return events.study_deleted(self.source, user, studies, None, details=details)
        if _EXPORTS.fullmatch(uri):
            return events.export(self.source, user, ActiveParticipant(f"http-download:{user.user_id}"), studies,
                                 None, details=details)
        return events.instances_accessed(self.source, user, studies, None,
                                         action="C" if method in ("POST", "PUT") else "R", details=details)

    def _studies_named(self, uri: str, get: Mapping[str, str]) -> list[Any] | None:
        """The studies an HTTP request touches, or None when it touches no patient data."""
        match = _ORTHANC_RESOURCE.fullmatch(uri)
        if match:
            level = {"studies": "study", "series": "series", "instances": "instance"}.get(match[1])
            study_id = self._study_of(level, match[2]) if level else None
            uid = self._study_uid_of(study_id) if study_id else None
            return [events.study(uid or f"orthanc:{match[2]}")]
        match = _DICOMWEB_STUDY.fullmatch(uri)
        if match:
            return [events.study(match[1])]
        if uri == "/wado" and get.get("studyUID"):
            return [events.study(get["studyUID"])]
        if uri == "/wado" and get.get("objectUID"):
            # Orthanc serves WADO-URI by the object alone; the record still names the study holding it.
            uid = self._instance_study_uid(get["objectUID"])
            return [events.study(uid)] if uid else []
        if uri in ("/instances", "/wado"):
            return []
        return None

    # -- accounts and security ---------------------------------------------------------------------------
    def authentication(self, kind: str, username: str, client_ip: str, ok: bool, reason: str = "") -> None:
        """``kind``: login | logout | lockout | basic (a failed HTTP Basic attempt)."""
        user = ActiveParticipant(username or "unknown", network_access_point=client_ip or None)
        outcome = codes.OUTCOME_SUCCESS if ok else codes.OUTCOME_MINOR_FAILURE
        if kind == "lockout":
            self.write(events.security_alert(
                self.source, codes.USER_SECURITY_ATTRIBUTES_CHANGED, self.archive,
                [events.user_account(username)], performer=user, outcome=codes.OUTCOME_SERIOUS_FAILURE,
                description=reason or "account locked after repeated failed logins"))
            return
        self.write(events.user_authentication(self.source, user, login=kind != "logout", outcome=outcome,
                                              authenticator=self.archive, description=reason or None,
                                              details={"via": kind}))

    def security_event(self, kind: str, details: Mapping[str, Any]) -> None:
        """A refused cross-tenant attempt (tenancy, moves, C-GET checks)."""
        actor_name = str(details.get("source") or details.get("clinic") or "unknown")
        actor = ActiveParticipant(actor_name, clinic=details.get("clinic"))
        subjects = [events.study(str(details["study_uid"]))] if details.get("study_uid") else []
        self.write(events.security_alert(
            self.source, codes.USE_OF_RESTRICTED_FUNCTION, self.archive, subjects, performer=actor,
            outcome=codes.OUTCOME_SERIOUS_FAILURE, description=f"{kind}: {details.get('reason', '')}".strip(),
            details={k: str(v) for k, v in details.items() if k not in ("study_uid",)}))

    def log_used(self, principal: Principal | None, client_ip: str, what: str,
                 criteria: Mapping[str, str]) -> None:
        self.write(events.audit_log_used(self.source, self.http_user(principal, client_ip),
                                         str(self.trail.path) if self.trail else "audit-trail",
                                         details={"action": what, **criteria}))
