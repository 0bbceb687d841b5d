"""The anonymous health report: version and the status of each component, nothing sensitive."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

Check = Callable[[], Mapping[str, Any]]


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
