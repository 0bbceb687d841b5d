"""The web app's idle logoff in the browser: a warning before the session's idle limit, "Stay logged in"
keeps it, and without activity the page goes to the login page (the server has ended the session).

A second archive with an idle limit of a few seconds (the default is 15 minutes).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from _webapp_env import add_user, launch
from conftest import make_archive
from test_webapp_browser import new_page

pytestmark = pytest.mark.integration
playwright_api = pytest.importorskip("playwright.sync_api")
IDLE_SECONDS = 6


@pytest.fixture(scope="module")
def short_idle_archive() -> Iterator[Any]:
    arc = make_archive("securepacs-webidle-")
    arc.env["SECUREPACS_SESSION_IDLE_SECONDS"] = str(IDLE_SECONDS)
    arc.start()
    try:
        yield arc
    finally:
        rc = arc.stop()
        shutil.rmtree(arc.root, ignore_errors=True)
        assert rc == 0, "the short-idle archive did not stop cleanly"


def test_idle_warning_then_logoff(short_idle_archive, tmp_path):
    arc = short_idle_archive
    arc.enrol("clinicA", "CLINICA")
    user = add_user(arc, tmp_path, "idledoc", "physician", "clinicA")
    base = f"https://{arc.host}:{arc.https_port}"
    with playwright_api.sync_playwright() as p:
        browser = launch(p)
        page = new_page(browser)
        page.goto(base + "/login")
        page.fill("#username", user[0])
        page.fill("#password", user[1])
        page.click("#submit")
        page.wait_for_url(base + "/list")
        page.wait_for_selector("#idle-warning:not([hidden])", timeout=IDLE_SECONDS * 1000)
        assert "logged off in" in page.text_content("#idle-warning")
        page.click("#stay")
        page.wait_for_selector("#idle-warning", state="hidden")
        page.wait_for_url(re.compile(r"/login\?reason=idle"), timeout=IDLE_SECONDS * 3000)
        assert page.request.get(base + "/securepacs/api/me").status == 403
        assert page.evaluate("window.__cspViolations") == []
        browser.close()
