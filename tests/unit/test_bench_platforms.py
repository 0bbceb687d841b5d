"""The benchmark's platform axis: which cells run where, how the container is started and read back, and
the report's side-by-side section, from made-up results (no processes, no Docker)."""

from __future__ import annotations

import os
from pathlib import Path

from securepacs_tools.bench import image, platform_report, report
from securepacs_tools.bench.model import DATASETS, IMAGE, NATIVE, Cell, CellResult, Results, Run
from securepacs_tools.bench.plan import plan, reference_cell
from securepacs_tools.bench.specs import SPECS

BOTH = (NATIVE, IMAGE)


def test_full_plan_runs_every_cell_on_both_platforms_back_to_back() -> None:
    native_only = plan(quick=False)
    cells = plan(quick=False, platforms=BOTH)
    assert len(cells) == 2 * len(native_only)
    for i, c in enumerate(native_only):
        assert cells[2 * i] == c and c.platform == NATIVE
        assert cells[2 * i + 1] == Cell(c.dataset, c.config, c.client, c.parallel, c.tls, c.nodelay, IMAGE)


def test_quick_plan_runs_each_configuration_reference_cell_on_the_image() -> None:
    cells = plan(quick=True, platforms=BOTH)
    image_cells = [c for c in cells if c.platform == IMAGE]
    assert {c.config for c in image_cells} == set(SPECS)
    for c in image_cells:
        assert c == platform_report.on(reference_cell("quick", c.config), IMAGE)
    assert [c for c in cells if c.platform == NATIVE] == plan(quick=True)


def test_a_cell_names_the_platform_it_runs_on() -> None:
    native = Cell("ct", "d", "storescu", tls="1.3")
    on_image = platform_report.on(native, IMAGE)
    assert native.server == "d" and native.label == "d: storescu TLS1.3 x1"
    assert on_image.server == "d@image" and on_image.label == "d@image: storescu TLS1.3 x1"


def test_container_shares_the_host_network_pids_and_work_directory(tmp_path: Path) -> None:
    cmd = image.docker_command("securepacs:test", tmp_path, ["d", "f"])
    joined = " ".join(cmd)
    assert "--network host" in joined and "--pid host" in joined and "--user 0" in joined
    assert f"{tmp_path}:{tmp_path}" in cmd
    assert cmd[cmd.index("securepacs:test") + 1:] == ["-m", "securepacs_tools.bench.image", "serve", str(tmp_path),
                                                      "d", "f"]


def test_host_pid_sees_a_live_and_a_finished_process() -> None:
    assert image.HostPid(os.getpid(), ["python"]).poll() is None
    gone = image.HostPid(2**22 + 12345, ["Orthanc"])  # above pid_max's default range: no such process
    assert gone.poll() is not None


def _entry(pid: int, gateway: int | None) -> dict:
    return {"dicom_port": 4242, "http_port": 8042, "pid": pid, "args": ["Orthanc", "/c"], "gateway_pid": gateway,
            "gateway_args": ["python", "-m", "securepacs.gateway"] if gateway else [],
            "creds": {"cert": "/w/c.crt", "key": "/w/c.key", "ca": "/w/ca.crt"}, "auth": ["admin", "pw"],
            "log": "orthanc-d.log"}


def test_manifest_entries_become_views_on_the_container_processes(tmp_path: Path) -> None:
    pids: dict[int, image.HostPid] = {}
    d = image._running("d", _entry(os.getpid(), os.getpid() + 1), tmp_path, pids)
    f = image._running("f", _entry(os.getpid(), None), tmp_path, pids)
    assert d.proc is f.proc  # one Orthanc: when it dies, both are reported dead
    assert d.gateway is not None and d.gateway_pid == os.getpid() + 1 and f.gateway is None
    assert d.creds is not None and d.creds.key == Path("/w/c.key") and d.auth == ("admin", "pw")
    assert d.log_path == tmp_path / "orthanc-d.log" and not d.owner


def _run(seconds: float) -> Run:
    return Run(seconds, 0.5, 100_000, 20_000)


def _results(cells: dict[Cell, list[float]]) -> Results:
    return Results(quick=False, rounds=3, machine={"Orthanc": "1.10.1 (Debian 1.10.1)", "Python": "3.11.2"},
                   datasets={"ct": (DATASETS["ct"], 300, 158_000_000)},
                   cells=[CellResult(c, [_run(s) for s in secs]) for c, secs in cells.items()],
                   image="securepacs:test", image_machine={"Orthanc": "1.13.0 (Debian 1.13.0)", "Python": "3.14.8"})


def test_ingest_ratio_is_native_time_over_image_time_round_by_round() -> None:
    b = reference_cell("ct", "b")
    results = _results({b: [1.0, 2.0, 1.5], platform_report.on(b, IMAGE): [0.5, 2.0, 3.0]})
    assert platform_report.ingest_ratios(results, b) == [2.0, 1.0, 0.5]


def test_report_shows_both_platforms_and_the_ratio_per_configuration() -> None:
    cells: dict[Cell, list[float]] = {}
    for key in ("b", "d"):
        ref = reference_cell("ct", key)
        cells[ref] = [2.0, 2.0, 2.0]
        cells[platform_report.on(ref, IMAGE)] = [1.0, 1.0, 1.0]
    cells[Cell("ct", "d", "ours", tls="1.3")] = [3.0, 3.0, 3.0]  # native only: no ratio row
    text = report.render(_results(cells), [])
    section = text.split("## Platforms: image (Orthanc 1.13.0) vs native (Orthanc 1.10.1)", 1)[1].split("\n## ", 1)[0]
    assert "| Orthanc, Python plugin | 1.10.1 (Debian 1.10.1) | 1.13.0 (Debian 1.13.0) |" in section
    assert "| b | bare plain tuned | 2.00 (2.00–2.00) | 1.00 (1.00–1.00) | 150.0 (150.0–150.0) | 300.0 (300.0–300.0) " \
           "| 2.00 (2.00–2.00) |" in section
    assert "| d | full stack |" in section and "| e |" not in section
    assert "| ct | d: storescu TLS1.3 x1 | 2.00 (2.00–2.00) | 1.00 (1.00–1.00) | 2.00 (2.00–2.00) |" in section
    assert "d: ours" not in section
    # The per-data-set table names the image's rows by their server.
    assert "| d@image | storescu | 1.3 |" in text


def test_native_only_results_have_no_platform_section() -> None:
    ref = reference_cell("ct", "b")
    assert "## Platforms" not in report.render(_results({ref: [1.0, 1.0, 1.0]}), [])
