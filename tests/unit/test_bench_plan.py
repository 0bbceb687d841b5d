"""The benchmark's plan and stack wiring: which cells run, which stacks start, what the gateway child sees."""

from __future__ import annotations

from pathlib import Path

import pytest

from securepacs.config import environment
from securepacs.config.gateway_settings import GatewayConfig
from securepacs_tools.bench import configs, fullstack
from securepacs_tools.bench.model import Cell
from securepacs_tools.bench.plan import plan
from securepacs_tools.bench.probes import PACE_PER_S, Pacer
from securepacs_tools.bench.specs import SHARES_STACK, SPECS


def test_every_configuration_has_a_quick_cell() -> None:
    assert {c.config for c in plan(quick=True)} == set(SPECS)


def test_quick_plan_compares_gateway_and_direct_with_both_client_kinds() -> None:
    cells = set(plan(quick=True))
    for nodelay in (True, False):
        for key in ("d", "f"):
            assert Cell("quick", key, "storescu", tls="1.3", nodelay=nodelay) in cells
    assert Cell("quick", "d", "ours", tls="1.3", parallel=8) in cells


def test_full_plan_runs_d_and_f_with_the_same_cells() -> None:
    cells = plan(quick=False)
    for ds in ("ct", "small", "large"):
        d = {(c.client, c.tls, c.parallel, c.nodelay) for c in cells if c.config == "d" and c.dataset == ds}
        f = {(c.client, c.tls, c.parallel, c.nodelay) for c in cells if c.config == "f" and c.dataset == ds}
        assert d and d == f, ds
    assert Cell("ct", "d", "ours", tls="1.3", parallel=8) in cells


def test_plan_keeps_only_the_asked_configurations() -> None:
    assert {c.config for c in plan(quick=False, datasets=["ct"], config_keys=("b", "f"))} == {"b", "f"}


def test_cells_are_unique_so_rounds_pair_up() -> None:
    for quick in (True, False):
        cells = plan(quick=quick)
        assert len(cells) == len(set(cells))


@pytest.mark.parametrize(("keys", "order"), [
    (["a", "b", "c", "d", "e", "f"], ["d", "a", "b", "c", "e"]),
    (["f"], ["d"]),
    (["e", "f", "b"], ["d", "b", "e"]),
    (["c"], ["c"]),
])
def test_start_order_brings_the_stack_a_view_needs(keys: list[str], order: list[str]) -> None:
    assert configs.start_order(keys) == order


def test_shared_stacks_name_a_gateway_configuration() -> None:
    for view, owner in SHARES_STACK.items():
        assert SPECS[owner].gateway and not SPECS[view].gateway


def test_exported_settings_are_what_the_gateway_child_reads(tmp_path: Path) -> None:
    s = environment.Settings(data_dir=tmp_path / "data", certs_dir=tmp_path / "certs", dicom_port=40001,
                          https_port=40002, http_port=40003, internal_dicom_port=40004, egress_port=40005,
                          aet="SECUREPACS", hostnames=("localhost", "127.0.0.1"))
    assert environment.from_env(fullstack.settings_env(s), cwd=Path("/")) == s


def test_probes_stay_below_the_gateway_rate_limit() -> None:
    default_rate = GatewayConfig.__dataclass_fields__["rate_per_ip"].default
    assert 0 < PACE_PER_S < default_rate


def test_pacer_spaces_starts() -> None:
    clock = {"now": 100.0}
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock["now"] += seconds

    pacer = Pacer(10.0, clock=lambda: clock["now"], sleep=sleep)
    pacer.wait()
    pacer.wait()
    clock["now"] += 0.5  # a slow probe: no extra wait after it
    pacer.wait()
    assert slept == [pytest.approx(0.1)]
