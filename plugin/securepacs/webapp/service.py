"""Wiring: builds the web app's pages, viewer API and renderer and lists its routes for ``app.routes()``."""

from __future__ import annotations

from securepacs.access.principal import Principal
from securepacs.audit import events
from securepacs.audit.recorder import Auditor
from securepacs.web.orthanc_api import OrthancRest
from securepacs.webapp.pages import Handler, Pages, routes
from securepacs.webapp.render import Renderer
from securepacs.webapp.viewer_api import ViewerApi


class WebApp:
    def __init__(self, rest: OrthancRest, audit: Auditor):
        self._audit = audit
        self.renderer = Renderer(rest)
        self.api = ViewerApi(rest, self.renderer, self._study_opened)
        self.pages = Pages()

    def _study_opened(self, principal: Principal, client_ip: str, study_id: str, study_uid: str) -> None:
        # One record per study open (PS3.15 A.5.3.4 DICOM Instances Accessed); the frames that follow are
        # part of this access and are not recorded one by one.
        self._audit.write(events.instances_accessed(
            self._audit.source, self._audit.http_user(principal, client_ip),
            [events.study(study_uid or f"orthanc:{study_id}")], None, action="R",
            details={"via": "web viewer", "orthanc_study": study_id}))

    def routes(self) -> list[tuple[str, str, Handler]]:
        return routes(self.pages, self.api)
