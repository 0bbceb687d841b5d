"""A started configuration: its processes, DICOM port, client credentials, REST access and /proc accounting."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from securepacs.ops import launcher
from securepacs_tools.bench.common import BenchError, Credentials
from securepacs_tools.bench.specs import ConfigSpec

START_TIMEOUT = 120.0


@dataclass
class Running:
    """One configuration as the clients see it.

    ``proc`` is the Orthanc process (CPU and RSS accounting); ``gateway`` the gateway process in front of it,
    if any. ``owner`` is False for a view of another configuration's processes (f on d's Orthanc): stopping
    it then stops nothing.
    """

    spec: ConfigSpec
    dicom_port: int
    http_port: int
    proc: subprocess.Popen
    log_path: Path
    creds: Credentials | None = None  # None: plain DICOM
    auth: tuple[str, str] | None = None
    archive: launcher.Archive | None = None
    gateway: subprocess.Popen | None = None
    owner: bool = True
    _log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def gateway_pid(self) -> int | None:
        return self.gateway.pid if self.gateway is not None else None

    def alive(self) -> bool:
        return self.proc.poll() is None and (self.gateway is None or self.gateway.poll() is None)

    def exit_status(self) -> str:
        parts = [f"Orthanc {self.proc.returncode}"]
        if self.gateway is not None:
            parts.append(f"gateway {self.gateway.returncode}")
        return ", ".join(parts)

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
        return status_kb(self.pid, "VmRSS")

    def hwm_kb(self) -> int:
        return status_kb(self.pid, "VmHWM")

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        if not self.owner:
            return
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


def status_kb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def wait_rest(run: Running, path: str, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not run.alive():
            raise BenchError(f"configuration {run.spec.key} exited ({run.exit_status()}):\n{run.log_tail()}")
        with contextlib.suppress(OSError, ValueError, urllib.error.URLError):
            run.rest(path, timeout=2)
            return
        time.sleep(0.2)
    raise BenchError(f"Orthanc for configuration {run.spec.key} did not answer {path} within {timeout:.0f} s:\n"
                     f"{run.log_tail()}")


def spawn_orthanc(spec: ConfigSpec, workdir: Path, config_path: Path, env: dict[str, str], dicom_port: int,
                  http_port: int, creds: Credentials | None, user: Any = None) -> Running:
    log_path = workdir / f"orthanc-{spec.key}.log"
    log = log_path.open("ab")
    kwargs: dict[str, Any] = {}
    if user is not None:
        kwargs = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        env = {**env, "HOME": user.pw_dir, "USER": user.pw_name, "LOGNAME": user.pw_name}
    proc = subprocess.Popen(["Orthanc", str(config_path)], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, **kwargs)
    return Running(spec, dicom_port, http_port, proc, log_path, creds=creds, _log=log)


def base_env(tcp_nodelay: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TCP_NODELAY", "OPENSSL_CONF")}
    if tcp_nodelay:
        env["TCP_NODELAY"] = "1"
    return env


def mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o755)  # noqa: S103 (the unprivileged orthanc user must traverse it; no secrets here)
    return path
