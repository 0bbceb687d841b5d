"""The clients the cells run (DCMTK storescu, our ``securepacs client store``) and one timed run of a cell."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from securepacs_tools.bench.common import BENCH_AET, SERVER_AET
from securepacs_tools.bench.model import Cell, Run
from securepacs_tools.bench.processes import Running, cpu_seconds, status_kb

SECUREPACS = Path(sys.executable).with_name("securepacs")
# DCMTK's, by path: pynetdicom installs a `storescu` of its own into the venv's bin, first on PATH in the image
# (and wherever the venv is activated), which takes other options.
STORESCU = "/usr/bin/storescu" if os.access("/usr/bin/storescu", os.X_OK) else "storescu"


def _split(files: list[Path], n: int) -> list[list[Path]]:
    return [files[i::n] for i in range(n) if files[i::n]]


def openssl_pin(workdir: Path, version: str) -> Path:
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


def client_commands(cell: Cell, run: Running, files: list[Path], data_dir: Path,
                    workdir: Path) -> tuple[list[list[str]], dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if k not in ("TCP_NODELAY", "OPENSSL_CONF")}
    creds = run.creds if cell.tls else None
    if cell.tls and creds is None:
        raise RuntimeError(f"{cell.label}: configuration {run.spec.key} has no TLS credentials")
    if cell.client == "storescu":
        if cell.nodelay:
            env["TCP_NODELAY"] = "1"
        tls_args: list[str] = []
        if creds and cell.tls:
            tls_args = ["+tls", str(creds.key), str(creds.cert), "+cf", str(creds.ca)]
            env["OPENSSL_CONF"] = str(openssl_pin(workdir, cell.tls))
        base = [STORESCU, "-aet", BENCH_AET, "-aec", SERVER_AET, *tls_args, "127.0.0.1", str(run.dicom_port)]
        return [[*base, *map(str, chunk)] for chunk in _split(files, cell.parallel)], env
    tls_args = (["--cert", str(creds.cert), "--key", str(creds.key), "--ca", str(creds.ca),
                 "--tls-version", cell.tls] if creds and cell.tls else ["--no-tls"])
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

    def __init__(self, pid: int | None) -> None:
        self.pid, self.peak = pid, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> None:
        if self.pid is not None:
            self.peak = max(self.peak, status_kb(self.pid, "VmRSS"))

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(0.05)

    def __enter__(self) -> RssSampler:
        if self.pid is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pid is not None:
            self._stop.set()
            self._thread.join()
        self._sample()


def run_cell(cell: Cell, run: Running, files: list[Path], data_dir: Path, workdir: Path,
             timeout: float = 300) -> Run:
    run.clear()
    cmds, env = client_commands(cell, run, files, data_dir, workdir)
    logs = [workdir / f"client-{i}.log" for i in range(len(cmds))]
    gw_pid = run.gateway_pid
    cpu0 = run.cpu_seconds()
    gw_cpu0 = cpu_seconds(gw_pid) if gw_pid else 0.0
    with RssSampler(run.pid) as sampler, RssSampler(gw_pid) as gw_sampler:
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
    gw_cpu = cpu_seconds(gw_pid) - gw_cpu0 if gw_pid else None
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
    return Run(seconds, cpu, sampler.peak, max(rss, default=0), client_seconds, gw_cpu, gw_sampler.peak)


def check_storescu_pin(run: Running, workdir: Path) -> str:
    """Does the OPENSSL_CONF pin reach storescu? Pin to 1.2 and to 1.3 and read DCMTK's debug output."""
    if run.creds is None:
        return "not run (no TLS configuration)"
    creds = run.creds
    notes = []
    for version in ("1.2", "1.3"):
        env = {**os.environ, "OPENSSL_CONF": str(openssl_pin(workdir, version))}
        res = subprocess.run(["echoscu", "-d", "+tls", str(creds.key), str(creds.cert), "+cf",
                              str(creds.ca), "-aet", BENCH_AET, "-aec", SERVER_AET, "127.0.0.1",
                              str(run.dicom_port)],
                             env=env, capture_output=True, text=True, timeout=60, check=False)
        text = res.stdout + res.stderr
        m = re.search(r"(TLSv1\.\d)", text)
        notes.append(f"pin {version}: {'negotiated ' + m.group(1) if m else 'version not shown'}"
                     f"{'' if res.returncode == 0 else ' (echo failed)'}")
    return "; ".join(notes)
