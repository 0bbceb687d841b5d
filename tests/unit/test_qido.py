"""QIDO-RS search on the query engine: parameters, defaults, paging, DICOM JSON (fake Orthanc REST API)."""

from __future__ import annotations

from typing import Any

import pytest
from pydicom.dataset import Dataset
from test_dicom_query import FakeOrthanc, clinic_a, instance_values, study_id

from securepacs.tenancy.find_engine import QueryEngine
from securepacs.tenancy.qido import QidoError, SearchRequest, search


@pytest.fixture
def orthanc() -> FakeOrthanc:
    fake = FakeOrthanc()
    for study, date in (("10", "20240102"), ("11", "20230505"), ("12", "20240102")):
        for series in (1, 2):
            for number in (2, 1, 10):
                fake.store(instance_values("12345", "JONES^ALICE", study, series, number, StudyDate=date,
                                           Modality="MR" if series == 2 else "CT"),
                           extra={"Rows": "512"})
    fake.store(instance_values("12345", "SMITH^BOB", "20", 1, 1))
    return fake


def clinic_a_all(fake: FakeOrthanc) -> frozenset[str]:
    return clinic_a(fake) | {study_id(fake, "12")}


def run(fake: FakeOrthanc, level: str, params: dict[str, Any], scope: frozenset[str] | None = None,
        **kw: Any) -> list[dict[str, Any]]:
    return search(QueryEngine(fake), level, params, scope, **kw)


def values(results: list[dict[str, Any]], tag: str) -> list[Any]:
    return [(r.get(tag, {}).get("Value") or [None])[0] for r in results]


# -- parameters -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("params", "message"), [
    ({"PatientNme": "X"}, "'PatientNme'"),
    ({"limit": "ten"}, "limit='ten'"),
    ({"limit": "0"}, "limit='0'"),
    ({"offset": "-1"}, "offset='-1'"),
    ({"fuzzymatching": "maybe"}, "fuzzymatching='maybe'"),
    ({"includefield": "NoSuchAttribute"}, "'NoSuchAttribute'"),
    ({"00081032.00080100": "C1"}, "sequence attribute paths"),
    ({"ProcedureCodeSequence": "x"}, "ProcedureCodeSequence"),
    ({"PatientID": ["A", "B"]}, "PatientID is given 2 times"),
])
def test_bad_parameters_are_400_naming_parameter_and_value(params: dict[str, Any], message: str) -> None:
    with pytest.raises(QidoError) as err:
        SearchRequest("studies", params)
    assert err.value.status == 400 and message in str(err.value)


def test_an_unknown_resource_is_refused() -> None:
    with pytest.raises(QidoError, match="'patients'"):
        SearchRequest("patients", {})


def test_the_path_uid_and_a_conflicting_parameter_are_refused() -> None:
    with pytest.raises(QidoError, match="conflicts with the resource path"):
        SearchRequest("series", {"StudyInstanceUID": "1.2.3"}, study_uid="1.2.4")
    assert SearchRequest("series", {"StudyInstanceUID": "1.2.3"}, study_uid="1.2.3").constraints[0x0020000D] == "1.2.3"


def test_uid_lists_accept_commas_and_repeats() -> None:
    req = SearchRequest("studies", {"StudyInstanceUID": ["1.2.3,1.2.4", "1.2.5"], "00100020": "P*"})
    assert req.constraints == {0x0020000D: "1.2.3\\1.2.4\\1.2.5", 0x00100020: "P*"}


def test_fuzzymatching_is_accepted_and_matching_stays_literal(orthanc: FakeOrthanc) -> None:
    results = run(orthanc, "studies", {"PatientName": "JONES*", "fuzzymatching": "true"})
    assert len(results) == 3


def test_an_empty_value_is_a_return_key_not_a_constraint(orthanc: FakeOrthanc) -> None:
    results = run(orthanc, "studies", {"StudyDescription": ""})
    assert len(results) == 4 and all(r["00081030"]["Value"] for r in results)


# -- default and included attributes ----------------------------------------------------------------------
def test_study_results_have_the_default_attributes(orthanc: FakeOrthanc) -> None:
    [r] = run(orthanc, "studies", {"StudyInstanceUID": "1.2.10"}, clinic_a_all(orthanc),
              base_url="https://pacs/dicom-web")
    assert r["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "JONES^ALICE"}]}
    assert r["00080061"] == {"vr": "CS", "Value": ["CT", "MR"]}
    assert (r["00201206"]["Value"], r["00201208"]["Value"]) == ([2], [6])
    assert r["00080056"] == {"vr": "CS", "Value": ["ONLINE"]}
    assert r["00080005"]["Value"] == ["ISO_IR 192"]
    assert r["00081190"]["Value"] == ["https://pacs/dicom-web/studies/1.2.10"]
    assert r["00080090"] == {"vr": "PN"}  # required, empty when unknown
    assert "00080054" not in r and "00080052" not in r  # C-FIND bookkeeping stays out of QIDO
    assert orthanc.gets("/instances/") == []  # no file read for study defaults


def test_all_series_carry_study_attributes_and_series_of_a_study_do_not(orthanc: FakeOrthanc) -> None:
    everything = run(orthanc, "series", {}, clinic_a_all(orthanc))
    assert len(everything) == 6 and all("00100020" in r and "00201209" in r for r in everything)
    within = run(orthanc, "series", {}, clinic_a_all(orthanc), study_uid="1.2.11")
    assert len(within) == 2 and not any("00100020" in r for r in within)
    assert values(within, "00201209") == [3, 3]


def test_instance_results_read_the_instance_for_pixel_attributes(orthanc: FakeOrthanc) -> None:
    results = run(orthanc, "instances", {}, clinic_a_all(orthanc), study_uid="1.2.10", series_uid="1.2.10.2")
    assert values(results, "00200013") == [1, 2, 10]
    assert values(results, "00280010") == [512, 512, 512]
    assert values(results, "00080016") == ["1.2.840.10008.5.1.4.1.1.2"] * 3
    assert not any("00100010" in r or "00080060" in r for r in results)  # within a series: no upper levels


def test_includefield_adds_attributes_and_all_adds_the_indexed_ones(orthanc: FakeOrthanc) -> None:
    [r] = run(orthanc, "studies", {"StudyInstanceUID": "1.2.10", "includefield": "StudyDescription,00100030"})
    assert r["00081030"]["Value"] == ["desc 10"] and r["00100030"]["Value"] == ["19700101"]
    [everything] = run(orthanc, "studies", {"StudyInstanceUID": "1.2.10", "includefield": "all"})
    assert "00080080" in everything and "00081030" in everything  # InstitutionName: indexed, so included
    [weight] = run(orthanc, "studies", {"StudyInstanceUID": "1.2.10", "includefield": ["PatientWeight"]})
    assert weight["00101030"] == {"vr": "DS"}  # not stored: present and empty


# -- tenancy and paging -----------------------------------------------------------------------------------
def test_results_come_only_from_the_scope(orthanc: FakeOrthanc) -> None:
    a = run(orthanc, "studies", {"PatientID": "12345"}, clinic_a_all(orthanc))
    b = run(orthanc, "studies", {"PatientID": "12345"}, frozenset({study_id(orthanc, "20")}))
    assert sorted(values(a, "0020000D")) == ["1.2.10", "1.2.11", "1.2.12"]
    assert values(b, "0020000D") == ["1.2.20"] and values(b, "00100010") == [{"Alphabetic": "SMITH^BOB"}]
    assert run(orthanc, "instances", {"PatientName": "JONES*"}, frozenset({study_id(orthanc, "20")})) == []


def test_studies_are_ordered_newest_first_then_by_uid(orthanc: FakeOrthanc) -> None:
    results = run(orthanc, "studies", {"PatientName": "JONES*"})
    assert values(results, "0020000D") == ["1.2.10", "1.2.12", "1.2.11"]


def test_limit_and_offset_page_through_a_stable_order(orthanc: FakeOrthanc) -> None:
    full = values(run(orthanc, "instances", {"PatientName": "JONES*"}), "00080018")
    assert len(full) == 18 and len(set(full)) == 18
    pages = [values(run(orthanc, "instances", {"PatientName": "JONES*", "limit": "5", "offset": str(o)}),
                    "00080018") for o in range(0, 20, 5)]
    assert [len(p) for p in pages] == [5, 5, 5, 3] and [uid for p in pages for uid in p] == full
    assert run(orthanc, "instances", {"PatientName": "JONES*", "offset": "18"}) == []


def test_only_the_requested_page_is_read_from_storage(orthanc: FakeOrthanc) -> None:
    run(orthanc, "instances", {"PatientName": "JONES*", "limit": "2", "offset": "3"})
    assert len(orthanc.gets("/instances/")) == 2


def test_results_are_dicom_json(orthanc: FakeOrthanc) -> None:
    results = run(orthanc, "series", {"Modality": "MR"}, clinic_a_all(orthanc))
    for r in results:
        assert set(r) == {k for k in r if len(k) == 8} and all("vr" in v for v in r.values())
        ds = Dataset.from_json(r)
        assert ds.Modality == "MR" and ds.NumberOfSeriesRelatedInstances == 3
