"""The tenant-scoped C-FIND engine against a fake Orthanc REST API (no Orthanc process).

``FakeOrthanc`` answers the REST calls the engine makes with JSON shaped like Orthanc 1.10.1's (captured
from a real server: /tools/find with Expand, /studies/{id}, /series/{id}, /patients/{id},
/studies/{id}/series, /instances/{id}/tags, /instances/{id}/metadata?expand). Its /tools/find matching is
deliberately simple (equality, ``\\`` lists, ``*`` wildcards, date ranges): Orthanc's real matching is
covered by tests/integration/test_find_parity.py; here we test what the engine adds on top of it.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from securepacs.tenancy.find_engine import QueryEngine
from securepacs.tenancy.find_identifier import QueryError, encode_answer, parse_find_query
from securepacs.tenancy.find_matcher import SCOPE_CHUNK

CT, MR_CLASS, SR_CLASS = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.88.11"
PATIENT_KEYS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "OtherPatientIDs")
STUDY_KEYS = ("StudyDate", "StudyTime", "StudyID", "StudyDescription", "AccessionNumber", "StudyInstanceUID",
              "InstitutionName", "ReferringPhysicianName")
SERIES_KEYS = ("Modality", "SeriesDescription", "SeriesNumber", "SeriesInstanceUID", "Manufacturer", "SeriesDate")
INSTANCE_KEYS = ("InstanceNumber", "SOPInstanceUID", "ImageComments")
TAG_OF = {"PatientName": "0010,0010", "PatientID": "0010,0020", "PatientBirthDate": "0010,0030",
          "PatientSex": "0010,0040", "OtherPatientIDs": "0010,1000", "StudyDate": "0008,0020",
          "StudyTime": "0008,0030", "StudyID": "0020,0010", "StudyDescription": "0008,1030",
          "AccessionNumber": "0008,0050", "StudyInstanceUID": "0020,000D", "InstitutionName": "0008,0080",
          "ReferringPhysicianName": "0008,0090", "Modality": "0008,0060", "SeriesDescription": "0008,103E",
          "SeriesNumber": "0020,0011", "SeriesInstanceUID": "0020,000E", "Manufacturer": "0008,0070",
          "SeriesDate": "0008,0021", "InstanceNumber": "0020,0013", "SOPInstanceUID": "0008,0018",
          "ImageComments": "0020,4000", "SOPClassUID": "0008,0016", "PatientWeight": "0010,1030",
          "Rows": "0028,0010"}
NAME_OF = {v: k for k, v in TAG_OF.items()}


def orthanc_id(*parts: str) -> str:
    """Orthanc's resource ID: SHA-1 of the DICOM identifiers joined by '|', in 5 groups of 8 hex digits."""
    digest = hashlib.sha1("|".join(parts).encode()).hexdigest()  # noqa: S324 (Orthanc's scheme, not security)
    return "-".join(digest[i:i + 8] for i in range(0, 40, 8))


@dataclass
class FakeOrthanc:
    """An in-memory Orthanc 1.10 REST API for the calls the query engine makes."""

    aet: str = "SECUREPACS"
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)
    tags: dict[str, dict[str, Any]] = field(default_factory=dict)  # instance -> /instances/{id}/tags
    metadata: dict[str, dict[str, str]] = field(default_factory=dict)
    calls: list[tuple[str, Any]] = field(default_factory=list)
    order: list[str] = field(default_factory=list)  # storage order (Orthanc returns children this way)
    deleted: set[str] = field(default_factory=set)

    # -- building the data set -------------------------------------------------------------------------
    def store(self, values: Mapping[str, str], sop_class: str = CT, sequences: Mapping[str, list] | None = None,
              extra: Mapping[str, str] | None = None) -> str:
        """Store one instance given ``{keyword: value}``; returns its Orthanc ID."""
        v = dict(values)
        pid, st, se, sop = v["PatientID"], v["StudyInstanceUID"], v["SeriesInstanceUID"], v["SOPInstanceUID"]
        ids = (orthanc_id(pid), orthanc_id(pid, st), orthanc_id(pid, st, se), orthanc_id(pid, st, se, sop))
        pick = lambda keys: {k: v[k] for k in keys if k in v}  # noqa: E731
        if ids[0] not in self.resources:  # Orthanc keeps the tags of the instance that created a resource
            self.resources[ids[0]] = {"ID": ids[0], "Type": "Patient", "IsStable": False, "LastUpdate": "x",
                                      "MainDicomTags": pick(PATIENT_KEYS), "Studies": []}
        if ids[1] not in self.resources:
            self.resources[ids[1]] = {"ID": ids[1], "Type": "Study", "IsStable": False, "LastUpdate": "x",
                                      "MainDicomTags": pick(STUDY_KEYS), "PatientMainDicomTags": pick(PATIENT_KEYS),
                                      "ParentPatient": ids[0], "Series": []}
            self.resources[ids[0]]["Studies"].append(ids[1])
        if ids[2] not in self.resources:
            self.resources[ids[2]] = {"ID": ids[2], "Type": "Series", "ExpectedNumberOfInstances": None,
                                      "IsStable": False, "LastUpdate": "x", "Status": "Unknown",
                                      "MainDicomTags": pick(SERIES_KEYS), "ParentStudy": ids[1], "Instances": []}
            self.resources[ids[1]]["Series"].append(ids[2])
        self.resources[ids[3]] = {"ID": ids[3], "Type": "Instance", "FileSize": 900, "FileUuid": "u",
                                  "IndexInSeries": 1, "MainDicomTags": pick(INSTANCE_KEYS), "ParentSeries": ids[2]}
        self.resources[ids[2]]["Instances"].append(ids[3])
        full = {TAG_OF[k]: {"Name": k, "Type": "String", "Value": val} for k, val in {**v, **(extra or {})}.items()}
        full[TAG_OF["SOPClassUID"]] = {"Name": "SOPClassUID", "Type": "String", "Value": sop_class}
        for key, items in (sequences or {}).items():
            full[key] = {"Name": "Seq", "Type": "Sequence", "Value": items}
        full["7fe0,0010"] = {"Name": "PixelData", "Type": "Null", "Value": None}
        self.tags[ids[3]] = full
        self.metadata[ids[3]] = {"SopClassUid": sop_class, "TransferSyntax": "1.2.840.10008.1.2.1"}
        self.order.extend(i for i in ids if i not in self.order)
        return ids[3]

    # -- the REST API ------------------------------------------------------------------------------------
    def get_json(self, uri: str) -> Any:
        self.calls.append(("GET", uri))
        parts = uri.strip("/").split("/")
        if uri == "/system":
            return {"DicomAet": self.aet, "Version": "1.10.1"}
        if parts[1] in self.deleted:
            raise LookupError(f"unknown resource {parts[1]}")  # Orthanc raises OrthancException(404)
        if len(parts) == 2:
            return self.resources[parts[1]]
        if parts[2] == "series":
            return [self.resources[s] for s in self.resources[parts[1]]["Series"]]
        if parts[2] == "tags":
            return self.tags[parts[1]]
        if parts[2] == "metadata?expand":
            return self.metadata[parts[1]]
        raise AssertionError(f"unexpected GET {uri}")

    def post_json(self, uri: str, body: Any) -> Any:
        self.calls.append(("POST", body))
        assert uri == "/tools/find"
        level = body["Level"]
        found = [self.resources[i] for i in self.order
                 if self.resources[i]["Type"] == level and i not in self.deleted]
        hits = [r for r in found if all(self._matches(r, tag, value, body["CaseSensitive"])
                                        for tag, value in body["Query"].items())]
        return hits if body["Expand"] else [r["ID"] for r in hits]

    def _visible(self, resource: dict[str, Any]) -> dict[str, str]:
        chain = [resource]
        while "ParentSeries" in chain[-1] or "ParentStudy" in chain[-1]:
            chain.append(self.resources[chain[-1].get("ParentSeries") or chain[-1]["ParentStudy"]])
        out: dict[str, str] = {}
        for r in chain:
            for k, val in {**r.get("MainDicomTags", {}), **r.get("PatientMainDicomTags", {})}.items():
                out.setdefault(TAG_OF[k], val)
        return out

    def _matches(self, resource: dict[str, Any], tag: str, pattern: str, case_sensitive: bool) -> bool:
        if tag == "0008,0061":  # ModalitiesInStudy: any series of the study
            series = [self.resources[s]["MainDicomTags"].get("Modality") for s in resource["Series"]]
            return any(m in pattern.split("\\") for m in series)
        value = self._visible(resource).get(tag.upper())
        if value is None:
            return False
        if not case_sensitive:
            value, pattern = value.upper(), pattern.upper()
        if "\\" in pattern:
            return value in pattern.split("\\")
        if "-" in pattern and tag in ("0008,0020", "0008,0030"):
            low, high = pattern.split("-")
            return (not low or value >= low) and (not high or value <= high)
        return fnmatch.fnmatchcase(value, pattern)

    # -- helpers for assertions ---------------------------------------------------------------------------
    def finds(self) -> list[dict[str, Any]]:
        return [body for verb, body in self.calls if verb == "POST"]

    def gets(self, prefix: str = "") -> list[str]:
        return [uri for verb, uri in self.calls if verb == "GET" and uri.startswith(prefix)]


def instance_values(patient: str, name: str, study: str, series: str, number: int, **more: str) -> dict[str, str]:
    return {"PatientID": patient, "PatientName": name, "PatientBirthDate": "19700101", "PatientSex": "F",
            "StudyInstanceUID": f"1.2.{study}", "StudyDate": "20240102", "StudyTime": "101500",
            "AccessionNumber": f"ACC{study}", "StudyDescription": f"desc {study}",
            "SeriesInstanceUID": f"1.2.{study}.{series}", "Modality": "CT", "SeriesNumber": str(series),
            "Manufacturer": "ACME", "SOPInstanceUID": f"1.2.{study}.{series}.{number}",
            "InstanceNumber": str(number), **more}


@pytest.fixture
def orthanc() -> FakeOrthanc:
    """Two clinics; both use Patient ID 12345 for different people (Orthanc merges them into one patient)."""
    fake = FakeOrthanc()
    for n in (1, 2, 3):
        fake.store(instance_values("12345", "JONES^ALICE", "10", 1, n), extra={"PatientWeight": "61"})
    fake.store(instance_values("12345", "JONES^ALICE", "10", 2, 1, Modality="SR"), sop_class=SR_CLASS)
    fake.store(instance_values("P2", "DOE^JOHN", "11", 1, 1, Modality="MR", StudyDate="20230505"),
               sop_class=MR_CLASS)
    fake.store(instance_values("12345", "SMITH^BOB", "20", 1, 1, StudyDate="20210101"))
    fake.store(instance_values("12345", "SMITH^BOB", "21", 1, 1, StudyDate="20210202", Modality="MR"))
    return fake


def study_id(fake: FakeOrthanc, study: str) -> str:
    return next(r["ID"] for r in fake.resources.values()
                if r["Type"] == "Study" and r["MainDicomTags"]["StudyInstanceUID"] == f"1.2.{study}")


def clinic_a(fake: FakeOrthanc) -> frozenset[str]:
    return frozenset({study_id(fake, "10"), study_id(fake, "11")})


def clinic_b(fake: FakeOrthanc) -> frozenset[str]:
    return frozenset({study_id(fake, "20"), study_id(fake, "21")})


def ident(level: str, **keys: Any) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def find(fake: FakeOrthanc, level: str, scope: frozenset[str] | None, **keys: Any) -> list[Dataset]:
    return QueryEngine(fake).find(level, ident(level, **keys), scope)


# -- parse_find_query ------------------------------------------------------------------------------------
def test_parse_keeps_every_key_and_returns_the_level() -> None:
    level, ds = parse_find_query([(0x0008, 0x0005, "ISO_IR 100"), (0x0008, 0x0052, "STUDY"),
                                  (0x0010, 0x0010, "DOE*"), (0x0020, 0x000D, "1.2\\1.3"), (0x0008, 0x0061, "")])
    assert level == "STUDY"
    assert ds.PatientName == "DOE*" and list(ds.StudyInstanceUID) == ["1.2", "1.3"]
    assert ds.ModalitiesInStudy is None or ds.ModalitiesInStudy == ""
    assert ds.QueryRetrieveLevel == "STUDY"


@pytest.mark.parametrize(("raw", "level"), [("study", "STUDY"), ("INSTANCE", "IMAGE"), (" IMAGE ", "IMAGE"),
                                            ("Patient", "PATIENT"), ("SERIES", "SERIES")])
def test_parse_accepts_the_level_names_orthanc_accepts(raw: str, level: str) -> None:
    assert parse_find_query([(0x0008, 0x0052, raw)])[0] == level


@pytest.mark.parametrize("items", [[(0x0010, 0x0020, "P1")], [(0x0008, 0x0052, "")], [(0x0008, 0x0052, "FRAME")]])
def test_parse_refuses_a_missing_or_unknown_level(items: list[tuple[int, int, str]]) -> None:
    with pytest.raises(QueryError, match="Query/Retrieve Level"):
        parse_find_query(items)


def test_parse_types_values_by_vr_and_drops_group_lengths() -> None:
    _, ds = parse_find_query([(0x0008, 0x0052, "IMAGE"), (0x0010, 0x0000, "12"), (0x0028, 0x0010, "512"),
                              (0x0010, 0x1002, ""), (0x0029, 0x0010, "ACME"), (0x0029, 0x1001, "x"),
                              (0x0020, 0x0013, "abc")])
    assert 0x00100000 not in ds
    assert ds.Rows == 512
    assert ds[0x00101002].VR == "SQ" and len(ds[0x00101002].value) == 0  # a sequence arrives as its tag only
    assert ds[0x00290010].VR == "LO" and ds[0x00291001].value == b"x"
    assert ds[0x00200013].value == b"abc"  # not an IS: kept as bytes rather than rejected


# -- encode_answer --------------------------------------------------------------------------------------
def test_encode_answer_is_an_implicit_little_endian_latin1_dataset_when_possible() -> None:
    ds = ident("PATIENT", PatientName="MÜLLER^JÖRG", PatientID="P3", NumberOfPatientRelatedStudies="2")
    ds.ProcedureCodeSequence = Sequence([Dataset()])
    ds.ProcedureCodeSequence[0].CodeValue = "C1"
    data = encode_answer(ds)
    assert not data.startswith(b"\0" * 128)  # no preamble or meta header: FindAddAnswer takes the dataset
    back = dcmread(io.BytesIO(data), force=True)
    back.file_meta = Dataset()
    back.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2"
    # Latin-1 (Orthanc's default encoding) whenever it fits: Orthanc's conversion of other charsets re-pads
    # UIDs with a space instead of NUL.
    assert back.SpecificCharacterSet == "ISO_IR 100" and str(back.PatientName) == "MÜLLER^JÖRG"
    assert back.ProcedureCodeSequence[0].CodeValue == "C1" and back.NumberOfPatientRelatedStudies == 2
    assert "SpecificCharacterSet" not in ds  # the caller's dataset is left alone
    beyond = ident("PATIENT", PatientName="山田^太郎", PatientID="P4")
    back = dcmread(io.BytesIO(encode_answer(beyond)), force=True)
    assert back.SpecificCharacterSet == "ISO_IR 192" and str(back.PatientName) == "山田^太郎"


# -- answers --------------------------------------------------------------------------------------------
def test_study_answers_echo_every_key_and_compute_counters(orthanc: FakeOrthanc) -> None:
    answers = find(orthanc, "STUDY", None, PatientID="12345", StudyInstanceUID="1.2.10", PatientName="",
                   StudyDate="", Manufacturer="", ModalitiesInStudy="", NumberOfStudyRelatedSeries="",
                   NumberOfStudyRelatedInstances="", SOPClassesInStudy="")
    assert len(answers) == 1
    a = answers[0]
    assert a.QueryRetrieveLevel == "STUDY" and a.RetrieveAETitle == "SECUREPACS"
    assert a.PatientName == "JONES^ALICE" and a.StudyDate == "20240102"
    # Manufacturer is indexed at the series level: a study answer leaves it empty, as Orthanc's SCP does.
    assert a.Manufacturer in (None, "")
    assert list(a.ModalitiesInStudy) == ["CT", "SR"]
    assert a.NumberOfStudyRelatedSeries == 2 and a.NumberOfStudyRelatedInstances == 4
    assert list(a.SOPClassesInStudy) == sorted([CT, SR_CLASS])
    assert not orthanc.gets("/instances/") or all("metadata" in u for u in orthanc.gets("/instances/"))


def test_a_non_indexed_key_makes_every_value_come_from_the_first_instance(orthanc: FakeOrthanc) -> None:
    orthanc.tags[orthanc.resources[orthanc.resources[study_id(orthanc, "10")]["Series"][0]]["Instances"][0]][
        "0008,1032"] = {"Name": "ProcedureCodeSequence", "Type": "Sequence",
                        "Value": [{"0008,0100": {"Name": "CodeValue", "Type": "String", "Value": "C1"}}]}
    keys = {"StudyInstanceUID": "1.2.10", "PatientWeight": "", "Manufacturer": "", "ProcedureCodeSequence": Sequence(),
            "ReferencedStudySequence": Sequence(), "Rows": None}
    [a] = find(orthanc, "STUDY", None, **keys)
    assert a.PatientWeight == "61" and a.Manufacturer == "ACME"  # read from the instance, like Orthanc
    assert a.ProcedureCodeSequence[0].CodeValue == "C1"
    assert "ReferencedStudySequence" not in a  # a requested sequence the instance lacks is left out
    assert a.Rows is None or a.Rows == ""
    assert len(orthanc.gets("/instances/")) == 1


def test_series_and_image_answers_merge_the_levels_above(orthanc: FakeOrthanc) -> None:
    series = find(orthanc, "SERIES", clinic_a(orthanc), StudyInstanceUID="1.2.10", SeriesInstanceUID="",
                  Modality="", PatientName="", StudyDate="", InstanceNumber="", NumberOfSeriesRelatedInstances="")
    assert sorted((s.Modality, s.NumberOfSeriesRelatedInstances) for s in series) == [("CT", 3), ("SR", 1)]
    assert {str(s.PatientName) for s in series} == {"JONES^ALICE"}
    assert all(s.InstanceNumber is None for s in series)  # an instance tag at the series level: empty
    images = find(orthanc, "IMAGE", clinic_a(orthanc), SeriesInstanceUID="1.2.10.1", SOPInstanceUID="",
                  InstanceNumber="", Modality="", StudyDescription="")
    assert sorted(i.InstanceNumber for i in images) == [1, 2, 3]
    assert {(i.Modality, i.StudyDescription) for i in images} == {("CT", "desc 10")}


# -- tenancy --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("level", ["STUDY", "SERIES", "IMAGE"])
def test_answers_only_come_from_the_scope(orthanc: FakeOrthanc, level: str) -> None:
    for scope, names in ((clinic_a(orthanc), {"JONES^ALICE"}), (clinic_b(orthanc), {"SMITH^BOB"})):
        answers = find(orthanc, level, scope, PatientID="12345", PatientName="", StudyInstanceUID="")
        assert answers and {str(a.PatientName) for a in answers} == names
    assert len(find(orthanc, level, None, PatientID="12345", PatientName="")) > 2


def test_the_scope_is_sent_to_orthanc_as_a_study_uid_list(orthanc: FakeOrthanc) -> None:
    find(orthanc, "SERIES", clinic_b(orthanc), Modality="MR")
    [body] = orthanc.finds()
    assert sorted(body["Query"]["0020,000D"].split("\\")) == ["1.2.20", "1.2.21"]
    assert body["Query"]["0008,0060"] == "MR" and body["Level"] == "Series"


def test_an_asked_study_uid_is_intersected_with_the_scope(orthanc: FakeOrthanc) -> None:
    assert find(orthanc, "STUDY", clinic_a(orthanc), StudyInstanceUID="1.2.20") == []
    assert orthanc.finds() == []  # nothing left to ask Orthanc
    answers = find(orthanc, "STUDY", clinic_a(orthanc), StudyInstanceUID="1.2.20\\1.2.10")
    assert [a.StudyInstanceUID for a in answers] == ["1.2.10"]


def test_an_empty_scope_asks_orthanc_nothing(orthanc: FakeOrthanc) -> None:
    for level in ("PATIENT", "STUDY", "SERIES", "IMAGE"):
        assert find(orthanc, level, frozenset(), PatientID="") == []
    assert orthanc.calls == []


def test_same_study_uid_under_another_patient_id_stays_out_of_scope(orthanc: FakeOrthanc) -> None:
    # Clinic B stores a study with clinic A's StudyInstanceUID but its own Patient ID: another Orthanc study.
    orthanc.store(instance_values("B-OTHER", "INTRUDER^X", "10", 9, 1))
    answers = find(orthanc, "STUDY", clinic_a(orthanc), StudyInstanceUID="1.2.10", PatientName="")
    assert [str(a.PatientName) for a in answers] == ["JONES^ALICE"]


def test_patient_level_is_per_clinic_despite_a_shared_patient_id(orthanc: FakeOrthanc) -> None:
    keys = {"PatientID": "12345", "PatientName": "", "NumberOfPatientRelatedStudies": "",
            "NumberOfPatientRelatedSeries": "", "NumberOfPatientRelatedInstances": ""}
    [a] = find(orthanc, "PATIENT", clinic_a(orthanc), **keys)
    assert (str(a.PatientName), a.NumberOfPatientRelatedStudies, a.NumberOfPatientRelatedSeries,
            a.NumberOfPatientRelatedInstances) == ("JONES^ALICE", 1, 2, 4)
    [b] = find(orthanc, "PATIENT", clinic_b(orthanc), **keys)
    assert (str(b.PatientName), b.NumberOfPatientRelatedStudies, b.NumberOfPatientRelatedSeries,
            b.NumberOfPatientRelatedInstances) == ("SMITH^BOB", 2, 2, 2)
    # Orthanc's merged patient carries the first clinic's name: B must neither match nor see it.
    assert find(orthanc, "PATIENT", clinic_b(orthanc), PatientName="JONES*", PatientID="") == []
    [everyone] = find(orthanc, "PATIENT", None, **keys)
    assert everyone.NumberOfPatientRelatedStudies == 3 and str(everyone.PatientName) == "JONES^ALICE"


def test_patient_level_matches_at_the_study_level_when_scoped(orthanc: FakeOrthanc) -> None:
    find(orthanc, "PATIENT", clinic_b(orthanc), PatientName="SMITH*")
    assert [b["Level"] for b in orthanc.finds()] == ["Study"]
    find(orthanc, "PATIENT", None, PatientName="SMITH*")
    assert orthanc.finds()[-1]["Level"] == "Patient"


@pytest.mark.parametrize("key", [{"StudyDate": "20240102"}, {"Modality": "CT"}, {"ModalitiesInStudy": "CT"},
                                 {"StudyInstanceUID": "1.2.10"}])
def test_a_patient_query_on_lower_level_tags_matches_nothing(orthanc: FakeOrthanc, key: dict[str, str]) -> None:
    # Orthanc's SCP answers nothing for these (measured on 1.10.1); the scoped path must not answer more.
    assert find(orthanc, "PATIENT", clinic_a(orthanc), PatientID="", **key) == []


def test_two_patients_of_one_clinic_give_two_answers(orthanc: FakeOrthanc) -> None:
    answers = find(orthanc, "PATIENT", clinic_a(orthanc), PatientID="", PatientName="")
    assert sorted(str(a.PatientName) for a in answers) == ["DOE^JOHN", "JONES^ALICE"]


# -- case sensitivity -----------------------------------------------------------------------------------
def test_without_person_names_matching_is_case_sensitive(orthanc: FakeOrthanc) -> None:
    assert find(orthanc, "STUDY", None, AccessionNumber="acc10") == []
    assert [b["CaseSensitive"] for b in orthanc.finds()] == [True]


def test_person_names_match_case_insensitively(orthanc: FakeOrthanc) -> None:
    assert len(find(orthanc, "STUDY", None, PatientName="smith*", StudyDate="20210101-")) == 2
    assert [b["CaseSensitive"] for b in orthanc.finds()] == [False]  # one call: no letters outside PN


def test_names_and_lettered_keys_together_are_matched_by_two_lookups(orthanc: FakeOrthanc) -> None:
    assert find(orthanc, "STUDY", None, PatientName="smith*", AccessionNumber="acc2*") == []
    answers = find(orthanc, "STUDY", None, PatientName="smith*", AccessionNumber="ACC2*")
    assert sorted(a.AccessionNumber for a in answers) == ["ACC20", "ACC21"]
    sent = [(sorted(b["Query"]), b["CaseSensitive"], b["Expand"]) for b in orthanc.finds()[-2:]]
    assert sent == [(["0008,0050"], True, True), (["0010,0010"], False, False)]


def test_the_name_lookup_of_a_split_query_stays_within_the_scope(orthanc: FakeOrthanc) -> None:
    answers = find(orthanc, "STUDY", clinic_b(orthanc), PatientName="smith*", AccessionNumber="ACC2*",
                   StudyDate="20210101-")
    assert sorted(a.AccessionNumber for a in answers) == ["ACC20", "ACC21"]
    exact, names = orthanc.finds()
    assert exact["Query"]["0020,000D"] == names["Query"]["0020,000D"]  # the scope bounds both lookups
    assert names["Query"]["0008,0020"] == "20210101-" and "0008,0050" not in names["Query"]


def test_case_sensitive_pn_configuration_sends_one_lookup(orthanc: FakeOrthanc) -> None:
    engine = QueryEngine(orthanc, case_sensitive_pn=True)
    assert engine.find("STUDY", ident("STUDY", PatientName="smith*", AccessionNumber="ACC2*"), None) == []
    assert [b["CaseSensitive"] for b in orthanc.finds()] == [True]


# -- cost ------------------------------------------------------------------------------------------------
def test_a_large_scope_is_sent_in_chunks(orthanc: FakeOrthanc) -> None:
    uids = {f"scope-{i}": f"9.9.{i}" for i in range(2 * SCOPE_CHUNK + 5)}
    engine = QueryEngine(orthanc, study_uids=lambda ids: {i: uids[i] for i in ids})
    engine.find("STUDY", ident("STUDY", StudyInstanceUID=""), frozenset(uids))
    sizes = [len(b["Query"]["0020,000D"].split("\\")) for b in orthanc.finds()]
    assert sizes == [SCOPE_CHUNK, SCOPE_CHUNK, 5]
    assert orthanc.gets("/studies/") == []  # the resolver was used, not Orthanc


def test_scope_uids_are_read_once_and_remembered(orthanc: FakeOrthanc) -> None:
    engine = QueryEngine(orthanc)
    scope = clinic_a(orthanc)
    engine.find("STUDY", ident("STUDY", StudyDate=""), scope)
    first = len(orthanc.gets("/studies/"))
    engine.find("STUDY", ident("STUDY", StudyDate=""), scope)
    assert first == 2 and len(orthanc.gets("/studies/")) == first


def test_study_answers_cost_a_bounded_number_of_calls(orthanc: FakeOrthanc) -> None:
    for i in range(30):
        orthanc.store(instance_values("P9", "MANY^SLICES", "12", 1, i))
    engine = QueryEngine(orthanc)
    orthanc.calls.clear()
    engine.find("STUDY", ident("STUDY", StudyInstanceUID="", PatientName="", ModalitiesInStudy="",
                                NumberOfStudyRelatedInstances=""), None)
    studies = sum(1 for r in orthanc.resources.values() if r["Type"] == "Study")
    # one lookup, /system once, and one series listing per study: no per-instance call
    assert studies == 5 and len(orthanc.calls) == 1 + 1 + studies
    assert orthanc.gets("/instances/") == []


def test_a_resource_deleted_during_the_query_is_left_out(orthanc: FakeOrthanc) -> None:
    gone = orthanc.resources[study_id(orthanc, "11")]["Series"][0]
    orthanc.deleted.add(gone)
    orthanc.order.remove(gone)
    answers = find(orthanc, "IMAGE", clinic_a(orthanc), SOPInstanceUID="", Modality="")
    assert {a.Modality for a in answers} == {"CT", "SR"}


def test_the_engine_never_logs_patient_data(orthanc: FakeOrthanc, caplog: pytest.LogCaptureFixture) -> None:
    orthanc.deleted.add(study_id(orthanc, "20"))
    with caplog.at_level("DEBUG", logger="securepacs"):
        find(orthanc, "PATIENT", clinic_b(orthanc), PatientID="12345", PatientName="",
             NumberOfPatientRelatedStudies="")
        find(orthanc, "STUDY", clinic_b(orthanc), PatientName="SMITH*")
    assert caplog.records  # the vanished study was reported ...
    for text in ("12345", "SMITH", "JONES"):
        assert text not in caplog.text  # ... without patient names or IDs


def iter_tags(answers: Iterable[Dataset]) -> set[str]:
    return {elem.keyword for a in answers for elem in a}


def test_answers_hold_exactly_the_keys_asked_plus_level_and_aet(orthanc: FakeOrthanc) -> None:
    answers = find(orthanc, "SERIES", None, StudyInstanceUID="1.2.10", SeriesNumber="")
    assert iter_tags(answers) == {"QueryRetrieveLevel", "RetrieveAETitle", "StudyInstanceUID", "SeriesNumber"}
