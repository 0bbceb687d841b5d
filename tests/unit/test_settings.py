"""Deployment settings from ``SECUREPACS_*`` environment variables."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from securepacs.config import environment
from securepacs.config.environment import Settings, SettingsError, from_env, validate_aet


@pytest.fixture(autouse=True)
def fixed_fqdn(monkeypatch: pytest.MonkeyPatch) -> None:
    # The default host names include this host's FQDN; do not ask the resolver in a unit test.
    monkeypatch.setattr(socket, "getfqdn", lambda *_: "pacs.example.org")


def test_defaults(tmp_path: Path) -> None:
    s = from_env({}, cwd=tmp_path)
    assert s == Settings(
        data_dir=tmp_path / "data",
        certs_dir=tmp_path / "certs",
        dicom_port=2762,
        https_port=8443,
        http_port=8042,
        aet="SECUREPACS",
        hostnames=("localhost", "127.0.0.1", "::1", "pacs.example.org"),
        nginx_dir_override=None,
        session_idle_seconds=None,
    )
    assert s.store_path == tmp_path / "data" / "securepacs.db"
    assert s.nginx_dir == tmp_path / "data" / "nginx"
    assert s.secrets_dir == tmp_path / "data" / "secrets"
    assert s.admin_credential_path == tmp_path / "data" / "secrets" / "admin-credential.txt"


def test_default_ports_are_the_documented_ones() -> None:
    defaults = (environment.DEFAULT_DICOM_PORT, environment.DEFAULT_HTTPS_PORT, environment.DEFAULT_HTTP_PORT)
    assert defaults == (2762, 8443, 8042)


def test_default_hostnames_are_deduplicated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getfqdn", lambda *_: "localhost")
    assert from_env({}, cwd=tmp_path).hostnames == ("localhost", "127.0.0.1", "::1")


def test_reads_os_environ_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECUREPACS_AET", "FROM_ENV")
    monkeypatch.chdir(tmp_path)
    s = from_env()
    assert s.aet == "FROM_ENV"
    assert s.data_dir == tmp_path.resolve() / "data"


def test_relative_paths_are_relative_to_cwd(tmp_path: Path) -> None:
    s = from_env({"SECUREPACS_DATA": "var/../store", "SECUREPACS_CERTS": "pki", "SECUREPACS_NGINX_DIR": "run/nginx"},
                 cwd=tmp_path)
    assert s.data_dir == tmp_path / "store"
    assert s.certs_dir == tmp_path / "pki"
    assert s.nginx_dir == tmp_path / "run" / "nginx"
    assert s.store_path == tmp_path / "store" / "securepacs.db"


def test_absolute_paths_are_kept(tmp_path: Path) -> None:
    s = from_env({"SECUREPACS_DATA": str(tmp_path / "d"), "SECUREPACS_CERTS": str(tmp_path / "c"),
                  "SECUREPACS_NGINX_DIR": str(tmp_path / "n")}, cwd=Path("/"))
    assert (s.data_dir, s.certs_dir, s.nginx_dir) == (tmp_path / "d", tmp_path / "c", tmp_path / "n")


@pytest.mark.parametrize(
    ("variable", "attribute"),
    [("SECUREPACS_DICOM_PORT", "dicom_port"), ("SECUREPACS_HTTPS_PORT", "https_port"),
     ("SECUREPACS_HTTP_PORT", "http_port")],
)
def test_port_overrides(tmp_path: Path, variable: str, attribute: str) -> None:
    assert getattr(from_env({variable: "11112"}, cwd=tmp_path), attribute) == 11112
    assert getattr(from_env({variable: "1"}, cwd=tmp_path), attribute) == 1
    assert getattr(from_env({variable: "65535"}, cwd=tmp_path), attribute) == 65535
    # An empty variable means "not set" (``VAR= command`` in a shell or an empty compose entry).
    assert getattr(from_env({variable: ""}, cwd=tmp_path), attribute) == getattr(Settings(Path(), Path()), attribute)


@pytest.mark.parametrize("variable", ["SECUREPACS_DICOM_PORT", "SECUREPACS_HTTPS_PORT", "SECUREPACS_HTTP_PORT"])
@pytest.mark.parametrize("value", ["0", "65536", "-1", "http", "8443.0", "0x20"])
def test_invalid_port_names_the_variable(tmp_path: Path, variable: str, value: str) -> None:
    with pytest.raises(SettingsError) as info:
        from_env({variable: value}, cwd=tmp_path)
    assert str(info.value) == f"{variable}={value!r} is invalid: expected a TCP port number 1-65535"


def test_aet_override(tmp_path: Path) -> None:
    assert from_env({"SECUREPACS_AET": "MY_PACS"}, cwd=tmp_path).aet == "MY_PACS"
    assert from_env({"SECUREPACS_AET": "A" * 16}, cwd=tmp_path).aet == "A" * 16
    assert from_env({"SECUREPACS_AET": " PACS "}, cwd=tmp_path).aet == "PACS"  # padding is not significant


@pytest.mark.parametrize("value", ["", "A" * 17, "BAD\\AET", "    ", "TAB\tAET", "PÄCS", "NEW\nLINE"])
def test_invalid_aet_names_the_variable(tmp_path: Path, value: str) -> None:
    with pytest.raises(SettingsError) as info:
        from_env({"SECUREPACS_AET": value}, cwd=tmp_path)
    message = str(info.value)
    assert message.startswith(f"SECUREPACS_AET {value!r} is invalid")
    assert "1-16 printable ASCII characters" in message


def test_validate_aet_names_what_it_checks() -> None:
    assert validate_aet("CLINIC_1") == "CLINIC_1"
    with pytest.raises(SettingsError, match="^" + re.escape("calling AE title 'X\\\\Y' is invalid")):
        validate_aet("X\\Y", "calling AE title")


def test_hostnames_override(tmp_path: Path) -> None:
    s = from_env({"SECUREPACS_HOSTNAMES": " pacs.example.com, 10.0.0.5 ,,fd00::5,pacs.example.com"}, cwd=tmp_path)
    assert s.hostnames == ("pacs.example.com", "10.0.0.5", "fd00::5")


def test_blank_hostnames_mean_the_default(tmp_path: Path) -> None:
    assert from_env({"SECUREPACS_HOSTNAMES": " , "}, cwd=tmp_path).hostnames[0] == "localhost"


@pytest.mark.parametrize("host", ["pacs example.com", "pacs/example", "*.example.com", "x" * 254, "päcs.example"])
def test_invalid_hostname_names_the_variable(tmp_path: Path, host: str) -> None:
    with pytest.raises(SettingsError) as info:
        from_env({"SECUREPACS_HOSTNAMES": f"ok.example.com,{host}"}, cwd=tmp_path)
    assert str(info.value) == (
        f"SECUREPACS_HOSTNAMES entry {host!r} is invalid: expected a DNS name or IP address"
    )


def test_session_idle_seconds_override(tmp_path: Path) -> None:
    assert from_env({"SECUREPACS_SESSION_IDLE_SECONDS": "600"}, cwd=tmp_path).session_idle_seconds == 600
    assert from_env({"SECUREPACS_SESSION_IDLE_SECONDS": " 1 "}, cwd=tmp_path).session_idle_seconds == 1
    assert from_env({"SECUREPACS_SESSION_IDLE_SECONDS": "43200"}, cwd=tmp_path).session_idle_seconds == 43200
    # Empty means "not set": the plugin's default (15 minutes) applies.
    assert from_env({"SECUREPACS_SESSION_IDLE_SECONDS": ""}, cwd=tmp_path).session_idle_seconds is None


@pytest.mark.parametrize("value", [
    "0", "43201", "-5", "15m", "1.5", "0x10",
    # str.isdigit() accepts superscripts and other scripts' digits, which int() rejects or reads.
    "²", "٣",
])
def test_invalid_session_idle_seconds_names_the_variable(tmp_path: Path, value: str) -> None:
    with pytest.raises(SettingsError) as info:
        from_env({"SECUREPACS_SESSION_IDLE_SECONDS": value}, cwd=tmp_path)
    assert str(info.value) == (
        f"SECUREPACS_SESSION_IDLE_SECONDS={value!r} is invalid: expected whole seconds 1-43200"
    )


def test_internal_hop_defaults_to_tls_and_names_a_bad_value(tmp_path: Path) -> None:
    assert from_env({}, cwd=tmp_path).internal_hop == "tls"
    assert from_env({"SECUREPACS_INTERNAL_HOP": "Plain"}, cwd=tmp_path).internal_hop == "plain"
    with pytest.raises(SettingsError, match=r"SECUREPACS_INTERNAL_HOP='none' is invalid: expected tls"):
        from_env({"SECUREPACS_INTERNAL_HOP": "none"}, cwd=tmp_path)
