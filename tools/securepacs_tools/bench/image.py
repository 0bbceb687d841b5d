"""The image platform: the same configurations started inside a container of the SecurePACS image.

The bench's server side runs in the container (``python -m securepacs_tools.bench.image serve``: the very
``configs.start_all`` the native side uses, with the image's Orthanc, plugin, Python and DCMTK) with host
networking, the host's PID namespace and the work directory bind-mounted at the same path. So the host's
clients reach it on loopback like the native servers, the certificates and logs are at the same paths, and
the host reads CPU and memory of the container's Orthanc and gateway from its own /proc: same clients,
same data, same accounting, one machine. The container writes ``manifest.json`` once everything answers
and stops everything when its stdin closes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from securepacs_tools.bench.common import BenchError, BenchPki, Credentials
from securepacs_tools.bench.model import IMAGE
from securepacs_tools.bench.processes import START_TIMEOUT, Running, mkdir
from securepacs_tools.bench.specs import SPECS

MANIFEST = "manifest.json"
# Start-up of every configuration inside the container (image start, plugin venvs, the full stacks).
IMAGE_START_TIMEOUT = START_TIMEOUT * 2


@dataclass
class HostPid:
    """A process the container started, seen from the host (same PID namespace): what ``Running`` needs of a
    Popen (pid, args, poll, returncode) for accounting and liveness; stopping is the container's."""

    pid: int
    args: list[str]
    returncode: int | None = None

    def poll(self) -> int | None:
        try:
            with open(f"/proc/{self.pid}/stat", encoding="ascii") as fh:
                state = fh.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            state = "X"
        if state in ("Z", "X"):
            self.returncode = -1  # gone; its exit status belongs to its parent in the container
        return self.returncode

# tools/ on the host (this file is tools/securepacs_tools/bench/image.py) and where the container sees it.
TOOLS_ROOT = Path(__file__).resolve().parents[2]
IMAGE_TOOLS = "/opt/securepacs-tools"


def docker_command(image: str, workdir: Path, keys: Sequence[str]) -> list[str]:
    # The image ships the archive, not its tools: the bench's own code is mounted read-only beside it.
    return ["docker", "run", "--rm", "-i", "--name", f"securepacs-bench-{os.getpid()}", "--network", "host",
            "--pid", "host", "--user", "0", "-v", f"{workdir}:{workdir}",
            "-v", f"{TOOLS_ROOT}:{IMAGE_TOOLS}:ro", "-e", f"PYTHONPATH={IMAGE_TOOLS}", "--entrypoint", "python", image,
            "-m", "securepacs_tools.bench.image", "serve", str(workdir), *keys]


@dataclass
class ImageStack:
    """The container and the configurations it runs, keyed by their cells' ``server`` ("d@image")."""

    proc: subprocess.Popen
    name: str
    root: Path
    image: str
    running: dict[str, Running] = field(default_factory=dict)
    machine: dict[str, str] = field(default_factory=dict)

    def stop(self, timeout: float = 90) -> None:
        if self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.close()  # the container stops its configurations in order, then exits
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            subprocess.run(["docker", "rm", "-f", self.name], capture_output=True, check=False)
            self.proc.wait(30)


def _running(key: str, entry: dict[str, Any], root: Path, pids: dict[int, HostPid]) -> Running:
    def host_pid(pid: int, args: list[str]) -> HostPid:
        return pids.setdefault(pid, HostPid(pid, args))  # f and d are one Orthanc: one object (liveness)

    creds = Credentials(*(Path(entry["creds"][k]) for k in ("cert", "key", "ca"))) if entry["creds"] else None
    gateway = host_pid(entry["gateway_pid"], entry["gateway_args"]) if entry["gateway_pid"] else None
    return Running(SPECS[key], entry["dicom_port"], entry["http_port"],
                   host_pid(entry["pid"], entry["args"]),  # type: ignore[arg-type]  # duck-typed Popen
                   root / entry["log"], creds=creds, auth=tuple(entry["auth"]) if entry["auth"] else None,
                   gateway=gateway, owner=False)  # type: ignore[arg-type]


def launch(image: str, keys: Sequence[str], workdir: Path) -> ImageStack:
    """Start the container for ``keys`` (it starts them while the native ones start); ``ready`` waits for it."""
    if subprocess.run(["docker", "image", "inspect", image], capture_output=True, check=False).returncode != 0:
        raise BenchError(f"image {image!r} not found (or no Docker engine): build it (docker compose build, or "
                         "docker build -f orthanc/Dockerfile -t TAG .) and pass --image TAG, or run --platforms native")
    root = mkdir(workdir / IMAGE)
    cmd = docker_command(image, root, keys)
    with (root / "container.log").open("ab") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT)
    return ImageStack(proc, cmd[cmd.index("--name") + 1], root, image)


def ready(stack: ImageStack, log: Callable[[str], None]) -> None:
    """Once the container says every configuration answers: its ``running`` views and machine facts."""
    manifest = stack.root / MANIFEST
    deadline = time.monotonic() + IMAGE_START_TIMEOUT
    try:
        while not manifest.exists():
            if stack.proc.poll() is not None or time.monotonic() > deadline:
                tail = (stack.root / "container.log").read_text(errors="replace")[-3000:]
                status = "timeout" if stack.proc.returncode is None else f"exit {stack.proc.returncode}"
                raise BenchError(f"the image's configurations did not start ({stack.image}, {status}):\n{tail}")
            time.sleep(0.3)
        data = json.loads(manifest.read_text())
        pids: dict[int, HostPid] = {}
        stack.running = {f"{k}@{IMAGE}": _running(k, e, stack.root, pids) for k, e in data["runs"].items()}
        stack.machine = data["machine"]
    except BaseException:
        stack.stop()
        raise
    log(f"bench: image {stack.image}: configurations {', '.join(stack.running)} up in a container")


def _entry(run: Running, root: Path) -> dict[str, Any]:
    creds = run.creds
    return {"dicom_port": run.dicom_port, "http_port": run.http_port, "pid": run.pid, "args": list(run.proc.args),
            "gateway_pid": run.gateway_pid, "gateway_args": list(run.gateway.args) if run.gateway else [],
            "creds": {"cert": str(creds.cert), "key": str(creds.key), "ca": str(creds.ca)} if creds else None,
            "auth": list(run.auth) if run.auth else None, "log": str(run.log_path.relative_to(root))}


def serve(root: Path, keys: Sequence[str]) -> int:
    """In the container: start ``keys`` under ``root``, write the manifest, run until stdin closes."""
    from securepacs_tools.bench import configs, machine

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # docker stop: still stop every Orthanc (finally)
    pki = BenchPki(root / "certs")
    pki.ensure()
    running = configs.start_all(keys, root, pki)
    try:
        manifest = {"runs": {k: _entry(r, root) for k, r in running.items()}, "machine": machine.describe()}
        tmp = root / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(manifest, indent=2))
        tmp.replace(root / MANIFEST)
        sys.stdin.read()  # until the host closes it (or the bench dies)
    finally:
        for run in running.values():
            run.stop()
    return 0


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] != "serve":
        sys.exit("usage: python -m securepacs_tools.bench.image serve WORKDIR KEY...")
    sys.exit(serve(Path(sys.argv[2]), sys.argv[3:]))
