"""Markdown report and PNG plots (matplotlib, Agg backend) from :class:`securepacs_tools.bench.runner.Results`."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path

from securepacs_tools.bench import gateway_report, platform_report
from securepacs_tools.bench.fmt import Target, fmt_stats, mb, ratio_target, table
from securepacs_tools.bench.model import NATIVE, Cell, CellResult, Results, p95, paired_ratios
from securepacs_tools.bench.plan import reference_cell
from securepacs_tools.bench.specs import SPECS

SEED_PLAIN_S, SEED_TLS_S = 7.0, 9.0
SEED_RATIO = SEED_TLS_S / SEED_PLAIN_S  # 1.29x
CLIENT_RSS_TOLERANCE_MB = 25.0


def main_dataset(results: Results) -> str:
    keys = list(results.datasets)
    return "ct" if "ct" in keys else keys[0]


def reference_cells(ds: str) -> dict[str, Cell]:
    return {key: reference_cell(ds, key) for key in SPECS}


# ---------------------------------------------------------------------------------------------- targets

def _own_ratio(results: Results, storescu: Cell, ours: Cell) -> str:
    """time storescu / our client's own timing (without Python start-up), round by round."""
    a, b = results.result(storescu), results.result(ours)
    if a is None or b is None:
        return ""
    vals = [ra.seconds / rb.client_seconds for ra, rb in zip(a.runs, b.runs, strict=False)
            if ra is not None and rb is not None and rb.client_seconds]
    return f"; without Python start-up (client's own timing): {statistics.median(vals):.2f}×" if vals else ""


def targets(results: Results) -> list[Target]:
    ds = main_dataset(results)
    d13 = Cell(ds, "d", "storescu", tls="1.3")
    out = [
        ratio_target("Default secure path vs plain bare (time)",
                      f"storescu TCP_NODELAY x1: (d) TLS 1.3 / (b) plain, {ds}",
                      paired_ratios(results, d13, Cell(ds, "b", "storescu")), 1.15, at_most=True),
        # The plugin's own cost: both without the gateway, Orthanc native TLS (f: plugin on, e: off). The
        # gateway's cost is (d)/(f), in the gateway targets below; (d)/(e) is in the ratio table.
        ratio_target("Plugin on vs plugin disabled (time)",
                     f"storescu TCP_NODELAY x1 TLS 1.3: (f) / (e), both Orthanc native TLS without gateway, {ds}",
                     paired_ratios(results, Cell(ds, "f", "storescu", tls="1.3"),
                                   Cell(ds, "e", "storescu", tls="1.3")), 1.10, at_most=True),
        ratio_target("Audit trail on vs off (time)",
                     f"storescu TCP_NODELAY x1 TLS 1.3: (f) / (g), plugin on, no gateway, trail on / off, {ds}",
                     paired_ratios(results, Cell(ds, "f", "storescu", tls="1.3"),
                                   Cell(ds, "g", "storescu", tls="1.3")), 1.05, at_most=True),
        ratio_target("Stock storescu (Nagle on): our stack vs stock Orthanc (speed-up)",
                      f"storescu without TCP_NODELAY x1: time (a) / time (d, TLS 1.3), {ds}",
                      paired_ratios(results, Cell(ds, "a", "storescu", nodelay=False),
                                    Cell(ds, "d", "storescu", tls="1.3", nodelay=False)), 4.0, at_most=False),
        ratio_target("Our client vs DCMTK storescu, one association (speed)",
                      f"on (d) TLS 1.3, both TCP_NODELAY: time storescu / time ours (wall clock incl. start-up), {ds}"
                      + _own_ratio(results, d13, Cell(ds, "d", "ours", tls="1.3")),
                      paired_ratios(results, d13, Cell(ds, "d", "ours", tls="1.3")), 0.7, at_most=False),
        ratio_target("Our client --parallel 4 vs DCMTK storescu one association (speed)",
                      f"on (d) TLS 1.3: time storescu x1 / time ours x4 (wall clock), {ds}"
                      + _own_ratio(results, d13, Cell(ds, "d", "ours", tls="1.3", parallel=4)),
                      paired_ratios(results, d13, Cell(ds, "d", "ours", tls="1.3", parallel=4)), 1.0,
                      at_most=False),
    ]
    hd, he = results.server_hwm_kb.get("d"), results.server_hwm_kb.get("e")
    how = "VmHWM of Orthanc (d) minus (e), same data stored ((d)'s Orthanc also served (f)'s runs)"
    if hd and he:
        delta = mb(hd - he)
        status = "met" if delta <= 150 else f"missed by {delta - 150:.0f} MB"
        out.append(Target("Orthanc+plugin peak RSS vs bare", "≤ bare + 150 MB",
                          f"{mb(hd):.0f} MB vs {mb(he):.0f} MB ({delta:+.0f} MB)", status, how))
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
        spread = mb(max(per_ds.values()) - min(per_ds.values()))
        measured = ", ".join(f"{k} ({results.datasets[k][2] / 1e6:.0f} MB): {mb(per_ds[k]):.0f} MB"
                             for k in by_size)
        status = "met" if spread <= CLIENT_RSS_TOLERANCE_MB else f"missed by {spread - CLIENT_RSS_TOLERANCE_MB:.0f} MB"
        out.append(Target("Our client's peak RSS independent of study size",
                          f"spread ≤ {CLIENT_RSS_TOLERANCE_MB:.0f} MB", measured, status, how))
    else:
        only = ", ".join(f"{k}: {mb(v):.0f} MB" for k, v in per_ds.items()) or "no run"
        out.append(Target("Our client's peak RSS independent of study size",
                          f"spread ≤ {CLIENT_RSS_TOLERANCE_MB:.0f} MB",
                          f"{only} (one data set only)", "not measured (needs ≥ 2 data sets; full mode)", how))
    return out + gateway_report.targets(results, ds)


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
            ("full (gateway+plugin) / neither: (d) / (e), storescu TLS1.3", Cell(ds, "d", "storescu", tls="1.3"),
             Cell(ds, "e", "storescu", tls="1.3")),
            ("full (gateway+plugin) / neither: (d) / (e), ours TLS1.3", Cell(ds, "d", "ours", tls="1.3"),
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
            *gateway_report.ratio_rows(ds),
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

    colors = {"a": "#999999", "b": "#4c72b0", "c": "#55a868", "d": "#c44e52", "e": "#dd8452", "f": "#8172b3",
              "g": "#937860",
              "h": "#da8bc3"}
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
        bars = ax.barh(list(y), med, xerr=[lo, hi], color=cols, capsize=3)
        for bar, cr in zip(bars, crs, strict=True):
            if cr.cell.platform != NATIVE:
                bar.set_hatch("//")  # the image's servers (label "...@image")
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
        ax1.bar(keys, [mb(results.server_hwm_kb[k]) for k in keys], color=[colors[k] for k in keys])
        ax1.set_ylabel("MB")
        ax1.set_title("Orthanc peak RSS (VmHWM)")
        cpu, gw_cpu = [], []
        for k in keys:
            cr = results.result(reference_cell(ds, k))
            runs = cr.ok_runs() if cr else []
            cpu.append(statistics.median([r.server_cpu for r in runs]) if runs else 0)
            gw = [r.gateway_cpu for r in runs if r.gateway_cpu is not None]
            gw_cpu.append(statistics.median(gw) if gw else 0)
        ax2.bar(keys, cpu, color=[colors[k] for k in keys])
        if any(gw_cpu):
            # Stacked on Orthanc's: the shipped path's server CPU is both processes together.
            ax2.bar(keys, gw_cpu, bottom=cpu, color="#222222", label="gateway")
            ax2.legend()
        ax2.set_ylabel("CPU seconds")
        ax2.set_title(f"Server CPU per run ({ds}, storescu x1)")
        fig.tight_layout()
        fig.savefig(out / "server.png", dpi=110)
        plt.close(fig)
        made.append(("server.png", "Server memory and CPU"))

    if results.handshake_ms:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        width = 0.38
        for ax, figures, title in ((axes[0], results.handshake_ms, "Mutual TLS handshake (TCP connect + TLS)"),
                                   (axes[1], results.association_ms, "Association set-up (until A-ASSOCIATE-AC)")):
            hs_keys = sorted({k for k, _ in figures})
            for i, version in enumerate(("1.2", "1.3")):
                vals = [statistics.median(figures.get((k, version), [0])) for k in hs_keys]
                ax.bar([x + i * width for x in range(len(hs_keys))], vals, width, label=f"TLS {version}")
            ax.set_xticks([x + width / 2 for x in range(len(hs_keys))], hs_keys)
            ax.set_ylabel("ms (median)")
            ax.set_title(title, fontsize=10)
            ax.legend()
        fig.tight_layout()
        fig.savefig(out / "handshake.png", dpi=110)
        plt.close(fig)
        made.append(("handshake.png", "TLS handshake"))
    ds = main_dataset(results)
    return made + platform_report.plot(results, ds, reference_cells(ds), out)


# ---------------------------------------------------------------------------------------------- markdown

def _cell_row(cr: CellResult, n_files: int, size: int) -> list[str]:
    c = cr.cell
    secs = cr.seconds()
    runs = cr.ok_runs()
    client = "ours" if c.client == "ours" else "storescu"
    nodelay = "on" if c.nodelay else "off (Nagle)"
    ips = fmt_stats([n_files / s for s in secs], "{:.1f}")
    mbs = fmt_stats([size / 1e6 / s for s in secs], "{:.1f}")
    own = [r.client_seconds for r in runs if r.client_seconds]
    gw_cpu = [r.gateway_cpu for r in runs if r.gateway_cpu is not None]
    return [
        c.server, client, c.tls or "plain", str(c.parallel), nodelay, fmt_stats(secs), ips, mbs,
        fmt_stats([r.server_cpu for r in runs]),
        fmt_stats([mb(r.server_rss_peak_kb) for r in runs], "{:.0f}"),
        fmt_stats(gw_cpu) if gw_cpu else "–",
        fmt_stats([mb(r.gateway_rss_peak_kb) for r in runs], "{:.0f}") if gw_cpu else "–",
        fmt_stats([mb(r.client_rss_kb) for r in runs], "{:.0f}") if any(r.client_rss_kb for r in runs) else "–",
        fmt_stats(own) if own else "–",
        f"{len(secs)}/{len(cr.runs)}",
    ]


def render(results: Results, plots: list[tuple[str, str]]) -> str:
    ds_main = main_dataset(results)
    lines = [f"# SecurePACS ingest benchmark{' (quick mode)' if results.quick else ''}", ""]
    lines += [f"Started {results.started}; took {results.wall_seconds:.0f} s; {results.rounds} interleaved rounds "
              "per cell.", "", "## Machine", ""]
    lines += table(["", ""], [[k, v] for k, v in results.machine.items()])
    lines += ["", "## Configurations", "",
              f"Reference cell per configuration: storescu with TCP_NODELAY, one association, TLS 1.3 where TLS, "
              f"data set `{ds_main}`. Peak RSS is Orthanc's VmHWM over its whole life (fresh process per "
              "configuration, all configurations stored the same data; (d) and (f) are one Orthanc process, "
              "so they share idle and peak RSS). Server CPU is Orthanc's; the gateway's is in its own column.", ""]
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
        gw_cpu = [r.gateway_cpu for r in cr.ok_runs() if r.gateway_cpu is not None] if cr else []
        rows.append([key, spec.name, spec.description, fmt_stats(secs),
                     fmt_stats([n_main / s for s in secs], "{:.1f}"),
                     fmt_stats([size_main / 1e6 / s for s in secs], "{:.1f}"), fmt_stats(cpu),
                     f"{mb(results.server_idle_rss_kb.get(key, 0)):.0f}",
                     f"{mb(results.server_hwm_kb.get(key, 0)):.0f}", " / ".join(hs),
                     fmt_stats(gw_cpu) if gw_cpu else "–"])
    lines += table(["Config", "Name", "What", "Seconds", "Instances/s", "MB/s", "Server CPU s/run",
                    "Idle RSS MB", "Peak RSS MB", "Handshake ms TLS1.2 / 1.3", "Gateway CPU s/run"], rows)

    lines += ["", "## Data sets", ""]
    lines += table(["Key", "What", "Files", "MB"],
                    [[k, d.description, str(n), f"{size / 1e6:.1f}"] for k, (d, n, size) in results.datasets.items()])

    lines += ["", "## Targets", ""]
    lines += table(["Target", "Goal", "Measured (median, min–max)", "Status", "How"],
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
        seed_rows.append([label, fmt_stats(b.seconds()), fmt_stats(a.seconds()),
                          fmt_stats(values), f"{SEED_RATIO:.2f}×"])
    lines += table(["Comparison", "Plain s", "Mutual TLS s", "Ours (TLS/plain)", "Seed"], seed_rows or
                    [["not measured", "–", "–", "–", f"{SEED_RATIO:.2f}×"]])

    lines += gateway_report.section(results, ds_main)
    lines += platform_report.section(results, ds_main, reference_cells(ds_main))

    lines += ["", "## Ratios (run by run, same round, then median)", ""]
    lines += table(["Data set", "Ratio of times", "Median (min–max)"],
                    [[ds, name, fmt_stats(v)] for ds, name, v in ratio_rows(results)])

    for ds, (dataset, n_files, size) in results.datasets.items():
        lines += ["", f"## Results: {ds} — {dataset.description}", ""]
        lines += table(["Config", "Client", "TLS", "Assoc", "Client TCP_NODELAY", "Seconds", "Instances/s", "MB/s",
                        "Server CPU s", "Server RSS MB (sampled)", "Gateway CPU s", "Gateway RSS MB (sampled)",
                        "Client peak RSS MB",
                         "Ours: own seconds", "OK runs"],
                        [_cell_row(cr, n_files, size) for cr in results.cells if cr.cell.dataset == ds])

    if results.handshake_ms:
        lines += ["", "## TLS handshake and association set-up", "",
                  "TCP connect + full mutual-TLS handshake against the DICOM port (Python ssl client, client "
                  "certificate, no session resumption), and TCP connect + TLS + A-ASSOCIATE-RQ until the "
                  "A-ASSOCIATE-AC arrives (Verification, then released), milliseconds; configurations measured "
                  "in turn, one connection each per iteration:", ""]
        hs_rows = []
        for (k, v), ms in sorted(results.handshake_ms.items()):
            assoc = results.association_ms.get((k, v), [])
            hs_rows.append([k, v, fmt_stats(ms, "{:.1f}"), f"{p95(ms):.1f}",
                            fmt_stats(assoc, "{:.1f}") if assoc else "–",
                            f"{p95(assoc):.1f}" if assoc else "–", f"{len(ms)} / {len(assoc)}"])
        lines += table(["Config", "TLS", "Handshake median (min–max)", "Handshake p95",
                        "Association median (min–max)", "Association p95", "n"], hs_rows)

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
              "- Configurations (a) and (b) are plain DICOM: only for comparison, never for patient data.",
              "- (d) is started like `securepacs serve` starts it (launcher.Archive with Orthanc and the gateway; "
              "nginx is left out, nothing here uses HTTPS). (f) is not a second stack: it is (d)'s Orthanc "
              "reached on its internal port, so (d)/(f) compares the same Orthanc process with and without the "
              "gateway in front, round by round. Gateway CPU and RSS are those of the launcher's gateway "
              "child (Archive.gateway), sampled like Orthanc's.",
              "- (e) is (d)'s Orthanc configuration without the plugin and with Orthanc's native TLS on the "
              "public side (server certificate, clinic CA), as before the gateway existed; (f)/(e) is the "
              "plugin's cost, (d)/(e) the plugin's and the gateway's together.",
              "- The machine has few cores and other work may run on it: single runs are noisy; the medians "
              "of interleaved rounds and their min–max are what to read."]
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
