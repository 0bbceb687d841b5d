"""The gateway's targets and section in the benchmark report, from made-up results (no processes)."""

from __future__ import annotations

import pytest

from securepacs_tools.bench import gateway_report, report
from securepacs_tools.bench.fmt import Target, ratio_target
from securepacs_tools.bench.model import DATASETS, Cell, CellResult, EchoRun, GatewayFigures, Results, Run, p95

DS = "ct"


def _run(seconds: float, gateway_rss_kb: int = 0) -> Run:
    gateway = gateway_rss_kb > 0
    return Run(seconds, 0.5, 100_000, 20_000, None, 0.2 if gateway else None, gateway_rss_kb)


def _results(cells: dict[Cell, list[Run]], echo: EchoRun | None = None) -> Results:
    return Results(quick=False, rounds=3, machine={"CPU": "test"}, datasets={DS: (DATASETS[DS], 300, 158_000_000)},
                   cells=[CellResult(c, list(runs)) for c, runs in cells.items()],
                   handshake_ms={("d", "1.3"): [5.0, 6.0, 30.0], ("f", "1.3"): [4.0, 4.5, 5.0]},
                   association_ms={("d", "1.3"): [15.0, 16.0, 17.0], ("f", "1.3"): [8.0, 9.0, 10.0]},
                   gateway=GatewayFigures(command="python -m securepacs.cli.main gateway", idle_rss_kb=40_000,
                                          hwm_kb=60_000, echo=echo, pace_per_s=15.0))


def _targets(results: Results) -> dict[str, Target]:
    return {t.name: t for t in gateway_report.targets(results, DS)}


def test_throughput_ratio_is_direct_time_over_gateway_time() -> None:
    d, f = Cell(DS, "d", "storescu", tls="1.3"), Cell(DS, "f", "storescu", tls="1.3")
    results = _results({d: [_run(1.0), _run(1.2), _run(1.1)], f: [_run(0.95), _run(1.2), _run(0.88)]})
    t = _targets(results)["Gateway vs Orthanc native TLS, TCP_NODELAY clients (throughput)"]
    assert t.measured.startswith("0.95×")  # ratios 0.95, 1.00, 0.80: median 0.95
    assert t.status == "met"


def test_nagle_target_needs_the_gateway_strictly_faster() -> None:
    d = Cell(DS, "d", "storescu", tls="1.3", nodelay=False)
    f = Cell(DS, "f", "storescu", tls="1.3", nodelay=False)
    name = "Gateway vs direct with stock (Nagle-on) storescu (throughput)"
    equal = _results({d: [_run(2.0)] * 3, f: [_run(2.0)] * 3})
    assert _targets(equal)[name].status.startswith("missed")
    faster = _results({d: [_run(2.0)] * 3, f: [_run(5.0)] * 3})
    assert _targets(faster)[name].status == "met"


def test_rss_with_eight_associations_judges_the_highest_run() -> None:
    cell = Cell(DS, "d", "ours", tls="1.3", parallel=8)
    results = _results({cell: [_run(1.0, 80 * 1024), _run(1.0, 110 * 1024), _run(1.0, 82 * 1024)]})
    t = _targets(results)["Gateway RSS with 8 concurrent associations"]
    assert t.status == "missed by 10 MB"
    assert "110 MB highest" in t.measured


@pytest.mark.parametrize(("count", "growth_kb", "failures", "status"), [
    (1000, 1024, 0, "met"),
    (1000, 8 * 1024, 0, "missed by 3.0 MB"),
    (60, 0, 0, "not measured (60 associations only; full mode runs 1,000)"),
    (1000, 0, 3, "not measured (3 associations failed)"),
])
def test_flat_rss_target(count: int, growth_kb: int, failures: int, status: str) -> None:
    echo = EchoRun(count, 50, 70.0, failures, 50_000, 50_000 + growth_kb, 50_000 + growth_kb)
    assert _targets(_results({}, echo))["Gateway RSS flat across many associations"].status == status


def test_handshake_p95_is_reported_for_both() -> None:
    t = _targets(_results({}))["Handshake p95, gateway (d) vs direct (f)"]
    assert t.status == "reported"
    assert "d: 30.0 / 17.0" in t.measured and "f: 5.0 / 10.0" in t.measured


def test_p95_is_a_measured_value() -> None:
    assert p95([]) is None
    assert p95(list(range(1, 41))) == 38
    assert p95([3.0]) == 3.0


def test_strict_and_plain_ratio_targets() -> None:
    assert ratio_target("x", "", [1.0], 1.0, at_most=False).status == "met"
    assert ratio_target("x", "", [1.0], 1.0, at_most=False, strict=True).status.startswith("missed")
    assert ratio_target("x", "", [1.2], 1.15, at_most=True).status == "missed by 0.05×"
    assert ratio_target("x", "", [], 1.0, at_most=True).status == "not measured"


def test_report_renders_the_gateway_section_and_rows() -> None:
    cells = {
        Cell(DS, key, "storescu", tls="1.3", nodelay=nodelay): [_run(1.0, 50_000 if key == "d" else 0)] * 3
        for key in ("d", "f") for nodelay in (True, False)
    }
    text = report.render(_results(cells, EchoRun(1000, 50, 70.0, 0, 50_000, 50_500, 51_000, [(0, 50_000)])), [])
    assert "## Gateway (d) vs Orthanc native TLS (f)" in text
    assert "| storescu Nagle on x1 TLS 1.3 |" in text
    assert "`python -m securepacs.cli.main gateway`" in text
    assert "gateway/direct: (d) / (f), storescu TLS1.3" in text
