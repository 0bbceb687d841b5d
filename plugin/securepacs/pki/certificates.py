"""Certificate profiles: keys, the CA and leaf certificates, and the clinic identity in SAN URIs.

Pure functions over ``cryptography`` objects; nothing here touches the disk (``pem_files`` reads and
writes PEM, ``authority.Pki`` keeps the on-disk CA). A clinic's identity (its name and its AE titles) is
recorded in its certificate as ``urn:securepacs:...`` SAN URIs so a TLS terminator can map a peer
certificate to the AE titles it may use without asking the store.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TypeVar
from urllib.parse import quote, unquote

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

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
USAGES: dict[str, tuple[x509.ObjectIdentifier, ...]] = {
    "server": (ExtendedKeyUsageOID.SERVER_AUTH,),
    "client": (ExtendedKeyUsageOID.CLIENT_AUTH,),
    "server+client": (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH),
}
_DNS_RE = re.compile(r"^(?=.{1,253}$)(\*\.)?(?!-)[A-Za-z0-9_-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9_-]{1,63}(?<!-))*$")



class PkiError(Exception):
    """A PKI operation failed or was refused; the message names the file or value concerned."""



# -- keys and certificates ---------------------------------------------------------------------------


def generate_key(kind: str = "rsa3072") -> PrivateKey:
    if kind == "rsa3072":
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    if kind == "rsa4096":
        return rsa.generate_private_key(public_exponent=65537, key_size=4096)
    if kind == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    raise PkiError(f"key kind {kind!r} is not supported: expected one of {', '.join(_KEY_KINDS)}")


def utc_now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def aware(value: datetime, what: str) -> datetime:
    # A naive datetime is ambiguous (local time or UTC?); guessing would shift validity by hours.
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise PkiError(f"{what}={value!r} is invalid: expected a timezone-aware datetime")
    return value.astimezone(UTC)


def check_days(days: int, limit: int | None, what: str) -> None:
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


def public_der(key: PrivateKey | x509.Certificate) -> bytes:
    public = key.public_key()
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def check_issuer(ca_key: PrivateKey, ca_cert: x509.Certificate) -> None:
    if public_der(ca_key) != public_der(ca_cert):
        raise PkiError(f"CA private key does not match CA certificate {ca_cert.subject.rfc4514_string()}")
    try:
        is_ca = ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise PkiError(f"certificate {ca_cert.subject.rfc4514_string()} is not a CA (BasicConstraints ca=False)")


def as_list(values: Iterable[_T], what: str) -> list[_T]:
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
    items = as_list(hostnames, "hostnames")
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


def authority_key_identifier(ca_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key())  # type: ignore[arg-type]  # CA keys are RSA/EC


def make_ca(
    common_name: str, *, days: int = MAX_CA_DAYS, key: PrivateKey | None = None
) -> tuple[PrivateKey, x509.Certificate]:
    """Self-signed CA allowed to sign leaf certificates only (path length 0)."""
    check_days(days, MAX_CA_DAYS, "CA")
    name = _name(common_name)
    if key is None:
        key = generate_key(CA_KEY_KIND)
    now = utc_now()
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
    if usage not in USAGES:
        raise PkiError(f"certificate usage {usage!r} is invalid: expected one of {', '.join(USAGES)}")
    check_issuer(ca_key, ca_cert)
    subject = _name(common_name, organization)
    san: list[x509.GeneralName] = [x509.DNSName(dns_name(n)) for n in as_list(dns_names, "dns_names")]
    san += [x509.IPAddress(ip_address(a)) for a in as_list(ip_addresses, "ip_addresses")]
    san += [x509.UniformResourceIdentifier(_uri(u)) for u in as_list(uris, "uris")]

    explicit = not_before is not None or not_after is not None
    now = utc_now()
    start = aware(not_before, "not_before") if not_before is not None else now - CLOCK_SKEW
    if not_after is not None:
        end = aware(not_after, "not_after")
    else:
        check_days(days, None if explicit else MAX_LEAF_DAYS, "certificate")
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
        .add_extension(x509.ExtendedKeyUsage(list(USAGES[usage])), critical=False)
        .add_extension(authority_key_identifier(ca_cert), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if san:  # an empty SAN extension is invalid DER, so leave it out entirely
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def fingerprint_sha256(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


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


def check_clinic_name(clinic: str) -> str:
    # The name becomes a directory name: the pattern rules out "..", "/", and hidden files.
    if not isinstance(clinic, str) or not CLINIC_NAME_RE.match(clinic):
        raise PkiError(f"clinic name {clinic!r} is invalid: expected 1-64 characters of letters, digits, "
                       "'.', '_', '-', starting with a letter or digit")
    return clinic
