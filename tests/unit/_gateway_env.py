"""Throw-away PKI, store and a gateway running in a background thread, shared by the gateway unit tests.

EC keys throughout: milliseconds to generate where RSA 3072 takes seconds; the gateway itself accepts
ECDHE-ECDSA (Orthanc's RSA-only limitation does not apply to our tests' stand-in upstream).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509

from securepacs.gateway import Gateway, GatewayConfig, associate_pdu
from securepacs.gateway import pdu as pdu_mod
from securepacs.pki import authority, certificates, pem_files
from securepacs.store.database import CertificateRecord, Store

AET = "SECUREPACS"
VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT = "1.2.840.10008.1.2"


def ec_key() -> certificates.PrivateKey:
    return certificates.generate_key("ec-p256")


@dataclass(frozen=True)
class Credential:
    cert: Path
    key: Path
    serial: int
    certificate: x509.Certificate


class Pki:
    """Clinic CA (public side) and internal CA (gateway <-> Orthanc), with files under ``root``."""

    def __init__(self, root: Path):
        self.root = root
        self._issued = 0
        self.clinic_ca_key, self.clinic_ca_cert = certificates.make_ca("Test clinic CA", days=3, key=ec_key())
        self.internal_ca_key, self.internal_ca_cert = certificates.make_ca("Test internal CA", days=3, key=ec_key())
        self.clinic_ca = self._write_cert("ca/ca.crt", self.clinic_ca_cert)
        pem_files.write_key(root / "ca" / "ca.key", self.clinic_ca_key)
        self.internal_ca = self._write_cert("internal/ca.crt", self.internal_ca_cert)
        self.crl = root / "ca" / "crl.pem"
        loopback = {"dns_names": ["localhost"], "ip_addresses": ["127.0.0.1"]}
        self.server = self.issue("server/server", "archive", "server+client", **loopback)
        self.gateway_internal = self.issue("internal/gateway", "gateway", "server+client", internal=True, **loopback)
        self.orthanc_internal = self.issue("internal/orthanc", "orthanc", "server+client", internal=True, **loopback)

    def _write_cert(self, rel: str, cert: x509.Certificate) -> Path:
        path = self.root / rel
        pem_files.write_cert(path, cert)
        return path

    def issue(self, rel: str, cn: str, usage: str, *, internal: bool = False, **kwargs: Any) -> Credential:
        ca_key, ca_cert = ((self.internal_ca_key, self.internal_ca_cert) if internal
                           else (self.clinic_ca_key, self.clinic_ca_cert))
        kwargs.setdefault("days", 1)
        key, cert = certificates.make_cert(ca_key, ca_cert, cn, usage=usage, key=ec_key(), **kwargs)
        key_path, cert_path = self.root / f"{rel}.key", self.root / f"{rel}.crt"
        pem_files.write_key(key_path, key, overwrite=True)
        pem_files.write_cert(cert_path, cert)
        return Credential(cert_path, key_path, cert.serial_number, cert)

    def clinic(self, name: str, aets: list[str], **kwargs: Any) -> Credential:
        kwargs.setdefault("uris", certificates.clinic_uris(name, aets))
        self._issued += 1  # one file pair per certificate: re-issuing must not replace a clinic's files
        return self.issue(f"clinics/{name}-{self._issued}", name, kwargs.pop("usage", "client"), **kwargs)

    def write_crl(self, serials: list[int]) -> None:
        authority.Pki(self.root).write_crl([(s, datetime.now().astimezone()) for s in serials], days=1)


def enrol(store: Store, cred: Credential, clinic: str, aets: list[str],
          move: tuple[str, int] | None = None) -> None:
    store.add_clinic(clinic, aets, *(move or (None, None)))
    cert = cred.certificate
    store.add_certificate(CertificateRecord(str(cert.serial_number), clinic, cert.subject.rfc4514_string(),
                                            certificates.fingerprint_sha256(cert),
                                            cert.not_valid_before_utc.isoformat(),
                                            cert.not_valid_after_utc.isoformat()))


def server_context(cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=str(ca))
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


def client_context(cred: Credential | None, ca: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(ca))
    if cred is not None:
        ctx.load_cert_chain(str(cred.cert), str(cred.key))
    return ctx


def make_config(p: Pki, store_path: Path, upstream: tuple[str, int], **overrides: Any) -> GatewayConfig:
    values: dict[str, Any] = {
        "listen": ("127.0.0.1", 0),
        "upstream": upstream,
        "egress_listen": None,
        "aet": AET,
        "server_cert": p.server.cert,
        "server_key": p.server.key,
        "clinic_ca": p.clinic_ca,
        "crl": p.crl,
        "internal_ca": p.internal_ca,
        "internal_cert": p.gateway_internal.cert,
        "internal_key": p.gateway_internal.key,
        "store_path": store_path,
        "events_path": store_path.parent / "events.jsonl",
        "handshake_timeout": 3.0,
        "refresh_interval": 0.2,
        "rate_per_ip": 0.0,
    }
    values.update(overrides)
    return GatewayConfig(**values)


class GatewayThread:
    """A ``Gateway`` on its own event loop in a daemon thread, so blocking clients can talk to it."""

    def __init__(self, config: GatewayConfig, inspector_factory: Any = None):
        self.loop = asyncio.new_event_loop()
        # Gateways of one test module share an events file: this one's events are those after this point
        # (an earlier gateway's "released" must never answer for this one's association).
        self.events_path = config.events_path
        self._events_offset = config.events_path.stat().st_size if config.events_path and \
            config.events_path.exists() else 0
        self.thread = threading.Thread(target=self.loop.run_forever, name="gateway", daemon=True)
        self.thread.start()
        self.gateway: Gateway = self.call(self._start(config, inspector_factory))
        assert self.gateway.address is not None
        self.port = self.gateway.address[1]
        self.egress_port = self.gateway.egress_address[1] if self.gateway.egress_address else None

    async def _start(self, config: GatewayConfig, factory: Any) -> Gateway:
        gateway = Gateway(config, factory)
        await gateway.start()
        return gateway

    def call(self, coro: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def run(self, fn: Any) -> Any:
        """Run a plain function on the gateway's loop (its state is not thread-safe)."""
        async def wrapper() -> Any:
            return fn()
        return self.call(wrapper())

    def shutdown_async(self, grace: float) -> Any:
        return asyncio.run_coroutine_threadsafe(self.gateway.shutdown(grace), self.loop)

    def stop(self, grace: float = 2.0) -> None:
        if self.thread.is_alive():
            self.call(self.gateway.shutdown(grace))
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()

    def events(self) -> list[dict[str, Any]]:
        import json

        if self.events_path is None or not self.events_path.exists():
            return []
        with self.events_path.open("rb") as fh:
            fh.seek(self._events_offset)
            return [json.loads(line) for line in fh.read().decode().splitlines()]


class RecordingUpstream:
    """A TLS server (internal CA) that only counts connections and bytes: proof that nothing was forwarded."""

    def __init__(self, p: Pki):
        self.ctx = server_context(p.orthanc_internal.cert, p.orthanc_internal.key, p.internal_ca)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.bytes = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._drain, args=(conn,), daemon=True).start()

    def _drain(self, conn: socket.socket) -> None:
        try:
            with self.ctx.wrap_socket(conn, server_side=True) as tls:
                while data := tls.recv(65536):
                    with self._lock:
                        self.bytes += len(data)
        except (OSError, ssl.SSLError):
            pass

    def close(self) -> None:
        self.sock.close()


def associate_rq(calling: str, called: str = AET) -> bytes:
    return associate_pdu.build_associate(pdu_mod.A_ASSOCIATE_RQ, called, calling,
                                         [associate_pdu.PresentationContext(1, VERIFICATION, (IMPLICIT,))])


def read_pdu(sock: ssl.SSLSocket) -> bytes:
    """One PDU, or whatever arrived before the connection closed (b"" if nothing)."""
    data = b""
    try:
        while len(data) < 6:
            chunk = sock.recv(6 - len(data))
            if not chunk:
                return data
            data += chunk
        length = struct.unpack(">I", data[2:6])[0]
        while len(data) < 6 + length:
            chunk = sock.recv(min(65536, 6 + length - len(data)))
            if not chunk:
                break
            data += chunk
    except (ConnectionError, ssl.SSLError):
        pass
    return data
