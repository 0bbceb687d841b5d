"""The stored-instance check: Orthanc must index exactly what the C-STORE filter admitted.

A real Orthanc no longer receives a data set that the two readers could read differently (the filter
refuses repeated and out-of-order identifiers), so the check is proved here: the stored-instance callback
reports an Orthanc ID other than the admitted one, as Orthanc would if it had read other identifiers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _dicom import encode

from securepacs.archive.app import SecurePacsApp
from securepacs.audit import iter_entries
from securepacs.config.plugin_settings import PluginConfig
from securepacs.dicom import status_codes
from securepacs.tenancy.ownership import read_ids
from securepacs.tenancy.stored_check import PendingStores
from securepacs_tools.synth import StudySpec, instance

NORTH = StudySpec(seed="check-north", patient_id="CHK-N", slices=2, rows=8, columns=8)
SOUTH = StudySpec(seed="check-south", patient_id="CHK-S", slices=1, rows=8, columns=8)


class FakeRest:
    def __init__(self) -> None:
        self.deleted: list[str] = []

    def get_json(self, uri: str) -> Any:
        raise LookupError(uri)

    def post_json(self, uri: str, body: Any) -> Any:
        raise AssertionError(f"unexpected POST {uri}")

    def post_bytes(self, uri: str, body: bytes) -> bytes:
        raise AssertionError(f"unexpected POST {uri}")

    def delete(self, uri: str) -> None:
        self.deleted.append(uri)

    def lookup(self, level: str, uid: str) -> str | None:
        return None


class FakeModalities:
    def list(self) -> dict[str, dict[str, Any]]:
        return {}

    def put(self, name: str, body: dict[str, Any]) -> None: ...

    def delete(self, name: str) -> None: ...


@pytest.fixture
def rest() -> FakeRest:
    return FakeRest()


@pytest.fixture
def app(tmp_path: Path, rest: FakeRest) -> Iterator[SecurePacsApp]:
    config = PluginConfig(store_path=tmp_path / "securepacs.db", audit_trail=tmp_path / "audit" / "trail.jsonl")
    a = SecurePacsApp(config, rest, FakeModalities(), lambda: {})
    a.store.add_clinic("north", ["NORTH_CT"])
    a.store.add_clinic("south", ["SOUTH_CT"])
    yield a
    a.audit.trail.close()
    a.store.close()


def trail(app: SecurePacsApp) -> list[dict[str, Any]]:
    return [e.body for e in iter_entries(app.config.audit_trail) if not e.is_checkpoint]


def tags(spec: StudySpec, index: int = 0) -> dict[str, str]:
    ds = instance(spec, index)
    return {k: str(ds.get(k)) for k in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
                                        "SOPClassUID")}


def admitted(app: SecurePacsApp, spec: StudySpec, aet: str, index: int = 0) -> str:
    data = encode(instance(spec, index))
    assert app.on_cstore(data, aet) == status_codes.SUCCESS
    return read_ids(data).orthanc_instance


def test_an_instance_indexed_as_admitted_is_left_alone(app: SecurePacsApp, rest: FakeRest) -> None:
    expected = admitted(app, NORTH, "NORTH_CT")
    app.on_stored(expected, "dicom", "NORTH_CT", lambda: pytest.fail("tags are read only on a mismatch"))
    assert rest.deleted == [] and len(app.stored_check.pending) == 0


def test_an_instance_indexed_otherwise_is_removed_refused_and_reported(app: SecurePacsApp, rest: FakeRest,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="securepacs")
    app.on_cstore(encode(instance(SOUTH, 0)), "SOUTH_CT")  # south owns its study
    admitted(app, NORTH, "NORTH_CT")
    # Orthanc reports an instance of SOUTH's study: it read other identifiers than the filter did.
    indexed = read_ids(encode(instance(SOUTH, 7))).orthanc_instance
    before = len(trail(app))
    app.on_stored(indexed, "dicom", "NORTH_CT", lambda: tags(SOUTH, 7))
    assert rest.deleted == [f"/instances/{indexed}"]
    alert, record = trail(app)[before:]
    assert alert["event"]["code"] == "110113"
    assert alert["outcome_description"].startswith("indexed-identifiers-mismatch")
    assert alert["details"]["clinic"] == "north" and alert["details"]["indexed_orthanc_id"] == indexed
    assert [o["object_id"] for o in alert["objects"]] == [SOUTH.study_uid]
    assert record["event"]["code"] == "110104" and record["outcome"] == 8
    assert record["details"] == {"sop_instance_uid": str(instance(SOUTH, 7).SOPInstanceUID), "status": "0x0124"}
    assert "indexed an instance otherwise than admitted" in caplog.text
    assert SOUTH.study_uid not in caplog.text and SOUTH.patient_id not in caplog.text


def test_the_expected_id_is_bound_to_the_calling_ae(app: SecurePacsApp, rest: FakeRest) -> None:
    expected = admitted(app, NORTH, "NORTH_CT")
    app.on_stored(expected, "dicom", "SOUTH_CT", lambda: tags(NORTH))
    assert rest.deleted == [f"/instances/{expected}"]


def test_instances_that_never_passed_the_filter_are_not_touched(app: SecurePacsApp, rest: FakeRest) -> None:
    # STOW-RS (plugin), an admin's REST upload, Lua, WebDAV: not C-STOREs, so not this check's to judge.
    for origin in ("rest", "plugin", "lua", "webdav", "unknown"):
        app.on_stored("0000-unknown", origin, "", lambda: pytest.fail("not read"))
    assert rest.deleted == []


def test_two_admissions_of_one_instance_cover_two_stores(app: SecurePacsApp, rest: FakeRest) -> None:
    first = admitted(app, NORTH, "NORTH_CT")
    assert admitted(app, NORTH, "NORTH_CT") == first  # a resend on a second association, concurrently
    app.on_stored(first, "dicom", "NORTH_CT", dict)
    app.on_stored(first, "dicom", "NORTH_CT", dict)
    assert rest.deleted == []


def test_pending_stores_are_bounded_oldest_first() -> None:
    pending = PendingStores(limit=2)
    for n in range(3):
        pending.expect(f"id-{n}", "AE")
    assert len(pending) == 2
    assert not pending.take("id-0", "AE")
    assert pending.take("id-1", "AE") and pending.take("id-2", "AE")
    assert not pending.take("id-2", "AE")
