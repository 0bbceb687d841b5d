"""What the benchmark measures: data sets, cells, runs and results, plus the statistics on them.

A cell is one (data set, configuration, client, TLS version, associations, client TCP_NODELAY, platform). Every
round runs every cell once, in the same order (A B C ... A B C ...), so slow drift of the machine hits all
cells alike, and ratios are computed run by run from the same round before taking their median.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from securepacs_tools import synth


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


NATIVE, IMAGE = "native", "image"
PLATFORMS = (NATIVE, IMAGE)


@dataclass(frozen=True)
class Cell:
    dataset: str
    config: str
    client: str  # "storescu" | "ours"
    parallel: int = 1
    tls: str | None = None  # "1.2" | "1.3" on TLS configurations
    nodelay: bool = True  # client-side TCP_NODELAY (ours always sets it)
    # Where the servers run: this host's Orthanc (NATIVE) or the image's (IMAGE), the same clients on the host.
    platform: str = "native"

    @property
    def server(self) -> str:
        """The started configuration this cell runs against: "d" natively, "d@image" in the image."""
        return self.config if self.platform == NATIVE else f"{self.config}@{self.platform}"

    @property
    def label(self) -> str:
        client = self.client if self.client == "ours" else ("storescu" if self.nodelay else "storescu-nagle")
        tls = f" TLS{self.tls}" if self.tls else ""
        return f"{self.server}: {client}{tls} x{self.parallel}"


@dataclass
class Run:
    seconds: float
    server_cpu: float
    server_rss_peak_kb: int
    client_rss_kb: int
    client_seconds: float | None = None  # what our client reports itself (excludes Python start-up)
    # Configurations with a gateway in front of Orthanc: its CPU seconds and sampled peak RSS in this run.
    gateway_cpu: float | None = None
    gateway_rss_peak_kb: int = 0


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
class EchoRun:
    """Sequential echo associations through the gateway, and the gateway's RSS before, during and after."""

    count: int  # associations in the measured run (after the warm-up)
    warmup: int
    seconds: float
    failures: int
    rss_before_kb: int  # after the warm-up
    rss_after_kb: int
    rss_peak_kb: int
    checkpoints: list[tuple[int, int]] = field(default_factory=list)  # (associations done, RSS kB)
    first_error: str = ""

    @property
    def growth_kb(self) -> int:
        return self.rss_after_kb - self.rss_before_kb


@dataclass
class GatewayFigures:
    """What only the gateway configuration (d) measures besides its cells."""

    command: str = ""  # the gateway's command line, so the report says which process was measured
    idle_rss_kb: int = 0
    hwm_kb: int = 0
    echo: EchoRun | None = None
    pace_per_s: float = 0.0  # client-side pacing of the bench's own probes (the gateway rate-limits per IP)


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
    # TCP connect + TLS + A-ASSOCIATE-RQ until the A-ASSOCIATE-AC arrives: through the gateway this
    # includes its own handshake with Orthanc, which the TLS handshake alone does not show.
    association_ms: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    gateway: GatewayFigures = field(default_factory=GatewayFigures)
    storescu_tls_note: str = ""
    started: str = ""
    wall_seconds: float = 0.0
    image: str = ""  # the image platform's image tag, when it ran
    image_machine: dict[str, str] = field(default_factory=dict)  # machine.describe() inside the container

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


def p95(values: Sequence[float]) -> float | None:
    """95th percentile, nearest rank (a value that was actually measured; with n=40 the 38th smallest)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]
