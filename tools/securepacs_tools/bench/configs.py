"""Start the benchmark's configurations (see ``specs``), each fresh on free loopback ports.

a, b and c are bare Orthanc processes started here; d-g are the shipped stack (``fullstack``).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from securepacs_tools.bench import fullstack
from securepacs_tools.bench.common import SERVER_AET, BenchPki, free_port
from securepacs_tools.bench.processes import Running, base_env, mkdir, spawn_orthanc, wait_rest
from securepacs_tools.bench.specs import SHARES_STACK, SPECS


def _bare_config(storage: Path, dicom_port: int, http_port: int) -> dict[str, Any]:
    # Only what must differ from Orthanc's built-in defaults to run side by side: AET, ports and storage.
    return {
        "DicomAet": SERVER_AET,
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
    }


def start_bare(key: str, workdir: Path, bench_pki: BenchPki) -> Running:
    """a, b or c under ``workdir`` (fresh storage), once it answers REST."""
    spec = SPECS[key]
    root = mkdir(workdir / key)
    dicom_port, http_port = free_port(), free_port()
    config = _bare_config(mkdir(root / "storage"), dicom_port, http_port)
    if key == "c":
        config.update({
            "DicomTlsEnabled": True,
            "DicomTlsCertificate": str(bench_pki.pki.server_cert_path),
            "DicomTlsPrivateKey": str(bench_pki.pki.server_key_path),
            "DicomTlsTrustedCertificates": str(bench_pki.ca),
            "DicomTlsRemoteCertificateRequired": True,
        })
    config_path = root / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    run = spawn_orthanc(spec, workdir, config_path, base_env(tcp_nodelay=key != "a"), dicom_port, http_port,
                        bench_pki.clinic if spec.tls else None)
    wait_rest(run, "/system")
    return run


def start_order(keys: Iterable[str]) -> list[str]:
    """The stacks to start for ``keys``: d's first (it enrols the bench client, whose bundle the others use);
    a configuration that is a view of another (f) brings that one's stack."""
    wanted = {SHARES_STACK.get(k, k) for k in keys}
    return sorted(wanted, key=lambda k: (k != "d", k))


def start_all(keys: Iterable[str], workdir: Path, bench_pki: BenchPki,
              on_started: Callable[[Running, float], None] | None = None) -> dict[str, Running]:
    """Every configuration in ``keys`` started (and f, when asked for, next to d). On failure the ones
    already running are stopped."""
    keys = list(keys)
    running: dict[str, Running] = {}
    try:
        order = start_order(keys)
        if "d" not in order:
            bench_pki.ensure_client()
        for key in order:
            t0 = time.monotonic()
            if key == "d":
                d, f = fullstack.start_gateway_stack(workdir, bench_pki)
                if "d" in keys:
                    running["d"] = d
                else:
                    # f alone: f is then what stops the shared processes.
                    f = dataclasses.replace(f, archive=d.archive, owner=True)
                if "f" in keys:
                    running["f"] = f
            elif key == "e":
                running["e"] = fullstack.start_plugin_off(workdir, bench_pki)
            elif key == "g":
                running["g"] = fullstack.start_audit_off(workdir, bench_pki)
            elif key == "h":
                running["h"], _ = fullstack.start_gateway_stack(workdir, bench_pki, "h")
            else:
                running[key] = start_bare(key, workdir, bench_pki)
            if on_started:
                for k in (key, *(v for v, owner in SHARES_STACK.items() if owner == key)):
                    if k in running:
                        on_started(running[k], time.monotonic() - t0)
    except BaseException:
        for run in running.values():
            run.stop()
        raise
    return running
