"""The HTTP role matrix: which principal may call which URI with which method.

Deny by default. Admins reach everything (Orthanc Explorer, raw REST). Clinic roles reach only an
allow-list of read endpoints, each checked against the tenant that owns the resource it names; auditors
their own account, the audit trail (``/securepacs/api/audit``) and the detailed health report (platform
versions and unfixed CVEs, ``/securepacs/api/health``). Orthanc's generic endpoints
(``/patients`` — a patient there merges every clinic's people sharing a Patient ID —, ``/tools``,
``/modalities``, ``/jobs``, Explorer, other plugins' routes) stay admin-only. Routes that would feed Orthanc's
parser without the nesting check (``POST /instances``, ``/tools/create-dicom``, the DICOMweb plugin's own
STOW, retrieves from a remote modality) are refused for everyone: uploads go through the checked STOW-RS.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from securepacs.access.principal import AUDITOR, CLINIC_DEVICE, GATEWAY, PHYSICIAN, Principal, Verdict
from securepacs.dicom.identifiers import ORTHANC_ID_PATTERN, UID_IN_URI_PATTERN
from securepacs.platform import health
from securepacs.tenancy.ownership import Tenancy
from securepacs.webapp import urls as webapp_urls

_ID = ORTHANC_ID_PATTERN
_UID = UID_IN_URI_PATTERN

# Orthanc REST resources a clinic role may read; the group is the Orthanc ID checked for ownership.
_ORTHANC_READS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("study", re.compile(rf"/studies/({_ID})(?:/(?:series|instances|archive|shared-tags))?")),
    ("series", re.compile(rf"/series/({_ID})(?:/(?:instances|archive|shared-tags))?")),
    ("instance", re.compile(
        rf"/instances/({_ID})(?:/(?:file|preview|rendered|tags|simplified-tags|frames"
        r"|frames/\d{1,6}(?:/(?:preview|rendered|raw|image-uint8|image-uint16))?))?"
    )),
)
# One more path segment below a resource: never empty, "." or "..". Orthanc hands the filter the URI with
# dot segments and "//" already resolved (what it routes on); the policy does not rely on that.
_SEGMENT = r"/(?!\.\.?(?:/|$))[A-Za-z0-9._-]+"
# DICOMweb below one study (WADO-RS, metadata, rendered, bulk data, QIDO within the study).
_DICOMWEB_STUDY = re.compile(
    rf"/dicom-web/studies/({_UID})(?:/series/({_UID})(?:/instances/({_UID}))?)?(?:{_SEGMENT})*"
)
# Served by the plugin itself, tenant-filtered inside the handler.
_PLUGIN_READS = re.compile(r"/securepacs/api/studies|/securepacs/dicom-web/(?:studies|series|instances)")
_STOW = "/securepacs/dicom-web/studies"
# Everyone who is logged in manages their own account.
_SELF_SERVICE = re.compile(r"/securepacs/(?:logout|api/me(?:/[a-z]+)*)")

# Routes that hand a body, or what a remote peer sends back, to Orthanc's DICOM parser without the nesting
# check (securepacs.dataset_limits; CVE-2026-10528 with an unpatched DCMTK): refused for everyone, admins
# included. Uploads go through the plugin's STOW-RS, which checks each part first.
_UNCHECKED_INGEST = re.compile(
    r"/instances|/tools/create-dicom|/dicom-web/studies(?:/[^/]+)?"
    r"|/modalities/[^/]+/(?:move|get)|/queries/[^/]+/(?:retrieve|answers/[^/]+/retrieve)"
)

CLINIC_READERS = frozenset({PHYSICIAN, CLINIC_DEVICE})
OWNERSHIP_URI = "/securepacs/internal/ownership"
AUDIT_URI = "/securepacs/api/audit"


class HttpPolicy:
    def __init__(self, tenancy: Tenancy):
        self._tenancy = tenancy

    def decide(self, principal: Principal, method: str, uri: str, get: Mapping[str, str]) -> Verdict:
        if method in ("POST", "PUT") and _UNCHECKED_INGEST.fullmatch(uri):
            return Verdict(False, f"{method} {uri!r} would reach Orthanc's parser unchecked; upload with STOW-RS "
                                  "(/dicom-web/studies) instead")
        if principal.is_admin:
            return Verdict(True, "admin")
        if principal.role == GATEWAY:
            # The gateway's service account asks who owns what, nothing else (not even its own account).
            if method == "POST" and uri == OWNERSHIP_URI:
                return Verdict(True, "gateway ownership check")
            return Verdict(False, "the gateway account may only ask for ownership decisions")
        if _SELF_SERVICE.fullmatch(uri):
            return Verdict(True, "own account")
        if method == "GET" and webapp_urls.SHELLS.fullmatch(uri):
            return Verdict(True, "web app page shell (no patient data)")
        if principal.role == AUDITOR:
            if method == "GET" and uri == AUDIT_URI:
                return Verdict(True, "auditor reads the audit trail")
            if method == "GET" and uri == health.DETAIL_URI:
                return Verdict(True, "auditor reads the detailed health report")
            return Verdict(False, "auditors reach only the audit trail and the health report")
        if principal.role not in CLINIC_READERS or principal.clinic is None:
            return Verdict(False, f"role {principal.role!r} has no HTTP access")
        if method == "POST" and uri == _STOW:
            if principal.role == CLINIC_DEVICE:
                return Verdict(True, "STOW-RS upload, attributed to the clinic")
            return Verdict(False, "physicians read; uploads need a clinic-device account")
        if method != "GET":
            return Verdict(False, f"{method} is not allowed for role {principal.role!r}")
        return self._decide_read(principal, uri, get)

    def _decide_read(self, principal: Principal, uri: str, get: Mapping[str, str]) -> Verdict:
        if _PLUGIN_READS.fullmatch(uri):
            return Verdict(True, "tenant-filtered search")
        for level, pattern in (*_ORTHANC_READS, *webapp_urls.TENANT_READS):
            match = pattern.fullmatch(uri)
            if match:
                if self._tenancy.owns_resource(principal, level, match.group(1)):
                    return Verdict(True, f"own {level}")
                return Verdict(False, f"{level} {match.group(1)!r} is not the clinic's")
        match = _DICOMWEB_STUDY.fullmatch(uri)
        if match:
            return self._check_uids(principal, *match.groups())
        if uri == "/wado":
            # WADO-URI: Orthanc resolves the object by its SOP Instance UID, so that one is what counts.
            return self._check_uids(principal, get.get("studyUID"), get.get("seriesUID"), get.get("objectUID"),
                                    require_object=True)
        return Verdict(False, f"GET {uri!r} is not allowed for role {principal.role!r}")

    def _check_uids(self, principal: Principal, study: str | None, series: str | None, instance: str | None,
                    *, require_object: bool = False) -> Verdict:
        if require_object and not instance:
            return Verdict(False, "WADO-URI request without objectUID")
        for level, uid in (("study", study), ("series", series), ("instance", instance)):
            if uid and not self._tenancy.owns_uid(principal, level, uid):
                return Verdict(False, f"{level} UID is not the clinic's")
        return Verdict(True, "own study (DICOMweb)")
