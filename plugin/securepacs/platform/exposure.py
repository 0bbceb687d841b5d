"""The running Orthanc against the CVE table: the health report's ``platform`` component.

``degraded`` while the running Orthanc is older than the fix of a known CVE. That marks the archive
degraded in every report, but does not stop it serving (``health.ADVISORY``): waiting does not fix a
vulnerability, an upgrade does (the README's platform section says which deployment carries the fixes).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from securepacs.platform import versions
from securepacs.platform.cves import KNOWN, Cve

# Keys of the raw facts the adapter reports (adapter.platform_versions), with their display names.
COMPONENTS = {"orthanc": "Orthanc", "pythonPlugin": "python plugin", "dicomWeb": "DICOMweb", "dcmtk": "DCMTK"}


def unfixed(orthanc_version: str | None, table: Iterable[Cve] = KNOWN, *,
            dcmtk_version: str | None = None) -> list[Cve]:
    """The CVEs of ``table`` that the running Orthanc (with the DCMTK it runs with, where part of the fix is
    DCMTK's) does not have the fix for. A version this module cannot read rules nothing out (a security
    report errs on the side of exposure)."""
    running, dcmtk = versions.parse(orthanc_version), versions.parse(dcmtk_version)

    def exposed(cve: Cve) -> bool:
        if running is None or running < versions.require(cve.fixed_in):
            return True
        return cve.dcmtk_fixed_in is not None and (dcmtk is None or dcmtk < versions.require(cve.dcmtk_fixed_in))

    return [cve for cve in table if exposed(cve)]


def component(facts: Mapping[str, str | None]) -> dict[str, Any]:
    """The ``platform`` component of the detailed health report, from the adapter's raw version facts."""
    found = {key: facts.get(key) for key in COMPONENTS}
    exposed = unfixed(found["orthanc"], dcmtk_version=found["dcmtk"])
    return {"status": "degraded" if exposed else "ok", "versions": found, "cves": [c.as_json() for c in exposed]}


def describe(platform: Mapping[str, Any] | None) -> list[str]:
    """Lines for the start banner and ``securepacs health``: the versions, then one warning if exposed."""
    if not platform or not isinstance(platform.get("versions"), Mapping):
        return ["Platform versions: not reported (the detailed health report was not available)"]
    found = platform["versions"]
    lines = ["Platform: " + ", ".join(f"{name} {found.get(key) or 'unknown'}" for key, name in COMPONENTS.items())]
    cves = [c for c in platform.get("cves") or () if isinstance(c, Mapping)]
    if cves:
        needs = f"Orthanc {_newest(cves, 'fixedIn')} or newer"
        if any(c.get("dcmtkFixedIn") for c in cves):
            needs += f" with DCMTK {_newest(cves, 'dcmtkFixedIn')} or newer"
        lines.append(
            f"WARNING: Orthanc {found.get('orthanc') or 'unknown'} (DCMTK {found.get('dcmtk') or 'unknown'}) has "
            f"{len(cves)} known unfixed vulnerabilit{'y' if len(cves) == 1 else 'ies'} "
            f"({', '.join(str(c.get('id')) for c in cves)}); {needs} fixes them (see the README's platform section)"
        )
    return lines


def _newest(cves: list[Mapping[str, Any]], key: str) -> str:
    found = [v for v in (versions.parse(str(c.get(key))) for c in cves if c.get(key)) if v is not None]
    return str(max(found)) if found else "the newest release"
