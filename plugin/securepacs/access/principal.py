"""Who is asking: the principal every policy decision is about, over HTTP or DICOM."""

from __future__ import annotations

from dataclasses import dataclass

ADMIN = "admin"
PHYSICIAN = "physician"
CLINIC_DEVICE = "clinic-device"
AUDITOR = "auditor"
# The DICOM gateway's service account: may only ask whether UIDs belong to a clinic (C-GET checks).
GATEWAY = "gateway"
ROLES = (ADMIN, PHYSICIAN, CLINIC_DEVICE, AUDITOR, GATEWAY)
# Roles a person can be given (securepacs user add / REST); service roles are created by deploy only.
USER_ROLES = (ADMIN, PHYSICIAN, CLINIC_DEVICE, AUDITOR)
# Service identities: used only by local services on internal requests (never through nginx), they never
# lock, never hold a session, and admins cannot manage them (deploy does, see deploy.ensure_gateway_account).
SERVICE_ROLES = frozenset({GATEWAY})
# Roles that act for exactly one clinic: they must name it, and they only ever see its studies.
CLINIC_ROLES = frozenset({PHYSICIAN, CLINIC_DEVICE})


@dataclass(frozen=True)
class Principal:
    """An authenticated actor. ``clinic`` is set for clinic roles and DICOM peers, None for admins/auditors."""

    name: str  # username, or the calling AE title for a DICOM peer
    role: str
    clinic: str | None
    via: str = "http"  # http | dicom

    @property
    def is_admin(self) -> bool:
        return self.role == ADMIN


@dataclass(frozen=True)
class Verdict:
    """What the HTTP policy decided for a principal's request, and why (the reason goes to the audit trail)."""

    allowed: bool
    reason: str
