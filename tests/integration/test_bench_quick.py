"""`securepacs bench --quick` end to end: every configuration started, a report with every row, the plots.

No thresholds are asserted (CI machines differ); this only proves the benchmark runs and reports.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

SECUREPACS = Path(sys.executable).with_name("securepacs")
CONFIG_KEYS = ("a", "b", "c", "d", "e", "f")


def _bench_command(output: Path) -> list[str]:
    # Until `bench` is registered in cli.py's COMMAND_MODULES, run the command module directly.
    probe = subprocess.run([str(SECUREPACS), "bench", "--help"], capture_output=True, text=True, check=False)
    if probe.returncode == 0:
        return [str(SECUREPACS), "bench", "--quick", "--output", str(output)]
    script = (
        "import argparse, sys\n"
        "from securepacs.commands import bench_cmd\n"
        "p = argparse.ArgumentParser(prog='securepacs'); sub = p.add_subparsers(dest='command', required=True)\n"
        "bench_cmd.register(sub); a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))\n"
    )
    return [sys.executable, "-c", script, "bench", "--quick", "--output", str(output)]


def test_bench_quick_writes_a_complete_report() -> None:
    if shutil.which("storescu") is None or shutil.which("Orthanc") is None:
        pytest.fail("storescu/Orthanc missing: run orthanc/install.sh --with-tests")
    output = Path(tempfile.mkdtemp(prefix="securepacs-bench-test-"))
    try:
        res = subprocess.run(_bench_command(output), capture_output=True, text=True, timeout=300, check=False)
        assert res.returncode == 0, f"bench --quick failed ({res.returncode}):\n{res.stderr[-4000:]}"
        report = (output / "report.md").read_text(encoding="utf-8")
        for heading in ("## Machine", "## Configurations", "## Targets", "## Seed experiment",
                        "## Gateway (d) vs Orthanc native TLS (f)"):
            assert heading in report
        # The gateway's figures are measured (their values are not judged here).
        for target in ("Gateway vs Orthanc native TLS", "Gateway vs direct with stock", "Handshake p95",
                       "Gateway RSS with 8 concurrent"):
            row = re.search(rf"^\| {target}[^|]*\|[^|]*\| ([^|]*) \|", report, re.MULTILINE)
            assert row and row.group(1).strip() and "not measured" not in row.group(1), \
                f"gateway target {target!r} not measured: {row.group(0) if row else 'no row'}"
        for fact in ("CPU", "Cores", "OS", "Orthanc", "DCMTK", "OpenSSL", "Python"):
            assert re.search(rf"^\| {fact} \| \S", report, re.MULTILINE), f"machine fact {fact} missing"
        section = report.split("## Configurations", 1)[1].split("\n## ", 1)[0]
        for key in CONFIG_KEYS:
            row = re.search(rf"^\| {key} \|(.*)$", section, re.MULTILINE)
            assert row, f"configuration {key} has no row"
            cells = [c.strip() for c in row.group(1).split("|")]
            # Seconds, instances/s, MB/s, CPU, idle and peak RSS are all measured numbers.
            assert all(re.match(r"^\d", c) for c in cells[2:8]), f"configuration {key} row not filled: {row.group(0)}"
            assert "failed" not in row.group(0)
        for png in ("throughput-quick.png", "server.png", "handshake.png"):
            path = output / png
            assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{png} missing"
            assert f"]({png})" in report
    finally:
        shutil.rmtree(output, ignore_errors=True)
