"""``securepacs gateway`` ships no switch that turns C-GET tenancy off (issue 12, finding 11)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from securepacs.gateway import command as gateway_cmd

SECUREPACS = Path(sys.executable).with_name("securepacs")


@pytest.mark.parametrize("command", [[str(SECUREPACS), "gateway"], [sys.executable, "-m", "securepacs.gateway"]])
def test_the_command_line_refuses_the_old_no_cget_check_flag(command: list[str], tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "SECUREPACS_DATA": str(tmp_path / "data"),
           "SECUREPACS_CERTS": str(tmp_path / "certs")}
    result = subprocess.run([*command, "--no-cget-check"], env=env, capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "unrecognized arguments: --no-cget-check" in result.stderr


def test_the_gateway_is_always_started_with_the_c_get_inspector(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SECUREPACS_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("SECUREPACS_CERTS", str(tmp_path / "certs"))
    credential = tmp_path / "data" / "gateway" / "credential.txt"
    credential.parent.mkdir(parents=True)
    credential.write_text("username: gateway\npassword: not-a-real-secret-just-a-test\n")
    started: list[object] = []
    monkeypatch.setattr(gateway_cmd, "run_gateway", lambda _config, factory, **_kw: started.append(factory) or 0)
    # Whatever a caller puts in the namespace (the old attribute included), the inspector is built.
    assert gateway_cmd.run(argparse.Namespace(listen=("127.0.0.1", 0), cget_check=False)) == 0
    assert len(started) == 1 and callable(started[0])
