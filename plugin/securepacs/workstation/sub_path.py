"""Moving OHIF's build from ``/`` to its own sub-path, with no inline script left in its page.

The npm build assumes the site root four ways: ``index.html`` links every asset absolutely
(``/app.bundle.*.js``, ``/app-config.js``, ``/assets/...``), two inline scripts set
``window.PUBLIC_URL = "/"``, each webpack bundle hard-codes its public path
(``__webpack_require__.p = "/"``) for the chunks and workers it loads later, and the style sheets load
their fonts from ``url(/...)``. All four are rewritten
here, and each rewrite must find what it expects: a release that builds differently fails the install
loudly instead of loading half its chunks from our own root.
"""

from __future__ import annotations

import json
import re

BOOT_SCRIPT = "securepacs-boot.js"
# What OHIF's inline scripts did, as a file our Content-Security-Policy can allow as 'self'.
_BOOT_TEMPLATE = """\
// Written by the SecurePACS install step: what OHIF's inline scripts did, without inline script.
window.PUBLIC_URL = {base};
function browserImportFunction(moduleId) {{ return import(moduleId); }}
"""
_INLINE_SCRIPT = re.compile(r"<script>(?P<body>.*?)</script>", re.S)
_SERVICE_WORKER = re.compile(r'<script[^>]*src="/init-service-worker\.js"[^>]*></script>')
_MANIFEST = re.compile(r'<link rel="manifest"[^>]*>')
_ROOT_LINK = re.compile(r'\b(href|src|content)="/(?!/)')
_PUBLIC_PATH = re.compile(r'__webpack_require__\.p = "/";')
_CSS_ROOT_URL = re.compile(r"url\(/(?!/)")


class RewriteError(Exception):
    """The build is not shaped the way this rewrite expects; the message names the file and the pattern."""


def check_base(base: str) -> str:
    if not re.fullmatch(r"/[a-z0-9-]+/", base):
        raise RewriteError(f"sub-path {base!r} is invalid: expected one lower-case segment such as '/ohif/'")
    return base


def boot_script(base: str) -> str:
    return _BOOT_TEMPLATE.format(base=json.dumps(check_base(base)))


def rewrite_index(html: str, base: str) -> str:
    """``index.html`` served from ``base``: links under it, the boot script instead of inline scripts.

    The service-worker registration is dropped (it would cache PHI-bearing responses in the browser and
    it loads Workbox from a CDN), and so is the web-app manifest (it names ``/`` as the start URL).
    """
    base = check_base(base)
    inline = _INLINE_SCRIPT.findall(html)
    if not inline or not all("PUBLIC_URL" in body for body in inline):
        raise RewriteError("index.html: expected OHIF's inline scripts setting window.PUBLIC_URL, found "
                           f"{len(inline)} inline script(s)")
    html, workers = _SERVICE_WORKER.subn("", html)
    if workers != 1:
        raise RewriteError(f"index.html: expected one init-service-worker.js script, found {workers}")
    html = _MANIFEST.sub("", html)
    html = _ROOT_LINK.sub(lambda m: f'{m.group(1)}="{base}', html)
    first = True

    def replace(_match: re.Match[str]) -> str:
        nonlocal first
        tag = f'<script src="{base}{BOOT_SCRIPT}"></script>' if first else ""
        first = False
        return tag

    html = _INLINE_SCRIPT.sub(replace, html)
    if "<script>" in html:
        raise RewriteError("index.html: an inline script is left after the rewrite")
    return html


def rewrite_bundle(source: str, base: str) -> tuple[str, int]:
    """A webpack bundle loading its chunks from ``base``; returns the text and how many paths changed."""
    base = check_base(base)
    return _PUBLIC_PATH.subn(f"__webpack_require__.p = {json.dumps(base)};", source)


def rewrite_stylesheet(source: str, base: str) -> tuple[str, int]:
    """A style sheet whose root-relative ``url(/...)`` references point under ``base``."""
    base = check_base(base)
    return _CSS_ROOT_URL.subn(f"url({base}", source)
