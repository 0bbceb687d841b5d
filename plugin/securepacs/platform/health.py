"""The health report: the status of each component, in two views.

``report`` is the detailed view (SecurePACS version, each component's details: Orthanc's version and AE
title, counters, the platform's versions and unfixed CVEs). It is served only to those who may know: admins
and auditors (``DETAIL_URI``) and local processes on Orthanc's loopback port (``LOCAL_URI``, never through
nginx: ``securepacs health`` and the launcher). ``public`` is what anyone may read at
``/securepacs/health``: ok/degraded per component and overall, no versions, AE title or counters.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

Check = Callable[[], Mapping[str, Any]]

PUBLIC_URI = "/securepacs/health"
DETAIL_URI = "/securepacs/api/health"  # admins and auditors, through nginx
LOCAL_URI = "/securepacs/internal/health"  # local processes only, without credentials (see http_auth)
# Components whose non-ok status degrades the report but not the service: the archive serves (and start-up
# does not wait for them). "platform": a known CVE in the running Orthanc is fixed by an upgrade, not by waiting.
ADVISORY = frozenset({"platform"})


def report(version: str, checks: Mapping[str, Check]) -> dict[str, Any]:
    """Run every check; a check returns details with ``status`` and may raise (then it is ``error``)."""
    components: dict[str, Any] = {}
    for name, check in checks.items():
        try:
            result = dict(check())
            result.setdefault("status", "ok")
        except Exception as exc:
            result = {"status": "error", "error": type(exc).__name__}
        components[name] = result
    overall = "ok" if all(c["status"] == "ok" for c in components.values()) else "degraded"
    return {"service": "securepacs", "version": version, "status": overall, "components": components}


def public(detailed: Mapping[str, Any]) -> dict[str, Any]:
    """The anonymous view of a report: statuses only."""
    return {
        "service": detailed["service"],
        "status": detailed["status"],
        "components": {name: {"status": c["status"]} for name, c in detailed["components"].items()},
    }


def ready(any_report: Mapping[str, Any] | None) -> bool:
    """Does the archive serve? Every component ok except the advisory ones (either view of a report)."""
    components = (any_report or {}).get("components")
    if not isinstance(components, Mapping) or not components:
        return False
    return all(name in ADVISORY or (c or {}).get("status") == "ok" for name, c in components.items())
