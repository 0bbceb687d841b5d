"""The plugin's composition root: builds the services from validated configuration.

Knows nothing of the ``orthanc`` module: the adapter hands in what Orthanc provides (REST API, modality
API, version probe) and translates Orthanc's callbacks into these plain methods, so all of it is
unit-testable without Orthanc.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from securepacs import __version__
from securepacs.access import account_api
from securepacs.access.accounts import Accounts, AccountSettings
from securepacs.access.principal import ADMIN, AUDITOR, CLINIC_DEVICE, GATEWAY, Principal
from securepacs.archive.http_auth import FORGED, HTTP_METHODS, NOT_INTERNAL, HttpAuthenticator
from securepacs.archive.http_policy import OWNERSHIP_URI, HttpPolicy
from securepacs.archive.modalities import ModalityApi, ModalitySync
from securepacs.archive.move_scp import MoveOperation, MovePlan, MoveRefused, MoveService
from securepacs.archive.orthanc_tools import OrthancTools
from securepacs.audit import ActiveParticipant, AuditTrail, codes
from securepacs.audit.recorder import Auditor
from securepacs.audit.trail_api import AuditApi
from securepacs.config.plugin_settings import PluginConfig
from securepacs.dicom import status_codes
from securepacs.pki import enrolment
from securepacs.platform import exposure, health
from securepacs.store.database import Store
from securepacs.store.records import Clinic, StoreError
from securepacs.tenancy import find_engine, find_identifier, qido, retrieve_policy
from securepacs.tenancy.ownership import Tenancy
from securepacs.tenancy.stored_check import StoredInstanceCheck
from securepacs.tenancy.stow import StowService
from securepacs.tenancy.study_list import StudyList
from securepacs.tenancy.subjects import Subjects, patient_ids
from securepacs.web.messages import Request, Response
from securepacs.web.orthanc_api import OrthancRest
from securepacs.webapp.service import WebApp

log = logging.getLogger(__name__)

AnyHandler = Callable[[Request, Principal | None], Response]
# Orthanc's HTTP port listens on loopback only (RemoteAccessAllowed false): every request to a plugin
# route comes from this host, through nginx (which adds its secret) or from a local service.
PROXY_PEER = "127.0.0.1"
AET_CACHE_SECONDS = 1.0
# Sent by the gateway with each ownership check (securepacs.gateway.ownership_client.CALLING_AET_HEADER; not
# imported: the plugin does not load the gateway package).
CALLING_AET_HEADER = "x-securepacs-calling-aet"


class SecurePacsApp:
    def __init__(
        self,
        config: PluginConfig,
        rest: OrthancRest,
        modality_api: ModalityApi,
        orthanc_system: Callable[[], Mapping[str, Any]],
        platform_versions: Callable[[], Mapping[str, str | None]] | None = None,
    ):
        self.config = config
        self._rest = rest
        self.store = Store(config.store_path)
        self.tenancy = Tenancy(self.store, rest, on_security_event=self.security_event)
        trail = (AuditTrail(config.audit_trail, signing_key=config.audit_checkpoint_key,
                            checkpoint_interval=config.audit_checkpoint_seconds) if config.audit_trail else None)
        self.subjects = Subjects(rest, self.tenancy, self.store)
        self.audit = Auditor(trail, config.archive_aet, study_of=self.tenancy.study_of,
                             study_uid_of=self.tenancy.study_uid_of, instance_study_uid=self._instance_study_uid)
        self.audit_api = AuditApi(self.audit)
        self.policy = HttpPolicy(self.tenancy)
        self.accounts = Accounts(self.store, AccountSettings.from_config(config), on_event=self.audit.authentication)
        self.auth = HttpAuthenticator(
            self.accounts,
            self.policy.decide,
            trusted_proxies=config.trusted_proxies,
            client_ip_header=config.client_ip_header,
            proxy_secret=config.proxy_secret,
        )
        self.modalities = ModalitySync(self.store, modality_api, config.move_relay_port, config.dicom_tls)
        self.queries = find_engine.QueryEngine(rest, study_uids=self.store.study_uids_of)
        self.moves = MoveService(self.store, self.tenancy, rest, on_security_event=self.security_event)
        self.stow = StowService(self.tenancy, rest, self.audit, on_security_event=self.security_event)
        self.stored_check = StoredInstanceCheck(rest, self.audit, self.security_event, clinic_of=self._clinic_of_aet)
        self.studies = StudyList(self.queries)
        self._orthanc_system = orthanc_system
        self._platform_versions = platform_versions
        self._platform: dict[str, Any] | None = None  # the versions do not change while Orthanc runs
        self._aet_cache: dict[str, tuple[Principal | None, float]] = {}
        self.webapp = WebApp(rest, self.audit)  # type: ignore[arg-type]  # adapter.RestApi also reads bytes

    def _instance_study_uid(self, sop_uid: str) -> str | None:
        ref = self.subjects.of_instance_uid(sop_uid)
        return ref.uid if ref else None

    def security_event(self, kind: str, details: Mapping[str, Any]) -> None:
        """A refused cross-tenant attempt. The audit trail records the details; the operational log gets
        only the kind and the actor, never identifiers of patient data."""
        log.warning("security event %r by clinic %r", kind, details.get("clinic"))
        self.audit.security_event(kind, details)

    # -- DICOM -----------------------------------------------------------------------------------------
    def dicom_principal(self, calling_aet: str) -> Principal | None:
        # Looked up once a second per AE title, not once per instance (a store query each, ~10 % of the
        # filter's time). A revocation reaches new associations at the gateway at once and here within
        # AET_CACHE_SECONDS.
        now = time.monotonic()
        hit = self._aet_cache.get(calling_aet)
        if hit is not None and hit[1] > now:
            return hit[0]
        clinic = self.store.clinic_for_aet(calling_aet)
        principal = (Principal(calling_aet, CLINIC_DEVICE, clinic.name, via="dicom")
                     if clinic is not None and clinic.active else None)
        if len(self._aet_cache) > 10_000:
            self._aet_cache.clear()
        self._aet_cache[calling_aet] = (principal, now + AET_CACHE_SECONDS)
        return principal

    def on_cstore(self, data: bytes, calling_aet: str) -> int:
        principal = self.dicom_principal(calling_aet)
        if principal is None or principal.clinic is None:
            log.warning("C-STORE from %r refused: not an enrolled clinic", calling_aet)
            self.audit.stored(calling_aet, None, None, status_codes.REFUSED_NOT_AUTHORIZED, "not an enrolled clinic")
            return status_codes.REFUSED_NOT_AUTHORIZED
        admission = self.tenancy.admit(data, principal.clinic, f"dicom:{calling_aet}")
        # Recorded before Orthanc stores and acknowledges the instance (the trail's write() is done when
        # this returns; see securepacs.audit for what a crash can and cannot lose).
        self.audit.stored(calling_aet, principal.clinic, admission.ids, admission.status, admission.reason)
        if admission.admitted and admission.ids is not None:
            self.stored_check.admitted(admission.ids, calling_aet)  # Orthanc must index exactly these
        return admission.status

    def on_stored(self, instance_id: str, origin: str, remote_aet: str, tags: Callable[[], Mapping[str, Any]]) -> None:
        """Orthanc stored a new instance: one it received over DICOM must be one the filter admitted."""
        self.stored_check.on_stored(instance_id, origin, remote_aet, tags)

    def _clinic_of_aet(self, calling_aet: str) -> str | None:
        principal = self.dicom_principal(calling_aet)
        return principal.clinic if principal else None

    def on_find(self, items: list[tuple[int, int, str]], calling_aet: str, _called_aet: str) -> Iterable[bytes]:
        principal = self.dicom_principal(calling_aet)
        peer = self.audit.dicom_peer(calling_aet, principal.clinic if principal else None)
        level, identifier = find_identifier.parse_find_query(items)
        query = find_identifier.encode_answer(identifier)
        patient_id = str(identifier.get("PatientID", "") or "")
        if principal is None:
            self.audit.queried(peer, find_identifier.find_sop_class(level), query, 0, level=level,
                               patient_id=patient_id, outcome=codes.OUTCOME_SERIOUS_FAILURE)
            raise PermissionError(f"C-FIND from {calling_aet!r} refused: not an enrolled clinic")
        answers = self.queries.find(level, identifier, self.tenancy.scope(principal))
        self.audit.queried(peer, find_identifier.find_sop_class(level), query, len(answers), level=level,
                           patient_id=patient_id)
        log.info("C-FIND at %s level by %r: %d answer(s)", level, calling_aet, len(answers))
        return [find_identifier.encode_answer(ds) for ds in answers]

    def start_move(self, request: Mapping[str, str]) -> MoveOperation:
        """Plan a C-MOVE (a refusal raises :class:`MoveRefused`, audited); the operation sends it when run."""
        caller = request.get("OriginatorAET") or "unknown"
        destination = self.audit.dicom_peer(request.get("TargetAET") or "unknown", None)
        requestor = dataclasses.replace(self.audit.dicom_peer(caller, None), is_requestor=True)
        level = (request.get("Level") or "").upper()
        # DICOM calls the level IMAGE; Orthanc passes INSTANCE.
        via = f"C-MOVE by {caller} at {'IMAGE' if level == 'INSTANCE' else level} level"
        try:
            plan = self.moves.plan(request)
        except MoveRefused as exc:
            log.warning("C-MOVE refused: %s", exc)
            # Refused while planning: only what the request itself said (nothing is resolved for resources
            # that may be another clinic's).
            named = [uid for uid in (request.get("StudyInstanceUID") or "").split("\\") if uid.strip()]
            self.audit.retrieved(destination, named, via=via, outcome=codes.OUTCOME_SERIOUS_FAILURE,
                                 description=str(exc), others=[requestor], patient_ids=[])
            raise
        # The record names the studies the moved series/instances lie in, and their patients.
        studies, _ = self.subjects.of_orthanc_ids(plan.resources)
        destination, requestor = self._move_peers(plan, destination, requestor)

        def transfer() -> int | None:
            failed: int | None
            try:
                failed = self.moves.transfer(plan, request)
                problem = f"C-MOVE to {plan.modality!r}: {failed} instance(s) failed" if failed else ""
            except Exception as exc:  # Orthanc could not send (destination unreachable, job failed)
                failed, problem = None, f"C-MOVE to {plan.modality!r} failed: {exc}"
            if problem:
                log.warning("C-MOVE refused: %s", problem)
            outcome = codes.OUTCOME_SERIOUS_FAILURE if problem else codes.OUTCOME_SUCCESS
            self.audit.retrieved(destination, [s.uid for s in studies], via=via, outcome=outcome,
                                 description=problem or None, patient_ids=patient_ids(studies), others=[requestor])
            return failed

        return MoveOperation(plan, lambda: self.moves.instance_count(plan), transfer)

    def _move_peers(self, plan: MovePlan, destination: ActiveParticipant,
                    requestor: ActiveParticipant) -> tuple[ActiveParticipant, ActiveParticipant]:
        """Destination and requestor of a planned move, with their clinic and the destination's address."""
        try:
            clinic = self.store.get_clinic(plan.clinic)
        except StoreError:
            return destination, requestor
        return (dataclasses.replace(destination, clinic=clinic.name, network_access_point=clinic.move_host),
                dataclasses.replace(requestor, clinic=clinic.name))

    # -- HTTP ------------------------------------------------------------------------------------------
    def filter_http(
        self, uri: str, method_code: int, peer_ip: str, headers: Mapping[str, str], get: Mapping[str, str] | None = None
    ) -> bool:
        method = HTTP_METHODS.get(method_code, "OTHER")
        decision = self.auth.authorize(uri, method, peer_ip, headers, get or {})
        if not decision.allowed:
            log.info("HTTP %s %r from %r refused: %s", method, uri, decision.client_ip, decision.reason)
        self.audit.http(decision.principal, method, uri, get or {}, decision.client_ip, decision.allowed,
                        decision.reason)
        return decision.allowed

    def routes(self) -> list[tuple[str, Callable[[Request], Response]]]:
        """The plugin's own HTTP routes, ready to register (the filter has already authorized each request)."""
        own: list[tuple[str, str, AnyHandler]] = [
            (r"/securepacs/api/studies", "authenticated", self.study_list),
            (r"/securepacs/dicom-web/(studies|series|instances)", "authenticated", self.dicomweb),
            (r"/securepacs/api/clinics", "admin", self.clinic_list),
            (OWNERSHIP_URI, "internal", self.ownership),
            (r"/securepacs/api/audit", "authenticated", self.audit_api.handle),
            (health.DETAIL_URI, "authenticated", self.health_api),
            (health.LOCAL_URI, "local", self.local_health),
        ]
        tools = [(pattern, "admin", handler)
                 for pattern, handler in OrthancTools(self._rest, self.subjects, self.audit).routes()]
        return [(pattern, self.bind(handler, access))
                for pattern, access, handler in [*own, *account_api.routes(self.accounts, self.store), *tools,
                                                 *self.webapp.routes()]]

    def bind(self, handler: AnyHandler, access: str = "authenticated") -> Callable[[Request], Response]:
        """Give a route handler the request's principal and client address. Authenticated again here:
        Orthanc does not pass the filter's result on (the credential cache makes this cheap)."""

        def serve(req: Request) -> Response:
            origin = self.auth.origin(PROXY_PEER, req.headers)
            if origin.forged:
                return Response.error(403, FORGED)
            # "local": internal and anonymous (the detailed health report for securepacs health).
            if access in ("internal", "local") and not origin.internal:  # the filter refused it already
                return Response.error(403, NOT_INTERNAL)
            ip = origin.client_ip
            req = dataclasses.replace(req, client_ip=ip)
            # Anonymous routes (login) do not look at credentials: a stray wrong Basic header on a login
            # request must not count towards the account's lockout.
            principal = None if access in ("anonymous", "local") else self.auth.principal(
                req.method, req.headers, ip, internal=origin.internal)
            # "page" handlers answer a caller without a session themselves (a redirect to the login page).
            if principal is None and access not in ("anonymous", "page", "local"):
                return Response.error(403, "authentication required")
            return handler(req, principal)

        return serve

    def ownership(self, req: Request, principal: Principal | None) -> Response:
        """The gateway asks before forwarding a C-GET: do these UIDs all belong to this clinic?"""
        if principal is None or principal.role != GATEWAY:
            return Response.error(403, "gateway service account required")
        if req.method != "POST":
            return Response(405, headers={"Allow": "POST"})
        try:
            request = retrieve_policy.parse_request(json.loads(req.body or b"{}"))
        except ValueError as exc:
            return Response.error(400, str(exc))
        clinic, level, keys = request.clinic, request.level, request.keys
        try:
            known: Clinic | None = self.store.get_clinic(clinic)
        except StoreError:
            known = None
        if known is None or not known.active:
            return Response.json({"allowed": False, "reason": "unknown or revoked clinic"})
        allowed, reason = retrieve_policy.decide(self.tenancy, retrieve_policy.clinic_principal(clinic), level, keys)
        if not allowed:
            self.security_event("cross-tenant-read", {"clinic": clinic, "level": level, "reason": reason})
        else:
            # The gateway forwards the C-GET only after this answer: this is the retrieve's record. It names
            # the calling AE title the gateway saw (if it is one of the clinic's) and the studies, with their
            # patients, that the requested studies/series/instances lie in.
            calling = str(req.headers.get(CALLING_AET_HEADER) or "")
            peer = self.audit.dicom_peer(calling if calling in known.aets else clinic, clinic)
            studies = self.subjects.of_uids(keys)
            self.audit.retrieved(peer, [s.uid for s in studies], via=f"C-GET at {level} level",
                                 patient_ids=patient_ids(studies))
        return Response.json({"allowed": allowed, "reason": reason})

    def clinic_list(self, req: Request, principal: Principal | None) -> Response:
        """Enrolled clinics with their AE titles, C-MOVE destination and certificate state (admins).
        Enrolment itself stays on the command line: it needs the CA key, which Orthanc cannot read."""
        if principal is None or not principal.is_admin:
            return Response.error(403, "admin role required")
        if req.method != "GET":
            return Response(405, headers={"Allow": "GET"})
        moves = {c.name: c for c in self.store.list_clinics()}
        return Response.json({"clinics": [
            {"name": row.clinic, "aets": list(row.aets), "status": row.status,
             "certificateExpires": row.expires.isoformat() if row.expires else None,
             "moveDestination": (f"{moves[row.clinic].move_host}:{moves[row.clinic].move_port}"
                                 if moves[row.clinic].move_host else None),
             "studies": len(self.store.clinic_orthanc_studies(row.clinic))}
            for row in enrolment.list_clinics(self.store)
        ]})

    def study_list(self, req: Request, principal: Principal | None) -> Response:
        if principal is None:
            return Response.error(403, "authentication required")
        return self.studies.handle(req, principal, self.tenancy.scope(principal))

    def dicomweb(self, req: Request, principal: Principal | None) -> Response:
        if principal is None:
            return Response.error(403, "authentication required")
        resource = req.groups[0]
        if req.method == "POST" and resource == "studies":
            return self.stow.handle(req, principal)
        if req.method != "GET":
            return Response(405, headers={"Allow": "GET, POST" if resource == "studies" else "GET"})
        try:
            found = qido.search(self.queries, resource, req.get, self.tenancy.scope(principal))
        except qido.QidoError as exc:
            return Response.error(exc.status, str(exc))
        return Response(200, json.dumps(found), "application/dicom+json")

    def health(self) -> dict[str, Any]:
        """The anonymous report: ok/degraded per component, nothing else."""
        return health.public(self.health_detail())

    def health_detail(self) -> dict[str, Any]:
        checks: dict[str, health.Check] = {
            "orthanc": self._check_orthanc,
            "store": lambda: {"generation": self.store.generation()},
            "dicom-tls": lambda: {"enabled": self.config.dicom_tls},
            "modalities": self._check_modalities,
        }
        if self._platform_versions is not None:
            checks["platform"] = self._check_platform
        return health.report(__version__, checks)

    def health_api(self, req: Request, principal: Principal | None) -> Response:
        """The detailed health report (versions, unfixed CVEs, counters) for admins and auditors."""
        if principal is None or principal.role not in (ADMIN, AUDITOR):
            return Response.error(403, "admin or auditor role required")
        if req.method != "GET":
            return Response(405, headers={"Allow": "GET"})
        return Response.json(self.health_detail())

    def local_health(self, req: Request, _principal: Principal | None) -> Response:
        """The same report for local processes (``securepacs health``, the launcher): bind() and the filter
        serve this route only to a request from this host that did not come through nginx."""
        if req.method != "GET":
            return Response(405, headers={"Allow": "GET"})
        return Response.json(self.health_detail())

    def _check_platform(self) -> Mapping[str, Any]:
        if self._platform is None and self._platform_versions is not None:
            self._platform = exposure.component(self._platform_versions())
        return self._platform or {}

    def _check_orthanc(self) -> Mapping[str, Any]:
        system = self._orthanc_system()
        return {"version": system.get("Version"), "dicomAet": system.get("DicomAet")}

    def _check_modalities(self) -> Mapping[str, Any]:
        if self.modalities.last_error or not self.modalities.synced:
            return {"status": "error" if self.modalities.last_error else "starting"}
        return {"status": "ok"}

    # -- lifecycle -------------------------------------------------------------------------------------
    def on_started(self) -> None:
        self.audit.application(started=True)
        self.modalities.sync()
        self.modalities.start(self.config.modality_sync_seconds)
        log.info("SecurePACS plugin %s ready", __version__)

    def on_stopped(self) -> None:
        self.modalities.stop()
        self.audit.application(started=False)
        if self.audit.trail is not None:
            self.audit.trail.close()
        self.store.close()
