"""Ownership of studies by clinics: admission of writes and the reach of reads, without Orthanc."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _dicom import encode

from securepacs.access.principal import ADMIN, AUDITOR, PHYSICIAN, Principal
from securepacs.dicom import status_codes
from securepacs.dicom.identifiers import orthanc_id
from securepacs.store.database import Store
from securepacs.tenancy.ownership import Tenancy, read_ids
from securepacs_tools.synth import StudySpec, instance, uid


class FakeIndex:
    """Orthanc's index as tenancy sees it: SOP UID lookups and parent links."""

    def __init__(self) -> None:
        self.instances: dict[str, str] = {}  # SOP UID -> orthanc instance id
        self.parents: dict[str, dict[str, Any]] = {}  # uri -> json
        self.lookups = 0

    def lookup(self, level: str, uid_: str) -> str | None:
        self.lookups += 1
        return self.instances.get(uid_) if level == "instance" else None

    def get_json(self, uri: str) -> Any:
        if uri not in self.parents:
            raise LookupError(uri)
        return self.parents[uri]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "securepacs.db")
    s.add_clinic("north", ["NORTH_CT"])
    s.add_clinic("south", ["SOUTH_CT"])
    yield s
    s.close()


@pytest.fixture
def events() -> list[tuple[str, dict]]:
    return []


@pytest.fixture
def tenancy(store: Store, events: list) -> Tenancy:
    return Tenancy(store, FakeIndex(), on_security_event=lambda kind, details: events.append((kind, details)))


NORTH = StudySpec(seed="north-1", patient_id="12345", patient_name="NORTH^ALICE", slices=3, rows=8, columns=8)
SOUTH = StudySpec(seed="south-1", patient_id="12345", patient_name="SOUTH^BOB", slices=3, rows=8, columns=8)


def test_orthanc_id_is_a_dashed_sha1() -> None:
    value = orthanc_id("12345", "1.2.3")
    assert len(value) == 44 and value.count("-") == 4
    assert value == orthanc_id("12345", "1.2.3") != orthanc_id("12346", "1.2.3")


def test_read_ids_needs_the_uids() -> None:
    ds = instance(NORTH, 0)
    assert read_ids(encode(ds)).study_uid == NORTH.study_uid
    del ds.SeriesInstanceUID
    with pytest.raises(ValueError, match="SeriesInstanceUID"):
        read_ids(encode(ds))


def test_first_clinic_owns_the_study_and_may_add_to_it(tenancy: Tenancy, store: Store) -> None:
    for i in range(3):
        assert tenancy.admit(encode(instance(NORTH, i)), "north", "dicom:NORTH_CT").admitted
    owner = store.study_owner(NORTH.study_uid)
    assert owner is not None and owner.clinic == "north"
    assert owner.orthanc_id == orthanc_id("12345", NORTH.study_uid)
    assert owner.source == "dicom:NORTH_CT"


def test_store_into_another_clinics_study_is_refused_and_reported(tenancy: Tenancy, events: list) -> None:
    assert tenancy.admit(encode(instance(NORTH, 0)), "north", "dicom:NORTH_CT").admitted
    spoof = instance(SOUTH, 0)
    spoof.StudyInstanceUID = NORTH.study_uid
    spoof.PatientID = "12345"
    result = tenancy.admit(encode(spoof), "south", "dicom:SOUTH_CT")
    assert result.status == status_codes.REFUSED_NOT_AUTHORIZED
    assert "another clinic" in result.reason
    assert events and events[-1][0] == "cross-tenant-write" and events[-1][1]["clinic"] == "south"


def test_same_patient_id_in_two_clinics_is_two_tenants(tenancy: Tenancy, store: Store) -> None:
    assert tenancy.admit(encode(instance(NORTH, 0)), "north", "n").admitted
    assert tenancy.admit(encode(instance(SOUTH, 0)), "south", "s").admitted
    assert store.clinic_orthanc_studies("north") == {orthanc_id("12345", NORTH.study_uid)}
    assert store.clinic_orthanc_studies("south") == {orthanc_id("12345", SOUTH.study_uid)}


def test_reused_study_uid_with_another_patient_id_is_refused(tenancy: Tenancy) -> None:
    assert tenancy.admit(encode(instance(NORTH, 0)), "north", "n").admitted
    other = instance(NORTH, 1)
    other.PatientID = "99999"
    assert tenancy.admit(encode(other), "north", "n").status == status_codes.REFUSED_NOT_AUTHORIZED


def test_series_uid_of_another_study_is_refused(tenancy: Tenancy) -> None:
    assert tenancy.admit(encode(instance(NORTH, 0)), "north", "n").admitted
    shadow = instance(SOUTH, 0)
    shadow.SeriesInstanceUID = NORTH.series_uid  # south's own study, north's series UID
    result = tenancy.admit(encode(shadow), "south", "s")
    assert result.status == status_codes.REFUSED_NOT_AUTHORIZED and "Series" in result.reason


def test_sop_uid_existing_elsewhere_is_refused_but_a_resend_is_fine(store: Store) -> None:
    index = FakeIndex()
    tenancy = Tenancy(store, index)
    first = instance(NORTH, 0)
    assert tenancy.admit(encode(first), "north", "n").admitted
    index.instances[first.SOPInstanceUID] = orthanc_id("12345", NORTH.study_uid, NORTH.series_uid,
                                                       first.SOPInstanceUID)
    assert tenancy.admit(encode(first), "north", "n").admitted  # same instance again: Orthanc dedups
    copy = instance(SOUTH, 0)
    copy.SOPInstanceUID = first.SOPInstanceUID
    assert tenancy.admit(encode(copy), "south", "s").status == status_codes.REFUSED_NOT_AUTHORIZED


def test_not_dicom_cannot_be_understood(tenancy: Tenancy) -> None:
    assert tenancy.admit(b"GET / HTTP/1.1\r\n\r\n", "north", "n").status == status_codes.STORE_ERROR_CANNOT_UNDERSTAND


def test_ownership_is_cached_after_the_first_instance(tenancy: Tenancy, store: Store, monkeypatch) -> None:
    assert tenancy.admit(encode(instance(NORTH, 0)), "north", "n").admitted
    calls = []
    monkeypatch.setattr(store, "claim_study", lambda *a: calls.append(a))
    monkeypatch.setattr(store, "claim_series", lambda *a: calls.append(a))
    assert tenancy.admit(encode(instance(NORTH, 1)), "north", "n").admitted
    assert calls == []


def test_scope_and_ownership_checks(tenancy: Tenancy, store: Store) -> None:
    tenancy.admit(encode(instance(NORTH, 0)), "north", "n")
    north_study = orthanc_id("12345", NORTH.study_uid)
    doctor = Principal("dr", PHYSICIAN, "north")
    rival = Principal("dr2", PHYSICIAN, "south")
    admin = Principal("root", ADMIN, None)
    assert tenancy.scope(doctor) == {north_study}
    assert tenancy.scope(rival) == frozenset()
    assert tenancy.scope(admin) is None
    assert tenancy.scope(Principal("aud", AUDITOR, None)) == frozenset()
    assert tenancy.owns_orthanc_study(doctor, north_study) and not tenancy.owns_orthanc_study(rival, north_study)
    assert tenancy.owns_uid(doctor, "study", NORTH.study_uid)
    assert not tenancy.owns_uid(rival, "study", NORTH.study_uid)
    assert tenancy.owns_uid(doctor, "series", NORTH.series_uid)
    assert not tenancy.owns_uid(rival, "series", NORTH.series_uid)
    assert not tenancy.owns_uid(doctor, "study", uid("unknown"))


def test_resource_parents_resolve_to_the_owning_study(store: Store) -> None:
    index = FakeIndex()
    tenancy = Tenancy(store, index)
    tenancy.admit(encode(instance(NORTH, 0)), "north", "n")
    study = orthanc_id("12345", NORTH.study_uid)
    index.parents["/series/s1"] = {"ParentStudy": study}
    index.parents["/instances/i1"] = {"ParentSeries": "s1"}
    doctor = Principal("dr", PHYSICIAN, "north")
    assert tenancy.owns_resource(doctor, "instance", "i1")
    assert not tenancy.owns_resource(Principal("x", PHYSICIAN, "south"), "instance", "i1")
    assert not tenancy.owns_resource(doctor, "instance", "missing")
    assert not tenancy.owns_resource(doctor, "series", "missing")
