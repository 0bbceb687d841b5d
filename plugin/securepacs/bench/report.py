"""Markdown report and PNG plots (matplotlib, Agg backend) from :class:`securepacs.bench.runner.Results`."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from securepacs.bench.configs import SPECS
from securepacs.bench.runner import Cell, CellResult, Results, paired_ratios, stats

SEED_PLAIN_S, SEED_TLS_S = 7.0, 9.0
SEED_RATIO = SEED_TLS_S / SEED_PLAIN_S  # 1.29x
CLIENT_RSS_TOLERANCE_MB = 25.0


def _mb(kb: int | float) -> float:
    return kb / 1024


def _fmt_stats(values: list[float], fmt: str = "{:.2f}") -> str:
    s = stats(values)
    if s is None:
        return "failed"
    med, lo, hi = s
    return f"{fmt.format(med)} ({fmt.format(lo)}–{fmt.format(hi)})"


def main_dataset(results: Results) -> str:
    keys = list(results.datasets)
    return "ct" if "ct" in keys else keys[0]


def reference_cell(ds: str, key: str) -> Cell:
    """Per configuration: storescu with TCP_NODELAY on one association (TLS 1.3 where TLS)."""
    return Cell(ds, key, "storescu", tls="1.3" if SPECS[key].tls else None)


# ---------------------------------------------------------------------------------------------- targets

@dataclass
class Target:
    name: str
    goal: str
    measured: str
    status: str
    how: str


def _own_ratio(results: Results, storescu: Cell, ours: Cell) -> str:
    """time storescu / our client's own timing (without Python start-up), round by round."""
    a, b = results.result(storescu), results.result(ours)
    if a is None or b is None:
        return ""
    vals = [ra.seconds / rb.client_seconds for ra, rb in zip(a.runs, b.runs, strict=False)
            if ra is not None and rb is not None and rb.client_seconds]
    return f"; without Python start-up (client's own timing): {statistics.median(vals):.2f}×" if vals else ""


def _ratio_target(name: str, how: str, values: list[float], limit: float, at_most: bool) -> Target:
    goal = f"{'≤' if at_most else '≥'} {limit:.2f}×"
    if not values:
        return Target(name, goal, "not measured", "not measured", how)
    med = statistics.median(values)
    ok = med <= limit if at_most else med >= limit
    status = "met" if ok else f"missed by {abs(med - limit):.2f}×"
    return Target(name, goal, f"{med:.2f}× ({min(values):.2f}–{max(values):.2f})", status, how)


def targets(results: Results) -> list[Target]:
    ds = main_dataset(results)
    d13 = Cell(ds, "d", "storescu", tls="1.3")
    out = [
        _ratio_target("Default secure path vs plain bare (time)",
                      f"storescu TCP_NODELAY x1: (d) TLS 1.3 / (b) plain, {ds}",
                      paired_ratios(results, d13, Cell(ds, "b", "storescu")), 1.15, at_most=True),
        _ratio_target("Full stack vs plugin disabled (time)",
                      f"storescu TCP_NODELAY x1 TLS 1.3: (d) / (e), {ds}",
                      paired_ratios(results, d13, Cell(ds, "e", "storescu", tls="1.3")), 1.10, at_most=True),
        _ratio_target("Stock storescu (Nagle on): our stack vs stock Orthanc (speed-up)",
                      f"storescu without TCP_NODELAY x1: time (a) / time (d, TLS 1.3), {ds}",
                      paired_ratios(results, Cell(ds, "a", "storescu", nodelay=False),
                                    Cell(ds, "d", "storescu", tls="1.3", nodelay=False)), 4.0, at_most=False),
        _ratio_target("Our client vs DCMTK storescu, one association (speed)",
                      f"on (d) TLS 1.3, both TCP_NODELAY: time storescu / time ours (wall clock incl. start-up), {ds}"
                      + _own_ratio(results, d13, Cell(ds, "d", "ours", tls="1.3")),
                      paired_ratios(results, d13, Cell(ds, "d", "ours", tls="1.3")), 0.7, at_most=False),
        _ratio_target("Our client --parallel 4 vs DCMTK storescu one association (speed)",
                      f"on (d) TLS 1.3: time storescu x1 / time ours x4 (wall clock), {ds}"
                      + _own_ratio(results, d13, Cell(ds, "d", "ours", tls="1.3", parallel=4)),
                      paired_ratios(results, d13, Cell(ds, "d", "ours", tls="1.3", parallel=4)), 1.0,
                      at_most=False),
    ]
    hd, he = results.server_hwm_kb.get("d"), results.server_hwm_kb.get("e")
    how = "VmHWM of Orthanc (d) minus (e), same data stored"
    if hd and he:
        delta = _mb(hd - he)
        status = "met" if delta <= 150 else f"missed by {delta - 150:.0f} MB"
        out.append(Target("Orthanc+plugin peak RSS vs bare", "≤ bare + 150 MB",
                          f"{_mb(hd):.0f} MB vs {_mb(he):.0f} MB ({delta:+.0f} MB)", status, how))
    else:
        out.append(Target("Orthanc+plugin peak RSS vs bare", "≤ bare + 150 MB", "not measured", "not measured", how))
    per_ds: dict[str, int] = {}
    for cr in results.cells:
        if cr.cell.client == "ours" and cr.cell.parallel == 1:
            for r in cr.ok_runs():
                per_ds[cr.cell.dataset] = max(per_ds.get(cr.cell.dataset, 0), r.client_rss_kb)
    how = "peak RSS of `securepacs client store` x1 per data set (largest − smallest)"
    if len(per_ds) >= 2:
        by_size = sorted(per_ds, key=lambda k: results.datasets[k][2])
        spread = _mb(max(per_ds.values()) - min(per_ds.values()))
        measured = ", ".join(f"{k} ({results.datasets[k][2] / 1e6:.0f} MB): {_mb(per_ds[k]):.0f} MB"
                             for k in by_size)
        status = "met" if spread <= CLIENT_RSS_TOLERANCE_MB else f"missed by {spread - CLIENT_RSS_TOLERANCE_MB:.0f} MB"
        out.append(Target("Our client's peak RSS independent of study size",
                          f"spread ≤ {CLIENT_RSS_TOLERANCE_MB:.0f} MB", measured, status, how))
    else:
        only = ", ".join(f"{k}: {_mb(v):.0f} MB" for k, v in per_ds.items()) or "no run"
        out.append(Target("Our client's peak RSS independent of study size",
                          f"spread ≤ {CLIENT_RSS_TOLERANCE_MB:.0f} MB",
                          f"{only} (one data set only)", "not measured (needs ≥ 2 data sets; full mode)", how))
    return out


# ---------------------------------------------------------------------------------------------- ratios

def ratio_rows(results: Results) -> list[tuple[str, str, list[float]]]:
    rows = []
    for ds in results.datasets:
        pairs: list[tuple[str, Cell, Cell]] = [
            ("secure/plain: (d) TLS1.3 / (b) plain, storescu", Cell(ds, "d", "storescu", tls="1.3"),
             Cell(ds, "b", "storescu")),
            ("secure/plain bare: (c) TLS1.3 / (b), storescu", Cell(ds, "c", "storescu", tls="1.3"),
             Cell(ds, "b", "storescu")),
            ("full/bare TLS: (d) / (c), storescu TLS1.3", Cell(ds, "d", "storescu", tls="1.3"),
             Cell(ds, "c", "storescu", tls="1.3")),
            ("full/plugin off: (d) / (e), storescu TLS1.3", Cell(ds, "d", "storescu", tls="1.3"),
             Cell(ds, "e", "storescu", tls="1.3")),
            ("full/plugin off: (d) / (e), ours TLS1.3", Cell(ds, "d", "ours", tls="1.3"),
             Cell(ds, "e", "ours", tls="1.3")),
            ("ours/DCMTK x1 on (d) TLS1.3", Cell(ds, "d", "ours", tls="1.3"), Cell(ds, "d", "storescu", tls="1.3")),
            ("ours x4 / DCMTK x1 on (d) TLS1.3", Cell(ds, "d", "ours", tls="1.3", parallel=4),
             Cell(ds, "d", "storescu", tls="1.3")),
            ("ours/DCMTK x1 on (b) plain", Cell(ds, "b", "ours"), Cell(ds, "b", "storescu")),
            ("TLS1.2/TLS1.3 on (d), storescu", Cell(ds, "d", "storescu", tls="1.2"),
             Cell(ds, "d", "storescu", tls="1.3")),
            ("Nagle on/off client on (d), storescu TLS1.3", Cell(ds, "d", "storescu", tls="1.3", nodelay=False),
             Cell(ds, "d", "storescu", tls="1.3")),
            ("stock (a) / full (d), storescu Nagle on", Cell(ds, "a", "storescu", nodelay=False),
             Cell(ds, "d", "storescu", tls="1.3", nodelay=False)),
        ]
        for name, num, den in pairs:
            values = paired_ratios(results, num, den)
            if values:
                rows.append((ds, name, values))
    return rows


# ---------------------------------------------------------------------------------------------- plots

def _plots(results: Results, out: Path) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"a": "#999999", "b": "#4c72b0", "c": "#55a868", "d": "#c44e52", "e": "#dd8452"}
    made: list[tuple[str, str]] = []
    for ds, (dataset, n_files, _size) in results.datasets.items():
        crs = [cr for cr in results.cells if cr.cell.dataset == ds and cr.ok_runs()]
        if not crs:
            continue
        fig, ax = plt.subplots(figsize=(9, 0.38 * len(crs) + 1.6))
        labels, med, lo, hi, cols = [], [], [], [], []
        for cr in crs:
            ips = [n_files / s for s in cr.seconds()]
            m = statistics.median(ips)
            labels.append(cr.cell.label)
            med.append(m)
            lo.append(m - min(ips))
            hi.append(max(ips) - m)
            cols.append(colors.get(cr.cell.config, "#333333"))
        y = range(len(labels))
        ax.barh(list(y), med, xerr=[lo, hi], color=cols, capsize=3)
        ax.set_yticks(list(y), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("instances/s (median, min–max; wall clock incl. client start-up)")
        ax.set_title(f"{dataset.description}")
        fig.tight_layout()
        name = f"throughput-{ds}.png"
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        made.append((name, f"Throughput, {ds}"))

    keys = [k for k in SPECS if k in results.server_hwm_kb]
    if keys:
        ds = main_dataset(results)
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
        ax1.bar(keys, [_mb(results.server_hwm_kb[k]) for k in keys], color=[colors[k] for k in keys])
        ax1.set_ylabel("MB")
        ax1.set_title("Orthanc peak RSS (VmHWM)")
        cpu = []
        for k in keys:
            cr = results.result(reference_cell(ds, k))
            cpu.append(statistics.median([r.server_cpu for r in cr.ok_runs()]) if cr and cr.ok_runs() else 0)
        ax2.bar(keys, cpu, color=[colors[k] for k in keys])
        ax2.set_ylabel("CPU seconds")
        ax2.set_title(f"Orthanc CPU per run ({ds}, storescu x1)")
        fig.tight_layout()
        fig.savefig(out / "server.png", dpi=110)
        plt.close(fig)
        made.append(("server.png", "Server memory and CPU"))

    if results.handshake_ms:
        hs_keys = sorted({k for k, _ in results.handshake_ms})
        fig, ax = plt.subplots(figsize=(6, 3.4))
        width = 0.38
        for i, version in enumerate(("1.2", "1.3")):
            vals = [statistics.median(results.handshake_ms.get((k, version), [0])) for k in hs_keys]
            ax.bar([x + i * width for x in range(len(hs_keys))], vals, width, label=f"TLS {version}")
        ax.set_xticks([x + width / 2 for x in range(len(hs_keys))], hs_keys)
        ax.set_ylabel("ms (median)")
        ax.set_title("Mutual TLS handshake (TCP connect + TLS)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "handshake.png", dpi=110)
        plt.close(fig)
        made.append(("handshake.png", "TLS handshake"))
    return made


# ---------------------------------------------------------------------------------------------- markdown

def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def _cell_row(cr: CellResult, n_files: int, size: int) -> list[str]:
    c = cr.cell
    secs = cr.seconds()
    runs = cr.ok_runs()
    client = "ours" if c.client == "ours" else "storescu"
    nodelay = "on" if c.nodelay else "off (Nagle)"
    ips = _fmt_stats([n_files / s for s in secs], "{:.1f}")
    mbs = _fmt_stats([size / 1e6 / s for s in secs], "{:.1f}")
    own = [r.client_seconds for r in runs if r.client_seconds]
    return [
        f"{c.config}", client, c.tls or "plain", str(c.parallel), nodelay, _fmt_stats(secs), ips, mbs,
        _fmt_stats([r.server_cpu for r in runs]),
        _fmt_stats([_mb(r.server_rss_peak_kb) for r in runs], "{:.0f}"),
        _fmt_stats([_mb(r.client_rss_kb) for r in runs], "{:.0f}") if any(r.client_rss_kb for r in runs) else "–",
        _fmt_stats(own) if own else "–",
        f"{len(secs)}/{len(cr.runs)}",
    ]


def render(results: Results, plots: list[tuple[str, str]]) -> str:
    ds_main = main_dataset(results)
    lines = [f"# SecurePACS ingest benchmark{' (quick mode)' if results.quick else ''}", ""]
    lines += [f"Started {results.started}; took {results.wall_seconds:.0f} s; {results.rounds} interleaved rounds "
              "per cell.", "", "## Machine", ""]
    lines += _table(["", ""], [[k, v] for k, v in results.machine.items()])
    lines += ["", "## Configurations", "",
              f"Reference cell per configuration: storescu with TCP_NODELAY, one association, TLS 1.3 where TLS, "
              f"data set `{ds_main}`. Peak RSS is Orthanc's VmHWM over its whole life (fresh process per "
              "configuration, all configurations stored the same data).", ""]
    n_main, size_main = results.datasets[ds_main][1], results.datasets[ds_main][2]
    rows = []
    for key, spec in SPECS.items():
        if key not in results.server_hwm_kb and not any(cr.cell.config == key for cr in results.cells):
            continue
        cr = results.result(reference_cell(ds_main, key))
        secs = cr.seconds() if cr else []
        cpu = [r.server_cpu for r in cr.ok_runs()] if cr else []
        hs = [f"{statistics.median(results.handshake_ms[(key, v)]):.1f}"
              if (key, v) in results.handshake_ms else "–" for v in ("1.2", "1.3")]
        rows.append([key, spec.name, spec.description, _fmt_stats(secs),
                     _fmt_stats([n_main / s for s in secs], "{:.1f}"),
                     _fmt_stats([size_main / 1e6 / s for s in secs], "{:.1f}"), _fmt_stats(cpu),
                     f"{_mb(results.server_idle_rss_kb.get(key, 0)):.0f}",
                     f"{_mb(results.server_hwm_kb.get(key, 0)):.0f}", " / ".join(hs)])
    lines += _table(["Config", "Name", "What", "Seconds", "Instances/s", "MB/s", "Server CPU s/run",
                     "Idle RSS MB", "Peak RSS MB", "Handshake ms TLS1.2 / 1.3"], rows)

    lines += ["", "## Data sets", ""]
    lines += _table(["Key", "What", "Files", "MB"],
                    [[k, d.description, str(n), f"{size / 1e6:.1f}"] for k, (d, n, size) in results.datasets.items()])

    lines += ["", "## Targets", ""]
    lines += _table(["Target", "Goal", "Measured (median, min–max)", "Status", "How"],
                    [[t.name, t.goal, t.measured, t.status, t.how] for t in targets(results)])

    lines += ["", "## Seed experiment", "",
              f"The seed measured one study plain vs mutual TLS: {SEED_PLAIN_S:.0f} s vs {SEED_TLS_S:.0f} s "
              f"= {SEED_RATIO:.2f}×. The same comparison here (run-by-run ratio, data set `{ds_main}`):", ""]
    seed_rows = []
    for label, num, den in (
        ("storescu TCP_NODELAY: (d) full stack TLS 1.3 vs (b) bare plain",
         Cell(ds_main, "d", "storescu", tls="1.3"), Cell(ds_main, "b", "storescu")),
        ("stock storescu (Nagle on): (d) full stack TLS 1.3 vs (a) stock plain",
         Cell(ds_main, "d", "storescu", tls="1.3", nodelay=False), Cell(ds_main, "a", "storescu", nodelay=False)),
        ("our client: (d) full stack TLS 1.3 vs (b) bare plain",
         Cell(ds_main, "d", "ours", tls="1.3"), Cell(ds_main, "b", "ours")),
    ):
        a, b = results.result(num), results.result(den)
        values = paired_ratios(results, num, den)
        if not values or a is None or b is None:
            continue
        seed_rows.append([label, _fmt_stats(b.seconds()), _fmt_stats(a.seconds()),
                          _fmt_stats(values), f"{SEED_RATIO:.2f}×"])
    lines += _table(["Comparison", "Plain s", "Mutual TLS s", "Ours (TLS/plain)", "Seed"], seed_rows or
                    [["not measured", "–", "–", "–", f"{SEED_RATIO:.2f}×"]])

    lines += ["", "## Ratios (run by run, same round, then median)", ""]
    lines += _table(["Data set", "Ratio of times", "Median (min–max)"],
                    [[ds, name, _fmt_stats(v)] for ds, name, v in ratio_rows(results)])

    for ds, (dataset, n_files, size) in results.datasets.items():
        lines += ["", f"## Results: {ds} — {dataset.description}", ""]
        lines += _table(["Config", "Client", "TLS", "Assoc", "Client TCP_NODELAY", "Seconds", "Instances/s", "MB/s",
                         "Server CPU s", "Server RSS MB (sampled)", "Client peak RSS MB",
                         "Ours: own seconds", "OK runs"],
                        [_cell_row(cr, n_files, size) for cr in results.cells if cr.cell.dataset == ds])

    if results.handshake_ms:
        lines += ["", "## TLS handshake", "",
                  "TCP connect + full mutual-TLS handshake against the DICOM port (Python ssl client, client "
                  "certificate, no session resumption), milliseconds:", ""]
        lines += _table(["Config", "TLS", "Median (min–max)", "n"],
                        [[k, v, _fmt_stats(ms, "{:.1f}"), str(len(ms))]
                         for (k, v), ms in sorted(results.handshake_ms.items())])

    lines += ["", "## Plots", ""]
    lines += [f"![{title}]({name})" for name, title in plots]

    lines += ["", "## Method and notes", "",
              "- All servers on loopback, storage on tmpfs; each configuration is a fresh Orthanc on free ports, "
              "all started before the first round; every stored study is deleted (REST, internal HTTP port) "
              "before every run, so every run stores into the same empty state.",
              "- Rounds are interleaved (every cell once per round, same order); ratios are taken per round "
              "and then the median; medians are given with min–max.",
              "- Seconds are wall clock from starting the client process(es) to the last one exiting, so they "
              "include process start-up: a few ms for storescu, roughly 0.5–0.7 s of Python imports for our "
              "client (its own timing, excluding start-up, is in the column “Ours: own seconds”).",
              "- storescu with 4 associations = the files split into 4 lists, 4 processes.",
              "- Server CPU = utime+stime delta of the Orthanc process (/proc/PID/stat); server RSS sampled "
              "every 50 ms; client peak RSS = GNU time's %M (maximum over the 4 processes for storescu x4).",
              "- DCMTK 3.6.7's storescu has no option to pin the TLS version (only profiles: BCP 195 "
              "non-downgrading by default, which allows 1.2 and 1.3); it is pinned here with an "
              "OPENSSL_CONF file (MinProtocol = MaxProtocol) for the client process. Check: "
              f"{results.storescu_tls_note or 'not run'}.",
              "- Configurations (a) and (b) are plain DICOM: only for comparison, never for patient data."]
    failures = [(cr.cell, e) for cr in results.cells for e in cr.errors]
    if failures:
        lines += ["", "## Failures", ""]
        lines += [f"- {c.dataset} {c.label}: {e.splitlines()[0][:300] if e else ''}" for c, e in failures]
    return "\n".join(lines) + "\n"


def write(results: Results, output: Path, log: Callable[[str], None] = print) -> Path:
    output.mkdir(parents=True, exist_ok=True)
    plots = _plots(results, output)
    path = output / "report.md"
    path.write_text(render(results, plots), encoding="utf-8")
    log(f"bench: report written to {path}")
    return path
