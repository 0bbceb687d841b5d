"""Deployment settings shared by the launcher and the command line.

Read once from the environment (the overrides named in DESIGN.md) and validated: an error names the
variable, the value and what was expected, so an operator can fix it without reading code.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from securepacs.config import schema

DEFAULT_AET = "SECUREPACS"
DEFAULT_DICOM_PORT = 2762  # IANA dicom-tls
DEFAULT_HTTPS_PORT = 8443
DEFAULT_HTTP_PORT = 8042  # Orthanc's own HTTP port: loopback only, behind nginx
DEFAULT_INTERNAL_DICOM_PORT = 2763  # Orthanc's DICOM port behind the gateway (internal CA only)
DEFAULT_EGRESS_PORT = 2764  # the gateway's loopback relay for Orthanc's outgoing C-MOVE associations

# PS3.5 6.2: AE is at most 16 characters of the default repertoire, no backslash, no control characters.
# Leading/trailing spaces are not significant, so an AE title made only of spaces is meaningless.
_AET_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")


class SettingsError(ValueError):
    """A setting from the environment is invalid; the message names variable, value and expectation."""


def validate_aet(value: str, what: str = "AE title") -> str:
    """Return the AE title if valid per PS3.5 (≤ 16 chars, no backslash, no control chars), else raise."""
    if not isinstance(value, str) or not _AET_RE.match(value) or not value.strip():
        raise SettingsError(
            f"{what} {value!r} is invalid: expected 1-16 printable ASCII characters, "
            "no backslash and not only spaces (DICOM PS3.5 value representation AE)"
        )
    return value.strip()


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    certs_dir: Path
    dicom_port: int = DEFAULT_DICOM_PORT
    https_port: int = DEFAULT_HTTPS_PORT
    http_port: int = DEFAULT_HTTP_PORT
    # Orthanc's own DICOM port behind the gateway (TLS, trusts only the internal CA) and the gateway's
    # loopback relay through which Orthanc's C-MOVE sub-operations leave.
    internal_dicom_port: int = DEFAULT_INTERNAL_DICOM_PORT
    egress_port: int = DEFAULT_EGRESS_PORT
    aet: str = DEFAULT_AET
    hostnames: tuple[str, ...] = ("localhost",)
    nginx_dir_override: Path | None = None
    session_idle_seconds: int | None = None  # None: the plugin's default (15 minutes)
    # The gateway <-> Orthanc hop: "tls" (default; Orthanc trusts only the internal CA) or "plain", an
    # explicit choice for single-host installs that trades that hop's TLS for speed (see README).
    internal_hop: str = "tls"

    @property
    def store_path(self) -> Path:
        return self.data_dir / "securepacs.db"

    @property
    def nginx_dir(self) -> Path:
        """nginx's generated configuration, pid and temp files (SECUREPACS_NGINX_DIR, e.g. a tmpfs)."""
        return self.nginx_dir_override or self.data_dir / "nginx"

    @property
    def secrets_dir(self) -> Path:
        return self.data_dir / "secrets"

    @property
    def admin_credential_path(self) -> Path:
        return self.secrets_dir / "admin-credential.txt"

    @property
    def gateway_dir(self) -> Path:
        """The gateway's own files (service user, 0700): its service credential and connection events."""
        return self.data_dir / "gateway"

    @property
    def gateway_credential_path(self) -> Path:
        return self.gateway_dir / "credential.txt"

    @property
    def audit_dir(self) -> Path:
        """The audit trail's directory (service user, 0700): append-only, hash-chained JSON lines."""
        return self.data_dir / "audit"

    @property
    def audit_trail_path(self) -> Path:
        return self.audit_dir / "trail.jsonl"

    @property
    def audit_key_path(self) -> Path:
        """The key that signs the trail's checkpoints: in the certs dir, never next to the trail."""
        return self.certs_dir / "audit" / "checkpoint.key"


INTERNAL_HOPS = ("tls", "plain")


def _hostname(raw: str) -> tuple[str, ...]:
    hosts = [h.strip() for h in raw.split(",") if h.strip()]
    for h in hosts:
        if not re.match(r"^[A-Za-z0-9.:_-]{1,253}$", h):
            raise SettingsError(f"SECUREPACS_HOSTNAMES entry {h!r} is invalid: expected a DNS name or IP address")
    return tuple(dict.fromkeys(hosts))


def _internal_hop(raw: str) -> str:
    if raw.lower() not in INTERNAL_HOPS:
        raise schema.Invalid("tls (default) or plain")
    return raw.lower()


def _idle_seconds(raw: str) -> int:
    # At most the plugin's default absolute session lifetime (12 h), which the idle limit may not exceed.
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= 43200:
        raise schema.Invalid("whole seconds 1-43200")
    return int(raw)


def _rate(raw: str) -> float:
    try:
        rate = float(raw)
    except ValueError:
        rate = -1.0
    if not rate >= 0:  # also refuses NaN
        raise schema.Invalid("connections per second (0 disables the limit)")
    return rate


def _aet(raw: str) -> str:
    return validate_aet(raw, "SECUREPACS_AET")


def _text(raw: str) -> str:
    return raw


# Every SECUREPACS_* variable the archive reads, declared once. An unset or blank variable means the default.
ENV = schema.table(
    schema.Key("SECUREPACS_DATA", "data", _text, "the data directory (store, trail, secrets), relative to cwd"),
    schema.Key("SECUREPACS_CERTS", "certs", _text, "the certificate directory (CAs, server keys)"),
    schema.Key("SECUREPACS_AET", DEFAULT_AET, _aet, "the archive's AE title", blank_is_default=False),
    schema.Key("SECUREPACS_HOSTNAMES", (), _hostname, "comma-separated names/addresses in the server certificate"),
    schema.Key("SECUREPACS_DICOM_PORT", DEFAULT_DICOM_PORT, schema.env_port, "the gateway's DICOM TLS port"),
    schema.Key("SECUREPACS_HTTPS_PORT", DEFAULT_HTTPS_PORT, schema.env_port, "nginx's HTTPS port"),
    schema.Key("SECUREPACS_HTTP_PORT", DEFAULT_HTTP_PORT, schema.env_port, "Orthanc's loopback HTTP port"),
    schema.Key("SECUREPACS_INTERNAL_DICOM_PORT", DEFAULT_INTERNAL_DICOM_PORT, schema.env_port,
               "Orthanc's DICOM port behind the gateway"),
    schema.Key("SECUREPACS_EGRESS_PORT", DEFAULT_EGRESS_PORT, schema.env_port,
               "the gateway's loopback relay for C-MOVE sub-operations"),
    schema.Key("SECUREPACS_NGINX_DIR", None, _text, "nginx's generated files (default <data>/nginx)"),
    schema.Key("SECUREPACS_SESSION_IDLE_SECONDS", None, _idle_seconds, "web session idle timeout"),
    schema.Key("SECUREPACS_INTERNAL_HOP", "tls", _internal_hop, "the gateway <-> Orthanc hop: tls or plain"),
    schema.Key("SECUREPACS_GATEWAY_RATE_PER_IP", None, _rate, "new connections per second per address"),
    schema.Key("SECUREPACS_AUDIT_SYSLOG", None, _text, "host:port of a syslog collector (RFC 5425)"),
    schema.Key("SECUREPACS_AUDIT_SYSLOG_CA", None, _text, "the collector's CA (PEM)"),
    schema.Key("SECUREPACS_AUDIT_SYSLOG_CERT", None, _text, "our client certificate for the collector (PEM)"),
    schema.Key("SECUREPACS_AUDIT_SYSLOG_KEY", None, _text, "its private key (PEM)"),
    schema.Key("SECUREPACS_USER", "orthanc", _text, "the service user Orthanc runs as (root: no separation)"),
    schema.Key("SECUREPACS_HOME", None, _text, "the installed source tree (default: where this package is)"),
    schema.Key("SECUREPACS_PYTHON_PLUGIN", "/usr/share/orthanc/plugins/libOrthancPython.so", _text,
               "Orthanc's python plugin"),
    schema.Key("SECUREPACS_DICOMWEB_PLUGIN", "/usr/share/orthanc/plugins/libOrthancDicomWeb.so", _text,
               "Orthanc's DICOMweb plugin"),
    schema.Key("SECUREPACS_IMAGE", "securepacs:latest", _text, "the image tag the benchmark's image platform runs"),
)


def env_value(env: Mapping[str, str], name: str) -> Any:
    """The checked value of ``name`` (declared in :data:`ENV`) from ``env``; blank or unset: its default."""
    key = ENV[name]
    raw = env.get(name)
    if raw is None or (key.blank_is_default and not raw.strip()):
        return key.default
    try:
        return key.check(raw.strip() if key.blank_is_default else raw)
    except schema.Invalid as exc:
        raise SettingsError(f"{name}={raw.strip()!r} is invalid: expected {exc}") from None


def from_env(env: Mapping[str, str] | None = None, cwd: Path | None = None) -> Settings:
    """Build settings from ``SECUREPACS_*`` variables; relative paths are relative to ``cwd``."""
    env = os.environ if env is None else env
    cwd = cwd or Path.cwd()
    nginx_dir = env_value(env, "SECUREPACS_NGINX_DIR")
    return Settings(
        data_dir=(cwd / env_value(env, "SECUREPACS_DATA")).resolve(),
        certs_dir=(cwd / env_value(env, "SECUREPACS_CERTS")).resolve(),
        dicom_port=env_value(env, "SECUREPACS_DICOM_PORT"),
        https_port=env_value(env, "SECUREPACS_HTTPS_PORT"),
        http_port=env_value(env, "SECUREPACS_HTTP_PORT"),
        internal_dicom_port=env_value(env, "SECUREPACS_INTERNAL_DICOM_PORT"),
        egress_port=env_value(env, "SECUREPACS_EGRESS_PORT"),
        aet=env_value(env, "SECUREPACS_AET"),
        hostnames=env_value(env, "SECUREPACS_HOSTNAMES")
        or tuple(dict.fromkeys(("localhost", "127.0.0.1", "::1", socket.getfqdn()))),
        nginx_dir_override=(cwd / nginx_dir).resolve() if nginx_dir else None,
        session_idle_seconds=env_value(env, "SECUREPACS_SESSION_IDLE_SECONDS"),
        internal_hop=env_value(env, "SECUREPACS_INTERNAL_HOP"),
    )
