"""What the benchmark ran on: CPU, cores, OS and the versions of everything on the data path."""

from __future__ import annotations

import os
import platform
import re
import ssl
import subprocess
import sys


def _run(cmd: list[str]) -> str:
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (res.stdout or "") + (res.stderr or "")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _os_name() -> str:
    try:
        with open("/etc/os-release", encoding="utf-8") as fh:
            fields = dict(line.rstrip("\n").split("=", 1) for line in fh if "=" in line)
        return fields.get("PRETTY_NAME", "").strip('"') or platform.platform()
    except OSError:
        return platform.platform()


def _first_match(pattern: str, text: str) -> str:
    m = re.search(pattern, text)
    return m.group(1) if m else "unknown"


def _dpkg_version(package: str) -> str:
    out = _run(["dpkg-query", "-W", "-f=${Version}", package]).strip()
    return out if out and "no packages" not in out else "unknown"


def _mem_total_gb() -> str:
    try:
        with open("/proc/meminfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return f"{int(line.split()[1]) / 1024 / 1024:.1f} GB"
    except OSError:
        pass
    return "unknown"


def describe() -> dict[str, str]:
    """Ordered facts for the report header."""
    import pydicom
    import pynetdicom

    orthanc = _first_match(r"Orthanc\s+(\S+)", _run(["Orthanc", "--version"]))
    from securepacs_tools.bench.clients import STORESCU

    storescu = _first_match(r"\$dcmtk: storescu v(\S+)", _run([STORESCU, "--version"]))
    return {
        "CPU": _cpu_model(),
        "Cores": str(os.cpu_count() or "unknown"),
        "Memory": _mem_total_gb(),
        "OS": _os_name(),
        "Kernel": platform.release(),
        "Orthanc": f"{orthanc} (Debian {_dpkg_version('orthanc')}), Python plugin {_dpkg_version('orthanc-python')}",
        "DCMTK": f"{storescu} (Debian {_dpkg_version('dcmtk')})",
        "OpenSSL": f"{_dpkg_version('openssl')} (Python ssl: {ssl.OPENSSL_VERSION})",
        "Python": f"{sys.version.split()[0]} (pydicom {pydicom.__version__}, pynetdicom {pynetdicom.__version__})",
    }
