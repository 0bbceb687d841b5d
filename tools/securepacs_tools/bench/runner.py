"""The driver: generate the data, start the configurations, measure connections, run the interleaved
rounds, then the gateway's many-association memory run; always stop everything afterwards."""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from securepacs_tools import synth
from securepacs_tools.bench import clients, configs, image, machine, probes
from securepacs_tools.bench.common import BenchPki
from securepacs_tools.bench.model import DATASETS, IMAGE, NATIVE, CellResult, Results
from securepacs_tools.bench.plan import plan
from securepacs_tools.bench.processes import Running, status_kb
from securepacs_tools.bench.specs import SPECS


@dataclass
class Options:
    quick: bool = False
    rounds: int | None = None
    datasets: Sequence[str] | None = None
    configs: Sequence[str] = tuple(SPECS)
    workdir_parent: Path | None = None
    keep: bool = False
    handshakes: int | None = None
    echo_associations: int | None = None
    platforms: Sequence[str] = (NATIVE,)
    image: str = "securepacs:latest"  # the image platform's image (compose's default tag)


def _workdir(parent: Path | None) -> Path:
    if parent is None:
        # tmpfs, so storage speed is not what is measured; mkdtemp below makes a private, unique dir in it.
        shm = "/dev/shm"  # noqa: S108
        parent = Path(shm) if os.access(shm, os.W_OK) else Path(tempfile.gettempdir())
    root = Path(tempfile.mkdtemp(prefix="securepacs-bench-", dir=parent))
    os.chmod(root, 0o755)  # noqa: S103 (the orthanc user must traverse it; no secrets at this level)
    return root


def _generate(results: Results, workdir: Path, log: Callable[[str], None]) -> dict[str, tuple[Path, list[Path]]]:
    """The data, generated deterministically (same bytes every time)."""
    files_by_ds: dict[str, tuple[Path, list[Path]]] = {}
    for ds_key in dict.fromkeys(cr.cell.dataset for cr in results.cells):
        ds = DATASETS[ds_key]
        t0 = time.monotonic()
        folder = workdir / "data" / ds_key
        paths = synth.write_study(ds.spec, folder)
        files_by_ds[ds_key] = (folder, paths)
        size = sum(p.stat().st_size for p in paths)
        results.datasets[ds_key] = (ds, len(paths), size)
        log(f"bench: data set {ds_key}: {len(paths)} files, {size / 1e6:.1f} MB "
            f"({time.monotonic() - t0:.1f} s to generate)")
    return files_by_ds


def _rounds(results: Results, running: dict[str, Running], files_by_ds: dict[str, tuple[Path, list[Path]]],
            workdir: Path, log: Callable[[str], None]) -> None:
    dead: dict[str, str] = {}
    for rnd in range(results.rounds):
        for cr in results.cells:
            c = cr.cell
            folder, paths = files_by_ds[c.dataset]
            srv = running[c.server]
            if c.server in dead:
                cr.runs.append(None)
                cr.errors.append(dead[c.server])
                continue
            try:
                r = clients.run_cell(c, srv, paths, folder, workdir)
            except Exception as exc:
                cr.runs.append(None)
                cr.errors.append(str(exc)[:2000])
                log(f"bench: round {rnd + 1}/{results.rounds} {c.dataset} {c.label}: FAILED {str(exc)[:300]}")
                if not srv.alive():
                    # Report it and go on with the other configurations (f dies with d: same processes).
                    for key, other in running.items():
                        if other.proc is srv.proc:
                            dead[key] = f"configuration {key} died ({srv.exit_status()})"
                            results.server_hwm_kb.setdefault(key, 0)
                    log(f"bench: {dead[c.server]}:\n{srv.log_tail(1500)}")
                continue
            cr.runs.append(r)
            gw = f"  gateway cpu {r.gateway_cpu:5.2f} s" if r.gateway_cpu is not None else ""
            log(f"bench: round {rnd + 1}/{results.rounds} {c.dataset:<5} {c.label:<32} {r.seconds:7.2f} s  "
                f"server cpu {r.server_cpu:5.2f} s{gw}")


def _gateway_memory(results: Results, d: Running, options: Options, log: Callable[[str], None]) -> None:
    count = options.echo_associations or (60 if options.quick else 1000)
    warmup = 10 if options.quick else 50
    log(f"bench: {count} sequential echo associations through the gateway ({warmup} warm-up, paced at "
        f"{probes.PACE_PER_S:.0f}/s) ...")
    run = probes.echo_run(d, count, warmup)
    results.gateway.echo = run
    log(f"bench: gateway RSS {run.rss_before_kb / 1024:.1f} MB -> {run.rss_after_kb / 1024:.1f} MB over {count} "
        f"associations ({run.failures} failed) in {run.seconds:.0f} s")


def run(options: Options, log: Callable[[str], None] = print) -> Results:
    started = time.time()
    rounds = options.rounds or (2 if options.quick else 5)
    cells = plan(options.quick, options.datasets, options.configs, options.platforms)
    needed = [k for k in SPECS if any(c.config == k for c in cells)]
    results = Results(quick=options.quick, rounds=rounds, machine=machine.describe(), datasets={},
                      cells=[CellResult(c) for c in cells],
                      started=time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)))
    load_before = os.getloadavg()
    workdir = _workdir(options.workdir_parent)
    log(f"bench: work directory {workdir}")
    running: dict[str, Running] = {}
    stack: image.ImageStack | None = None
    try:
        t0 = time.monotonic()
        if IMAGE in options.platforms:
            # The container starts its configurations while the data is generated and the native ones start.
            stack = image.launch(options.image, needed, workdir)
        pki = BenchPki(workdir / "certs")
        pki.ensure()
        files_by_ds = _generate(results, workdir, log)

        def started_one(srv: Running, seconds: float, key: str | None = None) -> None:
            key = key or srv.spec.key  # "d@image" for the image's
            results.server_idle_rss_kb[key] = srv.rss_kb()
            via = f", gateway pid {srv.gateway_pid}" if srv.gateway_pid else ""
            log(f"bench: configuration {key} ({srv.spec.name}) up on DICOM port {srv.dicom_port}{via} "
                f"in {seconds:.1f} s")

        if NATIVE in options.platforms:
            running.update(configs.start_all(needed, workdir, pki, on_started=started_one))
        if stack is not None:
            image.ready(stack, log)
            running.update(stack.running)
            results.image = options.image
            results.image_machine = stack.machine
            for key, srv in stack.running.items():
                started_one(srv, time.monotonic() - t0, key)
        d = running.get("d")
        if d is not None and d.gateway is not None:
            results.gateway.command = shlex.join(str(a) for a in d.gateway.args)
            results.gateway.idle_rss_kb = status_kb(d.gateway.pid, "VmRSS")
            results.gateway.pace_per_s = probes.PACE_PER_S
        # TLS handshake and association set-up, per TLS configuration and version, interleaved.
        n_hs = options.handshakes or (10 if options.quick else 40)
        tls_runs = {k: r for k, r in running.items() if r.spec.tls}
        results.handshake_ms, results.association_ms = probes.connection_timings(tls_runs, ("1.2", "1.3"), n_hs,
                                                                                 log)
        if tls_runs:
            results.storescu_tls_note = clients.check_storescu_pin(next(iter(tls_runs.values())), workdir)
        _rounds(results, running, files_by_ds, workdir, log)
        for key, srv in running.items():
            if srv.alive():
                results.server_hwm_kb[key] = srv.hwm_kb()
        if d is not None and d.gateway is not None and d.alive():
            try:
                _gateway_memory(results, d, options, log)
            except Exception as exc:  # the rounds' figures are still worth a report
                log(f"bench: gateway memory run failed: {exc}")
            results.gateway.hwm_kb = status_kb(d.gateway.pid, "VmHWM")
    finally:
        for srv in running.values():
            try:
                srv.stop()
            except Exception as exc:
                log(f"bench: stopping {srv.spec.key} failed: {exc}")
        if stack is not None:
            try:
                stack.stop()
            except Exception as exc:
                log(f"bench: stopping the image's configurations failed: {exc}")
        if options.keep:
            log(f"bench: kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    results.wall_seconds = time.time() - started
    # Other work on this machine shows in the spread; the report says how loaded it was.
    results.machine["Load average (1/5/15 min) at start / end"] = (
        f"{' '.join(f'{v:.2f}' for v in load_before)} / {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return results
