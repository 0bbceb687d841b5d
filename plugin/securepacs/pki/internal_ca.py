"""The internal CA for the hop between the DICOM gateway and Orthanc.

Orthanc's DICOM port trusts only this CA, so clinic certificates (issued by the public CA) cannot reach
Orthanc directly: every clinic association passes the gateway, which binds AE titles to certificates.
Orthanc's own certificate and the gateway's come from here; both carry serverAuth and clientAuth because
each side also dials the other (gateway → Orthanc for clinic associations, Orthanc → gateway for the
C-MOVE egress relay). The CA key is needed only to (re)issue them and stays with the init step.
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.exceptions import InvalidSignature

from securepacs.pki.certificates import (
    CLOCK_SKEW,
    LEAF_KEY_KIND,
    MAX_LEAF_DAYS,
    PkiError,
    generate_key,
    make_ca,
    make_cert,
)
from securepacs.pki.pem_files import load_cert, load_key, write_cert, write_key

log = logging.getLogger(__name__)

LEAF_DAYS = MAX_LEAF_DAYS  # the same cap as every other leaf, though no public client ever sees these
RENEW_BEFORE = timedelta(days=30)


class InternalPki:
    def __init__(self, certs_dir: Path):
        self.dir = Path(certs_dir) / "internal"
        self.ca_key_path = self.dir / "ca.key"
        self.ca_cert_path = self.dir / "ca.crt"

    def key_path(self, name: str) -> Path:
        return self.dir / f"{name}.key"

    def cert_path(self, name: str) -> Path:
        return self.dir / f"{name}.crt"

    def complete(self) -> bool:
        return self.ca_cert_path.is_file() and all(
            self.key_path(n).is_file() and self.cert_path(n).is_file() for n in ("orthanc", "gateway")
        )

    def ensure(self) -> bool:
        """Create the CA and both leaf certificates if missing or due; True if anything was written."""
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o755)  # noqa: S103 (certificates are public; the keys inside are 0600)
        written = False
        if not (self.ca_key_path.exists() and self.ca_cert_path.exists()):
            ca_key, ca_cert = make_ca("SecurePACS internal CA")
            write_key(self.ca_key_path, ca_key, overwrite=True)
            write_cert(self.ca_cert_path, ca_cert)
            written = True
            log.info("internal CA created in %s", self.dir)
        ca_key, ca_cert = load_key(self.ca_key_path), load_cert(self.ca_cert_path)
        for name in ("orthanc", "gateway"):
            if written or self._due(name, ca_cert):
                # RSA: Orthanc 1.10.1's TLS 1.2 suites are RSA-only.
                key, cert = make_cert(ca_key, ca_cert, f"SecurePACS {name} (internal)", usage="server+client",
                                      dns_names=["localhost"], ip_addresses=["127.0.0.1", "::1"], days=LEAF_DAYS,
                                      key=generate_key(LEAF_KEY_KIND))
                write_key(self.key_path(name), key, overwrite=True)
                write_cert(self.cert_path(name), cert)
                written = True
                log.info("internal certificate for %s written", name)
        return written

    def _due(self, name: str, ca_cert) -> bool:
        key_path, cert_path = self.key_path(name), self.cert_path(name)
        if not (key_path.exists() and cert_path.exists()):
            return True
        try:
            cert = load_cert(cert_path)
            # Signed by *this* CA (a CA recreated under the same name must not keep old leaves).
            cert.verify_directly_issued_by(ca_cert)
        except (PkiError, ValueError, TypeError, InvalidSignature):
            return True
        if cert.not_valid_after_utc - cert.not_valid_before_utc > timedelta(days=LEAF_DAYS) + CLOCK_SKEW:
            return True  # issued under the older 825-day policy
        return cert.not_valid_after_utc - datetime.now(UTC) < RENEW_BEFORE

    def hand_over(self, uid: int, gid: int) -> None:
        """The service user (Orthanc and the gateway run as it) reads both leaf keys; the CA key stays root's."""
        for name in ("orthanc", "gateway"):
            for path in (self.key_path(name), self.cert_path(name)):
                os.chown(path, uid, gid)
        os.chown(self.ca_cert_path, uid, gid)
