"""The shipped stack and its two comparisons: d (through the gateway), f (d's Orthanc, direct), e (no plugin).

d and f are one set of processes (``launcher.Archive`` with Orthanc and the gateway): f only points the
client at Orthanc's internal port with the gateway's own certificate, so d/f compares the gateway with
going direct on the very same Orthanc, run by run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from securepacs.config.environment import Settings
from securepacs.ops import deploy, launcher
from securepacs.store.database import Store
from securepacs_tools.bench.common import BENCH_AET, HOSTNAMES, SERVER_AET, BenchError, BenchPki, free_port
from securepacs_tools.bench.processes import Running, base_env, mkdir, spawn_orthanc, wait_rest
from securepacs_tools.bench.specs import SPECS

_PLUGIN_KEYS = ("Plugins", "PythonScript", "SecurePACS", "PythonVerbose")


def _settings(root: Path, bench_pki: BenchPki) -> Settings:
    return Settings(data_dir=root / "data", certs_dir=bench_pki.certs_dir, dicom_port=free_port(),
                    https_port=free_port(), http_port=free_port(), internal_dicom_port=free_port(),
                    egress_port=free_port(), aet=SERVER_AET, hostnames=HOSTNAMES)


def settings_env(s: Settings) -> dict[str, str]:
    """The SECUREPACS_* variables that make ``settings.from_env()`` in a child return ``s``."""
    env = {
        "SECUREPACS_DATA": str(s.data_dir),
        "SECUREPACS_CERTS": str(s.certs_dir),
        "SECUREPACS_AET": s.aet,
        "SECUREPACS_HOSTNAMES": ",".join(s.hostnames),
        "SECUREPACS_DICOM_PORT": str(s.dicom_port),
        "SECUREPACS_HTTPS_PORT": str(s.https_port),
        "SECUREPACS_HTTP_PORT": str(s.http_port),
        "SECUREPACS_INTERNAL_DICOM_PORT": str(s.internal_dicom_port),
        "SECUREPACS_EGRESS_PORT": str(s.egress_port),
    }
    if s.nginx_dir_override:
        env["SECUREPACS_NGINX_DIR"] = str(s.nginx_dir_override)
    if s.session_idle_seconds:
        env["SECUREPACS_SESSION_IDLE_SECONDS"] = str(s.session_idle_seconds)
    if s.internal_hop != "tls":
        env["SECUREPACS_INTERNAL_HOP"] = s.internal_hop
    return env


def _prepare_with_client(settings: Settings, bench_pki: BenchPki) -> deploy.Prepared:
    """A shipped stack's files, with the bench clinic enrolled in its store (the plugin and the gateway
    admit only enrolled clinics)."""
    prepared = deploy.prepare(settings, with_nginx=False)
    store = Store(settings.store_path)
    try:
        bench_pki.ensure_client(store)
    finally:
        store.close()
    return prepared


@contextlib.contextmanager
def _exported(env: dict[str, str]) -> Iterator[None]:
    """The launcher's gateway reads its settings from the environment it inherits from us (as under
    ``securepacs serve``), so the bench's settings are exported while the launcher starts it."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _redirect_stdio(path: Path) -> Iterator[None]:
    """The launcher's children inherit our stdout/stderr: point fds 1/2 at the log while they start."""
    with path.open("ab") as log:
        saved = os.dup(1), os.dup(2)
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _admin_auth(settings: Settings) -> tuple[str, str]:
    text = settings.admin_credential_path.read_text()
    fields = dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)
    return fields["username"], fields["password"]


def _wait_modality(run: Running, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            if any(m.get("AET") == BENCH_AET for m in run.rest("/modalities?expand").values()):
                return
        time.sleep(0.3)
    raise BenchError(f"the full stack never registered the bench AE {BENCH_AET}:\n{run.log_tail()}")


def start_gateway_stack(workdir: Path, bench_pki: BenchPki, key: str = "d") -> tuple[Running, Running]:
    """d and f: Orthanc + plugin + gateway as ``securepacs serve`` runs them (nginx left out: no HTTPS here).
    With ``key`` "h" the same with the plain internal hop (its f-like view is then not used)."""
    settings = _settings(mkdir(workdir / key), bench_pki)
    if key == "h":
        settings = dataclasses.replace(settings, internal_hop="plain")
    prepared = _prepare_with_client(settings, bench_pki)
    archive = launcher.Archive(prepared, components=("orthanc", "gateway"))
    log_path = workdir / f"orthanc-{key}.log"
    with _redirect_stdio(log_path), _exported(settings_env(settings)):
        archive.start()
    if archive.orthanc is None or archive.gateway is None:
        archive.stop()
        raise BenchError("the launcher did not start Orthanc and the gateway")
    auth = _admin_auth(settings)
    d = Running(SPECS[key], settings.dicom_port, settings.http_port, archive.orthanc, log_path,
                creds=bench_pki.clinic, auth=auth, archive=archive, gateway=archive.gateway)
    f = Running(SPECS["f"], settings.internal_dicom_port, settings.http_port, archive.orthanc, log_path,
                creds=bench_pki.internal_gateway, auth=auth, owner=False)
    try:
        _wait_modality(d)
    except BaseException:
        d.stop()
        raise
    return d, f


def _merged_config(prepared: deploy.Prepared) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for path in sorted(prepared.config_dir.glob("*.json")):
        merged.update(json.loads(path.read_text()))
    return merged


def _public_tls(merged: dict[str, Any], settings: Settings, bench_pki: BenchPki, prepared: deploy.Prepared) -> None:
    """Orthanc's native TLS on the public port again (server certificate, clinic CA), as before the gateway.

    The shipped Orthanc never reads the server key (the gateway and nginx do): these configurations get a
    copy the Orthanc user owns, next to it."""
    key = bench_pki.pki.server_key_path
    user = prepared.users.orthanc
    if user is not None:
        copy = key.with_name("bench-orthanc.key")
        copy.write_bytes(key.read_bytes())
        os.chmod(copy, 0o600)
        os.chown(copy, user.pw_uid, user.pw_gid)
        key = copy
    merged.update({
        "DicomPort": settings.dicom_port,
        "DicomTlsCertificate": str(bench_pki.pki.server_cert_path),
        "DicomTlsPrivateKey": str(key),
        "DicomTlsTrustedCertificates": str(bench_pki.ca),
    })


def _spawn_merged(key: str, root: Path, workdir: Path, merged: dict[str, Any], settings: Settings,
                  prepared: deploy.Prepared, bench_pki: BenchPki) -> Running:
    config_dir = mkdir(root / "config-merged")
    config_path = config_dir / "orthanc.json"
    config_path.write_text(json.dumps(merged, indent=2))
    os.chmod(config_path, 0o644)
    env = {**base_env(tcp_nodelay=False), **prepared.orthanc_env}
    return spawn_orthanc(SPECS[key], workdir, config_path, env, settings.dicom_port, settings.http_port,
                         bench_pki.clinic, user=prepared.users.orthanc)


def start_audit_off(workdir: Path, bench_pki: BenchPki) -> Running:
    """g: the shipped Orthanc + plugin on native TLS (like f, no gateway) with the audit trail off."""
    root = mkdir(workdir / "g")
    settings = _settings(root, bench_pki)
    prepared = _prepare_with_client(settings, bench_pki)
    merged = _merged_config(prepared)
    merged["SecurePACS"]["AuditTrail"] = None
    merged["SecurePACS"].pop("AuditCheckpointKey", None)
    _public_tls(merged, settings, bench_pki, prepared)
    run = _spawn_merged("g", root, workdir, merged, settings, prepared, bench_pki)
    run.auth = _admin_auth(settings)
    wait_rest(run, "/system")
    _wait_modality(run)
    return run


def start_plugin_off(workdir: Path, bench_pki: BenchPki) -> Running:
    """e: the shipped configuration merged into one file, without the plugin, and with Orthanc's native TLS
    on the public side again (server certificate, clinic CA) so the bench clinic connects as it did before
    the gateway: Orthanc native TLS, no plugin, no gateway."""
    spec = SPECS["e"]
    root = mkdir(workdir / "e")
    settings = _settings(root, bench_pki)
    prepared = deploy.prepare(settings, with_nginx=False)
    merged = _merged_config(prepared)
    for k in _PLUGIN_KEYS:
        merged.pop(k, None)
    _public_tls(merged, settings, bench_pki, prepared)
    merged["DicomModalities"] = {BENCH_AET: {"AET": BENCH_AET, "Host": "127.0.0.1", "Port": 104, "UseDicomTls": True}}
    run = _spawn_merged(spec.key, root, workdir, merged, settings, prepared, bench_pki)
    wait_rest(run, "/system")
    return run
