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

from securepacs.config import schema

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


def _absolute_path(expected: str) -> Any:
    def check(value: Any) -> str:
        if not isinstance(value, str) or not value or not Path(value).is_absolute():
            raise schema.Invalid(expected)
        return value
    return check


def _addresses(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise schema.Invalid("a list of IP addresses")
    for p in value:
        if not isinstance(p, str):
            raise schema.Invalid("a list of IP addresses")
        try:
            ipaddress.ip_address(p)
        except (ValueError, TypeError):
            raise schema.Invalid("a list of IP addresses") from None
    return tuple(value)


def _relay_port(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise schema.Invalid("a TCP port number 1-65535 (the gateway's egress relay)")
    return value


_SECONDS = "number of seconds"
# The SecurePACS section's keys, each declared once. Defaults are PluginConfig's; cross-key rules
# (session limits, the per-address throttle, the internal hop) are checked in parse().
KEYS = schema.table(
    schema.Key("Store", None, _absolute_path("an absolute path to the plugin's SQLite store"), "the plugin's store"),
    schema.Key("TrustedProxies", list(PluginConfig.trusted_proxies), _addresses, "nginx's addresses"),
    schema.Key("ClientIpHeader", PluginConfig.client_ip_header,
               schema.matching(r"[A-Za-z0-9-]+", "an HTTP header name (letters, digits, '-')"),
               "the header nginx puts the client's address in"),
    schema.Key("AuthCacheSeconds", PluginConfig.auth_cache_seconds, schema.integer(0, 3600, _SECONDS),
               "how long a verified Basic credential is cached"),
    schema.Key("ModalitySyncSeconds", PluginConfig.modality_sync_seconds,
               schema.number(0.2, 300, "a number of seconds 0.2-300"), "how often AE titles are synced"),
    schema.Key("LogLevel", PluginConfig.log_level, schema.one_of(LOG_LEVELS, f"one of {list(LOG_LEVELS)}"),
               "the plugin's log level"),
    schema.Key("SessionIdleSeconds", PluginConfig.session_idle_seconds, schema.integer(1, 86400, _SECONDS),
               "automatic logoff after this much inactivity"),
    schema.Key("SessionMaxSeconds", PluginConfig.session_max_seconds, schema.integer(1, 2592000, _SECONDS),
               "a session's longest life"),
    schema.Key("MaxLoginFailures", PluginConfig.max_login_failures, schema.integer(1, 100, "count"),
               "wrong passwords that lock an account"),
    schema.Key("LockoutSeconds", PluginConfig.lockout_seconds, schema.integer(1, 86400, _SECONDS),
               "how long a locked account stays locked"),
    schema.Key("AddressMaxFailures", None, schema.integer(0, 99, "count"),
               "failures that throttle one client address (default one fewer than MaxLoginFailures, at most 4)"),
    schema.Key("AddressBackoffSeconds", PluginConfig.address_backoff_seconds, schema.integer(1, 86400, _SECONDS),
               "the first throttle period (doubles while failures go on)"),
    schema.Key("ProxySecretFile", None, _absolute_path("an absolute path to the file holding nginx's proxy secret"),
               "the file with nginx's per-deployment secret"),
    schema.Key("MoveRelayPort", None, schema.optional(_relay_port), "the gateway's egress relay"),
    schema.Key("InternalHop", "tls", schema.one_of(("tls", "plain"), "\"tls\" (default) or \"plain\""),
               "the gateway <-> Orthanc hop"),
    schema.Key("AuditTrail", None, schema.optional(_absolute_path(
        "an absolute path to the audit trail file, or null")), "the audit trail (required; null only to measure)"),
    schema.Key("AuditCheckpointKey", None, schema.optional(_absolute_path(
        "an absolute path to the Ed25519 checkpoint signing key")), "the key that signs in-trail checkpoints"),
    schema.Key("AuditCheckpointSeconds", PluginConfig.audit_checkpoint_seconds,
               schema.number(1, 86400, "a number of seconds 1-86400"), "how often in-trail checkpoints are made"),
)
_KNOWN = set(KEYS)


def _fail(key: str, value: Any, expected: str) -> ConfigError:
    return ConfigError(f"configuration {SECTION}.{key} = {value!r} is invalid: expected {expected}")


_UNSET: Any = object()


def _value(section: Mapping[str, Any], name: str, default: Any = _UNSET) -> Any:
    """The checked value of a declared key; absent: ``default`` if given, else the declared default."""
    key = KEYS[name]
    if name not in section:
        return key.default if default is _UNSET else default
    try:
        return key.check(section[name])
    except schema.Invalid as exc:
        raise _fail(name, section[name], str(exc)) from None


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

    if "Store" not in section:
        raise _fail("Store", None, "an absolute path to the plugin's SQLite store")
    store = _value(section, "Store")
    proxies = _value(section, "TrustedProxies")
    header = _value(section, "ClientIpHeader")
    cache = _value(section, "AuthCacheSeconds")
    sync = _value(section, "ModalitySyncSeconds")
    level = _value(section, "LogLevel")
    idle = _value(section, "SessionIdleSeconds")
    longest = _value(section, "SessionMaxSeconds")
    if longest < idle:
        # Almost certainly a mix-up of the two keys: the idle limit would never apply.
        raise _fail("SessionMaxSeconds", longest, f"at least SessionIdleSeconds ({idle})")
    failures = _value(section, "MaxLoginFailures")
    lockout = _value(section, "LockoutSeconds")
    # Default: one fewer than locks an account (at most 4); with MaxLoginFailures 1 that is 0 (off).
    per_address = _value(section, "AddressMaxFailures", min(PluginConfig.address_max_failures, failures - 1))
    if per_address >= failures:
        raise _fail("AddressMaxFailures", per_address, f"fewer than MaxLoginFailures ({failures}), so that one "
                    "client address is throttled before it can lock an account (0 turns the throttle off)")
    backoff = _value(section, "AddressBackoffSeconds")
    proxy_secret = _proxy_secret(section)
    relay = _value(section, "MoveRelayPort")

    hop = _value(section, "InternalHop")
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
        trusted_proxies=tuple(proxies),  # the default is a list: JSON's shape
        client_ip_header=header.lower(),
        auth_cache_seconds=cache,
        modality_sync_seconds=float(sync),  # the default is PluginConfig's, already a float
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
    path = _value(section, "ProxySecretFile")
    if path is None:
        return None
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
    trail = _value(section, "AuditTrail")
    key = _value(section, "AuditCheckpointKey")
    if key is not None and trail is not None and Path(key).parent == Path(trail).parent:
        raise _fail("AuditCheckpointKey", key, "a key outside the trail's directory "
                    f"({Path(trail).parent}): whoever can rewrite the trail must not be able to re-sign it")
    every = _value(section, "AuditCheckpointSeconds")
    return (Path(trail) if trail else None), (Path(key) if key else None), float(every)
