"""What every benchmark configuration shares: AE titles, free ports and the client credentials."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

from securepacs.pki import enrolment
from securepacs.pki.authority import Pki
from securepacs.pki.internal_ca import InternalPki
from securepacs.store.database import Store

BENCH_AET = "BENCH"
BENCH_CLINIC = "bench"
SERVER_AET = "SECUREPACS"
HOSTNAMES = ("localhost", "127.0.0.1")


class BenchError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Credentials:
    """What a client presents and trusts on one configuration's DICOM port."""

    cert: Path
    key: Path
    ca: Path


@dataclass(frozen=True)
class BenchPki:
    """One CA, one server certificate (RSA, as DESIGN.md requires for TLS 1.2) and the bench client bundle.

    The full stacks (d, e) are prepared with this certs dir, so the internal CA of the gateway hop lives
    here too (``internal/``), written by ``deploy.prepare``.
    """

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

    @property
    def clinic(self) -> Credentials:
        """The bench clinic's bundle: what a clinic presents to the gateway or to native TLS (c, e)."""
        return Credentials(self.client_cert, self.client_key, self.ca)

    @property
    def internal_gateway(self) -> Credentials:
        """The gateway's own client certificate for Orthanc's internal port (configuration f)."""
        internal = InternalPki(self.certs_dir)
        return Credentials(internal.cert_path("gateway"), internal.key_path("gateway"), internal.ca_cert_path)

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
            enrolment.enrol(store, self.pki, BENCH_CLINIC, [BENCH_AET])
        else:
            self.pki.issue_clinic(BENCH_CLINIC, [BENCH_AET])
