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


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        port = int(raw)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise SettingsError(f"{name}={raw!r} is invalid: expected a TCP port number 1-65535")
    return port


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


def from_env(env: Mapping[str, str] | None = None, cwd: Path | None = None) -> Settings:
    """Build settings from ``SECUREPACS_*`` variables; relative paths are relative to ``cwd``."""
    env = os.environ if env is None else env
    cwd = cwd or Path.cwd()
    data_dir = (cwd / env.get("SECUREPACS_DATA", "data")).resolve()
    certs_dir = (cwd / env.get("SECUREPACS_CERTS", "certs")).resolve()
    aet = validate_aet(env.get("SECUREPACS_AET", DEFAULT_AET), "SECUREPACS_AET")
    raw_hosts = env.get("SECUREPACS_HOSTNAMES", "")
    hosts = [h.strip() for h in raw_hosts.split(",") if h.strip()]
    if not hosts:
        hosts = ["localhost", "127.0.0.1", "::1", socket.getfqdn()]
    for h in hosts:
        if not re.match(r"^[A-Za-z0-9.:_-]{1,253}$", h):
            raise SettingsError(f"SECUREPACS_HOSTNAMES entry {h!r} is invalid: expected a DNS name or IP address")
    return Settings(
        data_dir=data_dir,
        certs_dir=certs_dir,
        dicom_port=_port(env, "SECUREPACS_DICOM_PORT", DEFAULT_DICOM_PORT),
        https_port=_port(env, "SECUREPACS_HTTPS_PORT", DEFAULT_HTTPS_PORT),
        http_port=_port(env, "SECUREPACS_HTTP_PORT", DEFAULT_HTTP_PORT),
        internal_dicom_port=_port(env, "SECUREPACS_INTERNAL_DICOM_PORT", DEFAULT_INTERNAL_DICOM_PORT),
        egress_port=_port(env, "SECUREPACS_EGRESS_PORT", DEFAULT_EGRESS_PORT),
        aet=aet,
        hostnames=tuple(dict.fromkeys(hosts)),
        nginx_dir_override=(cwd / env["SECUREPACS_NGINX_DIR"]).resolve() if env.get("SECUREPACS_NGINX_DIR") else None,
        session_idle_seconds=_idle_seconds(env),
        internal_hop=_internal_hop(env),
    )


INTERNAL_HOPS = ("tls", "plain")


def _internal_hop(env: Mapping[str, str]) -> str:
    raw = env.get("SECUREPACS_INTERNAL_HOP", "tls").strip().lower() or "tls"
    if raw not in INTERNAL_HOPS:
        raise SettingsError(f"SECUREPACS_INTERNAL_HOP={raw!r} is invalid: expected tls (default) or plain")
    return raw


def _idle_seconds(env: Mapping[str, str]) -> int | None:
    raw = env.get("SECUREPACS_SESSION_IDLE_SECONDS", "").strip()
    if not raw:
        return None
    # At most the plugin's default absolute session lifetime (12 h), which the idle limit may not exceed.
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= 43200:
        raise SettingsError(f"SECUREPACS_SESSION_IDLE_SECONDS={raw!r} is invalid: expected whole seconds 1-43200")
    return int(raw)
