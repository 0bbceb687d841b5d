"""C-MOVE SCP: a clinic moves only its own studies, and only to its own registered destinations.

Registering a move callback replaces Orthanc's C-MOVE SCP, so this resolves the request itself (in the
caller's studies only) and asks Orthanc to send the resources to the destination modality, which the
modality sync registered with ``UseDicomTls``: the outbound association is TLS, verified against our CA.
A refusal raises :class:`MoveRefused`; Orthanc then answers the C-MOVE with a failure status.

:class:`MoveOperation` is one planned move as Orthanc drives it when the plugin can say how many
sub-operations a move has (plugin >= 4.2, see ``adapter.register_move``): one per instance to send.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from securepacs.archive.modalities import PREFIX
from securepacs.store.database import Store
from securepacs.store.records import Clinic
from securepacs.tenancy.ownership import Tenancy
from securepacs.web.orthanc_api import OrthancRest

log = logging.getLogger(__name__)

MAX_RESOURCES = 10_000  # bound the work one request can cause


class MoveRefused(Exception):
    """The C-MOVE was refused; the message is safe for the operational log (no patient data)."""


@dataclass(frozen=True)
class MovePlan:
    clinic: str
    modality: str  # Orthanc modality name of the destination
    level: str  # Orthanc level of the resources (Study|Series|Instance)
    resources: tuple[str, ...]


def _uids(value: str) -> list[str]:
    # A C-MOVE identifier may carry a list of UIDs (PS3.4 C.4.2.2.1), backslash-separated.
    return [v.strip() for v in value.split("\\") if v.strip()]


class MoveService:
    def __init__(self, store: Store, tenancy: Tenancy, rest: OrthancRest,
                 on_security_event: Callable[[str, dict[str, Any]], None] | None = None):
        self._store = store
        self._tenancy = tenancy
        self._rest = rest
        self._on_event = on_security_event or (lambda _kind, _details: None)

    def plan(self, request: Mapping[str, str]) -> MovePlan:
        caller = request.get("OriginatorAET") or ""
        clinic = self._store.clinic_for_aet(caller)
        if clinic is None or not clinic.active:
            raise MoveRefused(f"calling AE title {caller!r} is not an enrolled clinic")
        target = request.get("TargetAET") or ""
        modality = self._destination(clinic, target)
        level = (request.get("Level") or "").upper()
        resources = self._resolve(clinic, level, request)
        if not resources:
            raise MoveRefused(f"C-MOVE at level {level!r} from {caller!r} matched none of the clinic's resources")
        orthanc_level = {"PATIENT": "Study", "STUDY": "Study", "SERIES": "Series", "IMAGE": "Instance",
                         "INSTANCE": "Instance"}[level]
        return MovePlan(clinic.name, modality, orthanc_level, tuple(resources))

    def _destination(self, clinic: Clinic, target: str) -> str:
        if target not in clinic.aets:
            self._on_event("move-destination-refused", {"clinic": clinic.name, "target": target})
            raise MoveRefused(f"move destination {target!r} is not registered to clinic {clinic.name!r}")
        if not clinic.move_host or not clinic.move_port:
            raise MoveRefused(f"clinic {clinic.name!r} has no C-MOVE address (enrol with --host/--port); "
                              "use C-GET instead")
        return f"{PREFIX}{clinic.name}-{clinic.aets.index(target)}"

    def _resolve(self, clinic: Clinic, level: str, request: Mapping[str, str]) -> list[str]:
        owned = self._store.clinic_orthanc_studies(clinic.name)
        if level == "PATIENT":
            patient_id = request.get("PatientID") or ""
            if not patient_id:
                raise MoveRefused("PATIENT-level C-MOVE without PatientID")
            found = self._rest.post_json("/tools/find", {"Level": "Study", "Query": {"PatientID": patient_id}})
            # Orthanc merges equal Patient IDs of different clinics into one patient: keep only this clinic's.
            return sorted(set(found) & owned)[:MAX_RESOURCES]
        key, orthanc_level = {
            "STUDY": ("StudyInstanceUID", "study"),
            "SERIES": ("SeriesInstanceUID", "series"),
            "IMAGE": ("SOPInstanceUID", "instance"),
            "INSTANCE": ("SOPInstanceUID", "instance"),
        }.get(level, ("", ""))
        if not key:
            raise MoveRefused(f"unknown C-MOVE level {level!r}")
        uids = _uids(request.get(key) or "")
        if not uids:
            raise MoveRefused(f"{level}-level C-MOVE without {key}")
        if len(uids) > MAX_RESOURCES:
            raise MoveRefused(f"C-MOVE names {len(uids)} UIDs; at most {MAX_RESOURCES} per request")
        resources = []
        for uid in uids:
            resource = self._rest.lookup(orthanc_level, uid)
            study = self._tenancy.study_of(orthanc_level, resource) if resource else None
            if study is None or study not in owned:
                # Unknown and foreign look the same to the caller: nothing about other tenants leaks.
                self._on_event("cross-tenant-read", {"clinic": clinic.name, "level": level, "uid": uid})
                raise MoveRefused(f"{level}-level C-MOVE from clinic {clinic.name!r} names a resource that is not "
                                  "the clinic's")
            resources.append(resource)
        return resources

    def instance_count(self, plan: MovePlan) -> int:
        """How many instances the plan sends: the move's sub-operations (PS3.4 C.4.2.1.4)."""
        if plan.level == "Instance":
            return len(plan.resources)
        path = {"Study": "studies", "Series": "series"}[plan.level]
        return sum(int(self._rest.get_json(f"/{path}/{resource}/statistics")["CountInstances"])
                   for resource in plan.resources)

    def move(self, request: Mapping[str, str]) -> MovePlan:
        plan = self.plan(request)
        self.send(plan, request)
        return plan

    def send(self, plan: MovePlan, request: Mapping[str, str]) -> None:
        """Have Orthanc send the planned resources (the caller audits them: ``plan.resources``)."""
        failed = self.transfer(plan, request)
        if failed:
            raise MoveRefused(f"C-MOVE to {plan.modality!r}: {failed} instance(s) failed")

    def transfer(self, plan: MovePlan, request: Mapping[str, str]) -> int:
        """Have Orthanc send the planned resources in one association; the number of instances that failed."""
        log.info("C-MOVE of %d %s resource(s) for clinic %r to %r", len(plan.resources), plan.level.lower(),
                 plan.clinic, plan.modality)
        job = self._rest.post_json(
            f"/modalities/{plan.modality}/store",
            {"Resources": list(plan.resources), "Synchronous": True, "MoveOriginatorAet": request.get("OriginatorAET"),
             "MoveOriginatorID": int(request.get("OriginatorID") or 0)},
        )
        return int(job.get("FailedInstancesCount") or 0) if isinstance(job, Mapping) else 0


class MoveOperation:
    """One admitted C-MOVE, ``count`` sub-operations long (the instances it sends).

    Orthanc asks for the sub-operations one by one (``next``) and reports each as done or failed. The
    first one sends everything, in one association to the destination (one per instance would cost a TLS
    handshake each); the answers to it and the following ones then say, in order, how many arrived and
    how many failed, so the final response carries the right counts.
    """

    def __init__(self, plan: MovePlan, count: Callable[[], int], transfer: Callable[[], int | None]):
        self.plan = plan
        self._count = count
        self._transfer = transfer
        self._failed: int | None = None
        self._done = 0

    @cached_property
    def count(self) -> int:
        return self._count()

    def run(self) -> int:
        """Send the planned instances (once); how many failed, or -1 when the whole transfer failed."""
        if self._failed is None:
            failed = self._transfer()
            self._failed = -1 if failed is None else failed
        return self._failed

    def next(self) -> bool:
        """One sub-operation: True if its instance reached the destination."""
        failed = self.run()
        self._done += 1
        if failed < 0:
            return False
        return self._done <= self.count - min(failed, self.count)
