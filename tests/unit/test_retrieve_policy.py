"""The plugin-side C-GET decision: every UID must lie in one of the clinic's studies; PATIENT level never."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _dicom import encode

from securepacs.access.principal import ADMIN, Principal
from securepacs.dicom.identifiers import orthanc_id
from securepacs.store.database import Store
from securepacs.tenancy.ownership import Tenancy
from securepacs.tenancy.retrieve_policy import MAX_UIDS, clinic_principal, decide, parse_request
from securepacs_tools.synth import StudySpec, instance, uid

NORTH = StudySpec(seed="rp-north", patient_id="12345", slices=2, rows=8, columns=8)
SOUTH = StudySpec(seed="rp-south", patient_id="12345", slices=2, rows=8, columns=8)


class Index:
    """Orthanc's index for instance lookups: SOP UID -> instance -> series -> study."""

    def __init__(self) -> None:
        self.instances: dict[str, str] = {}
        self.json: dict[str, dict[str, Any]] = {}

    def lookup(self, level: str, uid_: str) -> str | None:
        return self.instances.get(uid_) if level == "instance" else None

    def get_json(self, uri: str) -> Any:
        if uri not in self.json:
            raise LookupError(uri)
        return self.json[uri]


@pytest.fixture
def tenancy(tmp_path: Path) -> Iterator[Tenancy]:
    store = Store(tmp_path / "securepacs.db")
    store.add_clinic("north", ["NORTH_CT"])
    store.add_clinic("south", ["SOUTH_CT"])
    index = Index()
    tenancy = Tenancy(store, index)
    for spec, clinic in ((NORTH, "north"), (SOUTH, "south")):
        study = orthanc_id(spec.patient_id, spec.study_uid)
        series = orthanc_id(spec.patient_id, spec.study_uid, spec.series_uid)
        index.json[f"/series/{series}"] = {"ParentStudy": study}
        for i in range(spec.slices):
            ds = instance(spec, i)
            assert tenancy.admit(encode(ds), clinic, f"dicom:{clinic.upper()}_CT").admitted
            oid = orthanc_id(spec.patient_id, spec.study_uid, spec.series_uid, ds.SOPInstanceUID)
            index.instances[ds.SOPInstanceUID] = oid
            index.json[f"/instances/{oid}"] = {"ParentSeries": series}
    yield tenancy
    store.close()


NORTH_CT = clinic_principal("north")


def sop(spec: StudySpec, i: int = 0) -> str:
    return str(instance(spec, i).SOPInstanceUID)


def test_own_uids_are_allowed_at_every_level(tenancy: Tenancy) -> None:
    assert decide(tenancy, NORTH_CT, "STUDY", {"StudyInstanceUID": [NORTH.study_uid]})[0]
    assert decide(tenancy, NORTH_CT, "SERIES", {"StudyInstanceUID": [NORTH.study_uid],
                                                "SeriesInstanceUID": [NORTH.series_uid]})[0]
    allowed, reason = decide(tenancy, NORTH_CT, "IMAGE", {"SOPInstanceUID": [sop(NORTH, 0), sop(NORTH, 1)]})
    assert allowed and reason == "all 2 UID(s) belong to the clinic"


@pytest.mark.parametrize(("level", "keys"), [
    ("STUDY", {"StudyInstanceUID": [SOUTH.study_uid]}),
    ("SERIES", {"SeriesInstanceUID": [SOUTH.series_uid]}),
    ("SERIES", {"StudyInstanceUID": [NORTH.study_uid], "SeriesInstanceUID": [SOUTH.series_uid]}),
    ("IMAGE", {"SOPInstanceUID": [sop(SOUTH)]}),
    ("IMAGE", {"SeriesInstanceUID": [NORTH.series_uid], "SOPInstanceUID": [sop(NORTH), sop(SOUTH)]}),
    ("STUDY", {"StudyInstanceUID": [NORTH.study_uid, uid("unknown")]}),  # unknown looks like foreign
])
def test_any_foreign_or_unknown_uid_refuses(tenancy: Tenancy, level: str, keys: dict) -> None:
    allowed, reason = decide(tenancy, NORTH_CT, level, keys)
    assert not allowed
    assert all(u not in reason for values in keys.values() for u in values)
    assert "south" not in reason  # nothing about the other tenant


def test_patient_level_is_refused_even_for_the_clinics_own_patient(tenancy: Tenancy) -> None:
    allowed, reason = decide(tenancy, NORTH_CT, "PATIENT", {"PatientID": ["12345"]})
    assert not allowed and "STUDY level" in reason


@pytest.mark.parametrize(("level", "keys"), [
    ("STUDY", {}),
    ("STUDY", {"SeriesInstanceUID": [NORTH.series_uid]}),
    ("SERIES", {"StudyInstanceUID": [NORTH.study_uid]}),
    ("IMAGE", {"StudyInstanceUID": [NORTH.study_uid]}),
    ("STUDY", {"StudyInstanceUID": ["1.2.*"]}),
    ("WORKLIST", {"StudyInstanceUID": [NORTH.study_uid]}),
])
def test_requests_without_a_checkable_level_key_are_refused(tenancy: Tenancy, level: str, keys: dict) -> None:
    assert not decide(tenancy, NORTH_CT, level, keys)[0]


def test_a_principal_without_clinic_reaches_nothing_and_an_admin_everything(tenancy: Tenancy) -> None:
    keys = {"StudyInstanceUID": [SOUTH.study_uid]}
    assert not decide(tenancy, Principal("x", "clinic-device", None), "STUDY", keys)[0]
    assert decide(tenancy, Principal("root", ADMIN, None), "STUDY", keys)[0]


def test_parse_request_accepts_the_gateway_contract() -> None:
    body = {"clinic": "north", "level": "SERIES",
            "keys": {"StudyInstanceUID": ["1.2.3"], "SeriesInstanceUID": ["1.2.3.4", "1.2.3.5"]}}
    req = parse_request(body)
    assert (req.clinic, req.level, req.keys) == ("north", "SERIES", body["keys"])


@pytest.mark.parametrize("body", [
    [],
    {"clinic": "north", "level": "STUDY"},
    {"clinic": "../etc", "level": "STUDY", "keys": {"StudyInstanceUID": ["1.2"]}},
    {"clinic": "north\n", "level": "STUDY", "keys": {"StudyInstanceUID": ["1.2"]}},
    {"clinic": "north", "level": "study", "keys": {"StudyInstanceUID": ["1.2"]}},
    {"clinic": "north", "level": "STUDY", "keys": {"AccessionNumber": ["A1"]}},
    {"clinic": "north", "level": "STUDY", "keys": {"StudyInstanceUID": "1.2"}},
    {"clinic": "north", "level": "STUDY", "keys": {"StudyInstanceUID": []}},
    {"clinic": "north", "level": "STUDY", "keys": {"StudyInstanceUID": [""]}},
    {"clinic": "north", "level": "STUDY", "keys": {"StudyInstanceUID": [1]}},
    {"clinic": "north", "level": "IMAGE", "keys": {"SOPInstanceUID": ["1.2"] * (MAX_UIDS + 1)}},
])
def test_parse_request_rejects_anything_else(body: Any) -> None:
    with pytest.raises(ValueError):
        parse_request(body)
