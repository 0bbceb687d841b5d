"""Mutual TLS for the DICOM client: credentials, the ``ssl`` context, and readable handshake errors.

Credentials come either as PEM files (``--cert``/``--key``) or as a PKCS#12 bundle from our CA tool
(``--p12`` with the passphrase in a file). Every file is parsed with ``cryptography`` first so that a bad
file is reported by option and path, instead of OpenSSL's anonymous "PEM lib" error.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import re
import secrets
import ssl
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from securepacs.client.errors import ClientError

logger = logging.getLogger(__name__)

TLS_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}

# OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH / X509_V_ERR_IP_ADDRESS_MISMATCH
_NAME_MISMATCH_CODES = {62, 64}

# Alerts a server sends when it does not accept the client certificate (or got none).
_CLIENT_CERT_ALERTS = {
    "SSLV3_ALERT_BAD_CERTIFICATE",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED",
    "SSLV3_ALERT_CERTIFICATE_REVOKED",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
    "TLSV1_ALERT_UNKNOWN_CA",
    "TLSV1_ALERT_ACCESS_DENIED",
    "TLSV1_ALERT_DECRYPT_ERROR",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED",
}
_VERSION_ERRORS = {"TLSV1_ALERT_PROTOCOL_VERSION", "UNSUPPORTED_PROTOCOL", "NO_PROTOCOLS_AVAILABLE"}
# What OpenSSL reports when the peer answers with something that is not a TLS record.
_NOT_TLS_ERRORS = {"WRONG_VERSION_NUMBER", "PACKET_LENGTH_TOO_LONG", "RECORD_LAYER_FAILURE", "HTTP_REQUEST"}


@dataclass(frozen=True)
class TlsConfig:
    """Where the client's TLS credentials are and how strict the handshake is.

    Give either ``cert`` + ``key`` (PEM) or ``p12`` (PKCS#12, passphrase in ``p12_pass_file``), or
    neither for a client without certificate (our server refuses it, other servers may not).
    ``version`` pins one TLS version ("1.2" or "1.3"); by default 1.2 is the minimum.
    """

    ca: Path
    cert: Path | None = None
    key: Path | None = None
    p12: Path | None = None
    p12_pass_file: Path | None = None
    version: str | None = None
    check_hostname: bool = True

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ClientError("--cert and --key go together: give both (or use --p12)")
        if self.p12 is not None and self.cert is not None:
            raise ClientError("give either --cert/--key or --p12, not both")
        if self.p12_pass_file is not None and self.p12 is None:
            raise ClientError("--p12-pass-file needs --p12")
        if self.version is not None and self.version not in TLS_VERSIONS:
            raise ClientError(f"--tls-version {self.version!r} is invalid: expected one of 1.2, 1.3")

    @property
    def client_cert_label(self) -> str:
        """The file holding our client certificate, as named in error messages."""
        if self.cert is not None:
            return str(self.cert)
        if self.p12 is not None:
            return str(self.p12)
        return "no client certificate given: use --cert/--key or --p12"

    @property
    def offered_versions(self) -> str:
        return f"TLS {self.version} only" if self.version else "TLS 1.2 and 1.3"


def create_context(tls: TlsConfig) -> ssl.SSLContext:
    """Build the client-side ``SSLContext``: peer verification against ``--ca``, our certificate, versions."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = tls.check_hostname
    if tls.version is None:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    else:
        ctx.minimum_version = ctx.maximum_version = TLS_VERSIONS[tls.version]

    ca_pem = _read(tls.ca, "--ca")
    try:
        x509.load_pem_x509_certificates(ca_pem)
    except ValueError as exc:
        raise ClientError(f"cannot read --ca file {tls.ca}: no PEM certificate in it ({exc})") from exc
    ctx.load_verify_locations(cadata=ca_pem.decode("ascii", errors="replace"))

    if tls.cert is not None and tls.key is not None:
        _load_pem_pair(ctx, tls.cert, tls.key)
    elif tls.p12 is not None:
        _load_p12(ctx, tls.p12, tls.p12_pass_file)
    return ctx


def _read(path: Path, option: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ClientError(f"cannot read {option} file {path}: {exc.strerror or exc}") from exc


def _warn_if_exposed(path: Path, option: str) -> None:
    # A key or passphrase readable by other users is a leak waiting to happen; say so, like ssh does.
    with contextlib.suppress(OSError):
        if path.stat().st_mode & 0o077:
            logger.warning("%s file %s is accessible by other users; restrict it with chmod 600", option, path)


def _check_validity(cert: x509.Certificate, source: str) -> None:
    now = datetime.datetime.now(datetime.UTC)
    if cert.not_valid_after_utc < now:
        logger.warning("client certificate %s expired on %s; the server will refuse it",
                       source, cert.not_valid_after_utc.date())
    elif cert.not_valid_before_utc > now:
        logger.warning("client certificate %s is not valid before %s", source, cert.not_valid_before_utc)


def _public_der(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _load_pem_pair(ctx: ssl.SSLContext, cert_path: Path, key_path: Path) -> None:
    cert_pem = _read(cert_path, "--cert")
    key_pem = _read(key_path, "--key")
    _warn_if_exposed(key_path, "--key")
    try:
        certs = x509.load_pem_x509_certificates(cert_pem)
    except ValueError as exc:
        raise ClientError(f"cannot read --cert file {cert_path}: no PEM certificate in it ({exc})") from exc
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError as exc:
        raise ClientError(
            f"cannot read --key file {key_path}: the key is encrypted; use an unencrypted key or --p12"
        ) from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ClientError(f"cannot read --key file {key_path}: not a PEM private key ({exc})") from exc
    if _public_der(certs[0].public_key()) != _public_der(key.public_key()):
        raise ClientError(f"--key file {key_path} does not belong to the certificate in --cert {cert_path}")
    _check_validity(certs[0], str(cert_path))
    ctx.load_cert_chain(certfile=str(cert_path), keyfile=str(key_path))


def _load_p12(ctx: ssl.SSLContext, p12_path: Path, pass_file: Path | None) -> None:
    data = _read(p12_path, "--p12")
    password: bytes | None = None
    if pass_file is not None:
        _warn_if_exposed(pass_file, "--p12-pass-file")
        # Only the line ending is not part of the passphrase: editors and `echo` add one.
        password = _read(pass_file, "--p12-pass-file").rstrip(b"\r\n")
    try:
        key, cert, extra = pkcs12.load_key_and_certificates(data, password)
    except ValueError as exc:
        hint = "wrong passphrase in --p12-pass-file" if password else "missing passphrase (--p12-pass-file)"
        raise ClientError(f"cannot open --p12 file {p12_path}: {hint}, or not a PKCS#12 file ({exc})") from exc
    if key is None or cert is None:
        raise ClientError(f"--p12 file {p12_path} holds no private key and certificate pair")
    _check_validity(cert, str(p12_path))
    # Intermediate CAs travel with our certificate; self-signed roots are the server's business.
    chain = [cert, *(c for c in extra if c.subject != c.issuer)]
    with _private_tempdir() as tmp:
        # ssl loads credentials only from files. The key is written encrypted under a one-time random
        # password into a 0700 directory that is removed right after loading, so it never rests in clear.
        one_time = secrets.token_bytes(32)
        key_file = tmp / "client.key"
        chain_file = tmp / "client.crt"
        _write_private(key_file, key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(one_time),
        ))
        _write_private(chain_file, b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain))
        ctx.load_cert_chain(certfile=str(chain_file), keyfile=str(key_file), password=one_time)


@contextlib.contextmanager
def _private_tempdir() -> Iterator[Path]:
    # Prefer RAM-backed /dev/shm so even the encrypted key never reaches a disk.
    shm = "/dev/shm"  # noqa: S108 - a private mkdtemp directory inside it, not a fixed file name
    base = shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix="securepacs-tls-", dir=base) as tmp:
        yield Path(tmp)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def ssl_reason(exc: ssl.SSLError) -> str:
    """OpenSSL's reason without the ``[SSL: CODE]`` prefix and ``(_ssl.c:NNN)`` suffix."""
    text = str(exc.args[1]) if len(exc.args) > 1 else str(exc)
    text = re.sub(r"^\[SSL: [A-Z0-9_]+\]\s*", "", text)
    return re.sub(r"\s*\(_ssl\.c:\d+\)$", "", text) or (exc.reason or "unknown TLS error")


def explain_tls_error(exc: ssl.SSLError, tls: TlsConfig, host: str, port: int) -> str:
    """Say which side failed the handshake and why, naming the files involved."""
    where = f"{host}:{port}"
    reason = ssl_reason(exc)
    if isinstance(exc, ssl.SSLCertVerificationError):
        message = exc.verify_message or reason
        if exc.verify_code in _NAME_MISMATCH_CODES:
            return (f"server certificate of {where} does not name {host!r}: {message} "
                    "(connect with a name listed in the certificate, or pass --no-hostname-check)")
        return f"server certificate of {where} not trusted by --ca {tls.ca}: {message}"
    code = exc.reason or ""
    if code == "TLSV13_ALERT_CERTIFICATE_REQUIRED" and tls.cert is None and tls.p12 is None:
        return f"the server {where} requires a client certificate: give --cert/--key or --p12 ({reason})"
    if code in _CLIENT_CERT_ALERTS:
        return f"the server {where} refused our client certificate ({tls.client_cert_label}): {reason}"
    if code in _VERSION_ERRORS:
        return f"no common TLS version with {where} (we offered {tls.offered_versions}): {reason}"
    if code in _NOT_TLS_ERRORS:
        return (f"{where} did not answer with TLS ({reason}): is it a plain DICOM port? "
                "(--no-tls exists only for benchmarking plain servers)")
    if code == "UNEXPECTED_EOF_WHILE_READING" or isinstance(exc, ssl.SSLEOFError):
        return (f"{where} closed the connection during the TLS handshake: is it a plain DICOM port, or does "
                f"it refuse {tls.offered_versions}? ({reason})")
    return f"TLS handshake with {where} failed: {reason}"
