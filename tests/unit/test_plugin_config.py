"""The plugin's ``SecurePACS`` configuration section: defaults, and refusal of every invalid value."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from securepacs.config.plugin_settings import ConfigError, PluginConfig, parse

STORE = "/var/lib/securepacs/securepacs.db"
TRAIL = "/var/lib/securepacs/audit/trail.jsonl"


def config(section: dict[str, Any] | None = None, **orthanc: Any) -> dict[str, Any]:
    """A valid Orthanc configuration with the given SecurePACS keys and top-level keys changed."""
    base: dict[str, Any] = {
        "DicomTlsEnabled": True,
        "DicomTlsRemoteCertificateRequired": True,
        "SecurePACS": {"Store": STORE, "AuditTrail": TRAIL, **(section or {})},
    }
    base.update(orthanc)
    return base


def test_minimal_section_gets_defaults() -> None:
    cfg = parse(config())
    assert cfg == PluginConfig(store_path=Path(STORE), audit_trail=Path(TRAIL), archive_aet="ORTHANC")
    assert cfg.trusted_proxies == ("127.0.0.1", "::1")
    assert cfg.client_ip_header == "x-securepacs-client-ip"
    assert cfg.auth_cache_seconds == 60
    assert cfg.modality_sync_seconds == 2.0
    assert cfg.log_level == "INFO"
    assert cfg.dicom_tls is True
    # HIPAA automatic logoff after 15 idle minutes; lockout after 5 failures for 15 minutes.
    assert (cfg.session_idle_seconds, cfg.session_max_seconds) == (900, 43200)
    assert (cfg.max_login_failures, cfg.lockout_seconds) == (5, 900)


def test_every_key_is_read() -> None:
    cfg = parse(config({
        "TrustedProxies": ["10.0.0.1", "fd00::1"],
        "ClientIpHeader": "X-Real-IP",
        "AuthCacheSeconds": 0,
        "ModalitySyncSeconds": 5,
        "LogLevel": "DEBUG",
        "SessionIdleSeconds": 300,
        "SessionMaxSeconds": 3600,
        "MaxLoginFailures": 3,
        "LockoutSeconds": 60,
    }))
    assert cfg.trusted_proxies == ("10.0.0.1", "fd00::1")
    assert cfg.client_ip_header == "x-real-ip"  # Orthanc hands header names to the filter in lower case
    assert cfg.auth_cache_seconds == 0
    assert cfg.modality_sync_seconds == 5.0
    assert isinstance(cfg.modality_sync_seconds, float)
    assert cfg.log_level == "DEBUG"
    assert (cfg.session_idle_seconds, cfg.session_max_seconds) == (300, 3600)
    assert (cfg.max_login_failures, cfg.lockout_seconds) == (3, 60)


@pytest.mark.parametrize(("key", "value"), [("AuthCacheSeconds", 3600), ("ModalitySyncSeconds", 0.2),
                                            ("ModalitySyncSeconds", 300), ("TrustedProxies", []),
                                            ("SessionIdleSeconds", 1), ("SessionMaxSeconds", 2592000),
                                            ("MaxLoginFailures", 1), ("MaxLoginFailures", 100),
                                            ("LockoutSeconds", 1), ("LockoutSeconds", 86400)])
def test_boundaries_accepted(key: str, value: Any) -> None:
    parse(config({key: value}))


INVALID = [
    ("Store", "relative/securepacs.db", "an absolute path"),
    ("Store", "", "an absolute path"),
    ("Store", 42, "an absolute path"),
    ("Store", None, "an absolute path"),
    ("TrustedProxies", "127.0.0.1", "a list of IP addresses"),
    ("TrustedProxies", ["127.0.0.1", "proxy.example"], "a list of IP addresses"),
    ("TrustedProxies", [None], "a list of IP addresses"),
    ("TrustedProxies", ["10.0.0.0/8"], "a list of IP addresses"),
    ("ClientIpHeader", "", "an HTTP header name"),
    ("ClientIpHeader", "X Client IP", "an HTTP header name"),
    ("ClientIpHeader", "X-Client-IP:", "an HTTP header name"),
    ("ClientIpHeader", "X_Client_IP", "an HTTP header name"),
    ("ClientIpHeader", 7, "an HTTP header name"),
    ("AuthCacheSeconds", -1, "an integer number of seconds 0-3600"),
    ("AuthCacheSeconds", 3601, "an integer number of seconds 0-3600"),
    ("AuthCacheSeconds", 1.5, "an integer number of seconds 0-3600"),
    ("AuthCacheSeconds", "60", "an integer number of seconds 0-3600"),
    ("AuthCacheSeconds", True, "an integer number of seconds 0-3600"),
    ("ModalitySyncSeconds", 0.1, "a number of seconds 0.2-300"),
    ("ModalitySyncSeconds", 301, "a number of seconds 0.2-300"),
    ("ModalitySyncSeconds", "2", "a number of seconds 0.2-300"),
    ("ModalitySyncSeconds", False, "a number of seconds 0.2-300"),
    ("ModalitySyncSeconds", float("nan"), "a number of seconds 0.2-300"),
    ("LogLevel", "debug", "one of ['DEBUG', 'INFO', 'WARNING', 'ERROR']"),
    ("LogLevel", "TRACE", "one of ['DEBUG', 'INFO', 'WARNING', 'ERROR']"),
    ("LogLevel", None, "one of ['DEBUG', 'INFO', 'WARNING', 'ERROR']"),
    ("SessionIdleSeconds", 0, "an integer number of seconds 1-86400"),
    ("SessionIdleSeconds", 86401, "an integer number of seconds 1-86400"),
    ("SessionIdleSeconds", "900", "an integer number of seconds 1-86400"),
    ("SessionIdleSeconds", 900.0, "an integer number of seconds 1-86400"),
    ("SessionIdleSeconds", True, "an integer number of seconds 1-86400"),
    ("SessionMaxSeconds", 0, "an integer number of seconds 1-2592000"),
    ("SessionMaxSeconds", 2592001, "an integer number of seconds 1-2592000"),
    ("SessionMaxSeconds", None, "an integer number of seconds 1-2592000"),
    ("SessionMaxSeconds", 899, "at least SessionIdleSeconds (900)"),
    ("MaxLoginFailures", 0, "an integer count 1-100"),
    ("MaxLoginFailures", 101, "an integer count 1-100"),
    ("MaxLoginFailures", "5", "an integer count 1-100"),
    ("LockoutSeconds", 0, "an integer number of seconds 1-86400"),
    ("LockoutSeconds", -900, "an integer number of seconds 1-86400"),
    ("LockoutSeconds", False, "an integer number of seconds 1-86400"),
]


@pytest.mark.parametrize(("key", "value", "expected"), INVALID, ids=[f"{k}={v!r}" for k, v, _ in INVALID])
def test_invalid_value_names_key_value_and_expectation(key: str, value: Any, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(config({key: value}))
    message = str(info.value)
    assert f"SecurePACS.{key}" in message
    assert repr(value) in message
    assert f"expected {expected}" in message


def test_missing_store_is_refused() -> None:
    cfg = config()
    del cfg["SecurePACS"]["Store"]
    with pytest.raises(ConfigError, match=r"SecurePACS\.Store = None is invalid: expected an absolute path"):
        parse(cfg)


@pytest.mark.parametrize("section", [None, "securepacs.db", ["Store"]])
def test_missing_or_malformed_section_is_refused(section: Any) -> None:
    cfg = config()
    if section is None:
        del cfg["SecurePACS"]
    else:
        cfg["SecurePACS"] = section
    with pytest.raises(ConfigError, match="'SecurePACS' is missing or not an object"):
        parse(cfg)


def test_unknown_key_is_refused() -> None:
    # A typo must not silently fall back to a default (here: a longer credential cache).
    with pytest.raises(ConfigError) as info:
        parse(config({"AuthCacheSecond": 5}))
    assert "SecurePACS.AuthCacheSecond is not a known key" in str(info.value)
    assert "AuthCacheSeconds" in str(info.value)  # the message lists what is known


@pytest.mark.parametrize("value", [False, None, "true", 1])
def test_dicom_tls_must_be_enabled(value: Any) -> None:
    cfg = config(DicomTlsEnabled=value)
    if value is None:
        del cfg["DicomTlsEnabled"]
    with pytest.raises(ConfigError) as info:
        parse(cfg)
    assert f"DicomTlsEnabled = {value!r} is invalid" in str(info.value)
    assert "expected true" in str(info.value)


@pytest.mark.parametrize("value", [False, "false", 0])
def test_remote_certificate_must_be_required(value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        parse(config(DicomTlsRemoteCertificateRequired=value))
    assert f"DicomTlsRemoteCertificateRequired = {value!r} is invalid: expected true" in str(info.value)


def test_remote_certificate_required_defaults_to_true_in_orthanc() -> None:
    cfg = config()
    del cfg["DicomTlsRemoteCertificateRequired"]
    assert parse(cfg).dicom_tls is True


@pytest.mark.parametrize("proxies", [[2130706433], [True]])
def test_trusted_proxies_must_be_strings(proxies: list[Any]) -> None:
    with pytest.raises(ConfigError, match=r"SecurePACS\.TrustedProxies"):
        parse(config({"TrustedProxies": proxies}))


def test_client_ip_header_must_be_ascii() -> None:
    with pytest.raises(ConfigError, match=r"SecurePACS\.ClientIpHeader"):
        parse(config({"ClientIpHeader": "X-Clïent-IP"}))


def test_session_limits_are_checked_together() -> None:
    # A short idle limit allows a short absolute one; the absolute one may not undercut the idle one.
    cfg = parse(config({"SessionIdleSeconds": 5, "SessionMaxSeconds": 5}))
    assert (cfg.session_idle_seconds, cfg.session_max_seconds) == (5, 5)
    with pytest.raises(ConfigError, match=r"SecurePACS\.SessionMaxSeconds = 60 is invalid: expected at least "
                                          r"SessionIdleSeconds \(120\)"):
        parse(config({"SessionIdleSeconds": 120, "SessionMaxSeconds": 60}))


def test_the_audit_trail_must_be_named() -> None:
    section = config()
    del section["SecurePACS"]["AuditTrail"]
    with pytest.raises(ConfigError, match=r"SecurePACS.AuditTrail = None is invalid: expected an absolute path"):
        parse(section)
    assert parse(config({"AuditTrail": None})).audit_trail is None  # said out loud: benchmarks only


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("AuditTrail", "trail.jsonl", "an absolute path to the audit trail file"),
    ("AuditCheckpointKey", "key.pem", "an absolute path to the Ed25519"),
    ("AuditCheckpointKey", "/var/lib/securepacs/audit/checkpoint.key", "a key outside the trail's directory"),
    ("AuditCheckpointSeconds", 0, "a number of seconds 1-86400"),
])
def test_audit_keys_are_checked(key: str, value: Any, expected: str) -> None:
    with pytest.raises(ConfigError, match=rf"SecurePACS.{key} = .* is invalid: expected {expected}"):
        parse(config({key: value}))


def test_audit_keys_are_read() -> None:
    cfg = parse(config({"AuditCheckpointKey": "/etc/securepacs/audit/checkpoint.key",
                        "AuditCheckpointSeconds": 5}, DicomAet="ARCHIVE"))
    assert cfg.audit_checkpoint_key == Path("/etc/securepacs/audit/checkpoint.key")
    assert (cfg.audit_checkpoint_seconds, cfg.archive_aet) == (5.0, "ARCHIVE")


def test_plain_dicom_only_as_the_explicit_hop_behind_the_gateway() -> None:
    plain = config({"InternalHop": "plain", "MoveRelayPort": 2764}, DicomTlsEnabled=False,
                   DicomCheckModalityHost=True)
    assert parse(plain).dicom_tls is False
    with pytest.raises(ConfigError, match=r"DicomTlsEnabled = False is invalid: expected true"):
        parse(config(DicomTlsEnabled=False))  # never by accident
    with pytest.raises(ConfigError, match=r"SecurePACS.InternalHop = 'plain' is invalid: expected \"tls\" unless"):
        parse(config({"InternalHop": "plain"}, DicomTlsEnabled=False, DicomCheckModalityHost=True))
    with pytest.raises(ConfigError, match=r"DicomCheckModalityHost = None is invalid: expected true"):
        parse(config({"InternalHop": "plain", "MoveRelayPort": 2764}, DicomTlsEnabled=False))
    with pytest.raises(ConfigError, match=r"SecurePACS.InternalHop = 'udp' is invalid"):
        parse(config({"InternalHop": "udp"}))


# -- per-address throttle and nginx's proxy secret ---------------------------------------------------------
def test_the_address_throttle_stays_below_the_lockout() -> None:
    assert parse(config()).address_max_failures == 4
    assert parse(config({"MaxLoginFailures": 3})).address_max_failures == 2  # derived: one fewer
    assert parse(config({"MaxLoginFailures": 1})).address_max_failures == 0  # off: nothing below 1
    with pytest.raises(ConfigError, match=r"SecurePACS.AddressMaxFailures = 5 is invalid: expected fewer than "
                                          r"MaxLoginFailures \(5\)"):
        parse(config({"AddressMaxFailures": 5}))
    assert parse(config({"AddressBackoffSeconds": 120})).address_backoff_seconds == 120


def test_the_proxy_secret_is_read_from_its_file(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text("s" * 43 + "\n")
    parsed = parse(config({"ProxySecretFile": str(path)}))
    assert parsed.proxy_secret == "s" * 43
    assert "s" * 43 not in repr(parsed)  # never in a log line that prints the configuration
    assert parse(config()).proxy_secret is None


@pytest.mark.parametrize(("content", "expected"), [
    (None, "a readable file with nginx's proxy secret"),
    ("short", "32-256 characters"),
    ("x" * 40 + " y", "32-256 characters"),
])
def test_a_bad_proxy_secret_file_stops_the_plugin(tmp_path: Path, content: str | None, expected: str) -> None:
    path = tmp_path / "secret"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=rf"SecurePACS.ProxySecretFile = '{path}' is invalid: expected .*{expected}"):
        parse(config({"ProxySecretFile": str(path)}))
    if content:
        with pytest.raises(ConfigError) as info:
            parse(config({"ProxySecretFile": str(path)}))
        assert content not in str(info.value)
