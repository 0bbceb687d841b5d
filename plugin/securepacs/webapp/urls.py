"""The web app's URL space, as data: imported by the HTTP filter and the policy (imports nothing itself).

Opaque Orthanc IDs only; exact paths, no prefix matching (``/assets/../system`` matches nothing here).
"""

from __future__ import annotations

import re
from pathlib import Path

_ID = r"[0-9a-f]{8}(?:-[0-9a-f]{8}){4}"  # = tenancy.ORTHANC_ID_PATTERN (tenancy imports pydicom; this may not)

STATIC_DIR = Path(__file__).with_name("static")
ASSET_PREFIX = "/assets/"
LOGIN = "/login"
LIST = "/list"
# Page shells without patient data: anyone may fetch them; the data they show comes over the APIs below.
SHELLS = re.compile(r"/|/login|/list")
# Pages naming one study: a caller with a session must own it (the policy checks); one without a session
# is sent to the login page, which brings them back (deep links survive the SameSite=Strict cookie).
STUDY_PAGES = re.compile(rf"/(?:study|view)/({_ID})")
# Pages whose handler sends a caller without a session to the login page (the filter lets them through).
LOGIN_REDIRECTS = re.compile(rf"/|/list|/(?:study|view)/{_ID}")
# Tenant-checked data: (level, pattern); group 1 is the Orthanc ID whose study must be the caller's.
VIEWER_STUDY = rf"/securepacs/api/viewer/studies/({_ID})"
VIEWER_METADATA = rf"/securepacs/api/viewer/instances/({_ID})/metadata"
VIEWER_RENDERED = rf"/securepacs/api/viewer/instances/({_ID})/frames/(\d{{1,5}})/rendered"
TENANT_READS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("study", STUDY_PAGES),
    ("study", re.compile(VIEWER_STUDY)),
    ("instance", re.compile(VIEWER_METADATA)),
    ("instance", re.compile(VIEWER_RENDERED)),
)
_ASSET_NAME = re.compile(r"[a-z0-9-]{1,40}\.(?:css|js|svg|png|html)")


def asset_names() -> list[str]:
    """The files under ``static/`` that are served (HTML shells included: they are served as pages)."""
    return sorted(p.name for p in STATIC_DIR.iterdir() if p.is_file() and _ASSET_NAME.fullmatch(p.name))


def anonymous() -> frozenset[tuple[str, str]]:
    """(method, exact URI) the filter lets through without credentials: the login page and the assets."""
    return frozenset({("GET", LOGIN), *(("GET", ASSET_PREFIX + name) for name in asset_names()
                                        if not name.endswith(".html"))})


def safe_next(path: str | None) -> str:
    """Where the login page may send the user back to: one of our pages, never another origin."""
    if path and (path == LIST or STUDY_PAGES.fullmatch(path)):
        return path
    return LIST
