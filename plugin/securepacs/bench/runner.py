"""Cells, interleaved timing and statistics.

A cell is one (data set, configuration, client, TLS version, associations, client TCP_NODELAY). Every
round runs every cell once, in the same order (A B C ... A B C ...), so slow drift of the machine hits all
cells alike, and ratios are computed run by run from the same round before taking their median.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from securepacs import synth
from securepacs.bench import configs, machine
from securepacs.bench.configs import BENCH_AET, SERVER_AET, SPECS, BenchPki, Running
from securepacs.client import TlsConfig, create_context

SECUREPACS = Path(sys.executable).with_name("securepacs")


@dataclass(frozen=True)
class Dataset:
    key: str
    description: str
    spec: synth.StudySpec


DATASETS: dict[str, Dataset] = {
    d.key: d
    for d in (
        Dataset("ct", "300 CT slices 512x512 16-bit (~150 MB)",
                synth.StudySpec(seed="bench-ct", slices=300, rows=512, columns=512)),
        Dataset("small", "1000 small instances 140x140 16-bit (~40 KB each)",
                synth.StudySpec(seed="bench-small", patient_id="SYN0002", slices=1000, rows=140, columns=140)),
        Dataset("large", "10 large DX 3000x3328 16-bit (~20 MB each)",
                synth.StudySpec(seed="bench-dx", patient_id="SYN0003", modality="DX", slices=10,
                                rows=3328, columns=3000)),
        Dataset("quick", "40 CT slices 256x256 16-bit (~5 MB), quick mode",
                synth.StudySpec(seed="bench-quick", patient_id="SYN0004", slices=40, rows=256, columns=256)),
    )
}


@dataclass(frozen=True)
class Cell:
    dataset: str
    config: str
    client: str  # "storescu" | "ours"
    parallel: int = 1
    tls: str | None = None  # "1.2" | "1.3" on TLS configurations
    nodelay: bool = True  # client-side TCP_NODELAY (ours always sets it)

    @property
    def label(self) -> str:
        client = self.client if self.client == "ours" else ("storescu" if self.nodelay else "storescu-nagle")
        tls = f" TLS{self.tls}" if self.tls else ""
        return f"{self.config}: {client}{tls} x{self.parallel}"


@dataclass
class Run:
    seconds: float
    server_cpu: float
    server_rss_peak_kb: int
    client_rss_kb: int
    client_seconds: float | None = None  # what our client reports itself (excludes Python start-up)


@dataclass
class CellResult:
    cell: Cell
    runs: list[Run | None] = field(default_factory=list)  # index = round; None = failed
    errors: list[str] = field(default_factory=list)

    def ok_runs(self) -> list[Run]:
        return [r for r in self.runs if r is not None]

    def seconds(self) -> list[float]:
        return [r.seconds for r in self.ok_runs()]


@dataclass
class Results:
    quick: bool
    rounds: int
    machine: dict[str, str]
    datasets: dict[str, tuple[Dataset, int, int]]  # key -> (dataset, files, bytes)
    cells: list[CellResult]
    server_hwm_kb: dict[str, int] = field(default_factory=dict)
    server_idle_rss_kb: dict[str, int] = field(default_factory=dict)
    handshake_ms: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    storescu_tls_note: str = ""
    started: str = ""
    wall_seconds: float = 0.0

    def result(self, cell: Cell) -> CellResult | None:
        return next((c for c in self.cells if c.cell == cell), None)


def stats(values: Sequence[float]) -> tuple[float, float, float] | None:
    if not values:
        return None
    return statistics.median(values), min(values), max(values)


def paired_ratios(results: Results, num: Cell, den: Cell) -> list[float]:
    """num/den seconds, round by round (only rounds where both succeeded)."""
    a, b = results.result(num), results.result(den)
    if a is None or b is None:
        return []
    out = []
    for ra, rb in zip(a.runs, b.runs, strict=False):
        if ra is not None and rb is not None and rb.seconds > 0:
            out.append(ra.seconds / rb.seconds)
    return out


# ---------------------------------------------------------------------------------------------- plans

def plan(quick: bool, datasets: Sequence[str] | None = None, config_keys: Sequence[str] = tuple(SPECS)) -> list[Cell]:
    cells: list[Cell] = []
    if quick:
        ds = "quick"
        cells = [
            Cell(ds, "a", "storescu", nodelay=False),
            Cell(ds, "a", "storescu"),
            Cell(ds, "b", "storescu"),
            Cell(ds, "b", "ours"),
            Cell(ds, "c", "storescu", tls="1.3"),
            Cell(ds, "d", "storescu", tls="1.3", nodelay=False),
            Cell(ds, "d", "storescu", tls="1.3"),
            Cell(ds, "d", "ours", tls="1.3"),
            Cell(ds, "d", "ours", tls="1.3", parallel=4),
            Cell(ds, "d", "ours", tls="1.2"),
            Cell(ds, "e", "storescu", tls="1.3"),
        ]
        return [c for c in cells if c.config in config_keys]
    # Full mode. Stock Orthanc (a) idles ~50 ms per C-STORE (Nagle in the server), so it only gets the cells
    # its target needs on the 300-slice CT and is left out of the 1000-instance set (~1 min per run there).
    for ds in datasets or ("ct", "small", "large"):
        for key in config_keys:
            spec = SPECS[key]
            if ds == "ct":
                if key == "a":
                    cells += [Cell(ds, key, "storescu"), Cell(ds, key, "storescu", nodelay=False)]
                elif spec.tls:
                    for tls in ("1.3", "1.2"):
                        cells += [Cell(ds, key, "storescu", tls=tls), Cell(ds, key, "ours", tls=tls)]
                    cells += [Cell(ds, key, "storescu", tls="1.3", nodelay=False),
                              Cell(ds, key, "storescu", tls="1.3", parallel=4),
                              Cell(ds, key, "ours", tls="1.3", parallel=4)]
                else:
                    cells += [Cell(ds, key, "storescu"), Cell(ds, key, "storescu", nodelay=False),
                              Cell(ds, key, "storescu", parallel=4), Cell(ds, key, "ours"),
                              Cell(ds, key, "ours", parallel=4)]
            elif ds == "small":
                if key != "a":
                    tls = "1.3" if spec.tls else None
                    cells += [Cell(ds, key, "storescu", tls=tls), Cell(ds, key, "ours", tls=tls)]
            else:
                tls = "1.3" if spec.tls else None
                cells += [Cell(ds, key, "storescu", tls=tls), Cell(ds, key, "ours", tls=tls)]
                if key == "d":
                    cells.append(Cell(ds, key, "ours", tls=tls, parallel=4))
    return cells


# ---------------------------------------------------------------------------------------------- clients

def _split(files: list[Path], n: int) -> list[list[Path]]:
    return [files[i::n] for i in range(n) if files[i::n]]


def _openssl_pin(workdir: Path, version: str) -> Path:
    """storescu (DCMTK 3.6.7) has no TLS version flag: pin it through OpenSSL's system_default section."""
    path = workdir / f"openssl-client-tls{version}.cnf"
    if not path.exists():
        proto = f"TLSv{version}"
        path.write_text(
            "openssl_conf = bench_init\n[bench_init]\nssl_conf = bench_ssl\n[bench_ssl]\n"
            f"system_default = bench_default\n[bench_default]\nMinProtocol = {proto}\nMaxProtocol = {proto}\n"
        )
    return path


_STORED_RE = re.compile(r"stored (\d+) of (\d+) files in ([0-9.]+) s")
_MAXRSS_RE = re.compile(r"^BENCH_MAXRSS_KB=(\d+)$", re.MULTILINE)
# A child forked from this (large) Python inherits our RSS in its ru_maxrss, so the client is started
# through GNU time, a small process whose own child reports a clean maximum resident set size.
GNU_TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None


def client_commands(cell: Cell, run: Running, files: list[Path], data_dir: Path, pki: BenchPki,
                    workdir: Path) -> tuple[list[list[str]], dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if k not in ("TCP_NODELAY", "OPENSSL_CONF")}
    if cell.client == "storescu":
        if cell.nodelay:
            env["TCP_NODELAY"] = "1"
        tls_args: list[str] = []
        if cell.tls:
            tls_args = ["+tls", str(pki.client_key), str(pki.client_cert), "+cf", str(pki.ca)]
            env["OPENSSL_CONF"] = str(_openssl_pin(workdir, cell.tls))
        base = ["storescu", "-aet", BENCH_AET, "-aec", SERVER_AET, *tls_args, "127.0.0.1", str(run.dicom_port)]
        return [[*base, *map(str, chunk)] for chunk in _split(files, cell.parallel)], env
    tls_args = (["--cert", str(pki.client_cert), "--key", str(pki.client_key), "--ca", str(pki.ca),
                 "--tls-version", cell.tls] if cell.tls else ["--no-tls"])
    # A DIMSE timeout: without one, an association that dies mid-transfer leaves the client waiting forever
    # (seen once in 300 full runs: 35 of 300 slices stored, no connection left, client blocked).
    cmd = [str(SECUREPACS), "client", "store", "--no-progress", "-aet", BENCH_AET, "-aec", SERVER_AET, "-td", "60",
           "--parallel", str(cell.parallel), *tls_args, "127.0.0.1", str(run.dicom_port), str(data_dir)]
    return [cmd], env


def _kill_group(proc: subprocess.Popen) -> None:
    """Watchdog: kill the client and everything it started (GNU time + the client itself)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


class RssSampler:
    """Samples VmRSS of a pid every 50 ms in a thread; ``peak`` is the highest value seen."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak = pid, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, configs._status_kb(self.pid, "VmRSS"))
            self._stop.wait(0.05)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, configs._status_kb(self.pid, "VmRSS"))


def run_cell(cell: Cell, run: Running, files: list[Path], data_dir: Path, pki: BenchPki, workdir: Path,
             timeout: float = 300) -> Run:
    run.clear()
    cmds, env = client_commands(cell, run, files, data_dir, pki, workdir)
    logs = [workdir / f"client-{i}.log" for i in range(len(cmds))]
    cpu0 = run.cpu_seconds()
    with RssSampler(run.pid) as sampler:
        t0 = time.perf_counter()
        procs = []
        for cmd, log in zip(cmds, logs, strict=True):
            if GNU_TIME:
                cmd = [GNU_TIME, "-f", "BENCH_MAXRSS_KB=%M", *cmd]
            with log.open("wb") as fh:
                procs.append(subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                              start_new_session=True))
        deadline = time.monotonic() + timeout
        for proc in procs:
            # Guard against a hung client with a watchdog kill.
            timer = threading.Timer(max(1.0, deadline - time.monotonic()), _kill_group, (proc,))
            timer.start()
            try:
                proc.wait()
            finally:
                timer.cancel()
        seconds = time.perf_counter() - t0
    cpu = run.cpu_seconds() - cpu0
    out = "\n".join(log.read_text(errors="replace") for log in logs)
    failed = [p.returncode for p in procs if p.returncode != 0]
    if failed:
        raise RuntimeError(f"{cell.label}: client exit status {failed}: {out[-1500:]}")
    stored = run.count_instances()
    if stored != len(files):
        raise RuntimeError(f"{cell.label}: server holds {stored} instances after the run, expected {len(files)}: "
                           f"{out[-800:]}")
    rss = [int(v) for v in _MAXRSS_RE.findall(out)]
    client_seconds = None
    m = _STORED_RE.search(out)
    if cell.client == "ours" and m:
        client_seconds = float(m.group(3))
    return Run(seconds, cpu, sampler.peak, max(rss, default=0), client_seconds)


# ---------------------------------------------------------------------------------------------- handshakes

def handshake_times(run: Running, pki: BenchPki, version: str, count: int) -> list[float]:
    """Full mutual-TLS handshakes (TCP connect + TLS) against the DICOM port, in milliseconds."""
    ctx = create_context(TlsConfig(ca=pki.ca, cert=pki.client_cert, key=pki.client_key, version=version,
                                   check_hostname=False))
    times = []
    for _ in range(count):
        t0 = time.perf_counter()
        with socket.create_connection(("127.0.0.1", run.dicom_port), timeout=10) as raw:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.do_handshake()
                times.append((time.perf_counter() - t0) * 1000)
                if tls.version() != f"TLSv{version}":
                    raise RuntimeError(f"asked for TLS {version}, negotiated {tls.version()}")
    return times


def check_storescu_pin(run: Running, pki: BenchPki, workdir: Path) -> str:
    """Does the OPENSSL_CONF pin reach storescu? Pin to 1.2 and to 1.3 and read DCMTK's debug output."""
    notes = []
    for version in ("1.2", "1.3"):
        env = {**os.environ, "OPENSSL_CONF": str(_openssl_pin(workdir, version))}
        res = subprocess.run(["echoscu", "-d", "+tls", str(pki.client_key), str(pki.client_cert), "+cf",
                              str(pki.ca), "-aet", BENCH_AET, "-aec", SERVER_AET, "127.0.0.1",
                              str(run.dicom_port)],
                             env=env, capture_output=True, text=True, timeout=60, check=False)
        text = res.stdout + res.stderr
        m = re.search(r"(TLSv1\.\d)", text)
        notes.append(f"pin {version}: {'negotiated ' + m.group(1) if m else 'version not shown'}"
                     f"{'' if res.returncode == 0 else ' (echo failed)'}")
    return "; ".join(notes)


# ---------------------------------------------------------------------------------------------- driver

@dataclass
class Options:
    quick: bool = False
    rounds: int | None = None
    datasets: Sequence[str] | None = None
    configs: Sequence[str] = tuple(SPECS)
    workdir_parent: Path | None = None
    keep: bool = False
    handshakes: int | None = None


def _workdir(parent: Path | None) -> Path:
    if parent is None:
        # tmpfs, so storage speed is not what is measured; mkdtemp below makes a private, unique dir in it.
        shm = "/dev/shm"  # noqa: S108
        parent = Path(shm) if os.access(shm, os.W_OK) else Path(tempfile.gettempdir())
    root = Path(tempfile.mkdtemp(prefix="securepacs-bench-", dir=parent))
    os.chmod(root, 0o755)  # noqa: S103 (the orthanc user must traverse it; no secrets at this level)
    return root


def run(options: Options, log: Callable[[str], None] = print) -> Results:
    started = time.time()
    rounds = options.rounds or (2 if options.quick else 5)
    cells = plan(options.quick, options.datasets, options.configs)
    needed_configs = [k for k in SPECS if any(c.config == k for c in cells)]
    results = Results(quick=options.quick, rounds=rounds, machine=machine.describe(), datasets={},
                      cells=[CellResult(c) for c in cells],
                      started=time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)))
    workdir = _workdir(options.workdir_parent)
    log(f"bench: work directory {workdir}")
    running: dict[str, Running] = {}
    try:
        pki = BenchPki(workdir / "certs")
        pki.ensure()
        # The data, generated deterministically (same bytes every time).
        files_by_ds: dict[str, tuple[Path, list[Path]]] = {}
        for ds_key in dict.fromkeys(c.dataset for c in cells):
            ds = DATASETS[ds_key]
            t0 = time.monotonic()
            folder = workdir / "data" / ds_key
            paths = synth.write_study(ds.spec, folder)
            files_by_ds[ds_key] = (folder, paths)
            size = sum(p.stat().st_size for p in paths)
            results.datasets[ds_key] = (ds, len(paths), size)
            log(f"bench: data set {ds_key}: {len(paths)} files, {size / 1e6:.1f} MB "
                f"({time.monotonic() - t0:.1f} s to generate)")
        # d first: it enrols the bench client, whose bundle the others use.
        order = sorted(needed_configs, key=lambda k: (k != "d", k))
        if "d" not in order:
            pki.ensure_client()
        for key in order:
            t0 = time.monotonic()
            running[key] = configs.start(key, workdir, pki)
            results.server_idle_rss_kb[key] = running[key].rss_kb()
            log(f"bench: configuration {key} ({SPECS[key].name}) up on DICOM port {running[key].dicom_port} "
                f"in {time.monotonic() - t0:.1f} s")
        # TLS handshake cost, per TLS configuration and version.
        n_hs = options.handshakes or (5 if options.quick else 20)
        for key in order:
            if SPECS[key].tls:
                for version in ("1.2", "1.3"):
                    try:
                        results.handshake_ms[(key, version)] = handshake_times(running[key], pki, version, n_hs)
                    except (OSError, RuntimeError) as exc:
                        log(f"bench: handshake {key} TLS {version} failed: {exc}")
        tls_key = next((k for k in order if SPECS[k].tls), None)
        if tls_key:
            results.storescu_tls_note = check_storescu_pin(running[tls_key], pki, workdir)
        # Interleaved rounds.
        dead: dict[str, str] = {}
        for rnd in range(rounds):
            for cr in results.cells:
                c = cr.cell
                folder, paths = files_by_ds[c.dataset]
                srv = running[c.config]
                if c.config in dead:
                    cr.runs.append(None)
                    cr.errors.append(dead[c.config])
                    continue
                try:
                    r = run_cell(c, srv, paths, folder, pki, workdir)
                except Exception as exc:
                    cr.runs.append(None)
                    cr.errors.append(str(exc)[:2000])
                    log(f"bench: round {rnd + 1}/{rounds} {c.dataset} {c.label}: FAILED {str(exc)[:300]}")
                    if not srv.alive():
                        # Report it and go on with the other configurations.
                        dead[c.config] = f"configuration {c.config} died (status {srv.proc.returncode})"
                        results.server_hwm_kb.setdefault(c.config, 0)
                        log(f"bench: {dead[c.config]}:\n{srv.log_tail(1500)}")
                    continue
                cr.runs.append(r)
                log(f"bench: round {rnd + 1}/{rounds} {c.dataset:<5} {c.label:<32} {r.seconds:7.2f} s  "
                    f"server cpu {r.server_cpu:5.2f} s")
        for key, srv in running.items():
            if srv.alive():
                results.server_hwm_kb[key] = srv.hwm_kb()
    finally:
        for srv in running.values():
            try:
                srv.stop()
            except Exception as exc:
                log(f"bench: stopping {srv.spec.key} failed: {exc}")
        if options.keep:
            log(f"bench: kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    results.wall_seconds = time.time() - started
    return results
