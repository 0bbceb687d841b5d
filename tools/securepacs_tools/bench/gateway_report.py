"""The gateway's part of the report: its targets (issue 6) and the section comparing d (through the gateway)
with f (the same Orthanc, direct, native TLS)."""

from __future__ import annotations

import statistics

from securepacs_tools.bench.fmt import Target, fmt_stats, mb, ratio_target, table
from securepacs_tools.bench.model import Cell, Results, p95, paired_ratios

RSS_LIMIT_MB = 100.0
# Fixed before measuring: what Python's allocator may keep after 1,000 short associations without a leak
# (a leak of even 5 kB per association would show as ~5 MB).
RSS_GROWTH_NOISE_MB = 5.0
FULL_ECHO_COUNT = 1000


def _throughput_ratios(results: Results, gateway: Cell, direct: Cell) -> list[float]:
    """Throughput through the gateway relative to direct = time direct / time gateway, run by run."""
    return paired_ratios(results, direct, gateway)


def _pairs(ds: str) -> list[tuple[str, Cell, Cell]]:
    out = [("storescu TCP_NODELAY x1 TLS 1.3", Cell(ds, "d", "storescu", tls="1.3"),
            Cell(ds, "f", "storescu", tls="1.3")),
           ("storescu TCP_NODELAY x1 TLS 1.2", Cell(ds, "d", "storescu", tls="1.2"),
            Cell(ds, "f", "storescu", tls="1.2")),
           ("storescu Nagle on x1 TLS 1.3", Cell(ds, "d", "storescu", tls="1.3", nodelay=False),
            Cell(ds, "f", "storescu", tls="1.3", nodelay=False)),
           ("storescu TCP_NODELAY x4 TLS 1.3", Cell(ds, "d", "storescu", tls="1.3", parallel=4),
            Cell(ds, "f", "storescu", tls="1.3", parallel=4))]
    for n in (1, 4, 8):
        out.append((f"ours x{n} TLS 1.3", Cell(ds, "d", "ours", tls="1.3", parallel=n),
                    Cell(ds, "f", "ours", tls="1.3", parallel=n)))
    return out


def _eight_way_peak(results: Results, ds: str) -> list[int]:
    cr = results.result(Cell(ds, "d", "ours", tls="1.3", parallel=8))
    return [r.gateway_rss_peak_kb for r in cr.ok_runs() if r.gateway_rss_peak_kb] if cr else []


def targets(results: Results, ds: str) -> list[Target]:
    out = [
        ratio_target("Gateway vs Orthanc native TLS, TCP_NODELAY clients (throughput)",
                     f"storescu TCP_NODELAY x1 TLS 1.3: time (f) direct / time (d) gateway, same Orthanc, {ds}",
                     _throughput_ratios(results, Cell(ds, "d", "storescu", tls="1.3"),
                                        Cell(ds, "f", "storescu", tls="1.3")), 0.90, at_most=False),
        ratio_target("Gateway vs direct with stock (Nagle-on) storescu (throughput)",
                     f"storescu without TCP_NODELAY x1 TLS 1.3: time (f) / time (d); > 1 = gateway faster, {ds}",
                     _throughput_ratios(results, Cell(ds, "d", "storescu", tls="1.3", nodelay=False),
                                        Cell(ds, "f", "storescu", tls="1.3", nodelay=False)), 1.0,
                     at_most=False, strict=True),
        ratio_target("Gateway with the plain internal hop (h) vs Orthanc native TLS, TCP_NODELAY (throughput)",
                     f"storescu TCP_NODELAY x1 TLS 1.3: time (f) / time (h); h = SECUREPACS_INTERNAL_HOP=plain, its "
                     f"own Orthanc process, {ds}",
                     _throughput_ratios(results, Cell(ds, "h", "storescu", tls="1.3"),
                                        Cell(ds, "f", "storescu", tls="1.3")), 0.90, at_most=False),
    ]
    hs = []
    for version in ("1.3", "1.2"):
        parts = []
        for key in ("d", "f"):
            h = p95(results.handshake_ms.get((key, version), []))
            a = p95(results.association_ms.get((key, version), []))
            if h is not None or a is not None:
                parts.append(f"{key}: {_ms(h)} / {_ms(a)}")
        if parts:
            hs.append(f"TLS {version} " + ", ".join(parts))
    out.append(Target("Handshake p95, gateway (d) vs direct (f)", "reported",
                      "; ".join(hs) or "not measured", "reported" if hs else "not measured",
                      "ms, TLS handshake / association set-up (A-ASSOCIATE-AC received), Python ssl client"))
    peaks = _eight_way_peak(results, ds)
    how = f"VmRSS of the gateway process sampled every 50 ms during `securepacs client store --parallel 8`, {ds}"
    if peaks:
        worst = mb(max(peaks))
        status = "met" if worst <= RSS_LIMIT_MB else f"missed by {worst - RSS_LIMIT_MB:.0f} MB"
        out.append(Target("Gateway RSS with 8 concurrent associations", f"≤ {RSS_LIMIT_MB:.0f} MB",
                          f"{worst:.0f} MB highest, {mb(statistics.median(peaks)):.0f} MB median of {len(peaks)} runs",
                          status, how))
    else:
        out.append(Target("Gateway RSS with 8 concurrent associations", f"≤ {RSS_LIMIT_MB:.0f} MB",
                          "not measured", "not measured", how))
    echo = results.gateway.echo
    goal = f"growth ≤ {RSS_GROWTH_NOISE_MB:.0f} MB over {FULL_ECHO_COUNT:,} associations"
    how = "VmRSS of the gateway before/after sequential C-ECHO associations (our client, after a warm-up)"
    if echo is None:
        out.append(Target("Gateway RSS flat across many associations", goal, "not measured", "not measured", how))
    else:
        growth = mb(echo.growth_kb)
        measured = (f"{mb(echo.rss_before_kb):.1f} → {mb(echo.rss_after_kb):.1f} MB ({growth:+.1f} MB) over "
                    f"{echo.count:,} associations, {echo.failures} failed")
        if echo.count < FULL_ECHO_COUNT:
            status = f"not measured ({echo.count} associations only; full mode runs {FULL_ECHO_COUNT:,})"
        elif echo.failures:
            status = f"not measured ({echo.failures} associations failed)"
        else:
            status = "met" if growth <= RSS_GROWTH_NOISE_MB else f"missed by {growth - RSS_GROWTH_NOISE_MB:.1f} MB"
        out.append(Target("Gateway RSS flat across many associations", goal, measured, status, how))
    return out


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def section(results: Results, ds: str) -> list[str]:
    """'## Gateway': d vs f cell by cell, connection set-up, and the gateway's memory."""
    gw = results.gateway
    if not gw.command and not any(cr.cell.config in ("d", "f") for cr in results.cells):
        return []
    lines = ["", "## Gateway (d) vs Orthanc native TLS (f)", "",
             "(d) is the shipped path: the client presents the bench clinic's certificate to the gateway, which "
             "checks it against the AE title and relays to Orthanc's internal TLS port. (f) is the same Orthanc "
             "process, reached directly on that internal port with the gateway's own client certificate, so "
             "(d)/(f) is what the gateway costs. Throughput ratio = time (f) / time (d), round by round "
             f"(> 1: the gateway is faster). Data set `{ds}`.", ""]
    rows = []
    for label, gcell, dcell in _pairs(ds):
        g, dr = results.result(gcell), results.result(dcell)
        if g is None or dr is None or not g.ok_runs():
            continue
        ratios = _throughput_ratios(results, gcell, dcell)
        gw_cpu = [r.gateway_cpu for r in g.ok_runs() if r.gateway_cpu is not None]
        gw_rss = [r.gateway_rss_peak_kb for r in g.ok_runs() if r.gateway_rss_peak_kb]
        rows.append([label, fmt_stats(g.seconds()), fmt_stats(dr.seconds()), fmt_stats(ratios),
                     fmt_stats(gw_cpu) if gw_cpu else "–", f"{mb(max(gw_rss)):.0f}" if gw_rss else "–"])
    lines += table(["Client", "(d) gateway s", "(f) direct s", "Throughput (d) vs (f)", "Gateway CPU s/run",
                    "Gateway peak RSS MB"], rows or [["not measured", "–", "–", "–", "–", "–"]])
    lines += ["", "Connection set-up, milliseconds (median / p95, n each), interleaved d, f, … so drift hits both:", ""]
    hs_rows = []
    for key in ("d", "f"):
        for version in ("1.3", "1.2"):
            h, a = results.handshake_ms.get((key, version), []), results.association_ms.get((key, version), [])
            if not h and not a:
                continue
            hs_rows.append([key, version, f"{_ms(statistics.median(h) if h else None)} / {_ms(p95(h))}",
                            f"{_ms(statistics.median(a) if a else None)} / {_ms(p95(a))}", f"{len(h)} / {len(a)}"])
    lines += table(["Config", "TLS", "TLS handshake", "Association (RQ → AC)", "n"],
                   hs_rows or [["not measured", "–", "–", "–", "–"]])
    lines += ["", "Gateway process:", ""]
    facts = [["Command", f"`{gw.command}`" if gw.command else "not started"],
             ["RSS idle (after start)", f"{mb(gw.idle_rss_kb):.1f} MB" if gw.idle_rss_kb else "–"],
             ["Peak RSS over the whole run (VmHWM)", f"{mb(gw.hwm_kb):.1f} MB" if gw.hwm_kb else "–"]]
    echo = gw.echo
    if echo is not None:
        points = ", ".join(f"{n}: {mb(kb):.1f}" for n, kb in echo.checkpoints)
        facts += [["Echo associations", f"{echo.count:,} sequential after {echo.warmup} warm-up, "
                   f"{echo.seconds:.0f} s, {echo.failures} failed"
                   + (f" (first error: {echo.first_error})" if echo.first_error else "")],
                  ["RSS before → after (peak)", f"{mb(echo.rss_before_kb):.1f} → {mb(echo.rss_after_kb):.1f} MB "
                   f"({mb(echo.rss_peak_kb):.1f} MB)"],
                  ["RSS along the way (associations: MB)", points]]
    lines += table(["", ""], facts)
    if gw.pace_per_s:
        lines += ["", f"The bench's own probes through the gateway (handshakes, associations, echoes) are paced at "
                  f"{gw.pace_per_s:.0f} new connections/s, below the gateway's per-IP rate limit, so none is "
                  "refused by the limiter; each measured time is one connection's own."]
    return lines


def ratio_rows(ds: str) -> list[tuple[str, Cell, Cell]]:
    """Time ratios for the report's run-by-run table (num / den)."""
    return [
        ("gateway/direct: (d) / (f), storescu TLS1.3", Cell(ds, "d", "storescu", tls="1.3"),
         Cell(ds, "f", "storescu", tls="1.3")),
        ("gateway/direct: (d) / (f), storescu-nagle TLS1.3", Cell(ds, "d", "storescu", tls="1.3", nodelay=False),
         Cell(ds, "f", "storescu", tls="1.3", nodelay=False)),
        ("gateway/direct: (d) / (f), ours TLS1.3", Cell(ds, "d", "ours", tls="1.3"), Cell(ds, "f", "ours", tls="1.3")),
        ("gateway/direct: (d) / (f), ours x8 TLS1.3", Cell(ds, "d", "ours", tls="1.3", parallel=8),
         Cell(ds, "f", "ours", tls="1.3", parallel=8)),
        ("plugin on/off, no gateway: (f) / (e), storescu TLS1.3", Cell(ds, "f", "storescu", tls="1.3"),
         Cell(ds, "e", "storescu", tls="1.3")),
    ]
