"""The physicians' web app in a real browser (Debian's Chromium, headless, driven by Playwright) against
the real archive: login with the deep-link return, the study list's search, the server-rendered viewer
(scroll, presets, window drag, zoom, compared numerically with the window math), logout, phone size with
touch, the cross-tenant 403 with its audit record, one audit record per study open, no CSP violation,
and axe-core's accessibility check. Screenshots go to results/artifacts/webapp/.
"""

from __future__ import annotations

import base64
import io
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from _webapp_env import (
    CSP_WATCH,
    DESKTOP,
    PHONE,
    add_user,
    audit_records,
    hounsfield,
    launch,
    multiframe_values,
    screenshot,
    write_ct,
    write_multiframe,
)
from PIL import Image

from securepacs.access import totp
from securepacs.client import store
from securepacs.dicom.identifiers import orthanc_id
from securepacs.webapp import windowing

pytestmark = pytest.mark.integration
playwright_api = pytest.importorskip("playwright.sync_api")

SLICES, SIZE = 48, 512
SERIOUS = {"serious", "critical"}
CSP_VIOLATIONS: dict[Any, list[Any]] = {}  # page -> violations reported in its context
PROBLEMS: dict[Any, list[str]] = {}


@dataclass
class World:
    archive: Any
    base: str
    study_a: str  # Orthanc study ID of clinic A's CT
    study_a_uid: str
    study_b: str
    doctor_a: tuple[str, str]
    doctor_b: tuple[str, str]
    pid_a: str


@pytest.fixture(scope="module")
def world(archive, tmp_path_factory) -> World:
    root = tmp_path_factory.mktemp("webapp")
    if "clinicB" not in archive.clinics:
        archive.enrol("clinicB", "CLINICB")
    pid_a, pid_b = "WEB-A-1", "WEB-B-1"
    uid_a = write_ct(root / "a", slices=SLICES, size=SIZE, patient_id=pid_a, patient_name="WEBVIEW^ALICE",
                     description="CT chest")
    uid_b = write_ct(root / "b", slices=3, size=64, patient_id=pid_b, patient_name="WEBVIEW^BOB",
                     description="CT head")
    for clinic, folder, count in (("clinicA", root / "a", SLICES), ("clinicB", root / "b", 3)):
        summary = store(archive.conn(archive.clinics[clinic]), [folder])
        assert summary.ok and summary.success == count, summary.report()
    doctor_a = add_user(archive, root, "webdoc-a", "physician", "clinicA")
    doctor_b = add_user(archive, root, "webdoc-b", "physician", "clinicB")
    return World(archive, f"https://{archive.host}:{archive.https_port}", orthanc_id(pid_a, uid_a), uid_a,
                 orthanc_id(pid_b, uid_b), doctor_a, doctor_b, pid_a)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as p:
        chromium = launch(p)
        yield chromium
        chromium.close()


def new_page(browser: Any, *, phone: bool = False) -> Any:
    # The archive's certificate is signed by the test run's own CA, which Chromium does not know.
    options: dict[str, Any] = {"ignore_https_errors": True, "viewport": PHONE if phone else DESKTOP}
    if phone:
        options.update(has_touch=True, is_mobile=True, device_scale_factor=2)
    context = browser.new_context(**options)
    violations: list[Any] = []
    context.expose_function("__securepacsCsp", lambda v: violations.append(v))
    context.add_init_script(CSP_WATCH)
    page = context.new_page()
    CSP_VIOLATIONS[page] = violations
    problems: list[str] = []  # for the failure message of a wait that times out
    PROBLEMS[page] = problems
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("response", lambda r: problems.append(f"HTTP {r.status} {r.url[-80:]}") if r.status >= 400 else None)
    page.set_default_timeout(15_000)
    page.goto = _retrying_network_changes(page.goto)
    return page


def _retrying_network_changes(goto: Any) -> Any:
    """page.goto, tried again when Chromium aborts it with ERR_NETWORK_CHANGED: other tests (and a compose
    stack starting) add and remove network interfaces on this host, which Chromium reports that way."""
    def _goto(url: str, **kwargs: Any) -> Any:
        for attempt in range(3):
            try:
                return goto(url, **kwargs)
            except playwright_api.Error as exc:
                if "ERR_NETWORK_CHANGED" not in str(exc) or attempt == 2:
                    raise
        raise AssertionError("unreachable")
    return _goto


def assert_no_csp_violation(page: Any) -> None:
    """No violation on any page this page's context has shown so far."""
    assert page.evaluate("window.__cspViolations") == [], page.url
    assert CSP_VIOLATIONS[page] == []


def login(page: Any, world: World, user: tuple[str, str], start: str = "/") -> None:
    page.goto(world.base + start)
    page.wait_for_url(re.compile(r"/login"))
    page.fill("#username", user[0])
    page.fill("#password", user[1])
    page.click("#submit")


def wait_shown(page: Any, previous: str | None = None) -> str:
    """The src of the image now painted for the slice asked for (waits until it differs from ``previous``;
    a neighbour painted on the way while scrolling does not count)."""
    try:
        page.wait_for_function(
            "prev => { const d = document.getElementById('viewport').dataset; "
            "return d.shown && d.shown !== prev && d.painted === d.slice; }",
            arg=previous)
    except playwright_api.TimeoutError:
        state = page.evaluate("() => [document.getElementById('ov-slice')?.textContent, "
                              "JSON.stringify(document.getElementById('viewport')?.dataset)]")
        raise AssertionError(f"no new image painted after {previous!r}: {state}; {PROBLEMS[page][-10:]}") from None
    return page.eval_on_selector("#viewport", "v => v.dataset.shown")


def lossless(page: Any, world: World, src: str) -> np.ndarray:
    """The server's lossless render of the slice and window shown, at the stored size."""
    url = re.sub(r"size=\d+", "size=4096", src).replace("format=jpeg", "format=png")
    response = page.request.get(world.base + url)
    assert response.status == 200 and response.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(response.body())))


def expected(page: Any, world: World, src: str) -> np.ndarray:
    """What the window math says the shown slice looks like (the slice found by its Instance Number: the
    viewer shows them in Orthanc's spatial order)."""
    data = page.eval_on_selector("#viewport", "v => ({...v.dataset})")
    instance = re.search(r"/instances/([0-9a-f-]+)/", src)[1]
    tags = page.request.get(f"{world.base}/securepacs/api/viewer/instances/{instance}/metadata").json()
    number = int(next(t["value"] for t in tags if t["name"] == "InstanceNumber"))
    return windowing.window(hounsfield(SIZE, SIZE, number - 1), float(data["wc"]), float(data["ww"]))


def check_pixels(page: Any, world: World, src: str) -> None:
    got = lossless(page, world, src).astype(int)
    want = expected(page, world, src).astype(int)
    assert got.shape == want.shape and np.abs(got - want).max() <= 1


def axe_serious(page: Any) -> list[str]:
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page)
    return [f"{v['id']}: {v['help']}" for v in results.response["violations"] if v.get("impact") in SERIOUS]


def test_login_redirect_deep_link_viewer_and_logout_desktop(world, browser):
    page = new_page(browser)
    # Without a session a deep link goes to the login page and comes back after it.
    page.goto(f"{world.base}/view/{world.study_a}")
    page.wait_for_url(re.compile(r"/login\?next=%2Fview%2F"))
    assert world.pid_a not in page.url and "WEBVIEW" not in page.title()
    assert axe_serious(page) == []
    screenshot(page, "desktop-login")
    page.fill("#username", world.doctor_a[0])
    page.fill("#password", world.doctor_a[1])
    page.click("#submit")
    page.wait_for_url(f"{world.base}/view/{world.study_a}")
    first = wait_shown(page)
    assert page.text_content("#ov-patient").startswith("WEBVIEW ALICE")
    assert page.title() == "SecurePACS – viewer"  # titles get logged (history, tabs): never patient data
    assert "lossy preview" in page.text_content("#ov-window")
    check_pixels(page, world, first)  # the instance's own window (40/400)

    # Scroll: arrow key, wheel, slider — the slice shown changes.
    page.focus("#viewport")
    slice0 = int(page.eval_on_selector("#viewport", "v => v.dataset.slice"))
    page.keyboard.press("ArrowDown")
    second = wait_shown(page, first)
    assert int(page.eval_on_selector("#viewport", "v => v.dataset.slice")) == slice0 + 1
    page.mouse.move(640, 400)
    page.mouse.wheel(0, 120)
    third = wait_shown(page, second)
    assert int(page.eval_on_selector("#viewport", "v => v.dataset.slice")) == slice0 + 2
    page.fill("#slice", "5")
    page.dispatch_event("#slice", "input")
    fourth = wait_shown(page, third)
    assert int(page.eval_on_selector("#viewport", "v => v.dataset.slice")) == 4

    # Preset: the rendered pixels are the bone window's.
    page.select_option("#preset", "bone")
    bone = wait_shown(page, fourth)
    assert "wc=400&ww=1800" in bone
    check_pixels(page, world, bone)

    # Window drag: right and down widen the window and raise the level; pixels follow the math.
    box = page.locator("#viewport").bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 60, y + 40, steps=5)
    page.mouse.up()
    dragged = wait_shown(page, bone)
    data = page.eval_on_selector("#viewport", "v => ({...v.dataset})")
    assert float(data["ww"]) > 1800 and float(data["wc"]) > 400
    check_pixels(page, world, dragged)
    before_zoom = page.locator("#image").bounding_box()["width"]
    page.click("#zoom-in")
    assert page.eval_on_selector("#viewport", "v => v.dataset.zoom") == "1.25"
    assert page.locator("#image").bounding_box()["width"] == pytest.approx(before_zoom * 1.25, rel=0.02)
    page.keyboard.press("?")
    assert page.is_visible("#help")
    page.keyboard.press("Escape")
    page.click("#show-meta")
    page.wait_for_selector("#meta-list dt")
    assert "Modality" in page.text_content("#meta-list")
    page.click("#meta-close")
    assert axe_serious(page) == []
    assert_no_csp_violation(page)
    screenshot(page, "desktop-viewer")

    # One Instances Accessed record for this study open, however many frames were read.
    opened = [r for r in audit_records(world.archive, "--user", world.doctor_a[0], "--event", "110103")
              if any(o["object_id"] == world.study_a_uid for o in r["objects"])]
    assert len(opened) == 1, opened

    with page.expect_response(re.compile(r"/securepacs/logout$")) as logout:
        page.click("#logout")
    assert logout.value.status == 200 and '"cache"' in logout.value.all_headers()["clear-site-data"]
    page.wait_for_url(re.compile(r"/login\?reason=logout"))
    assert page.request.get(world.base + "/securepacs/api/me").status == 403
    page.context.close()


def test_study_list_search_and_study_page(world, browser):
    page = new_page(browser)
    login(page, world, world.doctor_a)
    page.wait_for_url(f"{world.base}/list")
    page.wait_for_selector("#studies tbody tr")
    page.fill("#q-name", "webview")
    page.select_option("#q-modality", "CT")
    page.click("form.search button[type=submit]")
    page.wait_for_function("() => document.getElementById('status').textContent === '1 studies'")
    row = page.text_content("#studies tbody tr")
    assert "WEBVIEW ALICE" in row and f"1 / {SLICES}" in row and "BOB" not in row
    page.fill("#q-name", "")
    page.fill("#q-patient", "no-such-patient")
    page.click("form.search button[type=submit]")
    page.wait_for_function("() => document.getElementById('status').textContent === 'No studies match.'")
    assert axe_serious(page) == []
    screenshot(page, "desktop-list")
    page.goto(f"{world.base}/study/{world.study_a}")
    page.wait_for_selector(".series-grid img")
    page.wait_for_function("() => document.querySelector('.series-grid img').complete")
    assert page.eval_on_selector(".series-grid img", "i => i.naturalWidth") == 160
    assert axe_serious(page) == []
    screenshot(page, "desktop-study")
    page.click(".series-grid a")
    page.wait_for_url(re.compile(rf"/view/{world.study_a}#series=0"))
    wait_shown(page)
    assert_no_csp_violation(page)
    page.context.close()


def basic(user: tuple[str, str]) -> str:
    return "Basic " + base64.b64encode(f"{user[0]}:{user[1]}".encode()).decode()


def touch(cdp: Any, kind: str, points: list[tuple[float, float]]) -> None:
    cdp.send("Input.dispatchTouchEvent", {
        "type": kind, "touchPoints": [{"x": x, "y": y, "id": i} for i, (x, y) in enumerate(points)]})


def test_phone_touch_swipe_pinch_and_preset(world, browser):
    page = new_page(browser, phone=True)
    login(page, world, world.doctor_a, start=f"/view/{world.study_a}")
    page.wait_for_url(f"{world.base}/view/{world.study_a}")
    first = wait_shown(page)
    assert page.get_attribute("#tool-scroll", "aria-pressed") == "true"  # coarse pointer: swipe scrolls
    box = page.locator("#viewport").bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    slice0 = int(page.eval_on_selector("#viewport", "v => v.dataset.slice"))
    cdp = page.context.new_cdp_session(page)  # one session: a touch sequence lives in it
    touch(cdp, "touchStart", [(x, y)])
    for step in range(1, 6):
        touch(cdp, "touchMove", [(x, y - step * 20)])
    touch(cdp, "touchEnd", [])
    swiped = wait_shown(page, first)
    assert int(page.eval_on_selector("#viewport", "v => v.dataset.slice")) > slice0
    touch(cdp, "touchStart", [(x - 40, y), (x + 40, y)])
    for step in range(1, 6):
        touch(cdp, "touchMove", [(x - 40 - step * 12, y), (x + 40 + step * 12, y)])
    touch(cdp, "touchEnd", [])
    assert float(page.eval_on_selector("#viewport", "v => v.dataset.zoom")) > 1.5
    page.select_option("#preset", "lung")
    lung = wait_shown(page, swiped)
    assert "wc=-600&ww=1500" in lung
    check_pixels(page, world, lung)
    assert axe_serious(page) == []
    assert_no_csp_violation(page)
    screenshot(page, "phone-viewer")
    page.goto(world.base + "/list")
    page.wait_for_selector("#studies tbody tr")
    assert axe_serious(page) == []
    screenshot(page, "phone-list")
    assert_no_csp_violation(page)
    page.context.close()


def test_other_clinic_gets_403_and_an_audit_record(world, browser):
    page = new_page(browser)
    login(page, world, world.doctor_b)
    page.wait_for_url(f"{world.base}/list")
    assert page.request.get(f"{world.base}/view/{world.study_a}").status == 403
    assert page.request.get(f"{world.base}/securepacs/api/viewer/studies/{world.study_a}").status == 403
    page.goto(f"{world.base}/view/{world.study_b}")
    wait_shown(page)  # their own study opens
    refused = [r for r in audit_records(world.archive, "--user", world.doctor_b[0], "--event", "110113")
               if any(o["object_id"] == f"/view/{world.study_a}" for o in r["objects"])]
    assert len(refused) == 1, refused
    assert_no_csp_violation(page)
    page.context.close()


def test_totp_user_logs_in_with_a_code(world, browser, tmp_path):
    user = add_user(world.archive, tmp_path, "webdoc-totp", "physician", "clinicA")
    auth = {"Authorization": basic(user), "Content-Type": "application/json"}
    page = new_page(browser)
    enrol = page.request.post(f"{world.base}/securepacs/api/me/totp", headers=auth,
                              data=json.dumps({"password": user[1]}))
    assert enrol.status == 200, enrol.text()
    secret = enrol.json()["secret"]
    confirm = page.request.post(f"{world.base}/securepacs/api/me/totp/confirm", headers=auth,
                                data=json.dumps({"code": totp.code_at(secret, time.time())}))
    assert confirm.status == 200, confirm.text()
    login(page, world, user)
    page.wait_for_selector("#totp-field:not([hidden])")
    assert "6-digit code" in page.text_content("#message")
    page.fill("#totp", "000000" if totp.code_at(secret, time.time()) != "000000" else "111111")
    page.click("#submit")
    page.wait_for_function("() => document.getElementById('message').className === 'error'")
    assert page.url.startswith(world.base + "/login")
    page.fill("#totp", totp.code_at(secret, time.time() + totp.STEP_SECONDS))
    page.click("#submit")
    page.wait_for_url(f"{world.base}/list")
    assert_no_csp_violation(page)
    page.context.close()


def test_wrong_password_shows_the_refusal(world, browser):
    page = new_page(browser)
    login(page, world, (world.doctor_b[0], "not-the-password"))
    page.wait_for_function("() => document.getElementById('message').className === 'error'")
    # One message for every cause (wrong password, lockout, disabled): no account enumeration.
    assert "locked" in page.text_content("#message") and page.url.startswith(world.base + "/login")
    page.goto(world.base + "/login?reason=idle")
    assert "15 minutes" in page.text_content("#message")
    assert_no_csp_violation(page)
    page.context.close()


def test_no_patient_data_in_the_archive_log(world):
    # Run after the browser tests above: every URI they used carried opaque IDs only.
    log = world.archive.log_text()
    assert "/view/" in log  # the access log is there and names the pages
    for secret in ("WEBVIEW", world.pid_a, world.study_a_uid, "WEB-B-1"):
        assert secret not in log, secret


def test_multiframe_monochrome1_instance(world, browser, tmp_path):
    folder = tmp_path / "mf"
    folder.mkdir()
    uid = write_multiframe(folder / "mf.dcm", frames=5, size=64, patient_id="WEB-MF-1", patient_name="WEBMF^ONE")
    summary = store(world.archive.conn(world.archive.clinics["clinicA"]), [folder])
    assert summary.ok and summary.success == 1, summary.report()
    page = new_page(browser)
    login(page, world, world.doctor_a, start=f"/view/{orthanc_id('WEB-MF-1', uid)}")
    page.wait_for_url(re.compile(r"/view/"))
    first = wait_shown(page)
    assert page.get_attribute("#slice", "max") == "5"
    page.focus("#viewport")
    page.keyboard.press("End")
    end = wait_shown(page, first)
    assert re.search(r"/frames/4/rendered", end)
    page.select_option("#preset", "auto")  # this frame's own window (the series default is frame 0's)
    last = wait_shown(page, end)
    data = page.eval_on_selector("#viewport", "v => ({...v.dataset})")
    want = windowing.window(multiframe_values(64, 4).astype(np.float32), float(data["wc"]), float(data["ww"]),
                            invert=True)
    got = lossless(page, world, last)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
    assert got[0, 0] > got[0, -1]  # MONOCHROME1: higher values darker
    assert_no_csp_violation(page)
    page.context.close()


def test_pages_carry_strict_headers(world, browser):
    page = new_page(browser)
    for path in ("/login", "/assets/view.js"):
        response = page.request.get(world.base + path)
        assert response.status == 200
        csp = response.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe" not in csp
        assert response.headers["referrer-policy"] == "no-referrer"
    # Shells are pages, not assets; anything not listed is refused by the filter before Orthanc.
    assert page.request.get(world.base + "/assets/view.html").status == 403
    assert page.request.get(world.base + "/assets/../system").status in (403, 404)
    home = page.request.get(world.base + "/", max_redirects=0)
    assert home.status == 303 and home.headers["location"] == "/login"
    assert home.headers["cache-control"] == "no-store"
    explorer = page.request.get(world.base + "/", max_redirects=0,
                                headers={"Authorization": basic(world.archive.admin_credential())})
    assert explorer.status == 303 and explorer.headers["location"] == "/app/explorer.html"
    doctor = page.request.get(world.base + "/", max_redirects=0, headers={"Authorization": basic(world.doctor_a)})
    assert doctor.status == 303 and doctor.headers["location"] == "/list"
    image = page.request.get(f"{world.base}/securepacs/api/viewer/studies/{world.study_a}",
                             headers={"Authorization": basic(world.doctor_a)})
    assert image.status == 200 and image.headers["cache-control"] == "no-store"
    frame = image.json()["series"][0]["frames"][0]
    rendered = page.request.get(f"{world.base}/securepacs/api/viewer/instances/{frame[0]}/frames/{frame[1]}"
                                "/rendered?size=256", headers={"Authorization": basic(world.doctor_a)})
    assert rendered.status == 200 and rendered.headers["content-type"] == "image/jpeg"
    assert rendered.headers["cache-control"].startswith("private")
    page.context.close()
