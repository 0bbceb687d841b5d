"""Web app benchmark (issue 13 §6): figures only, no timing asserts. Runs when SECUREPACS_WEBAPP_BENCH=1;
writes results/artifacts/webapp/bench.json and prints it.

- warm server render of one 512² CT frame (decoded frame cached, a new window each time): in-process and
  over HTTPS on loopback, p50/p95;
- click on a study in the list -> first image painted, in Chromium, on loopback and under network
  emulation of a slow mobile link (3 Mbit/s, 150 ms RTT), warm;
- scrolling at 10 slices/s on that link: slices painted per second and the lag at the end;
- bytes transferred reading every slice of a 300-slice CT, against the size of its instances.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from _webapp_env import ARTIFACTS, add_user, launch, phantom, write_ct
from test_webapp_browser import new_page

from securepacs.client import store
from securepacs.dicom.identifiers import orthanc_id
from securepacs.webapp import render

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.environ.get("SECUREPACS_WEBAPP_BENCH") != "1",
                                 reason="benchmark: set SECUREPACS_WEBAPP_BENCH=1")]
playwright_api = pytest.importorskip("playwright.sync_api")
SLICES = 300
SLOW = {"offline": False, "latency": 150, "downloadThroughput": 3_000_000 / 8, "uploadThroughput": 3_000_000 / 8}
PAINT_LOG = """
window.__paints = [];
new MutationObserver(() => {}).observe(document, {subtree: true, attributes: true});
document.addEventListener('DOMContentLoaded', () => {
  const v = document.getElementById('viewport');
  if (v) new MutationObserver(() => window.__paints.push([performance.now(), v.dataset.painted, v.dataset.shown]))
    .observe(v, {attributes: true, attributeFilter: ['data-shown']});
});
"""


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


class _Bytes:
    def __init__(self, data: bytes):
        self.data = data

    def get_bytes(self, _uri: str) -> bytes:
        return self.data


def server_render_ms(path: Path) -> dict[str, float]:
    renderer = render.Renderer(_Bytes(path.read_bytes()))
    renderer.render("x", 0, {"size": "512"})
    times = []
    for i in range(300):
        start = time.perf_counter()
        renderer.render("x", 0, {"wc": str(40 + i), "ww": "400", "size": "512"})
        times.append((time.perf_counter() - start) * 1000)
    return {"p50": pct(times, 0.5), "p95": pct(times, 0.95)}


def https_render_ms(base: str, user: tuple[str, str], frame: list[Any], ca: str) -> dict[str, float]:
    session = requests.Session()
    session.auth = user
    url = f"{base}/securepacs/api/viewer/instances/{frame[0]}/frames/{frame[1]}/rendered"
    session.get(url, params={"size": "512"}, verify=ca, timeout=30).raise_for_status()
    times = []
    for i in range(200):
        start = time.perf_counter()
        session.get(url, params={"wc": str(1000 + i), "ww": "400", "size": "512"}, verify=ca,
                    timeout=30).raise_for_status()
        times.append((time.perf_counter() - start) * 1000)
    return {"p50": pct(times, 0.5), "p95": pct(times, 0.95)}


def click_to_first_image(page: Any, base: str) -> float:
    page.goto(base + "/list")
    page.wait_for_selector("#studies tbody tr a")
    start = time.perf_counter()
    page.click("#studies tbody tr a")
    page.wait_for_function("() => document.body.dataset.firstImage", timeout=60_000)
    return round((time.perf_counter() - start) * 1000, 1)


def scroll_at(page: Any, rate: float, steps: int) -> dict[str, float]:
    page.focus("#viewport")
    page.evaluate("() => { window.__paints = window.__paints || []; window.__paints.length = 0; }")
    start_slice = int(page.eval_on_selector("#viewport", "v => v.dataset.slice"))
    t0 = time.perf_counter()
    for i in range(steps):
        page.keyboard.press("ArrowDown")
        time.sleep(max(0.0, t0 + (i + 1) / rate - time.perf_counter()))
    pressed = time.perf_counter()
    target = str(start_slice + steps)
    page.wait_for_function(f"() => document.getElementById('viewport').dataset.shown && "
                           f"window.__paints.some(p => p[1] === '{target}')", timeout=60_000)
    lag = time.perf_counter() - pressed
    paints = page.evaluate("() => window.__paints")
    span = (paints[-1][0] - paints[0][0]) / 1000 if len(paints) > 1 else 1
    return {"requested_per_s": rate, "painted": len({p[1] for p in paints}), "steps": steps,
            "painted_per_s": round(len(paints) / max(span, 1e-3), 1), "lag_after_last_key_ms": round(lag * 1000)}


def test_webapp_benchmark(native_archive, tmp_path_factory):
    archive = native_archive
    root = tmp_path_factory.mktemp("webbench")
    uid = write_ct(root / "ct", slices=SLICES, size=512, patient_id="BENCH-1", patient_name="BENCH^CT",
                   description="bench CT", pixels=phantom)
    summary = store(archive.conn(archive.clinics["clinicA"]), [root / "ct"])
    assert summary.ok and summary.success == SLICES
    instance_bytes = sum(p.stat().st_size for p in (root / "ct").iterdir())
    user = add_user(archive, root, "benchdoc", "physician", "clinicA")
    base = f"https://{archive.host}:{archive.https_port}"
    study = orthanc_id("BENCH-1", uid)
    figures: dict[str, Any] = {"slices": SLICES, "instance_bytes": instance_bytes}
    figures["server_render_512_ms"] = server_render_ms(next((root / "ct").iterdir()))
    detail = requests.get(f"{base}/securepacs/api/viewer/studies/{study}", auth=user, verify=str(archive.ca_cert),
                          timeout=30)
    frame = detail.json()["series"][0]["frames"][SLICES // 3]
    figures["https_render_512_ms"] = https_render_ms(base, user, frame, str(archive.ca_cert))

    with playwright_api.sync_playwright() as p:
        browser = launch(p)
        page = new_page(browser)
        page.context.add_init_script(PAINT_LOG)
        page.goto(base + "/login")
        page.fill("#username", user[0])
        page.fill("#password", user[1])
        page.click("#submit")
        page.wait_for_url(base + "/list")
        page.fill("#q-patient", "BENCH-1")
        cdp = page.context.new_cdp_session(page)
        cdp.send("Network.enable")
        transferred = {"bytes": 0}
        cdp.on("Network.loadingFinished", lambda e: transferred.__setitem__("bytes", transferred["bytes"]
                                                                             + e["encodedDataLength"]))
        loopback = [click_to_first_image(page, base) for _ in range(4)][1:]
        figures["click_to_first_image_loopback_ms"] = {"runs": loopback, "median": statistics.median(loopback)}

        # Every slice once, top to bottom, at the viewport's size (the rendered images the app asks for).
        page.goto(f"{base}/view/{study}")
        page.wait_for_function("() => document.body.dataset.firstImage")
        page.focus("#viewport")
        page.keyboard.press("Home")
        transferred["bytes"] = 0
        for i in range(1, SLICES):
            page.keyboard.press("ArrowDown")
            page.wait_for_function(f"() => document.getElementById('viewport').dataset.slice === '{i}' && "
                                   "document.getElementById('image').dataset.src === "
                                   "document.getElementById('viewport').dataset.shown")
        page.wait_for_timeout(500)
        figures["read_all_slices_bytes"] = transferred["bytes"]
        figures["bytes_ratio_vs_instances"] = round(transferred["bytes"] / instance_bytes, 4)

        page.context.close()  # a fresh context: an empty browser cache, so the slow link is measured
        page = new_page(browser)
        page.context.add_init_script(PAINT_LOG)
        page.goto(base + "/login")
        page.fill("#username", user[0])
        page.fill("#password", user[1])
        page.click("#submit")
        page.wait_for_url(base + "/list")
        cdp = page.context.new_cdp_session(page)
        cdp.send("Network.enable")
        cdp.send("Network.emulateNetworkConditions", SLOW)
        slow = [click_to_first_image(page, base) for _ in range(3)][1:]
        figures["click_to_first_image_3mbit_150ms_ms"] = {"runs": slow, "median": statistics.median(slow)}
        figures["scroll_10_per_s_3mbit_150ms"] = scroll_at(page, 10, 30)
        browser.close()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "bench.json").write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures, indent=2))
