"""The platforms' part of the report: the same cells on this host's Orthanc and on the image's, side by side,
and the ingest ratio image / native per configuration."""

from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path

from securepacs_tools.bench.fmt import fmt_stats, mb, table
from securepacs_tools.bench.model import IMAGE, NATIVE, Cell, Results, paired_ratios
from securepacs_tools.bench.specs import SPECS

# Facts of each platform's server side, and how the report names them.
VERSION_FACTS = {"Orthanc": "Orthanc, Python plugin", "DCMTK": "DCMTK", "OpenSSL": "OpenSSL",
                 "Python": "Python of the plugin's venv and the gateway (native: also the clients')", "OS": "OS"}


def on(cell: Cell, platform: str) -> Cell:
    return dataclasses.replace(cell, platform=platform)


def ingest_ratios(results: Results, cell: Cell) -> list[float]:
    """Ingest rate on the image / natively = time native / time image, round by round (> 1: image faster)."""
    return paired_ratios(results, on(cell, NATIVE), on(cell, IMAGE))


def _orthanc(facts: dict[str, str]) -> str:
    return facts.get("Orthanc", "?").split(" ", 1)[0]


def title(results: Results) -> str:
    return f"image (Orthanc {_orthanc(results.image_machine)}) vs native (Orthanc {_orthanc(results.machine)})"


def _pairs(results: Results) -> list[Cell]:
    """Every native cell that also ran on the image, in the plan's order."""
    return [cr.cell for cr in results.cells
            if cr.cell.platform == NATIVE and results.result(on(cr.cell, IMAGE)) is not None]


def section(results: Results, ds_main: str, reference: dict[str, Cell]) -> list[str]:
    pairs = _pairs(results)
    if not pairs:
        return []
    lines = ["", f"## Platforms: {title(results)}", "",
             f"The same configurations, data and clients on both: the servers of `image` run in a container of "
             f"`{results.image}` (host network, host PID namespace, work directory on the same tmpfs), those of "
             "`native` on this host; both are driven by this host's clients (the Python and DCMTK in "
             "“Machine”), and each cell runs on both platforms back to back in every round. Ingest ratio = "
             "time native / time image, round by round, then the median: above 1 the image ingests faster.", ""]
    lines += table(["", "native", "image"],
                   [[label, results.machine.get(k, "?"), results.image_machine.get(k, "?")]
                    for k, label in VERSION_FACTS.items()])
    n_files, size = results.datasets[ds_main][1], results.datasets[ds_main][2]
    rows = []
    for key, cell in reference.items():
        a, b = results.result(on(cell, NATIVE)), results.result(on(cell, IMAGE))
        if a is None or b is None:
            continue
        cpu = [fmt_stats([r.server_cpu for r in cr.ok_runs()]) for cr in (a, b)]
        rows.append([key, SPECS[key].name, fmt_stats(a.seconds()), fmt_stats(b.seconds()),
                     fmt_stats([n_files / s for s in a.seconds()], "{:.1f}"),
                     fmt_stats([n_files / s for s in b.seconds()], "{:.1f}"),
                     fmt_stats(ingest_ratios(results, cell)), *cpu,
                     " / ".join(f"{mb(results.server_hwm_kb.get(k, 0)):.0f}" for k in (key, on(cell, IMAGE).server))])
    lines += ["", f"Per configuration, its reference cell (storescu TCP_NODELAY x1, TLS 1.3 where TLS, `{ds_main}`, "
              f"{n_files} files, {size / 1e6:.1f} MB):", ""]
    lines += table(["Config", "Name", "Native s", "Image s", "Native inst/s", "Image inst/s",
                    "Ingest ratio image / native", "Native Orthanc CPU s", "Image Orthanc CPU s",
                    "Orthanc peak RSS MB native / image"], rows)
    lines += ["", "Every cell that ran on both:", ""]
    lines += table(["Data set", "Cell", "Native s", "Image s", "Ingest ratio image / native"],
                   [[c.dataset, c.label, fmt_stats(_secs(results, c)), fmt_stats(_secs(results, on(c, IMAGE))),
                     fmt_stats(ingest_ratios(results, c))] for c in pairs])
    return lines


def _secs(results: Results, cell: Cell) -> list[float]:
    cr = results.result(cell)
    return cr.seconds() if cr else []


def plot(results: Results, ds_main: str, reference: dict[str, Cell], out: Path) -> list[tuple[str, str]]:
    """platforms.png: instances/s per configuration, native and image bars side by side (median, min–max)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_files = results.datasets[ds_main][1]
    keys = [k for k, c in reference.items()
            if _secs(results, on(c, NATIVE)) and _secs(results, on(c, IMAGE))]
    if not keys:
        return []
    fig, ax = plt.subplots(figsize=(9, 3.8))
    width = 0.4
    for i, (platform, color) in enumerate(((NATIVE, "#4c72b0"), (IMAGE, "#c44e52"))):
        ips = [[n_files / s for s in _secs(results, on(reference[k], platform))] for k in keys]
        med = [statistics.median(v) for v in ips]
        err = [[m - min(v) for m, v in zip(med, ips, strict=True)], [max(v) - m for m, v in zip(med, ips, strict=True)]]
        facts = results.machine if platform == NATIVE else results.image_machine
        ax.bar([x + i * width for x in range(len(keys))], med, width, yerr=err, capsize=3, color=color,
               label=f"{platform}: Orthanc {_orthanc(facts)}")
    ax.set_xticks([x + width / 2 for x in range(len(keys))], keys)
    ax.set_ylabel("instances/s (median, min–max)")
    ax.set_title(f"Ingest per configuration, {ds_main}, storescu TCP_NODELAY x1", fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "platforms.png", dpi=110)
    plt.close(fig)
    return [("platforms.png", f"Platforms: {title(results)}")]
