"""Run Orthanc (with the plugin), the DICOM gateway and nginx in the foreground until Ctrl-C, stopping all
cleanly."""

from __future__ import annotations

import json
import logging
import os
import pwd
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from securepacs import __version__
from securepacs.config import environment
from securepacs.ops import nginx_log
from securepacs.ops.deploy import Prepared
from securepacs.platform import exposure, health

log = logging.getLogger(__name__)

STARTUP_TIMEOUT = 90.0


class LaunchError(RuntimeError):
    pass


def https_context(ca_file: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca_file))
    ctx.check_hostname = False  # we connect to 127.0.0.1; the chain is still verified against our CA
    return ctx


def _orthanc_cmd(p: Prepared) -> list[str]:
    return ["Orthanc", str(p.config_dir)]


def _nginx_cmd(p: Prepared) -> list[str]:
    return ["nginx", "-e", "stderr", "-p", str(p.nginx_conf.parent), "-c", str(p.nginx_conf), "-g", "daemon off;"]


def _gateway_cmd() -> list[str]:
    # Its own entry point: the full CLI would load every subcommand (~70 MB) into a process with a budget.
    # Shorter than the launcher's 30 s stop wait, so running associations end before it kills anything.
    cmd = [sys.executable, "-m", "securepacs.gateway", "--shutdown-grace", "20"]
    # Operators (and the fuzz test, which opens 10,000 connections from one address) may tune the
    # per-address connection rate; everything else is configured through the settings.
    try:
        rate = environment.env_value(os.environ, "SECUREPACS_GATEWAY_RATE_PER_IP")
    except environment.SettingsError as exc:
        raise LaunchError(str(exc)) from None
    if rate is not None:
        cmd += ["--rate-per-ip", repr(rate), "--rate-burst", str(max(40, int(rate * 2)))]
    return cmd


# How often the signer attests the trail's end: the window in which a rewrite of the newest entries would
# go unnoticed by `audit verify` (the chain still covers them; forwarding covers them too).
SIGNER_INTERVAL = 5.0


def _signer_cmd(p: Prepared) -> list[str]:
    s = p.settings
    return [sys.executable, "-m", "securepacs.audit.signer", "--trail", str(s.audit_trail_path),
            "--key", str(s.audit_key_path), "--interval", str(SIGNER_INTERVAL)]


FORWARD_ENV = ("SECUREPACS_AUDIT_SYSLOG_CA", "SECUREPACS_AUDIT_SYSLOG_CERT", "SECUREPACS_AUDIT_SYSLOG_KEY")


def _forwarder_cmd(p: Prepared) -> list[str] | None:
    """``securepacs audit forward`` when SECUREPACS_AUDIT_SYSLOG=host:port names a collector (RFC 5425, mutual
    TLS with the files in SECUREPACS_AUDIT_SYSLOG_{CA,CERT,KEY}); None when no collector is configured."""
    target = environment.env_value(os.environ, "SECUREPACS_AUDIT_SYSLOG") or ""
    if not target:
        return None
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise LaunchError(f"SECUREPACS_AUDIT_SYSLOG={target!r} is invalid: expected host:port of a syslog collector "
                          "(TLS, RFC 5425)")
    files = []
    for name in FORWARD_ENV:
        value = environment.env_value(os.environ, name) or ""
        if not value or not Path(value).is_file():
            raise LaunchError(f"{name}={value!r} is invalid: expected the path of a PEM file (needed because "
                              "SECUREPACS_AUDIT_SYSLOG is set)")
        files.append(value)
    return [sys.executable, "-m", "securepacs.cli.main", "audit", "forward", host.strip("[]"), port,
            "--trail", str(p.settings.audit_trail_path), "--ca", files[0], "--cert", files[1], "--key", files[2]]


def wait_listening(port: int, procs: list[subprocess.Popen], timeout: float = STARTUP_TIMEOUT) -> None:
    """Until something accepts TCP connections on 127.0.0.1:port (the gateway closes such probes quietly)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise LaunchError(f"{proc.args[0]} exited with status {proc.returncode} during start-up")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise LaunchError(f"nothing listens on port {port} after {timeout:.0f} s")


def check_nginx_config(p: Prepared) -> None:
    res = subprocess.run([*_nginx_cmd(p)[:-2], "-t"], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise LaunchError(f"nginx rejected {p.nginx_conf}: {res.stderr.strip()}")


def fetch_health(url: str, context: ssl.SSLContext | None = None) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as resp:  # noqa: S310 (fixed local URL)
            return json.loads(resp.read())
    except (OSError, ValueError):
        return None


def wait_healthy(
    url: str, procs: list[subprocess.Popen], timeout: float = STARTUP_TIMEOUT, context: ssl.SSLContext | None = None
) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise LaunchError(
                    f"{proc.args[0]} exited with status {proc.returncode} during start-up (see its log above)"
                )
        report = fetch_health(url, context)
        # Serving is enough: a degraded platform (a known CVE in the running Orthanc) is reported in the
        # banner, not waited out (health.ADVISORY).
        if health.ready(report):
            return report  # type: ignore[return-value]  # ready() is False for None
        time.sleep(0.3)
    raise LaunchError(f"{url} did not report healthy within {timeout:.0f} s")


COMPONENTS = ("signer", "orthanc", "gateway", "nginx")


class Archive:
    """The audit signer, Orthanc, the gateway and nginx as child processes, each under its own uid when
    started as root (or one of them, for the compose services)."""

    def __init__(self, prepared: Prepared, components: tuple[str, ...] = COMPONENTS):
        self.p = prepared
        self.components = components
        self.orthanc: subprocess.Popen | None = None
        self.gateway: subprocess.Popen | None = None
        self.nginx: subprocess.Popen | None = None
        self.forwarder: subprocess.Popen | None = None
        self.signer: subprocess.Popen | None = None

    def start(self) -> dict:
        try:
            report: dict = {}
            if "signer" in self.components:
                # First, so it attests from the first record on; it only reads the trail.
                self.signer = self._spawn(_signer_cmd(self.p), user=self.p.users.signer)
            if "orthanc" in self.components:
                report = self._start_orthanc()
                forward = _forwarder_cmd(self.p)
                if forward:
                    self.forwarder = self._spawn(forward)
            if "gateway" in self.components:
                if "orthanc" not in self.components:
                    # Separate service: Orthanc (same network namespace) first; its report feeds the banner.
                    report = wait_healthy(self._internal_health_url(), [])
                self.gateway = self._spawn(_gateway_cmd(), user=self.p.users.gateway or self.p.users.orthanc)
                wait_listening(self.p.settings.dicom_port, [p for p in (self.orthanc, self.gateway) if p])
            if "nginx" in self.components:
                check_nginx_config(self.p)
                if "orthanc" not in self.components:
                    # Separate service: wait for Orthanc (same network namespace) before serving.
                    report = wait_healthy(self._internal_health_url(), [])
                # Its error log names requests with their query strings (patient data in QIDO searches):
                # read it through the redactor, as the access log format drops them.
                self.nginx = subprocess.Popen(_nginx_cmd(self.p), start_new_session=True, stderr=subprocess.PIPE)
                nginx_log.forward(self.nginx.stderr, sys.stderr.buffer)
                served = wait_healthy(
                    f"https://127.0.0.1:{self.p.settings.https_port}{health.PUBLIC_URI}",
                    [p for p in (self.orthanc, self.gateway, self.nginx) if p],
                    context=https_context(self.p.settings.certs_dir / "ca" / "ca.crt"),
                )
                report = report or served  # the banner prefers the detailed report (versions, CVEs)
            if self.components == ("signer",):
                time.sleep(1.0)
                if self.signer is not None and self.signer.poll() is not None:
                    raise LaunchError(f"the audit signer exited with status {self.signer.returncode} during start-up")
                report = {"version": None, "components": {"orthanc": {}}}
            return report
        except BaseException:
            self.stop()
            raise

    def _internal_health_url(self) -> str:
        # The detailed report (a local request: no credentials, never through nginx): it feeds the banner.
        return f"http://127.0.0.1:{self.p.settings.http_port}{health.LOCAL_URI}"

    def _spawn(self, cmd: list[str], extra_env: dict[str, str] | None = None,
               user: pwd.struct_passwd | None = None) -> subprocess.Popen:
        """Start a child as ``user`` (default: the Orthanc service user); not root unless we are not root."""
        env = {**os.environ, **(extra_env or {})}
        user = user or self.p.users.orthanc
        kwargs: dict = {}
        if user is not None:
            # Its own supplementary groups only (e.g. securepacs-trail to append to the audit trail), not ours.
            kwargs = {"user": user.pw_uid, "group": user.pw_gid,
                      "extra_groups": os.getgrouplist(user.pw_name, user.pw_gid)}
            env.update(HOME=user.pw_dir, USER=user.pw_name, LOGNAME=user.pw_name)
        # Own process group: Ctrl-C in the terminal reaches only us, and we stop the children in order.
        return subprocess.Popen(cmd, env=env, start_new_session=True, **kwargs)

    def _start_orthanc(self) -> dict:
        self.orthanc = self._spawn(_orthanc_cmd(self.p), self.p.orthanc_env)
        return wait_healthy(self._internal_health_url(), [self.orthanc])

    def stop(self, timeout: float = 30.0) -> None:
        # nginx first (no new requests), gracefully; then the gateway, which lets running associations
        # finish; then Orthanc, which flushes its index on SIGTERM.
        if self.nginx and self.nginx.poll() is None:
            self.nginx.send_signal(signal.SIGQUIT)
            _wait(self.nginx, timeout)
        if self.gateway and self.gateway.poll() is None:
            self.gateway.send_signal(signal.SIGTERM)
            _wait(self.gateway, timeout)
        if self.orthanc and self.orthanc.poll() is None:
            self.orthanc.send_signal(signal.SIGTERM)
            _wait(self.orthanc, timeout)
        # Last: it forwards what the others wrote while stopping (the rest waits in the trail anyway).
        if self.forwarder and self.forwarder.poll() is None:
            self.forwarder.send_signal(signal.SIGTERM)
            _wait(self.forwarder, timeout)
        # Very last: it attests what everyone wrote while stopping.
        if self.signer and self.signer.poll() is None:
            self.signer.send_signal(signal.SIGTERM)
            _wait(self.signer, timeout)

    def wait(self) -> int:
        """Block until Ctrl-C/SIGTERM or a child dies; stop everything; return an exit status."""
        stopping = False

        def _on_signal(signum: int, _frame: object) -> None:
            nonlocal stopping
            stopping = True

        old = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            while not stopping:
                for proc in (self.signer, self.orthanc, self.gateway, self.nginx, self.forwarder):
                    if proc is not None and proc.poll() is not None:
                        log.error("%s exited unexpectedly with status %s; stopping", proc.args[0], proc.returncode)
                        self.stop()
                        return 1
                time.sleep(0.5)
            print("\nStopping SecurePACS ...", file=sys.stderr, flush=True)
            self.stop()
            return 0
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)


def _wait(proc: subprocess.Popen, timeout: float) -> None:
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        log.warning("%s did not stop within %.0f s; killing it", proc.args[0], timeout)
        proc.kill()
        proc.wait()


def banner(p: Prepared, report: dict) -> str:
    s = p.settings
    host = next((h for h in s.hostnames if h not in ("localhost", "127.0.0.1", "::1")), s.hostnames[0])
    cred = s.admin_credential_path
    lines = [
        "",
        f"SecurePACS {__version__} is running",
        *(f"  {line}" for line in exposure.describe(report.get("components", {}).get("platform"))),
        f"  DICOM (mutual TLS only): host {host}  port {s.dicom_port}  AE title {s.aet}  (gateway)",
        f"  HTTPS:                   https://{host}:{s.https_port}/  (health: /securepacs/health)",
        f"  CA certificate:          {Path(s.certs_dir) / 'ca' / 'ca.crt'}",
        f"  Data:                    {s.data_dir}",
        (
            f"  Admin credential:        written to {cred} (mode 0600; shown nowhere else)"
            if p.admin_created
            else f"  Admin credential:        in {cred} (created at first start)"
        ),
        "  Enrol a clinic:          securepacs clinic add NAME --aet AE_TITLE",
        "  Press Ctrl-C to stop.",
        "",
    ]
    return "\n".join(lines)
