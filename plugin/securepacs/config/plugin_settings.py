"""The plugin's own configuration section (``"SecurePACS"`` in Orthanc's configuration).

Read once at start and validated; an error names the full key, the value and what was expected, and
the plugin refuses to load so Orthanc stops with that message instead of running unprotected.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SECTION = "SecurePACS"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# nginx sets this header to the deployment's proxy secret (SecurePACS.ProxySecretFile) on every request it
# forwards: the plugin's only way to tell nginx from another local process on the loopback port.
PROXY_SECRET_HEADER = "X-SecurePACS-Proxy-Secret"  # noqa: S105 (a header name, not a secret)
_SECRET_RE = re.compile(r"[A-Za-z0-9_-]{32,256}")


class ConfigError(ValueError):
    """Invalid plugin configuration: the message names key, value and expectation."""


@dataclass(frozen=True)
class PluginConfig:
    store_path: Path
    trusted_proxies: tuple[str, ...] = ("127.0.0.1", "::1")
    client_ip_header: str = "x-securepacs-client-ip"
    auth_cache_seconds: int = 60
    modality_sync_seconds: float = 2.0
    log_level: str = "INFO"
    dicom_tls: bool = True
    # Accounts: HIPAA automatic logoff after 15 idle minutes; a session never outlives 12 hours; 5 wrong
    # passwords lock the account for 15 minutes (an admin can unlock it earlier).
    session_idle_seconds: int = 900
    session_max_seconds: int = 43200
    max_login_failures: int = 5
    lockout_seconds: int = 900
    # Per client address and user name: 4 failures (one fewer than locks an account) throttle the address
    # for a minute, doubling while it goes on: one address cannot lock an account.
    address_max_failures: int = 4
    address_backoff_seconds: int = 60
    # nginx's per-deployment secret (read from SecurePACS.ProxySecretFile); None: no request counts as
    # coming through nginx or from an internal service.
    proxy_secret: str | None = field(default=None, repr=False)
    # The DICOM gateway's egress relay on loopback: C-MOVE sub-operations leave through it. None: no
    # gateway (Orthanc dials clinics itself, and C-GET stays off because nothing could check it).
    move_relay_port: int | None = None
    # The audit trail (append-only, hash-chained) and the key that signs its checkpoints, kept outside
    # the trail's directory. None: no trail (benchmarks measuring its cost only; parse() requires the key
    # to be present, so it is never off by omission).
    audit_trail: Path | None = None
    audit_checkpoint_key: Path | None = None
    audit_checkpoint_seconds: float = 60.0
    archive_aet: str = "SECUREPACS"


_KNOWN = {
    "Store", "TrustedProxies", "ClientIpHeader", "AuthCacheSeconds", "ModalitySyncSeconds", "LogLevel",
    "SessionIdleSeconds", "SessionMaxSeconds", "MaxLoginFailures", "LockoutSeconds", "MoveRelayPort",
    "AuditTrail", "AuditCheckpointKey", "AuditCheckpointSeconds", "InternalHop", "ProxySecretFile",
    "AddressMaxFailures", "AddressBackoffSeconds",
}


def _fail(key: str, value: Any, expected: str) -> ConfigError:
    return ConfigError(f"configuration {SECTION}.{key} = {value!r} is invalid: expected {expected}")


def _int_in(section: Mapping[str, Any], key: str, default: int, low: int, high: int, unit: str) -> int:
    value = section.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise _fail(key, value, f"an integer {unit} {low}-{high}")
    return value


def parse(orthanc_config: Mapping[str, Any]) -> PluginConfig:
    """Validate the whole Orthanc configuration's SecurePACS section (and the Orthanc keys we rely on)."""
    section = orthanc_config.get(SECTION)
    if not isinstance(section, Mapping):
        raise ConfigError(f"configuration section {SECTION!r} is missing or not an object")
    unknown = sorted(set(section) - _KNOWN)
    if unknown:
        raise ConfigError(
            f"configuration {SECTION}.{unknown[0]} is not a known key: expected one of {sorted(_KNOWN)}"
        )

    store = section.get("Store")
    if not isinstance(store, str) or not store or not Path(store).is_absolute():
        raise _fail("Store", store, "an absolute path to the plugin's SQLite store")

    proxies = section.get("TrustedProxies", list(PluginConfig.trusted_proxies))
    if not isinstance(proxies, list):
        raise _fail("TrustedProxies", proxies, "a list of IP addresses")
    for p in proxies:
        if not isinstance(p, str):
            raise _fail("TrustedProxies", proxies, "a list of IP addresses")
        try:
            ipaddress.ip_address(p)
        except (ValueError, TypeError):
            raise _fail("TrustedProxies", proxies, "a list of IP addresses") from None

    header = section.get("ClientIpHeader", PluginConfig.client_ip_header)
    if not isinstance(header, str) or not re.fullmatch(r"[A-Za-z0-9-]+", header):
        raise _fail("ClientIpHeader", header, "an HTTP header name (letters, digits, '-')")

    cache = section.get("AuthCacheSeconds", PluginConfig.auth_cache_seconds)
    if not isinstance(cache, int) or isinstance(cache, bool) or not 0 <= cache <= 3600:
        raise _fail("AuthCacheSeconds", cache, "an integer number of seconds 0-3600")

    sync = section.get("ModalitySyncSeconds", PluginConfig.modality_sync_seconds)
    if not isinstance(sync, int | float) or isinstance(sync, bool) or not 0.2 <= sync <= 300:
        raise _fail("ModalitySyncSeconds", sync, "a number of seconds 0.2-300")

    level = section.get("LogLevel", PluginConfig.log_level)
    if level not in LOG_LEVELS:
        raise _fail("LogLevel", level, f"one of {list(LOG_LEVELS)}")

    idle = _int_in(section, "SessionIdleSeconds", PluginConfig.session_idle_seconds, 1, 86400, "number of seconds")
    longest = _int_in(section, "SessionMaxSeconds", PluginConfig.session_max_seconds, 1, 2592000,
                      "number of seconds")
    if longest < idle:
        # Almost certainly a mix-up of the two keys: the idle limit would never apply.
        raise _fail("SessionMaxSeconds", longest, f"at least SessionIdleSeconds ({idle})")
    failures = _int_in(section, "MaxLoginFailures", PluginConfig.max_login_failures, 1, 100, "count")
    lockout = _int_in(section, "LockoutSeconds", PluginConfig.lockout_seconds, 1, 86400, "number of seconds")
    # Default: one fewer than locks an account (at most 4); with MaxLoginFailures 1 that is 0 (off).
    per_address = _int_in(section, "AddressMaxFailures", min(PluginConfig.address_max_failures, failures - 1),
                          0, 99, "count")
    if per_address >= failures:
        raise _fail("AddressMaxFailures", per_address, f"fewer than MaxLoginFailures ({failures}), so that one "
                    "client address is throttled before it can lock an account (0 turns the throttle off)")
    backoff = _int_in(section, "AddressBackoffSeconds", PluginConfig.address_backoff_seconds, 1, 86400,
                      "number of seconds")
    proxy_secret = _proxy_secret(section)

    relay = section.get("MoveRelayPort")
    if relay is not None and (not isinstance(relay, int) or isinstance(relay, bool) or not 1 <= relay <= 65535):
        raise _fail("MoveRelayPort", relay, "a TCP port number 1-65535 (the gateway's egress relay)")

    hop = section.get("InternalHop", "tls")
    if hop not in ("tls", "plain"):
        raise _fail("InternalHop", hop, "\"tls\" (default) or \"plain\"")
    if hop == "plain":
        # Plain DICOM only behind the gateway (which terminates the clinics' TLS), and only from the
        # registered hosts (127.0.0.1): never a plain DICOM service for clinics.
        if relay is None:
            raise _fail("InternalHop", hop, "\"tls\" unless the gateway is in front (MoveRelayPort is set)")
        if orthanc_config.get("DicomCheckModalityHost") is not True:
            raise ConfigError(
                f"configuration DicomCheckModalityHost = {orthanc_config.get('DicomCheckModalityHost')!r} is "
                "invalid: expected true with SecurePACS.InternalHop \"plain\" (only the gateway on 127.0.0.1 "
                "may associate)")
    elif orthanc_config.get("DicomTlsEnabled") is not True:
        # The archive must never run with plain DICOM by accident: refuse to start rather than serve it.
        raise ConfigError(
            f"configuration DicomTlsEnabled = {orthanc_config.get('DicomTlsEnabled')!r} is invalid: "
            "expected true (SecurePACS serves DICOM over mutual TLS only; a plain hop behind the gateway "
            "needs SecurePACS.InternalHop \"plain\")"
        )
    if hop == "tls" and orthanc_config.get("DicomTlsRemoteCertificateRequired", True) is not True:
        raise ConfigError(
            "configuration DicomTlsRemoteCertificateRequired = "
            f"{orthanc_config.get('DicomTlsRemoteCertificateRequired')!r} is invalid: expected true"
        )

    trail, key, every = _audit(section)
    aet = orthanc_config.get("DicomAet", "ORTHANC")
    return PluginConfig(
        audit_trail=trail,
        audit_checkpoint_key=key,
        audit_checkpoint_seconds=every,
        archive_aet=aet if isinstance(aet, str) and aet else "ORTHANC",
        dicom_tls=hop == "tls",  # False: SecurePACS.InternalHop "plain" (gateway <-> Orthanc without TLS)
        move_relay_port=relay,
        store_path=Path(store),
        trusted_proxies=tuple(proxies),
        client_ip_header=header.lower(),
        auth_cache_seconds=cache,
        modality_sync_seconds=float(sync),
        log_level=level,
        session_idle_seconds=idle,
        session_max_seconds=longest,
        max_login_failures=failures,
        lockout_seconds=lockout,
        address_max_failures=per_address,
        address_backoff_seconds=backoff,
        proxy_secret=proxy_secret,
    )


def _proxy_secret(section: Mapping[str, Any]) -> str | None:
    path = section.get("ProxySecretFile")
    if path is None:
        return None
    if not isinstance(path, str) or not Path(path).is_absolute():
        raise _fail("ProxySecretFile", path, "an absolute path to the file holding nginx's proxy secret")
    try:
        secret = Path(path).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise _fail("ProxySecretFile", path, f"a readable file with nginx's proxy secret ({exc})") from None
    if not _SECRET_RE.fullmatch(secret):
        # The value itself is never repeated in a message.
        raise _fail("ProxySecretFile", path, "a file holding 32-256 characters of [A-Za-z0-9_-] (the secret)")
    return secret


def _audit(section: Mapping[str, Any]) -> tuple[Path | None, Path | None, float]:
    if "AuditTrail" not in section:
        raise _fail("AuditTrail", None, "an absolute path to the audit trail file (null only to measure "
                    "the trail's cost: it is required so that it is never off by omission)")
    trail = section["AuditTrail"]
    if trail is not None and (not isinstance(trail, str) or not Path(trail).is_absolute()):
        raise _fail("AuditTrail", trail, "an absolute path to the audit trail file, or null")
    key = section.get("AuditCheckpointKey")
    if key is not None:
        if not isinstance(key, str) or not Path(key).is_absolute():
            raise _fail("AuditCheckpointKey", key, "an absolute path to the Ed25519 checkpoint signing key")
        if trail is not None and Path(key).parent == Path(trail).parent:
            raise _fail("AuditCheckpointKey", key, "a key outside the trail's directory "
                        f"({Path(trail).parent}): whoever can rewrite the trail must not be able to re-sign it")
    every = section.get("AuditCheckpointSeconds", PluginConfig.audit_checkpoint_seconds)
    if not isinstance(every, int | float) or isinstance(every, bool) or not 1 <= every <= 86400:
        raise _fail("AuditCheckpointSeconds", every, "a number of seconds 1-86400")
    return (Path(trail) if trail else None), (Path(key) if key else None), float(every)
