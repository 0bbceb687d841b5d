"""The viewer's data: one study's header and series (slices in order), an instance's metadata, and
rendered frames. The policy has already checked that the study is the caller's (``urls.TENANT_READS``);
handlers only read Orthanc and answer.

Opening a study (its JSON, fetched once by the study page and once by the viewer) writes one DICOM
Instances Accessed record; frames and metadata are not audited one by one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from securepacs.access.principal import Principal
from securepacs.web.messages import Request, Response
from securepacs.web.orthanc_api import OrthancRest
from securepacs.webapp.render import Renderer, RenderError

log = logging.getLogger(__name__)

JSON_HEADERS = {"Cache-Control": "no-store"}
# Rendered images are PHI: the browser may keep them for the session's scrolling, shared caches never.
IMAGE_HEADERS = {"Cache-Control": "private, max-age=3600", "Vary": "Cookie"}
STUDY_TAGS = ("StudyDate", "StudyTime", "StudyDescription", "AccessionNumber", "StudyInstanceUID",
              "ReferringPhysicianName")
PATIENT_TAGS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex")
METADATA_TAGS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyDescription",
    "AccessionNumber", "SeriesDescription", "SeriesNumber", "Modality", "InstanceNumber", "Manufacturer",
    "ManufacturerModelName", "InstitutionName", "BodyPartExamined", "SliceThickness", "PixelSpacing",
    "ImagePositionPatient", "ImageOrientationPatient", "Rows", "Columns", "BitsStored", "PixelRepresentation",
    "PhotometricInterpretation", "RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth",
    "NumberOfFrames", "KVP", "ContrastBolusAgent", "ConvolutionKernel",
)


# (principal, client ip, Orthanc study id, study uid) -> None: writes the study-open audit record
StudyOpened = Callable[[Principal, str, str, str], None]


def _json(value: Any) -> Response:
    return Response(200, json.dumps(value), "application/json", dict(JSON_HEADERS))


class ViewerApi:
    def __init__(self, rest: OrthancRest, renderer: Renderer, on_study_opened: StudyOpened):
        self._rest = rest
        self._renderer = renderer
        self._opened = on_study_opened

    def _series(self, series_id: str) -> dict[str, Any]:
        info = self._rest.get_json(f"/series/{series_id}")
        tags = info.get("MainDicomTags", {})
        # Orthanc orders slices along the normal (or by instance number) and lists each frame.
        ordered = self._rest.get_json(f"/series/{series_id}/ordered-slices")
        frames = [[instance, start + k] for instance, start, count in ordered.get("SlicesShort", [])
                  for k in range(count)]
        answer: dict[str, Any] = {
            "id": series_id, "number": tags.get("SeriesNumber", ""), "modality": tags.get("Modality", ""),
            "description": tags.get("SeriesDescription", ""), "instances": len(info.get("Instances", [])),
            "frames": frames, "window": None, "color": False, "derived": False,
        }
        if frames:
            try:
                frame = self._renderer.frame(frames[0][0], frames[0][1])
                answer["window"] = {"center": frame.default.center, "width": frame.default.width}
                answer["color"] = frame.color
                answer["lossy_source"] = frame.lossy_source
            except RenderError as exc:
                answer["error"] = str(exc)
        return answer

    def study(self, req: Request, principal: Principal | None) -> Response:
        assert principal is not None
        if req.method != "GET":
            return Response(405, headers={"Allow": "GET"})
        study_id = req.groups[0]
        info = self._rest.get_json(f"/studies/{study_id}")
        tags, patient = info.get("MainDicomTags", {}), info.get("PatientMainDicomTags", {})
        series = [self._series(s) for s in info.get("Series", [])]
        series.sort(key=lambda s: (int(s["number"]) if str(s["number"]).isdigit() else 10**9, s["id"]))
        self._opened(principal, req.client_ip, study_id, tags.get("StudyInstanceUID", ""))
        return _json({
            "id": study_id,
            "study": {k: tags.get(k, "") for k in STUDY_TAGS},
            "patient": {k: patient.get(k, "") for k in PATIENT_TAGS},
            "series": series,
            "instances": sum(s["instances"] for s in series),
        })

    def metadata(self, req: Request, principal: Principal | None) -> Response:
        assert principal is not None
        tags = self._rest.get_json(f"/instances/{req.groups[0]}/simplified-tags")
        return _json([{"name": k, "value": tags[k] if isinstance(tags[k], str) else json.dumps(tags[k])}
                      for k in METADATA_TAGS if k in tags])

    def rendered(self, req: Request, principal: Principal | None) -> Response:
        assert principal is not None
        if req.method != "GET":
            return Response(405, headers={"Allow": "GET"})
        try:
            out = self._renderer.render(req.groups[0], int(req.groups[1]), dict(req.get))
        except RenderError as exc:
            return Response.error(exc.status, str(exc))
        headers = {**IMAGE_HEADERS, "X-Lossy": "1" if out.lossy else "0"}
        if out.window is not None:
            headers["X-Window"] = f"{out.window.center:g},{out.window.width:g}"
        return Response(200, out.body, out.content_type, headers)
