"""Which cells a run measures, in the order every round runs them."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from securepacs_tools.bench.model import NATIVE, Cell
from securepacs_tools.bench.specs import SPECS

# Configurations measured at 8 associations: the gateway's memory target is stated for 8 concurrent
# associations, and f next to d says what the same load costs without it.
EIGHT_WAY = ("d", "f")


def _quick() -> list[Cell]:
    ds = "quick"
    return [
        Cell(ds, "a", "storescu", nodelay=False),
        Cell(ds, "a", "storescu"),
        Cell(ds, "b", "storescu"),
        Cell(ds, "b", "ours"),
        Cell(ds, "c", "storescu", tls="1.3"),
        Cell(ds, "d", "storescu", tls="1.3", nodelay=False),
        Cell(ds, "d", "storescu", tls="1.3"),
        Cell(ds, "d", "ours", tls="1.3"),
        Cell(ds, "d", "ours", tls="1.3", parallel=4),
        Cell(ds, "d", "ours", tls="1.3", parallel=8),
        Cell(ds, "d", "ours", tls="1.2"),
        Cell(ds, "e", "storescu", tls="1.3"),
        Cell(ds, "f", "storescu", tls="1.3", nodelay=False),
        Cell(ds, "f", "storescu", tls="1.3"),
        Cell(ds, "g", "storescu", tls="1.3"),
        Cell(ds, "h", "storescu", tls="1.3"),
    ]


def _ct(key: str) -> list[Cell]:
    ds = "ct"
    if key == "a":
        return [Cell(ds, key, "storescu"), Cell(ds, key, "storescu", nodelay=False)]
    if key == "g":  # only what the audit target compares with (f)
        return [Cell(ds, key, "storescu", tls="1.3"), Cell(ds, key, "ours", tls="1.3")]
    if key == "h":  # the plain hop: what the gateway targets compare with (f)
        return [Cell(ds, key, "storescu", tls="1.3"), Cell(ds, key, "storescu", tls="1.3", nodelay=False),
                Cell(ds, key, "ours", tls="1.3"), Cell(ds, key, "ours", tls="1.3", parallel=4)]
    if not SPECS[key].tls:
        return [Cell(ds, key, "storescu"), Cell(ds, key, "storescu", nodelay=False),
                Cell(ds, key, "storescu", parallel=4), Cell(ds, key, "ours"), Cell(ds, key, "ours", parallel=4)]
    cells = []
    for tls in ("1.3", "1.2"):
        cells += [Cell(ds, key, "storescu", tls=tls), Cell(ds, key, "ours", tls=tls)]
    cells += [Cell(ds, key, "storescu", tls="1.3", nodelay=False),
              Cell(ds, key, "storescu", tls="1.3", parallel=4),
              Cell(ds, key, "ours", tls="1.3", parallel=4)]
    if key in EIGHT_WAY:
        cells.append(Cell(ds, key, "ours", tls="1.3", parallel=8))
    return cells


def reference_cell(ds: str, key: str) -> Cell:
    """Per configuration: storescu with TCP_NODELAY on one association (TLS 1.3 where TLS)."""
    return Cell(ds, key, "storescu", tls="1.3" if SPECS[key].tls else None)


def plan(quick: bool, datasets: Sequence[str] | None = None, config_keys: Sequence[str] = tuple(SPECS),
         platforms: Sequence[str] = (NATIVE,)) -> list[Cell]:
    """Every cell once per platform, the platforms of a cell next to each other: within a round the same
    cell runs on each platform back to back, so drift of this shared machine hits both alike. Quick mode
    (CI) runs the image only on each configuration's reference cell: every configuration's ingest ratio
    between the platforms, in a fraction of the time."""
    return [dataclasses.replace(c, platform=p) for c in _cells(quick, datasets, config_keys) for p in platforms
            if p == NATIVE or not quick or c == reference_cell(c.dataset, c.config)]


def _cells(quick: bool, datasets: Sequence[str] | None, config_keys: Sequence[str]) -> list[Cell]:
    if quick:
        return [c for c in _quick() if c.config in config_keys]
    # Full mode. Stock Orthanc (a) idles ~50 ms per C-STORE (Nagle in the server), so it only gets the cells
    # its target needs on the 300-slice CT and is left out of the 1000-instance set (~1 min per run there).
    cells: list[Cell] = []
    for ds in datasets or ("ct", "small", "large"):
        for key in config_keys:
            tls = "1.3" if SPECS[key].tls else None
            if ds == "ct":
                cells += _ct(key)
            elif ds == "small":
                if key != "a":
                    cells += [Cell(ds, key, "storescu", tls=tls), Cell(ds, key, "ours", tls=tls)]
            else:
                cells += [Cell(ds, key, "storescu", tls=tls), Cell(ds, key, "ours", tls=tls)]
                if key in ("d", "f"):
                    cells.append(Cell(ds, key, "ours", tls=tls, parallel=4))
    return cells
