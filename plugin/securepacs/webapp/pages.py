"""Page shells, static assets, the landing redirect and the web app's route table.

Pages are static files read once at start; they carry no patient data, so their only secrets are the
APIs they call. Every answer carries the same strict headers (``PAGE_HEADERS``).
"""

from __future__ import annotations

import mimetypes
import urllib.parse
from collections.abc import Callable
from typing import Any

from securepacs.access.principal import Principal
from securepacs.web.messages import Request, Response
from securepacs.webapp import urls

Handler = Callable[[Request, Principal | None], Response]

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
       "connect-src 'self'; font-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
# nginx adds Referrer-Policy no-referrer, X-Content-Type-Options nosniff and HSTS to every answer.
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
    "Cache-Control": "no-cache",  # shells change with releases; they hold no PHI
}
ADMIN_HOME = "/app/explorer.html"
_PAGES = {"/login": "login.html", "/list": "list.html", "study": "study.html", "view": "view.html"}


def redirect(location: str) -> Response:
    # 303, not Orthanc's 301: a browser would remember a permanent redirect of "/" across users.
    return Response(303, "", "text/plain", {**PAGE_HEADERS, "Location": location, "Cache-Control": "no-store"})


class Pages:
    def __init__(self) -> None:
        self._files: dict[str, tuple[bytes, str]] = {}
        for name in urls.asset_names():
            kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
            if kind.startswith("text/") or kind in ("application/javascript", "image/svg+xml"):
                kind += "; charset=utf-8"
            self._files[name] = ((urls.STATIC_DIR / name).read_bytes(), kind)

    def _file(self, name: str) -> Response:
        body, kind = self._files[name]
        return Response(200, body, kind, dict(PAGE_HEADERS))

    def asset(self, req: Request, _principal: Principal | None) -> Response:
        name = req.groups[0]
        if name not in self._files or name.endswith(".html"):
            return Response.error(404, f"asset {name!r} does not exist")
        return self._file(name)

    def home(self, _req: Request, principal: Principal | None) -> Response:
        if principal is None:
            return redirect(urls.LOGIN)
        return redirect(ADMIN_HOME if principal.is_admin else urls.LIST)

    def login(self, _req: Request, _principal: Principal | None) -> Response:
        return self._file(_PAGES["/login"])

    def page(self, req: Request, principal: Principal | None) -> Response:
        """A page that needs a session: without one, to the login page, which brings the user back."""
        if principal is None:
            back = urls.safe_next(req.uri)
            return redirect(f"{urls.LOGIN}?{urllib.parse.urlencode({'next': back})}" if back != urls.LIST
                            else urls.LOGIN)
        name = _PAGES.get(req.uri) or _PAGES[req.uri.split("/")[1]]
        return self._file(name)


def routes(pages: Pages, api: Any) -> list[tuple[str, str, Handler]]:
    """(URI regex, access, handler): access "anonymous" (no credentials read), "page" (a handler that
    redirects callers without a session) or "authenticated"."""
    return [
        ("/", "page", pages.home),
        (urls.LOGIN, "anonymous", pages.login),
        (urls.LIST, "page", pages.page),
        (urls.STUDY_PAGES.pattern, "page", pages.page),
        (r"/assets/([a-z0-9.-]{1,48})", "anonymous", pages.asset),
        (urls.VIEWER_STUDY, "authenticated", api.study),
        (urls.VIEWER_METADATA, "authenticated", api.metadata),
        (urls.VIEWER_RENDERED, "authenticated", api.rendered),
    ]
