"""The launcher starts the audit forwarder only when a collector is configured, and names a bad setting."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from securepacs.config.environment import Settings
from securepacs.ops import launcher


@pytest.fixture
def prepared(tmp_path: Path) -> SimpleNamespace:
    return SimpleNamespace(settings=Settings(data_dir=tmp_path / "data", certs_dir=tmp_path / "certs"))


@pytest.fixture
def pem_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    files = {}
    for name in launcher.FORWARD_ENV:
        path = tmp_path / f"{name.lower()}.pem"
        path.write_text("-----BEGIN X-----\n")
        monkeypatch.setenv(name, str(path))
        files[name] = path
    return files


def test_no_collector_no_forwarder(prepared: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SECUREPACS_AUDIT_SYSLOG", raising=False)
    assert launcher._forwarder_cmd(prepared) is None


def test_the_forwarder_gets_the_trail_and_the_tls_files(prepared: SimpleNamespace, pem_files: dict[str, Path],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECUREPACS_AUDIT_SYSLOG", "logs.example.org:6514")
    cmd = launcher._forwarder_cmd(prepared)
    assert cmd is not None and cmd[1:6] == ["-m", "securepacs.cli.main", "audit", "forward", "logs.example.org"]
    assert cmd[6] == "6514" and cmd[cmd.index("--trail") + 1] == str(prepared.settings.audit_trail_path)
    assert cmd[cmd.index("--key") + 1] == str(pem_files["SECUREPACS_AUDIT_SYSLOG_KEY"])


@pytest.mark.parametrize(("target", "missing", "message"), [
    ("logs.example.org", None, "SECUREPACS_AUDIT_SYSLOG='logs.example.org' is invalid: expected host:port"),
    ("logs:99999", None, "SECUREPACS_AUDIT_SYSLOG='logs:99999' is invalid"),
    ("logs:6514", "SECUREPACS_AUDIT_SYSLOG_CERT", "SECUREPACS_AUDIT_SYSLOG_CERT='' is invalid: expected the path"),
])
def test_bad_settings_are_named(prepared: SimpleNamespace, pem_files: dict[str, Path],
                                monkeypatch: pytest.MonkeyPatch, target: str, missing: str | None,
                                message: str) -> None:
    monkeypatch.setenv("SECUREPACS_AUDIT_SYSLOG", target)
    if missing:
        monkeypatch.delenv(missing)
    with pytest.raises(launcher.LaunchError, match=message.replace("(", r"\(").replace(")", r"\)")):
        launcher._forwarder_cmd(prepared)
