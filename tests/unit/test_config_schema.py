"""config.schema: each configuration key declared once, read through its declaration, errors naming it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from securepacs.config import environment, plugin_settings, schema

PACKAGE = Path(__file__).resolve().parents[2] / "plugin" / "securepacs"


def test_a_name_declared_twice_is_refused() -> None:
    key = schema.Key("X", 1, schema.integer(0, 9, "count"), "x")
    with pytest.raises(ValueError, match="'X' declared twice"):
        schema.table(key, key)


def test_key_reads_default_when_absent_and_checks_when_present() -> None:
    key = schema.Key("Count", 3, schema.integer(1, 9, "count"), "a count")
    assert key.read({}) == 3
    assert key.read({"Count": 7}) == 7
    with pytest.raises(schema.Invalid, match="an integer count 1-9"):
        key.read({"Count": 10})
    with pytest.raises(schema.Invalid):
        key.read({"Count": True})  # a JSON boolean is not a number


def test_no_module_reads_a_securepacs_variable_around_the_schema() -> None:
    # os.environ.get("SECUREPACS_...") elsewhere would be a second declaration with its own default.
    direct = re.compile(r"""(?:environ|env)(?:\.get\(|\[)\s*["']SECUREPACS_""")
    offenders = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                       if direct.search(p.read_text(encoding="utf-8")))
    assert offenders == []


def test_every_variable_read_is_declared() -> None:
    read = set()
    for p in PACKAGE.rglob("*.py"):
        read |= set(re.findall(r"""env_value\([^,]+,\s*["'](SECUREPACS_[A-Z_]+)["']""", p.read_text(encoding="utf-8")))
    assert read and read <= set(environment.ENV)
    # Declared but never read would be a dead key (the forwarder reads its three by a tuple of names).
    launcher = (PACKAGE / "ops" / "launcher.py").read_text(encoding="utf-8")
    unread = sorted(n for n in environment.ENV if n not in read and n not in launcher)
    assert unread == []


def test_environment_error_names_variable_value_and_expectation() -> None:
    with pytest.raises(environment.SettingsError,
                       match=r"^SECUREPACS_GATEWAY_RATE_PER_IP='fast' is invalid: expected connections per second"):
        environment.env_value({"SECUREPACS_GATEWAY_RATE_PER_IP": "fast"}, "SECUREPACS_GATEWAY_RATE_PER_IP")
    assert environment.env_value({"SECUREPACS_GATEWAY_RATE_PER_IP": " "}, "SECUREPACS_GATEWAY_RATE_PER_IP") is None
    assert environment.env_value({}, "SECUREPACS_USER") == "orthanc"


def test_plugin_defaults_are_the_config_defaults() -> None:
    # The declared default and the dataclass default must be one value, not two that drift.
    fields = {"AuthCacheSeconds": "auth_cache_seconds", "SessionIdleSeconds": "session_idle_seconds",
              "SessionMaxSeconds": "session_max_seconds", "MaxLoginFailures": "max_login_failures",
              "LockoutSeconds": "lockout_seconds", "LogLevel": "log_level",
              "AddressBackoffSeconds": "address_backoff_seconds",
              "AuditCheckpointSeconds": "audit_checkpoint_seconds", "ClientIpHeader": "client_ip_header"}
    for key, field in fields.items():
        assert plugin_settings.KEYS[key].default == getattr(plugin_settings.PluginConfig, field), key
    assert set(plugin_settings.KEYS) == plugin_settings._KNOWN


def test_plugin_error_names_the_full_key() -> None:
    config = {"DicomTlsEnabled": True,
              "SecurePACS": {"Store": "/var/lib/x.db", "AuditTrail": None, "ModalitySyncSeconds": 0}}
    with pytest.raises(plugin_settings.ConfigError,
                       match=r"^configuration SecurePACS\.ModalitySyncSeconds = 0 is invalid: expected a number of "
                             r"seconds 0\.2-300$"):
        plugin_settings.parse(config)
