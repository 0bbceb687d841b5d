"""The five archive configurations of the benchmark, each started fresh on free loopback ports.

a  stock Debian Orthanc defaults, plain DICOM (minimal configuration, Nagle on in the server)
b  bare Orthanc, plain DICOM, tuned (``TCP_NODELAY=1`` in its environment)
c  bare Orthanc with its native DICOM TLS (client certificate required), tuned, no plugin
d  the full SecurePACS stack as shipped (``deploy.prepare`` + the launcher), mutual TLS
e  (d) with the plugin disabled: the same configuration minus the plugin, the bench AE in DicomModalities
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from securepacs import clinics, deploy, launcher
from securepacs.pki import Pki
from securepacs.settings import Settings
from securepacs.store import Store

BENCH_AET = "BENCH"
BENCH_CLINIC = "bench"
SERVER_AET = "SECUREPACS"
HOSTNAMES = ("localhost", "127.0.0.1")
START_TIMEOUT = 120.0
_PLUGIN_KEYS = ("Plugins", "PythonScript", "SecurePACS", "PythonVerbose")


@dataclass(frozen=True)
class ConfigSpec:
    key: str
    name: str
    description: str
    tls: bool
    plugin: bool


SPECS: dict[str, ConfigSpec] = {
    s.key: s
    for s in (
        ConfigSpec("a", "stock plain", "Debian Orthanc, minimal config (ports + storage), plain DICOM, "
                   "no TCP_NODELAY", tls=False, plugin=False),
        ConfigSpec("b", "bare plain tuned", "bare Orthanc, plain DICOM, TCP_NODELAY=1", tls=False, plugin=False),
        ConfigSpec("c", "bare mTLS", "bare Orthanc, native DICOM TLS, client certificate required, "
                   "TCP_NODELAY=1, no plugin", tls=True, plugin=False),
        ConfigSpec("d", "full stack", "SecurePACS as shipped (deploy.prepare + launcher, plugin on), mutual TLS",
                   tls=True, plugin=True),
        ConfigSpec("e", "full, plugin off", "(d) minus Plugins/PythonScript/SecurePACS, bench AE in "
                   "DicomModalities (UseDicomTls)", tls=True, plugin=False),
    )
}


class BenchError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class BenchPki:
    """One CA, one server certificate (RSA, as DESIGN.md requires for TLS 1.2) and the bench client bundle."""

    certs_dir: Path

    @property
    def pki(self) -> Pki:
        return Pki(self.certs_dir)

    @property
    def client_dir(self) -> Path:
        return self.pki.clinic_dir(BENCH_CLINIC)

    @property
    def client_cert(self) -> Path:
        return self.client_dir / "clinic.crt"

    @property
    def client_key(self) -> Path:
        return self.client_dir / "clinic.key"

    @property
    def ca(self) -> Path:
        return self.pki.ca_cert_path

    def ensure(self) -> None:
        self.pki.ensure_ca()
        self.pki.ensure_server(list(HOSTNAMES))

    def ensure_client(self, store: Store | None = None) -> None:
        """Issue the bench client bundle (enrolled in ``store`` when given, as the full stack needs)."""
        if self.client_cert.exists():
            if store is not None and store.clinic_for_aet(BENCH_AET) is None:
                # A second full stack: enrol under another name would need another bundle; register the row.
                store.add_clinic(BENCH_CLINIC, [BENCH_AET], None, None)
            return
        if store is not None:
            clinics.enrol(store, self.pki, BENCH_CLINIC, [BENCH_AET])
        else:
            self.pki.issue_clinic(BENCH_CLINIC, [BENCH_AET])


@dataclass
class Running:
    """A started configuration: its Orthanc process, ports and REST access for clearing between runs."""

    spec: ConfigSpec
    dicom_port: int
    http_port: int
    proc: subprocess.Popen
    log_path: Path
    auth: tuple[str, str] | None = None
    archive: launcher.Archive | None = None
    _log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    # -- REST on the internal HTTP port --
    def rest(self, path: str, method: str = "GET", timeout: float = 120) -> Any:
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", method=method)
        if self.auth:
            token = base64.b64encode(f"{self.auth[0]}:{self.auth[1]}".encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (fixed loopback URL)
            body = resp.read()
        return json.loads(body) if body else None

    def count_instances(self) -> int:
        return int(self.rest("/statistics")["CountInstances"])

    def clear(self) -> None:
        """Delete every stored study so each run stores into the same (empty) state."""
        for study in self.rest("/studies"):
            self.rest(f"/studies/{study}", method="DELETE")
        if self.count_instances():
            for inst in self.rest("/instances"):
                self.rest(f"/instances/{inst}", method="DELETE")

    # -- /proc accounting --
    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def rss_kb(self) -> int:
        return _status_kb(self.pid, "VmRSS")

    def hwm_kb(self) -> int:
        return _status_kb(self.pid, "VmHWM")

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        try:
            if self.archive is not None:
                self.archive.stop()
            elif self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(30)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        finally:
            if self._log:
                self._log.close()


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process (all its threads) from /proc/PID/stat."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # fields[0] is field 3 (state): utime is field 14, stime field 15.
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def _status_kb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _wait_rest(run: Running, path: str, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not run.alive():
            raise BenchError(f"Orthanc for configuration {run.spec.key} exited with {run.proc.returncode}:\n"
                             f"{run.log_tail()}")
        with contextlib.suppress(OSError, ValueError, urllib.error.URLError):
            run.rest(path, timeout=2)
            return
        time.sleep(0.2)
    raise BenchError(f"Orthanc for configuration {run.spec.key} did not answer {path} within {timeout:.0f} s:\n"
                     f"{run.log_tail()}")


def _bare_config(storage: Path, dicom_port: int, http_port: int) -> dict[str, Any]:
    # Only what must differ from Orthanc's built-in defaults to run side by side: AET, ports and storage.
    return {
        "DicomAet": SERVER_AET,
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
    }


def _spawn(spec: ConfigSpec, workdir: Path, config_path: Path, env: dict[str, str], dicom_port: int,
           http_port: int, user: Any = None) -> Running:
    log_path = workdir / f"orthanc-{spec.key}.log"
    log = log_path.open("ab")
    kwargs: dict[str, Any] = {}
    if user is not None:
        kwargs = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        env = {**env, "HOME": user.pw_dir, "USER": user.pw_name, "LOGNAME": user.pw_name}
    proc = subprocess.Popen(["Orthanc", str(config_path)], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, **kwargs)
    return Running(spec, dicom_port, http_port, proc, log_path, _log=log)


def _base_env(tcp_nodelay: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TCP_NODELAY", "OPENSSL_CONF")}
    if tcp_nodelay:
        env["TCP_NODELAY"] = "1"
    return env


def _admin_auth(settings: Settings) -> tuple[str, str]:
    text = settings.admin_credential_path.read_text()
    fields = dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)
    return fields["username"], fields["password"]


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o755)  # noqa: S103 (the unprivileged orthanc user must traverse it; no secrets here)
    return path


def start(key: str, workdir: Path, bench_pki: BenchPki) -> Running:
    """Start configuration ``key`` under ``workdir`` (fresh storage) and wait until it answers REST."""
    spec = SPECS[key]
    root = _mkdir(workdir / key)
    dicom_port, http_port = free_port(), free_port()
    if key in ("a", "b", "c"):
        config = _bare_config(_mkdir(root / "storage"), dicom_port, http_port)
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
        run = _spawn(spec, workdir, config_path, _base_env(tcp_nodelay=key != "a"), dicom_port, http_port)
        _wait_rest(run, "/system")
        return run

    settings = Settings(data_dir=root / "data", certs_dir=bench_pki.certs_dir, dicom_port=dicom_port,
                        https_port=free_port(), http_port=http_port, aet=SERVER_AET, hostnames=HOSTNAMES)
    prepared = deploy.prepare(settings, with_nginx=False)
    if key == "d":
        store = Store(settings.store_path)
        try:
            bench_pki.ensure_client(store)
        finally:
            store.close()
        archive = launcher.Archive(prepared, components=("orthanc",))
        log_path = workdir / "orthanc-d.log"
        with _redirect_stdio(log_path):
            archive.start()
        assert archive.orthanc is not None
        run = Running(spec, dicom_port, http_port, archive.orthanc, log_path, auth=_admin_auth(settings),
                      archive=archive)
        _wait_modality(run)
        return run

    # e: the shipped configuration, merged into one file, without the plugin.
    merged: dict[str, Any] = {}
    for path in sorted(prepared.config_dir.glob("*.json")):
        merged.update(json.loads(path.read_text()))
    for k in _PLUGIN_KEYS:
        merged.pop(k, None)
    merged["DicomModalities"] = {
        BENCH_AET: {"AET": BENCH_AET, "Host": "127.0.0.1", "Port": 104, "UseDicomTls": True},
    }
    config_dir = _mkdir(root / "config-noplugin")
    config_path = config_dir / "orthanc.json"
    config_path.write_text(json.dumps(merged, indent=2))
    os.chmod(config_path, 0o644)
    env = {**_base_env(tcp_nodelay=False), **prepared.orthanc_env}
    run = _spawn(spec, workdir, config_path, env, dicom_port, http_port, user=prepared.users.orthanc)
    _wait_rest(run, "/system")
    return run


def _wait_modality(run: Running, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            if any(m.get("AET") == BENCH_AET for m in run.rest("/modalities?expand").values()):
                return
        time.sleep(0.3)
    raise BenchError(f"the full stack never registered the bench AE {BENCH_AET}:\n{run.log_tail()}")


@contextlib.contextmanager
def _redirect_stdio(path: Path):  # type: ignore[no-untyped-def]
    """The launcher's Orthanc inherits our stdout/stderr: point fds 1/2 at the log while it starts."""
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

