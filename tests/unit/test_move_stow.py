"""C-MOVE planning and STOW-RS attribution, against a fake Orthanc."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _dicom import element, encode, insert_before

from securepacs.access.principal import ADMIN, CLINIC_DEVICE, Principal
from securepacs.archive.move_scp import MoveOperation, MovePlan, MoveRefused, MoveService
from securepacs.audit.recorder import Auditor
from securepacs.dicom import status_codes
from securepacs.dicom.identifiers import orthanc_id
from securepacs.store.database import Store
from securepacs.tenancy.ownership import Tenancy, read_ids
from securepacs.tenancy.stow import StowService
from securepacs.web.messages import Request
from securepacs_tools.synth import StudySpec, instance

NORTH = StudySpec(seed="n", patient_id="12345", slices=2, rows=8, columns=8)
SOUTH = StudySpec(seed="s", patient_id="12345", slices=2, rows=8, columns=8)
N_STUDY, S_STUDY = orthanc_id("12345", NORTH.study_uid), orthanc_id("12345", SOUTH.study_uid)


class FakeOrthanc:
    def __init__(self) -> None:
        self.posts: list[tuple[str, Any]] = []
        self.uploaded: list[bytes] = []
        self.deleted: list[str] = []
        # What /instances answers: by default the ID of the identifiers in the upload, as Orthanc does.
        self.answer: dict[str, Any] | None = None

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
        assert uri == "/instances"
        self.uploaded.append(body)
        answer = self.answer or {"ID": read_ids(body).orthanc_instance, "Status": "Success"}
        return json.dumps(answer).encode()

    def delete(self, uri: str) -> None:
        self.deleted.append(uri)


class FakeTrail:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def append(self, record: Any) -> None:
        self.records.append(json.loads(record.to_json()))


@pytest.fixture
def trail() -> FakeTrail:
    return FakeTrail()


@pytest.fixture
def events() -> list[tuple[str, dict[str, Any]]]:
    return []


@pytest.fixture
def world(tmp_path: Path, trail: FakeTrail,
          events: list) -> Iterator[tuple[Store, FakeOrthanc, MoveService, StowService]]:
    store = Store(tmp_path / "s.db")
    store.add_clinic("north", ["NORTH_CT", "NORTH_WS"], move_host="10.0.0.5", move_port=11112)
    store.add_clinic("south", ["SOUTH_CT"])
    fake = FakeOrthanc()
    record = lambda kind, details: events.append((kind, dict(details)))  # noqa: E731
    tenancy = Tenancy(store, fake, on_security_event=record)
    tenancy.admit(encode(instance(NORTH, 0)), "north", "n")
    tenancy.admit(encode(instance(SOUTH, 0)), "south", "s")
    stow = StowService(tenancy, fake, Auditor(trail, "SECUREPACS"), on_security_event=record)
    yield store, fake, MoveService(store, tenancy, fake), stow
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
    assert failed["00081197"]["Value"] == [status_codes.REFUSED_NOT_AUTHORIZED]
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


# -- per-instance audit and the post-store check ---------------------------------------------------------
DEVICE = Principal("north-dev", CLINIC_DEVICE, "north")


def store_records(trail: FakeTrail) -> list[dict[str, Any]]:
    return [r for r in trail.records if r["event"]["code"] == "110104"]


def test_stow_writes_one_audit_record_per_instance_with_its_outcome(world, trail) -> None:
    _, _, _, stow = world
    new = StudySpec(seed="audited", patient_id="778", slices=2, rows=8, columns=8)
    parts = [encode(instance(new, 0)), encode(instance(SOUTH, 1)), b"not dicom", encode(instance(new, 1))]
    req = stow_request(*multipart(*parts))
    req = Request(req.method, req.uri, req.groups, req.headers, req.get, req.body, client_ip="192.0.2.7")
    assert stow.handle(req, DEVICE).status == 202
    records = store_records(trail)
    assert [r["details"]["status"] for r in records] == ["0x0000", "0x0124", "0xC000", "0x0000"]
    assert [r["details"]["sop_instance_uid"] for r in records] == [
        instance(new, 0).SOPInstanceUID, instance(SOUTH, 1).SOPInstanceUID, "", instance(new, 1).SOPInstanceUID]
    first = records[0]
    assert first["outcome"] == 0 and first["action"] == "C"
    assert {o["object_id"] for o in first["objects"]} == {new.study_uid, "778"}
    uploader = next(p for p in first["participants"] if p["user_id"] == "north-dev")
    assert uploader["clinic"] == "north" and uploader["network_access_point"] == "192.0.2.7"
    assert records[1]["outcome"] == 8 and "another clinic" in records[1]["outcome_description"]


def test_stow_removes_and_refuses_an_instance_orthanc_indexed_otherwise(world, trail, events) -> None:
    """Defence in depth: should Orthanc ever read a part differently from tenancy (its ID names other
    identifiers), the instance is deleted again, the part fails, and a security event is recorded."""
    _, fake, _, stow = world
    new = StudySpec(seed="misread", patient_id="779", slices=1, rows=8, columns=8)
    elsewhere = orthanc_id("12345", SOUTH.study_uid, SOUTH.series_uid, "2.25.1")
    fake.answer = {"ID": elsewhere, "ParentStudy": S_STUDY, "Status": "Success"}
    resp = stow.handle(stow_request(*multipart(encode(instance(new, 0)))), DEVICE)
    assert resp.status == 409
    [failed] = json.loads(resp.body)["00081198"]["Value"]
    assert failed["00081155"]["Value"] == [instance(new, 0).SOPInstanceUID]
    assert failed["00081197"]["Value"] == [status_codes.REFUSED_NOT_AUTHORIZED]
    assert fake.deleted == [f"/instances/{elsewhere}"]
    [(_kind, details)] = [e for e in events if e[0] == "indexed-identifiers-mismatch"]
    assert details["clinic"] == "north" and details["indexed_orthanc_id"] == elsewhere
    assert [r["details"]["status"] for r in store_records(trail)] == ["0x0000", "0x0124"]


def test_stow_never_deletes_an_instance_that_was_already_there(world, events) -> None:
    # "AlreadyStored" under another ID names an existing instance (maybe another clinic's): refuse, keep it.
    _, fake, _, stow = world
    new = StudySpec(seed="already", patient_id="780", slices=1, rows=8, columns=8)
    fake.answer = {"ID": orthanc_id("12345", SOUTH.study_uid, SOUTH.series_uid, "2.25.2"), "Status": "AlreadyStored"}
    assert stow.handle(stow_request(*multipart(encode(instance(new, 0)))), DEVICE).status == 409
    assert fake.deleted == []
    assert any(kind == "indexed-identifiers-mismatch" for kind, _ in events)


def test_stow_of_a_resend_is_fine(world) -> None:
    _, fake, _, stow = world
    new = StudySpec(seed="resend", patient_id="781", slices=1, rows=8, columns=8)
    part = encode(instance(new, 0))
    assert stow.handle(stow_request(*multipart(part)), DEVICE).status == 200
    fake.answer = {"ID": read_ids(part).orthanc_instance, "Status": "AlreadyStored"}
    assert stow.handle(stow_request(*multipart(part)), DEVICE).status == 200
    assert fake.deleted == []


def test_stow_refuses_a_part_whose_identifiers_are_repeated(world, trail, events) -> None:
    # SOUTH's Study UID first, a fresh one second: Orthanc would keep the first, so nothing is uploaded.
    _, fake, _, stow = world
    new = StudySpec(seed="smuggled", patient_id="12345", slices=1, rows=8, columns=8)
    part = insert_before(encode(instance(new, 0)), 0x0020000D, element(0x0020000D, "UI", SOUTH.study_uid))
    resp = stow.handle(stow_request(*multipart(part)), DEVICE)
    assert resp.status == 409 and not fake.uploaded
    [failed] = json.loads(resp.body)["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [status_codes.STORE_ERROR_CANNOT_UNDERSTAND]
    [(_kind, details)] = [e for e in events if e[0] == "ambiguous-identifiers"]
    assert details["clinic"] == "north" and details["study_uid"] == SOUTH.study_uid  # the copy Orthanc keeps
    [record] = store_records(trail)
    assert record["details"]["status"] == "0xC000" and "repeated" in record["outcome_description"]


@pytest.mark.parametrize(("failed", "answers"), [(0, [True, True, True]), (1, [True, True, False]),
                                                 (None, [False, False, False]), (5, [False, False, False])])
def test_a_move_operation_sends_once_and_answers_each_sub_operation(failed: int | None, answers: list[bool]) -> None:
    plan = MovePlan("north", "sp-north-1", "Study", ("study-id",))
    transfers: list[int] = []
    operation = MoveOperation(plan, lambda: 3, lambda: transfers.append(1) or failed)  # type: ignore[func-returns-value]
    assert operation.count == 3
    assert [operation.next() for _ in range(3)] == answers
    assert transfers == [1]  # everything in the first sub-operation's association


def test_a_moves_sub_operations_are_its_instances(world) -> None:
    _, fake, moves, _ = world
    counts = {f"/studies/{N_STUDY}/statistics": {"CountInstances": 7}}
    fake.get_json = lambda uri: counts[uri]  # type: ignore[method-assign]
    assert moves.instance_count(moves.plan(req(StudyInstanceUID=NORTH.study_uid))) == 7
    assert moves.instance_count(MovePlan("north", "sp-north-1", "Instance", ("a", "b"))) == 2


@pytest.mark.parametrize("principal", [DEVICE, Principal("root", ADMIN, None)], ids=["clinic", "admin"])
def test_stow_refuses_a_part_nested_too_deeply_before_anything_parses_it(world, trail, events, principal) -> None:
    from securepacs_tools import nested_samples

    _, fake, _, stow = world
    new = StudySpec(seed="nest", patient_id="779", slices=1, rows=8, columns=8)
    deep = nested_samples.nested_file(200_000, study_uid=new.study_uid, series_uid=new.study_uid + ".1",
                               sop_uid=new.study_uid + ".1.1", patient_id="779")
    resp = stow.handle(stow_request(*multipart(deep, encode(instance(new, 0)))), principal)
    assert resp.status == 202
    failed = json.loads(resp.body)["00081198"]["Value"]
    assert [f["00081197"]["Value"] for f in failed] == [[status_codes.STORE_ERROR_CANNOT_UNDERSTAND]]
    assert len(fake.uploaded) == 1 and fake.uploaded[0] != deep
    assert [kind for kind, _ in events if kind == "dataset-nesting-refused"] == ["dataset-nesting-refused"]
    refused = [r for r in store_records(trail) if "deeper than 32 levels" in json.dumps(r)]
    assert len(refused) == 1
