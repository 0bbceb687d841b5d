"""Audit records that name their studies however the request names its data (issue 12, finding 5): WADO-URI
by objectUID, admin /tools/find and /tools/create-archive|media (body only), C-MOVE and C-GET below STUDY."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_plugin_app import (
    ADMIN_PW,
    PHYSICIAN_PW,
    PROXY_SECRET,
    SPEC,
    FakeRest,
    FakeSystem,
    admit_to_orthanc,
    basic,
    dicom_bytes,
)
from test_plugin_modalities import FakeModalityApi

from securepacs.access import passwords
from securepacs.access.principal import GATEWAY, PHYSICIAN
from securepacs.archive.app import SecurePacsApp
from securepacs.archive.move_scp import MoveRefused
from securepacs.audit import create_checkpoint_key, iter_entries
from securepacs.config.plugin_settings import PluginConfig
from securepacs.dicom.identifiers import orthanc_id
from securepacs.tenancy.ownership import read_ids
from securepacs.web.messages import Request

GATEWAY_PW = "gateway-password-1234"


class ToolsRest(FakeRest):
    """The fake index, plus Orthanc's built-in POST handlers the plugin forwards to."""

    def __init__(self) -> None:
        super().__init__()
        self.posts: list[tuple[str, Any]] = []
        self.answers: dict[str, bytes] = {}

    def post_bytes(self, uri: str, body: bytes) -> bytes:
        self.posts.append((uri, body))
        return self.answers[uri]

    def post_json(self, uri: str, body: Any) -> Any:
        self.posts.append((uri, body))
        return {"FailedInstancesCount": 0}


@pytest.fixture
def rest() -> ToolsRest:
    return ToolsRest()


@pytest.fixture
def app(tmp_path: Path, rest: ToolsRest) -> Iterator[SecurePacsApp]:
    key = tmp_path / "certs" / "audit" / "checkpoint.key"
    create_checkpoint_key(key)
    config = PluginConfig(store_path=tmp_path / "data" / "securepacs.db",
                          audit_trail=tmp_path / "data" / "audit" / "trail.jsonl", audit_checkpoint_key=key,
                          proxy_secret=PROXY_SECRET)
    a = SecurePacsApp(config, rest, FakeModalityApi(), FakeSystem())
    a.store.add_user("alice", passwords.hash_password(ADMIN_PW, n=2**10), "admin")
    a.store.add_user("gw", passwords.hash_password(GATEWAY_PW, n=2**10), GATEWAY)
    a.store.add_clinic("north", ["NORTH_CT", "NORTH_MR"], "192.0.2.10", 11112)
    a.store.add_user("doc", passwords.hash_password(PHYSICIAN_PW, n=2**10), PHYSICIAN, "north")
    yield a
    a.on_stopped()


@pytest.fixture
def north(app: SecurePacsApp, rest: ToolsRest) -> dict[str, str]:
    """SPEC's first instance, stored by north and known to the fake index at every level."""
    sop_uid = admit_to_orthanc(app, rest, "north", "NORTH_CT", SPEC)
    ids = read_ids(dicom_bytes(SPEC))
    rest.json[f"/studies/{ids.orthanc_study}"] = {"MainDicomTags": {"StudyInstanceUID": ids.study_uid},
                                                  "PatientMainDicomTags": {"PatientID": ids.patient_id}}
    series = orthanc_id(ids.patient_id, ids.study_uid, ids.series_uid)  # a real Orthanc ID: exports check the form
    rest.json[f"/instances/{ids.orthanc_instance}"] = {"ParentSeries": series}
    rest.json[f"/series/{series}"] = {"ParentStudy": ids.orthanc_study}
    rest.uids[("series", ids.series_uid)] = series
    return {"sop": sop_uid, "study": ids.orthanc_study, "series": series,
            "instance": ids.orthanc_instance, "study_uid": ids.study_uid, "series_uid": ids.series_uid,
            "patient": ids.patient_id}


def records(app: SecurePacsApp) -> list[dict]:
    assert app.audit.trail is not None
    return [e.body for e in iter_entries(app.audit.trail.path) if not e.is_checkpoint]


def objects(record: dict) -> set[str]:
    return {o["object_id"] for o in record.get("objects", [])}


def post(uri: str, body: object, user: str = "alice", password: str = ADMIN_PW) -> Request:
    return Request(method="POST", uri=uri, groups=(), get={}, body=json.dumps(body).encode(),
                   headers={**basic(user, password), "x-securepacs-client-ip": "198.51.100.9",
                            "x-securepacs-proxy-secret": PROXY_SECRET})


def test_wado_uri_by_object_alone_names_the_study_holding_it(app: SecurePacsApp, north: dict[str, str]) -> None:
    doc = {**basic("doc", PHYSICIAN_PW), "x-securepacs-client-ip": "203.0.113.7",
           "x-securepacs-proxy-secret": PROXY_SECRET}  # through nginx: its client-IP header counts
    assert app.filter_http("/wado", 1, "127.0.0.1", doc, {"requestType": "WADO", "objectUID": north["sop"]})
    record = records(app)[-1]
    assert (record["event"]["code"], objects(record)) == ("110103", {north["study_uid"]})
    assert record["details"]["sop_instance_uid"] == north["sop"]
    assert record["participants"][0]["network_access_point"] == "203.0.113.7"


def test_tools_find_records_the_query_from_the_body_then_answers(app: SecurePacsApp, rest: ToolsRest,
                                                                 north: dict[str, str]) -> None:
    handler = dict(app.routes())["/tools/find"]
    rest.answers["/tools/find"] = json.dumps([north["study"]]).encode()
    body = {"Level": "Study", "Query": {"PatientID": north["patient"]}}
    response = handler(post("/tools/find", body))
    assert response.status == 200 and json.loads(response.body) == [north["study"]]
    assert rest.posts == [("/tools/find", json.dumps(body).encode())]  # the body unchanged
    record = records(app)[-1]
    assert record["event"]["code"] == "110112"
    assert json.loads(base64.b64decode(record["objects"][0]["query"])) == body
    assert record["details"]["patient_id"] == north["patient"] and record["details"]["answers"] == "1"
    assert record["participants"][0]["user_id"] == "alice"
    assert record["participants"][0]["network_access_point"] == "198.51.100.9"


@pytest.mark.parametrize("level", ["study", "series", "instance"])
def test_create_archive_records_the_studies_and_patient_before_orthanc_builds_it(
        app: SecurePacsApp, rest: ToolsRest, north: dict[str, str], level: str) -> None:
    handler = dict(app.routes())["/tools/create-(archive|media|media-extended)"]
    rest.answers["/tools/create-archive"] = b"PK\x03\x04zip"
    response = handler(post("/tools/create-archive", {"Resources": [north[level]]}))
    assert response.status == 200 and response.content_type == "application/zip" and response.body == b"PK\x03\x04zip"
    record = records(app)[-1]
    assert record["event"]["code"] == "110106" and objects(record) == {north["study_uid"], north["patient"]}


def test_an_export_of_unknown_resources_says_which(app: SecurePacsApp, rest: ToolsRest) -> None:
    handler = dict(app.routes())["/tools/create-(archive|media|media-extended)"]
    rest.answers["/tools/create-media"] = b"{}"
    unknown = "0" * 8 + "-00000000" * 4
    assert handler(post("/tools/create-media", {"Resources": [unknown], "Asynchronous": True})).status == 200
    record = records(app)[-1]
    assert record["details"]["unresolved_resources"] == unknown and objects(record) == set()


@pytest.mark.parametrize(("body", "status"), [
    (None, 400), ([1], 400), ({"Resources": []}, 400), ({"Resources": ["../system"]}, 400), ({"Resources": "x"}, 400),
])
def test_a_bad_export_body_is_refused_unrecorded_and_unforwarded(app: SecurePacsApp, rest: ToolsRest, body: object,
                                                                 status: int) -> None:
    handler = dict(app.routes())["/tools/create-(archive|media|media-extended)"]
    before = len(records(app))
    assert handler(post("/tools/create-archive", body)).status == status
    assert rest.posts == [] and len(records(app)) == before


def test_only_admins_reach_the_tools_routes(app: SecurePacsApp, rest: ToolsRest) -> None:
    routes = dict(app.routes())
    assert routes["/tools/find"](post("/tools/find", {"Level": "Study"}, "doc", PHYSICIAN_PW)).status == 403
    get = Request(method="GET", uri="/tools/find", groups=(), get={}, body=b"", headers=basic("alice", ADMIN_PW))
    assert routes["/tools/find"](get).status == 405
    assert rest.posts == []


def test_an_orthanc_error_is_passed_on_as_its_http_status(app: SecurePacsApp, rest: ToolsRest) -> None:
    class UnknownResource(Exception):
        pass

    def refuse(uri: str, body: bytes) -> bytes:
        raise UnknownResource(17, "Unknown resource")

    rest.post_bytes = refuse  # type: ignore[method-assign]
    assert dict(app.routes())["/tools/find"](post("/tools/find", {"Level": "Nope"})).status == 404


@pytest.mark.parametrize(("level", "key"), [("SERIES", "series_uid"), ("IMAGE", "sop")])
def test_a_move_below_study_level_names_the_study_its_patient_and_both_peers(
        app: SecurePacsApp, north: dict[str, str], level: str, key: str) -> None:
    uid_key = {"SERIES": "SeriesInstanceUID", "IMAGE": "SOPInstanceUID"}[level]
    assert app.start_move({"OriginatorAET": "NORTH_MR", "TargetAET": "NORTH_CT", "Level": level,
                           uid_key: north[key]}).run() == 0
    record = records(app)[-1]
    assert (record["event"]["code"], record["action"], record["outcome"]) == ("110104", "R", 0)
    assert objects(record) == {north["study_uid"], north["patient"]}
    _, destination, requestor = record["participants"]
    assert (destination["ae_title"], destination["clinic"], destination["network_access_point"]) == (
        "NORTH_CT", "north", "192.0.2.10")
    assert (requestor["ae_title"], requestor["clinic"], requestor["is_requestor"]) == ("NORTH_MR", "north", True)
    assert record["details"]["via"] == f"C-MOVE by NORTH_MR at {level} level"


def test_a_refused_move_names_only_what_the_request_said(app: SecurePacsApp, north: dict[str, str]) -> None:
    with pytest.raises(MoveRefused):
        app.start_move({"OriginatorAET": "NORTH_CT", "TargetAET": "ELSEWHERE", "Level": "SERIES",
                     "SeriesInstanceUID": north["series_uid"]})
    record = records(app)[-1]
    assert record["event"]["code"] == "110104" and record["outcome"] == 8 and objects(record) == set()


def ownership_request(keys: dict[str, list[str]], calling: str | None) -> Request:
    headers = {**basic("gw", GATEWAY_PW), **({"x-securepacs-calling-aet": calling} if calling else {})}
    body = json.dumps({"clinic": "north", "level": "SERIES", "keys": keys}).encode()
    return Request(method="POST", uri="/securepacs/internal/ownership", groups=(), get={}, body=body, headers=headers)


@pytest.mark.parametrize(("calling", "named"), [("NORTH_MR", "NORTH_MR"), ("SOUTH_CT", "north"), (None, "north")])
def test_a_cget_record_names_the_calling_ae_the_study_and_patient(app: SecurePacsApp, north: dict[str, str],
                                                                 calling: str | None, named: str) -> None:
    handler = dict(app.routes())["/securepacs/internal/ownership"]
    response = handler(ownership_request({"SeriesInstanceUID": [north["series_uid"]]}, calling))
    assert json.loads(response.body)["allowed"] is True
    record = records(app)[-1]
    assert objects(record) == {north["study_uid"], north["patient"]}
    # Only one of the clinic's own AE titles is taken from the gateway's header.
    assert record["participants"][1]["user_id"] == named and record["participants"][1]["clinic"] == "north"
