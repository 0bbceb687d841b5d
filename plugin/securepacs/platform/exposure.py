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


def unfixed(orthanc_version: str | None, table: Iterable[Cve] = KNOWN) -> list[Cve]:
    """The CVEs of ``table`` that the running Orthanc does not have the fix for. A version this module
    cannot read rules none out: every row is listed (a security report errs on the side of exposure)."""
    running = versions.parse(orthanc_version)
    if running is None:
        return list(table)
    return [cve for cve in table if running < versions.require(cve.fixed_in)]


def component(facts: Mapping[str, str | None]) -> dict[str, Any]:
    """The ``platform`` component of the detailed health report, from the adapter's raw version facts."""
    found = {key: facts.get(key) for key in COMPONENTS}
    exposed = unfixed(found["orthanc"])
    return {"status": "degraded" if exposed else "ok", "versions": found, "cves": [c.as_json() for c in exposed]}


def describe(platform: Mapping[str, Any] | None) -> list[str]:
    """Lines for the start banner and ``securepacs health``: the versions, then one warning if exposed."""
    if not platform or not isinstance(platform.get("versions"), Mapping):
        return ["Platform versions: not reported (the detailed health report was not available)"]
    found = platform["versions"]
    lines = ["Platform: " + ", ".join(f"{name} {found.get(key) or 'unknown'}" for key, name in COMPONENTS.items())]
    cves = [c for c in platform.get("cves") or () if isinstance(c, Mapping)]
    if cves:
        fixes = [v for v in (versions.parse(str(c.get("fixedIn"))) for c in cves) if v is not None]
        newest = max(fixes) if fixes else "the newest release"
        lines.append(
            f"WARNING: Orthanc {found.get('orthanc') or 'unknown'} has {len(cves)} known unfixed "
            f"vulnerabilit{'y' if len(cves) == 1 else 'ies'} ({', '.join(str(c.get('id')) for c in cves)}); "
            f"Orthanc {newest} or newer fixes them (see the README's platform section)"
        )
    return lines
