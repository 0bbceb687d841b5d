"""The on-disk certificate authority: one CA, one server certificate, a CRL and one bundle per clinic.

Everything is built with ``cryptography`` (``certificates``); no openssl command line is needed. Files
are written through ``pem_files``: private keys mode 0600, never overwritten unless the caller says so.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from securepacs.config.environment import SettingsError, validate_aet
from securepacs.pki import certificates
from securepacs.pki.certificates import (
    CLINIC_ORGANIZATION,
    CLOCK_SKEW,
    MAX_LEAF_DAYS,
    SERVER_RENEW_BEFORE,
    USAGES,
    PkiError,
    PrivateKey,
    as_list,
    authority_key_identifier,
    aware,
    check_clinic_name,
    check_days,
    check_issuer,
    clinic_uris,
    fingerprint_sha256,
    make_cert,
    public_der,
    split_hostnames,
    utc_now,
)
from securepacs.pki.pem_files import load_cert, load_key, write_cert, write_file, write_key

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClinicBundle:
    directory: Path
    key_path: Path
    cert_path: Path
    ca_path: Path
    p12_path: Path
    p12_pass_path: Path
    serial: int
    fingerprint: str
    not_before: datetime
    not_after: datetime


# -- the on-disk layout ------------------------------------------------------------------------------


class Pki:
    """CA, server certificate, CRL and clinic bundles under one certs directory."""

    def __init__(self, certs_dir: Path):
        self.certs_dir = Path(certs_dir)
        self.ca_key_path = self.certs_dir / "ca" / "ca.key"
        self.ca_cert_path = self.certs_dir / "ca" / "ca.crt"
        self.crl_path = self.certs_dir / "ca" / "crl.pem"
        self.server_key_path = self.certs_dir / "server" / "server.key"
        self.server_cert_path = self.certs_dir / "server" / "server.crt"

    def clinic_dir(self, clinic: str) -> Path:
        return self.certs_dir / "clinics" / check_clinic_name(clinic)

    # -- CA --
    def has_ca(self) -> bool:
        return self.ca_key_path.is_file() and self.ca_cert_path.is_file()

    def load_ca(self) -> tuple[PrivateKey, x509.Certificate]:
        if not self.has_ca():
            raise PkiError(f"no certificate authority in {self.ca_key_path.parent} "
                           "(ca.key and ca.crt): run `securepacs pki init` first")
        key, cert = load_key(self.ca_key_path), load_cert(self.ca_cert_path)
        try:
            check_issuer(key, cert)
        except PkiError as exc:
            raise PkiError(f"{self.ca_key_path} / {self.ca_cert_path}: {exc}") from None
        return key, cert

    def ensure_ca(self, common_name: str = "SecurePACS CA") -> bool:
        """Create the CA if missing; True if created. An existing CA is validated, never regenerated."""
        key_present, cert_present = self.ca_key_path.exists(), self.ca_cert_path.exists()
        if key_present and cert_present:
            self.load_ca()
            return False
        if key_present or cert_present:
            present, missing = ((self.ca_key_path, self.ca_cert_path) if key_present
                                else (self.ca_cert_path, self.ca_key_path))
            raise PkiError(f"{present} exists but {missing} is missing: restore it from backup; "
                           "refusing to create a new CA next to half of an old one")
        key, cert = certificates.make_ca(common_name)
        write_key(self.ca_key_path, key)
        try:
            write_cert(self.ca_cert_path, cert, overwrite=False)
        except BaseException:
            self.ca_key_path.unlink(missing_ok=True)
            raise
        self._hand_over(self.ca_cert_path)
        log.info("created CA %s (%s), valid until %s", cert.subject.rfc4514_string(),
                 fingerprint_sha256(cert), cert.not_valid_after_utc.date())
        return True

    # -- server --
    def server_renewal_reason(self, hostnames: Sequence[str]) -> str | None:
        """Why the server certificate must be (re)issued for ``hostnames``, or None if it is fine."""
        dns, ips = split_hostnames(hostnames)
        if not (self.server_key_path.exists() and self.server_cert_path.exists()):
            return "missing"
        try:
            key, cert = load_key(self.server_key_path), load_cert(self.server_cert_path)
        except PkiError as exc:
            return f"unreadable: {exc}"
        if public_der(key) != public_der(cert):
            return f"{self.server_key_path} does not match {self.server_cert_path}"
        if self.has_ca():
            try:
                cert.verify_directly_issued_by(load_cert(self.ca_cert_path))
            except (ValueError, TypeError, InvalidSignature):
                return "not issued by the current CA"
        lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
        if lifetime > timedelta(days=MAX_LEAF_DAYS) + CLOCK_SKEW:  # issued under an older, longer policy
            return f"valid for {lifetime.days} days, longer than the {MAX_LEAF_DAYS}-day limit"
        left = cert.not_valid_after_utc - utc_now()
        if left < SERVER_RENEW_BEFORE:
            return f"expires {cert.not_valid_after_utc:%Y-%m-%d}, in less than {SERVER_RENEW_BEFORE.days} days"
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            have_dns = {n.lower() for n in san.get_values_for_type(x509.DNSName)}
            have_ips = set(san.get_values_for_type(x509.IPAddress))
        except x509.ExtensionNotFound:
            have_dns, have_ips = set(), set()
        missing = [n for n in dns if n not in have_dns] + [str(a) for a in ips if a not in have_ips]
        if missing:
            return f"does not cover {', '.join(missing)}"
        try:
            eku = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
        except x509.ExtensionNotFound:
            eku = set()
        if not set(USAGES["server+client"]) <= eku:
            return "lacks serverAuth/clientAuth extended key usage"
        return None

    def ensure_server(self, hostnames: Sequence[str], days: int = MAX_LEAF_DAYS) -> bool:
        """Issue the server certificate if missing, expiring soon or not covering ``hostnames``; True if written."""
        reason = self.server_renewal_reason(hostnames)
        if reason is None:
            return False
        dns, ips = split_hostnames(hostnames)
        ca_key, ca_cert = self.load_ca()
        first = str(hostnames[0])
        common_name = first if len(first) <= 64 else "SecurePACS server"
        # serverAuth and clientAuth: Orthanc is also the TLS client when it sends C-MOVE sub-operations.
        key, cert = make_cert(ca_key, ca_cert, common_name, usage="server+client",
                              dns_names=dns, ip_addresses=ips, days=days)
        # A fresh key every time: re-issuing keeps nothing of a possibly stale or exposed key.
        write_key(self.server_key_path, key, overwrite=True)
        write_cert(self.server_cert_path, cert)
        self._hand_over(self.server_key_path)
        self._hand_over(self.server_cert_path)
        log.info("server certificate written for %s (%s), valid until %s", ", ".join(map(str, hostnames)),
                 reason, cert.not_valid_after_utc.date())
        return True

    # -- clinics --
    def issue_clinic(
        self,
        clinic: str,
        aets: Sequence[str],
        days: int = 365,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        usage: str = "client",
        move_host: str | None = None,
    ) -> ClinicBundle:
        """Write the clinic's bundle directory; refuses if it exists, removes it again on any failure.

        With ``move_host`` (the clinic's C-MOVE destination) the certificate also serves the clinic's SCP:
        serverAuth besides clientAuth, and ``move_host`` as SAN DNS name or IP address, which the egress
        relay checks against the address it dials (``gateway.identity.check_destination``).
        """
        directory = self.clinic_dir(clinic)
        aet_list = as_list(aets, "aets")
        if not aet_list:
            raise PkiError(f"clinic {clinic!r} needs at least one AE title")
        try:
            aet_list = [validate_aet(a) for a in aet_list]
        except SettingsError as exc:
            raise PkiError(str(exc)) from None
        dns, ips = split_hostnames([move_host]) if move_host is not None else ([], [])
        if move_host is not None:
            usage = "server+client"
        ca_key, ca_cert = self.load_ca()
        # All crypto first: a refused argument must not leave an empty directory behind.
        key, cert = make_cert(ca_key, ca_cert, clinic, usage=usage, uris=clinic_uris(clinic, aet_list),
                              dns_names=dns, ip_addresses=ips, organization=CLINIC_ORGANIZATION, days=days,
                              not_before=not_before, not_after=not_after)
        passphrase = secrets.token_urlsafe(24)  # 192 random bits
        p12 = _pkcs12(clinic, key, cert, ca_cert, passphrase.encode("ascii"))

        bundle = ClinicBundle(
            directory=directory,
            key_path=directory / "clinic.key",
            cert_path=directory / "clinic.crt",
            ca_path=directory / "ca.crt",
            p12_path=directory / "clinic.p12",
            p12_pass_path=directory / "clinic.p12.pass",
            serial=cert.serial_number,
            fingerprint=fingerprint_sha256(cert),
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
        )
        try:
            directory.parent.mkdir(parents=True, exist_ok=True)
            directory.mkdir(mode=0o700)
        except FileExistsError:
            raise PkiError(f"bundle directory {directory} already exists; refusing to overwrite it") from None
        except OSError as exc:
            raise PkiError(f"cannot create {directory}: {exc.strerror or exc}") from exc
        try:
            write_key(bundle.key_path, key)
            write_cert(bundle.cert_path, cert, overwrite=False)
            write_cert(bundle.ca_path, ca_cert, overwrite=False)
            write_file(bundle.p12_path, p12, 0o600, overwrite=False)
            write_file(bundle.p12_pass_path, (passphrase + "\n").encode("ascii"), 0o600, overwrite=False)
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        log.info("issued certificate for clinic %s (serial %d, %s), valid until %s", clinic,
                 bundle.serial, bundle.fingerprint, bundle.not_after.date())
        return bundle

    # -- revocation --
    def write_crl(self, revoked: Sequence[tuple[int, datetime]], days: int = 7) -> Path:
        """Write a CRL signed by the CA listing ``revoked`` (serial, revocation time); returns its path."""
        check_days(days, MAX_LEAF_DAYS, "CRL")
        entries: dict[int, datetime] = {}
        for item in as_list(revoked, "revoked"):
            serial, when = item
            if isinstance(serial, bool) or not isinstance(serial, int) or serial <= 0:
                raise PkiError(f"revoked serial {serial!r} is invalid: expected a positive integer")
            when = aware(when, f"revocation time of serial {serial}")
            entries[serial] = min(when, entries.get(serial, when))
        ca_key, ca_cert = self.load_ca()
        now = utc_now()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(ca_cert.subject)
            .last_update(now)
            .next_update(now + timedelta(days=days))
            .add_extension(x509.CRLNumber(self._next_crl_number(now)), critical=False)
            .add_extension(authority_key_identifier(ca_cert), critical=False)
        )
        for serial, when in sorted(entries.items()):
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
            )
        crl = builder.sign(ca_key, hashes.SHA256())
        write_file(self.crl_path, crl.public_bytes(serialization.Encoding.PEM), 0o644, overwrite=True)
        self._hand_over(self.crl_path)
        log.info("CRL written to %s with %d revoked certificate(s)", self.crl_path, len(entries))
        return self.crl_path

    def _next_crl_number(self, now: datetime) -> int:
        # CRL numbers must increase; the clock keeps that true even if the previous CRL was deleted.
        previous = 0
        with contextlib.suppress(OSError, ValueError, x509.ExtensionNotFound):
            crl = x509.load_pem_x509_crl(self.crl_path.read_bytes())
            previous = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        return max(previous + 1, int(now.timestamp()))

    def _hand_over(self, path: Path) -> None:
        """When root writes a file Orthanc reads, give it to the owner of the certs dir (the service user).

        The CA and clinic private keys are deliberately not handed over: Orthanc never needs them.
        """
        if not (hasattr(os, "geteuid") and os.geteuid() == 0):
            return
        try:
            st = self.certs_dir.stat()
            if st.st_uid != 0:
                os.chown(path, st.st_uid, st.st_gid)
        except OSError as exc:
            raise PkiError(f"cannot hand {path} to the owner of {self.certs_dir}: {exc.strerror or exc}") from exc


def _pkcs12(name: str, key: PrivateKey, cert: x509.Certificate, ca_cert: x509.Certificate,
            passphrase: bytes) -> bytes:
    # AES-256/PBKDF2-SHA256 with a SHA-256 MAC instead of the legacy 3DES/SHA-1 default of older tools;
    # the passphrase is random, so the KDF iteration count is not what protects the file.
    encryption = (
        serialization.PrivateFormat.PKCS12.encryption_builder()
        .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
        .hmac_hash(hashes.SHA256())
        .build(passphrase)
    )
    return pkcs12.serialize_key_and_certificates(name.encode("utf-8"), key, cert, [ca_cert], encryption)
