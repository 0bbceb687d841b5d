"""A real archive for integration tests: ``securepacs serve`` (Orthanc + plugin + nginx) on free ports.

The archive is started exactly as ``scripts/up`` starts it (same command, same generated configuration),
only with a temporary data dir, certs dir and free ports given through the documented environment
overrides. Clinics are enrolled with the real CLI while it runs.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, StoragePresentationContexts, evt

from securepacs.client import Connection, TlsConfig
from securepacs.client import echo as client_echo
from securepacs.pki import authority, certificates, pem_files
from securepacs.platform import health

pytestmark = pytest.mark.integration

SECUREPACS = Path(sys.executable).with_name("securepacs")
START_TIMEOUT = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Clinic:
    name: str
    aets: tuple[str, ...]
    bundle: Path

    @property
    def cert(self) -> Path:
        return self.bundle / "clinic.crt"

    @property
    def key(self) -> Path:
        return self.bundle / "clinic.key"

    @property
    def ca(self) -> Path:
        return self.bundle / "ca.crt"


@dataclass
class Archive:
    root: Path
    env: dict[str, str]
    dicom_port: int
    https_port: int
    http_port: int
    aet: str = "SECUREPACS"
    host: str = "localhost"
    kind: str = "native"
    proc: subprocess.Popen | None = None
    log_path: Path | None = None
    clinics: dict[str, Clinic] = field(default_factory=dict)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def certs_dir(self) -> Path:
        return self.root / "certs"

    @property
    def ca_cert(self) -> Path:
        return self.certs_dir / "ca" / "ca.crt"

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        res = subprocess.run(
            [str(SECUREPACS), *args], env=self.env, capture_output=True, text=True, timeout=120, check=False
        )
        if check and res.returncode != 0:
            raise AssertionError(f"securepacs {' '.join(args)} failed ({res.returncode}):\n{res.stderr}")
        return res

    def admin_credential(self) -> tuple[str, str]:
        text = (self.data_dir / "secrets" / "admin-credential.txt").read_text()
        fields = dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)
        return fields["username"], fields["password"]

    def https(
        self,
        path: str,
        *,
        auth: tuple[str, str] | None = None,
        method: str = "GET",
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        ctx = ssl.create_default_context(cafile=str(self.ca_cert))
        req = urllib.request.Request(
            f"https://{self.host}:{self.https_port}{path}", data=data, method=method, headers=headers or {}
        )
        if auth:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=30) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def admin_json(self, path: str, method: str = "GET", body: object | None = None) -> object:
        data = None if body is None else json.dumps(body).encode()
        status, payload = self.https(path, auth=self.admin_credential(), method=method, data=data)
        assert status == 200, f"{method} {path} -> {status}: {payload[:200]!r}"
        return json.loads(payload)

    def enrol(self, name: str, *aets: str, host: str | None = None, port: int | None = None) -> Clinic:
        args = ["clinic", "add", name]
        for aet in aets:
            args += ["--aet", aet]
        if host:
            args += ["--host", host, "--port", str(port)]
        self.cli(*args)
        clinic = Clinic(name, aets, self.certs_dir / "clinics" / name)
        self.clinics[name] = clinic
        self.wait_modalities(present=aets)
        return clinic

    def wait_modalities(self, present: tuple[str, ...] = (), absent: tuple[str, ...] = (), timeout: float = 20) -> None:
        """The plugin syncs enrolment into Orthanc within seconds; wait for it, no restart."""
        deadline = time.monotonic() + timeout
        while True:
            aets = {m["AET"] for m in self.admin_json("/modalities?expand").values()}
            if set(present) <= aets and not set(absent) & aets:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"modalities {sorted(aets)} never matched present={present} absent={absent}")
            time.sleep(0.3)

    def conn(
        self, clinic: Clinic, *, aet: str | None = None, tls_version: str | None = None, called: str | None = None
    ) -> Connection:
        tls = TlsConfig(ca=clinic.ca, cert=clinic.cert, key=clinic.key, version=tls_version)
        return Connection(
            self.host,
            self.dicom_port,
            calling_aet=aet or clinic.aets[0],
            called_aet=called or self.aet,
            tls=tls,
            acse_timeout=15,
            dimse_timeout=60,
        )

    def start(self) -> None:
        _start(self)

    def stop(self) -> int:
        return stop_archive(self)

    def restart(self) -> None:
        assert self.stop() == 0, self.log_text()[-3000:]
        self.start()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def assert_serving(self) -> None:
        """After any rejection the archive must still answer a legitimate echo and HTTPS health."""
        assert self.running(), "the archive died"
        clinic = next(iter(self.clinics.values()))
        assert client_echo(self.conn(clinic)) == 0
        status, _ = self.https("/securepacs/health")
        assert status == 200

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""


def _start(archive: Archive) -> None:
    archive.log_path = archive.root / "serve.log"
    log = archive.log_path.open("ab")
    offset = log.tell()  # a restart appends: only this start's output counts
    archive.proc = subprocess.Popen(
        [str(SECUREPACS), "serve"], env=archive.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + START_TIMEOUT
    while "is running" not in archive.log_text()[offset:]:
        if archive.proc.poll() is not None:
            raise RuntimeError(f"securepacs serve exited {archive.proc.returncode}:\n{archive.log_text()[-4000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"securepacs serve did not start:\n{archive.log_text()[-4000:]}")
        time.sleep(0.3)


def stop_archive(archive: Archive) -> int:
    assert archive.proc is not None
    archive.proc.send_signal(signal.SIGINT)
    try:
        return archive.proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(archive.proc.pid, signal.SIGKILL)
        archive.proc.wait()
        return -9


def restart_archive(archive: Archive) -> None:
    assert stop_archive(archive) == 0, archive.log_text()[-3000:]
    _start(archive)


def make_archive(prefix: str) -> Archive:
    # Not pytest's tmp_path: that lives under a 0700 directory the unprivileged Orthanc user cannot enter.
    root = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(root, 0o755)  # noqa: S103 (the unprivileged service user must traverse it; no secrets at this level)
    ports = {name: free_port() for name in ("dicom", "https", "http", "internal", "egress")}
    env = {
        **os.environ,
        "SECUREPACS_DATA": str(root / "data"),
        "SECUREPACS_CERTS": str(root / "certs"),
        "SECUREPACS_DICOM_PORT": str(ports["dicom"]),
        "SECUREPACS_HTTPS_PORT": str(ports["https"]),
        "SECUREPACS_HTTP_PORT": str(ports["http"]),
        "SECUREPACS_INTERNAL_DICOM_PORT": str(ports["internal"]),
        "SECUREPACS_EGRESS_PORT": str(ports["egress"]),
        # The fuzz test opens 10,000 connections from 127.0.0.1; the default (20/s) would make it take
        # minutes. The limiter itself is covered by the gateway's unit tests.
        "SECUREPACS_GATEWAY_RATE_PER_IP": "2000",
        "SECUREPACS_HOSTNAMES": "localhost,127.0.0.1",
    }
    return Archive(root, env, ports["dicom"], ports["https"], ports["http"])


@pytest.fixture(scope="session")
def move_scp_port() -> int:
    return free_port()


REPO = Path(__file__).resolve().parents[2]


def compose_command() -> list[str]:
    """`docker compose` (v2) when present, else Debian's docker-compose 1.29."""
    if subprocess.run(["docker", "compose", "version"], capture_output=True, check=False).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise RuntimeError("neither `docker compose` nor docker-compose is installed (run scripts/docker-engine)")


class ComposeArchive(Archive):
    """The compose stack, built from this checkout, with bind-mounted data/certs so tests can read them."""

    def compose(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        cmd = [*compose_command(), "-f", str(REPO / "compose.yaml"), "-p", self.env["COMPOSE_PROJECT_NAME"], *args]
        res = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout, check=False)
        if check and res.returncode != 0:
            raise AssertionError(
                f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
            )
        return res

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        # Documented admin path: the one-shot init service (root, holds the CA key) runs the command.
        res = self.compose("run", "--rm", "-T", "init", "securepacs", *args, check=False)
        if check and res.returncode != 0:
            raise AssertionError(f"securepacs {' '.join(args)} failed ({res.returncode}):\n{res.stderr}")
        return res

    def start(self) -> None:
        self.compose("up", "-d")
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                status, body = self.https("/securepacs/health")
                # Serving (health.ready): a degraded platform (a known CVE) is reported, not waited out.
                if status == 200 and health.ready(json.loads(body)):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"compose stack not healthy:\n{self.log_text()[-4000:]}")
            time.sleep(1)

    def stop(self) -> int:
        return self.compose("down", check=False).returncode

    def running(self) -> bool:
        out = self.compose("ps", "-q", "archive", check=False).stdout.strip()
        return bool(out)

    def log_text(self) -> str:
        return self.compose("logs", "--no-color", check=False).stdout


def make_compose_archive(prefix: str) -> ComposeArchive:
    native = make_archive(prefix)
    # The per-service volumes (compose.yaml) as bind mounts nested where the native layout has them, so
    # tests read the same host paths for both kinds of archive.
    for sub in ("data", "certs", "data/gateway", "data/audit", "certs/audit"):
        (native.root / sub).mkdir()
    env = {
        **native.env,
        "COMPOSE_PROJECT_NAME": native.root.name.replace("-", "").replace("_", "").lower(),
        "SECUREPACS_IMAGE": os.environ.get("SECUREPACS_TEST_IMAGE", "securepacs:test"),
        "BASE_IMAGE": os.environ.get("BASE_IMAGE", "securepacs-base:forky"),
        "SECUREPACS_DATA_VOLUME": str(native.root / "data"),
        "SECUREPACS_CERTS_VOLUME": str(native.root / "certs"),
        "SECUREPACS_GATEWAY_VOLUME": str(native.root / "data" / "gateway"),
        "SECUREPACS_AUDIT_VOLUME": str(native.root / "data" / "audit"),
        "SECUREPACS_SIGNER_VOLUME": str(native.root / "certs" / "audit"),
    }
    return ComposeArchive(native.root, env, native.dicom_port, native.https_port, native.http_port, kind="compose")


@pytest.fixture(scope="session")
def compose_image() -> str:
    """Build the image once per session from this checkout (same install script as scripts/up)."""
    if subprocess.run(["docker", "info"], capture_output=True, check=False).returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("no Docker engine: scripts/test must start one in CI (scripts/docker-engine)")
        pytest.skip("no Docker engine running (scripts/docker-engine starts one)")
    image = os.environ.get("SECUREPACS_TEST_IMAGE", "securepacs:test")
    base = os.environ.get("BASE_IMAGE", "securepacs-base:forky")
    res = subprocess.run(
        [
            "docker",
            "build",
            "-q",
            "-f",
            str(REPO / "orthanc" / "Dockerfile"),
            "--build-arg",
            f"BASE_IMAGE={base}",
            "-t",
            image,
            str(REPO),
        ],
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert res.returncode == 0, f"docker build failed:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    return image


def _archive_for(kind: str, request: pytest.FixtureRequest, move_scp_port: int) -> Iterator[Archive]:
    if kind == "compose":
        request.getfixturevalue("compose_image")
        arc: Archive = make_compose_archive("securepacs-ct-")
    else:
        arc = make_archive("securepacs-it-")
    arc.start()
    try:
        # The retrieve address is only reachable from a native Orthanc (the test SCP listens on loopback).
        move = {"host": "127.0.0.1", "port": move_scp_port} if kind == "native" else {}
        arc.enrol("clinicA", "CLINICA", "CLINICA2", **move)
        yield arc
    finally:
        rc = arc.stop()
        if os.environ.get("SECUREPACS_KEEP_TEST_DATA") != "1":
            shutil.rmtree(arc.root, ignore_errors=True)
        assert rc == 0, f"the {kind} archive did not stop cleanly"


@pytest.fixture(scope="session")
def native_archive(request: pytest.FixtureRequest, move_scp_port: int) -> Iterator[Archive]:
    """The native archive alone: for checks only it can do (C-MOVE back to an SCP on this host's loopback)."""
    yield from _archive_for("native", request, move_scp_port)


@pytest.fixture(scope="session")
def compose_archive(request: pytest.FixtureRequest, move_scp_port: int) -> Iterator[Archive]:
    yield from _archive_for("compose", request, move_scp_port)


@pytest.fixture(scope="session", params=["native", pytest.param("compose", marks=pytest.mark.compose)])
def archive(request: pytest.FixtureRequest) -> Archive:
    """Every end-to-end check runs against the native archive and against the compose stack."""
    return request.getfixturevalue(f"{request.param}_archive")


@pytest.fixture(scope="session")
def clinic_a(archive: Archive) -> Clinic:
    return archive.clinics["clinicA"]


# -- the clinic's C-MOVE destination -----------------------------------------------------------------


def scp_credentials(archive, directory: Path) -> tuple[Path, Path]:
    """A serverAuth+clientAuth key/certificate for the clinic's retrieve SCP, issued by the archive's CA."""
    ca_key, ca_cert = authority.Pki(archive.certs_dir).load_ca()
    key, cert = certificates.make_cert(ca_key, ca_cert, "clinicA retrieve SCP", usage="server+client",
                              dns_names=["localhost"], ip_addresses=["127.0.0.1"], days=1)
    pem_files.write_key(directory / "scp.key", key)
    pem_files.write_cert(directory / "scp.crt", cert)
    return directory / "scp.key", directory / "scp.crt"


@dataclass
class MoveScp:
    received: dict[str, bytes] = field(default_factory=dict)
    syntaxes: set[str] = field(default_factory=set)
    callers: set[str] = field(default_factory=set)
    peer_certs: list[bytes] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_store(self, event: evt.Event) -> int:
        sock = event.assoc.dul.socket.socket
        with self.lock:
            self.received[str(event.request.AffectedSOPInstanceUID)] = event.request.DataSet.getvalue()
            self.syntaxes.add(str(event.context.transfer_syntax))
            self.callers.add(event.assoc.requestor.ae_title)
            self.peer_certs.append(sock.getpeercert(binary_form=True))
        return 0x0000


@pytest.fixture
def move_scp(native_archive, move_scp_port, tmp_path) -> Iterator[MoveScp]:
    """The clinic's retrieve SCP (AE CLINICA at 127.0.0.1:move_scp_port), mutual TLS with the archive's CA.

    Only the native archive can reach it: the compose stack's Orthanc runs in a container. The clinic
    bundle's certificate is clientAuth-only, so the SCP gets its own serverAuth+clientAuth certificate from
    the archive's CA; it requires and verifies the archive's client certificate.
    """
    key, cert = scp_credentials(native_archive, tmp_path)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(native_archive.ca_cert))
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert), str(key))

    scp = MoveScp()
    ae = AE(ae_title="CLINICA")
    ae.require_called_aet = True
    for cx in StoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    server = ae.start_server(("127.0.0.1", move_scp_port), block=False, ssl_context=ctx,
                             evt_handlers=[(evt.EVT_C_STORE, scp.on_store)])
    try:
        yield scp
    finally:
        server.shutdown()
