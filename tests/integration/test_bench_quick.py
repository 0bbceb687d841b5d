"""`securepacs bench --quick` end to end: every configuration started, natively and in a container of the image
built from this checkout, a report with every row (both platforms side by side), the plots.

No thresholds are asserted (CI machines differ); this only proves the benchmark runs and reports.
"""

from __future__ import annotations

import os
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


def _image(request: pytest.FixtureRequest) -> str | None:
    """The image for the image platform; None (native only) where no Docker engine runs, except in CI, where
    the fixture fails instead: there a skipped platform is not a pass."""
    docker = shutil.which("docker") and subprocess.run(["docker", "info"], capture_output=True,
                                                       check=False).returncode == 0
    if not docker and os.environ.get("CI") != "true":
        return None
    return str(request.getfixturevalue("compose_image"))


def _bench_command(output: Path, image: str | None) -> list[str]:
    platforms = ["--platforms", "native", *(["image", "--image", image] if image else [])]
    # Until `bench` is registered in cli.py's COMMAND_MODULES, run the command module directly.
    probe = subprocess.run([str(SECUREPACS), "bench", "--help"], capture_output=True, text=True, check=False)
    if probe.returncode == 0:
        return [str(SECUREPACS), "bench", "--quick", "--output", str(output), *platforms]
    script = (
        "import argparse, sys\n"
        "from securepacs.cli import bench_cmd\n"
        "p = argparse.ArgumentParser(prog='securepacs'); sub = p.add_subparsers(dest='command', required=True)\n"
        "bench_cmd.register(sub); a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))\n"
    )
    return [sys.executable, "-c", script, "bench", "--quick", "--output", str(output), *platforms]


def _check_platforms(report: str, output: Path) -> None:
    """Both platforms side by side: versions of each, and every configuration's ingest ratio measured."""
    section = report.split("## Platforms: image (Orthanc ", 1)[1].split("\n## ", 1)[0]
    assert re.search(r"^\| Orthanc, Python plugin \| \d\S* .*\| \d\S* ", section, re.MULTILINE), section[:1500]
    for key in CONFIG_KEYS:
        row = re.search(rf"^\| {key} \|(.*)$", section, re.MULTILINE)
        assert row, f"configuration {key} has no platform row"
        cells = [c.strip() for c in row.group(1).split("|")]
        # Native s, image s, native and image instances/s, the ratio, both CPU figures: all measured.
        assert all(re.match(r"^\d", c) for c in cells[1:8]), f"platform row {key} not filled: {row.group(0)}"
    path = output / "platforms.png"
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "](platforms.png)" in report


def test_bench_quick_writes_a_complete_report(request: pytest.FixtureRequest) -> None:
    if shutil.which("storescu") is None or shutil.which("Orthanc") is None:
        pytest.fail("storescu/Orthanc missing: run orthanc/install.sh --with-tests")
    image = _image(request)
    output = Path(tempfile.mkdtemp(prefix="securepacs-bench-test-"))
    try:
        res = subprocess.run(_bench_command(output, image), capture_output=True, text=True, timeout=420,
                             check=False)
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
        if image:
            _check_platforms(report, output)
        else:
            assert "## Platforms" not in report
    finally:
        shutil.rmtree(output, ignore_errors=True)
