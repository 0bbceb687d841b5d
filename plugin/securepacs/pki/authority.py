"""Certificate authority for SecurePACS: one CA, one server certificate, one client bundle per clinic.

Everything is built with ``cryptography``; no openssl command line is needed. Keys are written PEM
(PKCS#8), mode 0600, atomically (temporary file in the same directory, then rename) and are never
overwritten unless the caller says so explicitly. A clinic's identity (its name and its AE titles) is
recorded in its certificate as ``urn:securepacs:...`` SAN URIs so a TLS terminator can map a peer
certificate to the AE titles it may use without asking the store.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import re
import secrets
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote, unquote

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from securepacs.config.environment import SettingsError, validate_aet
from securepacs.durable.atomic_file import write_atomically

log = logging.getLogger(__name__)
_T = TypeVar("_T")

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Read at call time (not bound as default arguments) so unit tests can swap in cheap EC keys.
CA_KEY_KIND = "rsa4096"
# Orthanc 1.10.1's DICOM TLS 1.2 suites are RSA-only (DESIGN.md): an EC server key breaks TLS 1.2 clients.
LEAF_KEY_KIND = "rsa3072"

MAX_CA_DAYS = 3650
# Leaves live at most 365 days (+ CLOCK_SKEW): Mozilla's TLS profiles (and the CA/Browser Forum) cap a leaf
# at 366 days from notBefore to notAfter. `serve` re-issues the server certificate 30 days before it expires.
MAX_LEAF_DAYS = 365
SERVER_RENEW_BEFORE = timedelta(days=30)
# Certificates start a few minutes in the past so a peer whose clock runs slightly slow accepts them.
CLOCK_SKEW = timedelta(minutes=5)

CLINIC_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
CLINIC_URI_PREFIX = "urn:securepacs:clinic:"
AET_URI_PREFIX = "urn:securepacs:aet:"
CLINIC_ORGANIZATION = "SecurePACS clinic"

_KEY_KINDS = ("rsa3072", "rsa4096", "ec-p256")
_USAGES: dict[str, tuple[x509.ObjectIdentifier, ...]] = {
    "server": (ExtendedKeyUsageOID.SERVER_AUTH,),
    "client": (ExtendedKeyUsageOID.CLIENT_AUTH,),
    "server+client": (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH),
}
_DNS_RE = re.compile(r"^(?=.{1,253}$)(\*\.)?(?!-)[A-Za-z0-9_-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9_-]{1,63}(?<!-))*$")


class PkiError(Exception):
    """A PKI operation failed or was refused; the message names the file or value concerned."""


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


# -- keys and certificates ---------------------------------------------------------------------------


def generate_key(kind: str = "rsa3072") -> PrivateKey:
    if kind == "rsa3072":
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    if kind == "rsa4096":
        return rsa.generate_private_key(public_exponent=65537, key_size=4096)
    if kind == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    raise PkiError(f"key kind {kind!r} is not supported: expected one of {', '.join(_KEY_KINDS)}")


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _aware(value: datetime, what: str) -> datetime:
    # A naive datetime is ambiguous (local time or UTC?); guessing would shift validity by hours.
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise PkiError(f"{what}={value!r} is invalid: expected a timezone-aware datetime")
    return value.astimezone(UTC)


def _check_days(days: int, limit: int | None, what: str) -> None:
    if isinstance(days, bool) or not isinstance(days, int) or days < 1 or (limit is not None and days > limit):
        bound = f"1-{limit}" if limit is not None else "at least 1"
        raise PkiError(f"{what} lifetime days={days!r} is invalid: expected a whole number of days, {bound}")


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attrs = []
    for oid, value, what in ((NameOID.COMMON_NAME, common_name, "common name"),
                             (NameOID.ORGANIZATION_NAME, organization, "organization")):
        if value is None:
            continue
        # X.520 upper bound for CN and O is 64 characters.
        if not isinstance(value, str) or not value.strip() or len(value) > 64 or not value.isprintable():
            raise PkiError(f"{what} {value!r} is invalid: expected 1-64 printable characters")
        attrs.append(x509.NameAttribute(oid, value))
    return x509.Name(attrs)


def _public_der(key: PrivateKey | x509.Certificate) -> bytes:
    public = key.public_key()
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _check_issuer(ca_key: PrivateKey, ca_cert: x509.Certificate) -> None:
    if _public_der(ca_key) != _public_der(ca_cert):
        raise PkiError(f"CA private key does not match CA certificate {ca_cert.subject.rfc4514_string()}")
    try:
        is_ca = ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise PkiError(f"certificate {ca_cert.subject.rfc4514_string()} is not a CA (BasicConstraints ca=False)")


def _sequence(values: Iterable[_T], what: str) -> list[_T]:
    # A bare string is iterable too; treating "example.org" as 11 one-letter names would be a silent bug.
    if isinstance(values, str | bytes):
        raise PkiError(f"{what}={values!r} is invalid: expected a list of values, not a single string")
    return list(values)


def dns_name(value: str) -> str:
    """Return ``value`` if it is a usable DNS name for a certificate SAN, else raise PkiError."""
    if not isinstance(value, str) or not _DNS_RE.match(value):
        raise PkiError(f"DNS name {value!r} is invalid: expected dot-separated labels of letters, digits, '-'")
    return value


def ip_address(value: str | IPAddress) -> IPAddress:
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise PkiError(f"IP address {value!r} is invalid") from None


def split_hostnames(hostnames: Sequence[str]) -> tuple[list[str], list[IPAddress]]:
    """Sort server hostnames into DNS names and IP addresses (deduplicated, order kept), validating each."""
    items = _sequence(hostnames, "hostnames")
    if not items:
        raise PkiError("no hostnames given: the server certificate needs at least one DNS name or IP address")
    dns: dict[str, None] = {}
    ips: dict[IPAddress, None] = {}
    for item in items:
        try:
            ips[ipaddress.ip_address(item)] = None
        except ValueError:
            dns[dns_name(item).lower()] = None
    return list(dns), list(ips)


def _uri(value: str) -> str:
    if not isinstance(value, str) or not value.isascii() or ":" not in value or any(c.isspace() for c in value):
        raise PkiError(f"URI {value!r} is invalid: expected an absolute ASCII URI without spaces")
    return value


def _key_identifier(ca_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key())  # type: ignore[arg-type]  # CA keys are RSA/EC


def make_ca(
    common_name: str, *, days: int = MAX_CA_DAYS, key: PrivateKey | None = None
) -> tuple[PrivateKey, x509.Certificate]:
    """Self-signed CA allowed to sign leaf certificates only (path length 0)."""
    _check_days(days, MAX_CA_DAYS, "CA")
    name = _name(common_name)
    if key is None:
        key = generate_key(CA_KEY_KIND)
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    return key, builder.sign(key, hashes.SHA256())


def make_cert(
    ca_key: PrivateKey,
    ca_cert: x509.Certificate,
    common_name: str,
    *,
    usage: str,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str | IPAddress] = (),
    uris: Sequence[str] = (),
    organization: str | None = None,
    days: int = 365,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    key: PrivateKey | None = None,
) -> tuple[PrivateKey, x509.Certificate]:
    """Leaf certificate signed by the CA. Explicit dates bypass the lifetime cap (tests craft expired certs)."""
    if usage not in _USAGES:
        raise PkiError(f"certificate usage {usage!r} is invalid: expected one of {', '.join(_USAGES)}")
    _check_issuer(ca_key, ca_cert)
    subject = _name(common_name, organization)
    san: list[x509.GeneralName] = [x509.DNSName(dns_name(n)) for n in _sequence(dns_names, "dns_names")]
    san += [x509.IPAddress(ip_address(a)) for a in _sequence(ip_addresses, "ip_addresses")]
    san += [x509.UniformResourceIdentifier(_uri(u)) for u in _sequence(uris, "uris")]

    explicit = not_before is not None or not_after is not None
    now = _now()
    start = _aware(not_before, "not_before") if not_before is not None else now - CLOCK_SKEW
    if not_after is not None:
        end = _aware(not_after, "not_after")
    else:
        _check_days(days, None if explicit else MAX_LEAF_DAYS, "certificate")
        end = (start if explicit else now) + timedelta(days=days)
    if end <= start:
        raise PkiError(f"certificate validity is empty: not_after {end.isoformat()} is not after "
                       f"not_before {start.isoformat()}")
    if end > ca_cert.not_valid_after_utc:
        raise PkiError(f"certificate would expire {end:%Y-%m-%d}, after the CA certificate "
                       f"{ca_cert.subject.rfc4514_string()} ({ca_cert.not_valid_after_utc:%Y-%m-%d}); "
                       "use fewer days or renew the CA")

    if key is None:
        key = generate_key(LEAF_KEY_KIND)
    # keyEncipherment only means something for RSA key transport; RFC 5480 forbids it for EC keys.
    rsa_key = isinstance(key, rsa.RSAPrivateKey)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=rsa_key,
                data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(list(_USAGES[usage])), critical=False)
        .add_extension(_key_identifier(ca_cert), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if san:  # an empty SAN extension is invalid DER, so leave it out entirely
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def fingerprint_sha256(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


# -- files -------------------------------------------------------------------------------------------


def _write_atomic(path: Path, data: bytes, mode: int, *, overwrite: bool) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, data, mode, exclusive=not overwrite)
    except FileExistsError:
        raise PkiError(f"{path} already exists; refusing to overwrite it") from None
    except OSError as exc:
        raise PkiError(f"cannot write {path}: {exc.strerror or exc}") from exc


def write_key(path: Path, key: PrivateKey, passphrase: bytes | None = None, *, overwrite: bool = False) -> None:
    """Write a private key as PEM PKCS#8, mode 0600, optionally encrypted with ``passphrase``."""
    if passphrase is not None and not passphrase:
        raise PkiError(f"empty passphrase for {path}: pass None for an unencrypted key")
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    _write_atomic(Path(path), data, 0o600, overwrite=overwrite)


def write_cert(path: Path, *certs: x509.Certificate, overwrite: bool = True) -> None:
    """Write one or more certificates (a chain, leaf first) as PEM, mode 0644."""
    if not certs:
        raise PkiError(f"no certificate given to write to {path}")
    data = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)
    _write_atomic(Path(path), data, 0o644, overwrite=overwrite)


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise PkiError(f"{what} file {path} does not exist") from None
    except OSError as exc:
        raise PkiError(f"cannot read {what} file {path}: {exc.strerror or exc}") from exc


def load_cert(path: Path) -> x509.Certificate:
    """First certificate in a PEM (or DER) file."""
    data = _read(path, "certificate")
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificates(data)[0]
        return x509.load_der_x509_certificate(data)
    except ValueError:
        raise PkiError(f"{path} does not contain a valid X.509 certificate (PEM or DER expected)") from None


def load_key(path: Path, passphrase: bytes | None = None) -> PrivateKey:
    data = _read(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, passphrase)
    except TypeError:
        # cryptography raises TypeError for "encrypted but no passphrase" and the reverse.
        state = "is encrypted: a passphrase is needed" if passphrase is None else "is not encrypted"
        raise PkiError(f"private key {path} {state}") from None
    except ValueError:
        raise PkiError(f"{path} does not contain a readable PEM private key (or the passphrase is wrong)") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise PkiError(f"private key {path} is a {type(key).__name__}: expected an RSA or EC key")
    return key


# -- clinic identity ---------------------------------------------------------------------------------


def clinic_uris(clinic: str, aets: Sequence[str]) -> list[str]:
    # Percent-encoding keeps spaces and other AE characters inside a valid, unambiguous URI.
    return [CLINIC_URI_PREFIX + quote(clinic, safe="")] + [AET_URI_PREFIX + quote(a, safe="") for a in aets]


def clinic_identity(cert: x509.Certificate) -> tuple[str | None, tuple[str, ...]]:
    """(clinic, AE titles) recorded in the certificate's SAN URIs; (None, ()) for a non-clinic certificate."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None, ()
    clinic: str | None = None
    aets: list[str] = []
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith(CLINIC_URI_PREFIX) and clinic is None:
            clinic = unquote(uri[len(CLINIC_URI_PREFIX):])
        elif uri.startswith(AET_URI_PREFIX):
            aets.append(unquote(uri[len(AET_URI_PREFIX):]))
    return clinic, tuple(aets)


def _check_clinic_name(clinic: str) -> str:
    # The name becomes a directory name: the pattern rules out "..", "/", and hidden files.
    if not isinstance(clinic, str) or not CLINIC_NAME_RE.match(clinic):
        raise PkiError(f"clinic name {clinic!r} is invalid: expected 1-64 characters of letters, digits, "
                       "'.', '_', '-', starting with a letter or digit")
    return clinic


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
        return self.certs_dir / "clinics" / _check_clinic_name(clinic)

    # -- CA --
    def has_ca(self) -> bool:
        return self.ca_key_path.is_file() and self.ca_cert_path.is_file()

    def load_ca(self) -> tuple[PrivateKey, x509.Certificate]:
        if not self.has_ca():
            raise PkiError(f"no certificate authority in {self.ca_key_path.parent} "
                           "(ca.key and ca.crt): run `securepacs pki init` first")
        key, cert = load_key(self.ca_key_path), load_cert(self.ca_cert_path)
        try:
            _check_issuer(key, cert)
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
        key, cert = make_ca(common_name)
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
        if _public_der(key) != _public_der(cert):
            return f"{self.server_key_path} does not match {self.server_cert_path}"
        if self.has_ca():
            try:
                cert.verify_directly_issued_by(load_cert(self.ca_cert_path))
            except (ValueError, TypeError, InvalidSignature):
                return "not issued by the current CA"
        lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
        if lifetime > timedelta(days=MAX_LEAF_DAYS) + CLOCK_SKEW:  # issued under an older, longer policy
            return f"valid for {lifetime.days} days, longer than the {MAX_LEAF_DAYS}-day limit"
        left = cert.not_valid_after_utc - _now()
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
        if not set(_USAGES["server+client"]) <= eku:
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
        aet_list = _sequence(aets, "aets")
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
            _write_atomic(bundle.p12_path, p12, 0o600, overwrite=False)
            _write_atomic(bundle.p12_pass_path, (passphrase + "\n").encode("ascii"), 0o600, overwrite=False)
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        log.info("issued certificate for clinic %s (serial %d, %s), valid until %s", clinic,
                 bundle.serial, bundle.fingerprint, bundle.not_after.date())
        return bundle

    # -- revocation --
    def write_crl(self, revoked: Sequence[tuple[int, datetime]], days: int = 7) -> Path:
        """Write a CRL signed by the CA listing ``revoked`` (serial, revocation time); returns its path."""
        _check_days(days, MAX_LEAF_DAYS, "CRL")
        entries: dict[int, datetime] = {}
        for item in _sequence(revoked, "revoked"):
            serial, when = item
            if isinstance(serial, bool) or not isinstance(serial, int) or serial <= 0:
                raise PkiError(f"revoked serial {serial!r} is invalid: expected a positive integer")
            when = _aware(when, f"revocation time of serial {serial}")
            entries[serial] = min(when, entries.get(serial, when))
        ca_key, ca_cert = self.load_ca()
        now = _now()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(ca_cert.subject)
            .last_update(now)
            .next_update(now + timedelta(days=days))
            .add_extension(x509.CRLNumber(self._next_crl_number(now)), critical=False)
            .add_extension(_key_identifier(ca_cert), critical=False)
        )
        for serial, when in sorted(entries.items()):
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
            )
        crl = builder.sign(ca_key, hashes.SHA256())
        _write_atomic(self.crl_path, crl.public_bytes(serialization.Encoding.PEM), 0o644, overwrite=True)
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
