"""C-MOVE planning and STOW-RS attribution, against a fake Orthanc."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _dicom import encode

from securepacs import dicom_status
from securepacs.identity import ADMIN, CLINIC_DEVICE, Principal
from securepacs.move import MoveRefused, MoveService
from securepacs.store import Store
from securepacs.stow import StowService
from securepacs.synth import StudySpec, instance
from securepacs.tenancy import Tenancy, orthanc_id
from securepacs.web import Request

NORTH = StudySpec(seed="n", patient_id="12345", slices=2, rows=8, columns=8)
SOUTH = StudySpec(seed="s", patient_id="12345", slices=2, rows=8, columns=8)
N_STUDY, S_STUDY = orthanc_id("12345", NORTH.study_uid), orthanc_id("12345", SOUTH.study_uid)


class FakeOrthanc:
    def __init__(self) -> None:
        self.posts: list[tuple[str, Any]] = []
        self.uploaded: list[bytes] = []

    def lookup(self, level: str, uid: str) -> str | None:
        return {NORTH.study_uid: N_STUDY, SOUTH.study_uid: S_STUDY}.get(uid) if level == "study" else None

    def get_json(self, uri: str) -> Any:
        raise LookupError(uri)

    def post_json(self, uri: str, body: Any) -> Any:
        self.posts.append((uri, body))
        if uri == "/tools/find":
            return [N_STUDY, S_STUDY]  # Orthanc merges the two clinics' patient "12345"
        return {}

    def post_bytes(self, uri: str, body: bytes) -> bytes:
        self.uploaded.append(body)
        return b"{}"


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Store, FakeOrthanc, MoveService, StowService]]:
    store = Store(tmp_path / "s.db")
    store.add_clinic("north", ["NORTH_CT", "NORTH_WS"], move_host="10.0.0.5", move_port=11112)
    store.add_clinic("south", ["SOUTH_CT"])
    fake = FakeOrthanc()
    tenancy = Tenancy(store, fake)
    tenancy.admit(encode(instance(NORTH, 0)), "north", "n")
    tenancy.admit(encode(instance(SOUTH, 0)), "south", "s")
    yield store, fake, MoveService(store, tenancy, fake), StowService(tenancy, fake)
    store.close()


def req(**kw: str) -> dict[str, str]:
    return {"OriginatorAET": "NORTH_CT", "TargetAET": "NORTH_WS", "Level": "STUDY", **kw}


def test_move_of_own_study_to_own_destination(world) -> None:
    _, fake, moves, _ = world
    moves.move(req(StudyInstanceUID=NORTH.study_uid))
    uri, body = fake.posts[-1]
    assert uri == "/modalities/sp-north-1/store"
    assert body["Resources"] == [N_STUDY] and body["Synchronous"] is True


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (req(StudyInstanceUID=SOUTH.study_uid), "not the clinic's"),
        (req(StudyInstanceUID=f"{NORTH.study_uid}\\{SOUTH.study_uid}"), "not the clinic's"),
        (req(StudyInstanceUID="1.2.3.4"), "not the clinic's"),
        (req(TargetAET="SOUTH_CT", StudyInstanceUID=NORTH.study_uid), "not registered to clinic"),
        (req(OriginatorAET="INTRUDER", StudyInstanceUID=NORTH.study_uid), "not an enrolled clinic"),
        (req(Level="STUDY"), "without StudyInstanceUID"),
        (req(Level="FRAME", StudyInstanceUID=NORTH.study_uid), "unknown C-MOVE level"),
    ],
)
def test_move_refusals(world, request_: dict, message: str) -> None:
    _, fake, moves, _ = world
    with pytest.raises(MoveRefused, match=message):
        moves.move(request_)
    assert not [p for p in fake.posts if p[0].startswith("/modalities")]


def test_patient_level_move_takes_only_the_callers_studies(world) -> None:
    _, fake, moves, _ = world
    moves.move(req(Level="PATIENT", PatientID="12345"))
    assert fake.posts[-1][1]["Resources"] == [N_STUDY]


def test_clinic_without_move_address_is_told_to_use_get(world) -> None:
    _, _, moves, _ = world
    with pytest.raises(MoveRefused, match="no C-MOVE address"):
        moves.move({"OriginatorAET": "SOUTH_CT", "TargetAET": "SOUTH_CT", "Level": "STUDY",
                    "StudyInstanceUID": SOUTH.study_uid})


def multipart(*parts: bytes, boundary: str = "b0undary") -> tuple[str, bytes]:
    body = b""
    for part in parts:
        body += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return f'multipart/related; type="application/dicom"; boundary={boundary}', body


def stow_request(content_type: str, body: bytes) -> Request:
    return Request("POST", "/securepacs/dicom-web/studies", ("studies",), {"content-type": content_type}, {}, body)


def test_stow_attributes_to_the_uploaders_clinic_and_refuses_foreign_studies(world) -> None:
    store, fake, _, stow = world
    device = Principal("north-dev", CLINIC_DEVICE, "north")
    new = StudySpec(seed="new", patient_id="777", slices=1, rows=8, columns=8)
    spoof = instance(SOUTH, 1)
    resp = stow.handle(stow_request(*multipart(encode(instance(new, 0)), encode(spoof))), device)
    assert resp.status == 202
    body = json.loads(resp.body)
    assert body["00081199"]["Value"][0]["00081155"]["Value"] == [instance(new, 0).SOPInstanceUID]
    failed = body["00081198"]["Value"][0]
    assert failed["00081155"]["Value"] == [spoof.SOPInstanceUID]
    assert failed["00081197"]["Value"] == [dicom_status.REFUSED_NOT_AUTHORIZED]
    assert len(fake.uploaded) == 1
    owner = store.study_owner(new.study_uid)
    assert owner is not None and owner.clinic == "north" and owner.source == "stow:north-dev"


def test_stow_all_refused_is_409(world) -> None:
    _, fake, _, stow = world
    resp = stow.handle(stow_request(*multipart(encode(instance(SOUTH, 1)))), Principal("d", CLINIC_DEVICE, "north"))
    assert resp.status == 409 and not fake.uploaded


@pytest.mark.parametrize(
    ("content_type", "status"),
    [("application/dicom", 415), ("multipart/related; type=application/dicom", 400)],
)
def test_stow_bad_content_type(world, content_type: str, status: int) -> None:
    _, _, _, stow = world
    resp = stow.handle(stow_request(content_type, b"x"), Principal("d", CLINIC_DEVICE, "north"))
    assert resp.status == status and content_type in json.loads(resp.body)["error"]


def test_admin_stow_is_unattributed(world) -> None:
    store, fake, _, stow = world
    new = StudySpec(seed="adm", patient_id="1", slices=1, rows=8, columns=8)
    resp = stow.handle(stow_request(*multipart(encode(instance(new, 0)))), Principal("root", ADMIN, None))
    assert resp.status == 200 and len(fake.uploaded) == 1
    assert store.study_owner(new.study_uid) is None
