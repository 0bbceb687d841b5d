"""C-FIND parity: the archive (our find engine inside Orthanc) answers like a stock Orthanc 1.10.

The plugin's find callback replaces Orthanc's whole C-FIND SCP. A stock Orthanc (no plugin, plain DICOM
on loopback) and the real archive (mutual TLS) receive the same synthetic data set; a table of C-FIND
queries at every level, in both information models, goes to both and the answers must be the same sets
(compared after decoding, so transfer syntax and element order do not matter).

The archive's clinic used here owns exactly this data set, so the scoped answers must equal the stock
server's unscoped ones. One difference is allowed, and checked rather than ignored:

* ``RETRIEVE_AET_ASKED``: when the identifier itself asks for Retrieve AE Title (0008,0054), Orthanc 1.10
  answers it empty (its SCP overwrites the value it just set); PS3.4 C.4.1.1.3.2 requires the AE title and
  C-MOVE needs it, so the archive gives it.

Then the tenancy check: two clinics store different people under one Patient ID (Orthanc merges them
into one patient resource) and each must see only its own person at every level.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

from securepacs.client import Connection, find, store
from securepacs_tools.synth import uid

pytestmark = pytest.mark.integration

STOCK_AET = "SECUREPACS"  # same AE title as the archive, so Retrieve AE Title compares equal
PARITY_CLINIC, PARITY_AET = "parity", "PARITY"
CT, MR, DX, SR, US = ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.1.1",
                      "1.2.840.10008.5.1.4.1.1.88.11", "1.2.840.10008.5.1.4.1.1.6.1")
SOP_CLASS = {"CT": CT, "MR": MR, "DX": DX, "SR": SR, "US": US}


# -- the data set ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SeriesSpec:
    modality: str
    instances: int
    number: int
    description: str = ""
    body_part: str = "CHEST"


@dataclass(frozen=True)
class StudySpec:
    key: str
    date: str
    time: str
    description: str
    series: tuple[SeriesSpec, ...]
    referring: str = ""
    procedure_code: str | None = None


@dataclass(frozen=True)
class PatientSpec:
    pid: str
    name: str
    birth: str
    sex: str
    studies: tuple[StudySpec, ...]
    charset: str | None = None
    weight: str | None = None
    other_ids: tuple[str, ...] = ()


# Synthetic people only. Odd names on purpose: an apostrophe, Latin-1 and UTF-8 accents, lower case, a
# name outside Latin-1, spaces; several studies per patient, mixed modalities and SOP classes.
PATIENTS = (
    PatientSpec("PAR-0001", "DOE^JOHN", "19700101", "M", (
        StudySpec("doe-ct", "20240102", "101500", "CT chest", (SeriesSpec("CT", 4, 1, "axial"),
                                                                SeriesSpec("SR", 1, 2, "report")),
                  referring="SMITH^ANNA", procedure_code="CT-CHEST"),
        StudySpec("doe-mr", "20230505", "083000", "MR head", (SeriesSpec("MR", 3, 1, "t1", "HEAD"),)),
    ), weight="81.5", other_ids=("OLD-1", "OLD-2")),
    PatientSpec("PAR-0002", "O'BRIEN^MARY", "19851231", "F", (
        StudySpec("obrien-dx", "20220101", "235959", "DX thorax", (SeriesSpec("DX", 2, 1, "pa"),)),
    )),
    PatientSpec("PAR-0003", "MÜLLER^JÖRG", "19601015", "M", (
        StudySpec("muller-ct", "20240301", "120000", "CT abdomen", (SeriesSpec("CT", 2, 3, "venous", "ABDOMEN"),),
                  referring="smith^bob"),
    ), charset="ISO_IR 100"),
    PatientSpec("PAR-0004", "van der Berg^Anna", "20010704", "F", (
        StudySpec("berg-us", "20191120", "070001", "US abdomen", (SeriesSpec("US", 2, 1, "liver", "ABDOMEN"),)),
        StudySpec("berg-mr", "20240102", "180000", "MR knee", (SeriesSpec("MR", 2, 1, "pd", "KNEE"),
                                                                SeriesSpec("MR", 1, 2, "t2", "KNEE"))),
    ), charset="ISO_IR 192"),
    PatientSpec("PAR-0005", "Ødegård^Åsa=Łukasz", "19990909", "O", (
        StudySpec("odegard-ct", "20210615", "", "", (SeriesSpec("CT", 1, 1),)),
    ), charset="ISO_IR 192", weight="55"),
)


def study_uid(study: StudySpec) -> str:
    return uid(f"parity/{study.key}")


def series_uid(study: StudySpec, series: SeriesSpec) -> str:
    return uid(f"parity/{study.key}/{series.number}")


def sop_uid(study: StudySpec, series: SeriesSpec, index: int) -> str:
    return uid(f"parity/{study.key}/{series.number}/{index}")


def make_instance(patient: PatientSpec, study: StudySpec, series: SeriesSpec, index: int) -> Dataset:
    ds = Dataset()
    if patient.charset:
        ds.SpecificCharacterSet = patient.charset
    ds.SOPClassUID = SOP_CLASS[series.modality]
    ds.SOPInstanceUID = sop_uid(study, series, index)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid(study), series_uid(study, series)
    ds.PatientName, ds.PatientID = patient.name, patient.pid
    ds.PatientBirthDate, ds.PatientSex = patient.birth, patient.sex
    if patient.weight:
        ds.PatientWeight = patient.weight
    if patient.other_ids:
        ds.OtherPatientIDs = list(patient.other_ids)
    ds.StudyDate, ds.StudyTime, ds.StudyDescription = study.date, study.time, study.description
    ds.StudyID, ds.AccessionNumber = study.key[:16].upper(), f"ACC-{study.key}"[:16]
    ds.ReferringPhysicianName = study.referring
    ds.Modality, ds.SeriesNumber, ds.SeriesDescription = series.modality, series.number, series.description
    ds.SeriesDate, ds.BodyPartExamined, ds.Manufacturer = study.date, series.body_part, "SYNTH"
    ds.InstanceNumber = index + 1
    ds.ImageComments = f"slice {index + 1} of {series.description or 'series'}"
    if study.procedure_code:
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = study.procedure_code, "99PAR", "Chest"
        ds.ProcedureCodeSequence = Sequence([code])
    if series.modality != "SR":
        ds.Rows = ds.Columns = 4
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = bytes(32)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    meta.TransferSyntaxUID, meta.ImplementationClassUID = ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    return ds


def write_dataset(patients: tuple[PatientSpec, ...], folder: Path) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    count = 0
    for patient in patients:
        for study in patient.studies:
            for series in study.series:
                for index in range(series.instances):
                    make_instance(patient, study, series, index).save_as(
                        folder / f"{study.key}-{series.number}-{index}.dcm", enforce_file_format=True)
                    count += 1
    return count


# -- a stock Orthanc ------------------------------------------------------------------------------------
@dataclass
class StockOrthanc:
    dicom_port: int
    http_port: int
    proc: subprocess.Popen
    root: Path

    def conn(self, calling_aet: str = PARITY_AET) -> Connection:
        return Connection("127.0.0.1", self.dicom_port, calling_aet=calling_aet, called_aet=STOCK_AET,
                          acse_timeout=15, dimse_timeout=60)


@pytest.fixture(scope="module")
def stock_orthanc() -> Iterator[StockOrthanc]:
    """Debian's Orthanc without any plugin: plain DICOM and HTTP on loopback, throw-away storage."""
    root = Path(tempfile.mkdtemp(prefix="securepacs-stock-"))
    dicom_port, http_port = free_port(), free_port()
    config = {"Name": "stock", "DicomAet": STOCK_AET, "DicomPort": dicom_port, "HttpPort": http_port,
              "StorageDirectory": str(root / "db"), "IndexDirectory": str(root / "db"), "Plugins": [],
              "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "DicomAlwaysAllowEcho": True,
              "DicomAlwaysAllowFind": True, "DicomAlwaysAllowStore": True}
    (root / "orthanc.json").write_text(json.dumps(config))
    log = (root / "orthanc.log").open("wb")
    proc = subprocess.Popen(["Orthanc", str(root / "orthanc.json")], env={**os.environ, "TCP_NODELAY": "1"},
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/system", timeout=2) as resp:
                    if json.load(resp).get("Version"):
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"stock Orthanc did not start:\n{(root / 'orthanc.log').read_text()[-3000:]}")
            time.sleep(0.2)
        yield StockOrthanc(dicom_port, http_port, proc, root)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def parity(native_archive, stock_orthanc, tmp_path_factory):
    """The data set stored into both servers; returns the archive's clinic for the parity queries."""
    folder = tmp_path_factory.mktemp("parity-data")
    count = write_dataset(PATIENTS, folder)
    clinic = native_archive.enrol(PARITY_CLINIC, PARITY_AET)
    for conn in (stock_orthanc.conn(), native_archive.conn(clinic)):
        summary = store(conn, [folder])
        assert summary.success == count and summary.ok, summary.report()
    return clinic


# -- comparing answers ----------------------------------------------------------------------------------
def normal(value: Any, vr: str) -> Any:
    if vr == "SQ":
        return tuple(normalize(item) for item in value)
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace").rstrip("\x00 ")
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value).rstrip("\x00 ")


def normalize(ds: Dataset) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted((f"{int(e.tag):08X}", normal(e.value, e.VR)) for e in ds))


def answers(conn: Connection, level: str, keys: Dataset, root: str) -> Counter:
    identifier = Dataset()
    identifier.update(keys)
    return Counter(normalize(ds) for ds in find(conn, level, identifier, root=root))


def keys(**values: Any) -> Dataset:
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


UIDS = {s.key: study_uid(s) for p in PATIENTS for s in p.studies}
DOE_CT = PATIENTS[0].studies[0]

# (level, roots, keys): every query goes to both servers in each listed information model. Queries listed
# in NO_MATCH match nothing on Orthanc on purpose (case-sensitive non-PN keys, keys of lower levels).
QUERIES: list[tuple[str, tuple[str, ...], Dataset]] = [
    ("PATIENT", ("patient",), keys(PatientID="", PatientName="", PatientBirthDate="", PatientSex="",
                                   NumberOfPatientRelatedStudies="", NumberOfPatientRelatedSeries="",
                                   NumberOfPatientRelatedInstances="")),
    ("PATIENT", ("patient",), keys(PatientName="doe*", PatientID="")),
    ("PATIENT", ("patient",), keys(PatientName="*müller*", PatientID="", PatientBirthDate="")),
    ("PATIENT", ("patient",), keys(PatientID="PAR-000?", OtherPatientIDs="", PatientWeight="")),
    ("PATIENT", ("patient",), keys(PatientBirthDate="19800101-20051231", PatientName="", PatientSex="")),
    ("PATIENT", ("patient",), keys(PatientID="PAR-0002\\PAR-0004", PatientName="")),
    ("PATIENT", ("patient",), keys(PatientID="", StudyDate="20240102")),
    ("STUDY", ("study", "patient"), keys(PatientID="PAR-*", StudyInstanceUID="", StudyDate="20230101-",
                                         ModalitiesInStudy="", NumberOfStudyRelatedSeries="",
                                         NumberOfStudyRelatedInstances="", SOPClassesInStudy="", PatientName="")),
    ("STUDY", ("study",), keys(StudyInstanceUID="", ModalitiesInStudy="MR\\DX", AccessionNumber="",
                               StudyDescription="")),
    ("STUDY", ("study",), keys(StudyInstanceUID=f"{UIDS['doe-mr']}\\{UIDS['berg-us']}", StudyDate="",
                               StudyTime="", PatientName="", PatientBirthDate="")),
    ("STUDY", ("study",), keys(PatientName="VAN DER*", AccessionNumber="ACC-berg*", StudyInstanceUID="")),
    ("STUDY", ("study",), keys(PatientName="van*", AccessionNumber="acc-berg*", StudyInstanceUID="")),
    ("STUDY", ("study",), keys(PatientID="PAR-*", StudyTime="-120000", StudyDate="", StudyID="")),
    ("STUDY", ("study",), keys(PatientID="PAR-*", StudyDescription="*abdomen", ReferringPhysicianName="")),
    ("STUDY", ("study",), keys(PatientID="PAR-*", ReferringPhysicianName="SMITH*", StudyInstanceUID="")),
    ("STUDY", ("study",), keys(PatientID="PAR-*", StudyInstanceUID="", PatientWeight="", Manufacturer="",
                               ProcedureCodeSequence=Sequence(), OtherPatientIDs="")),
    ("STUDY", ("study",), keys(PatientID="PAR-*", StudyInstanceUID="", Manufacturer="", SeriesDescription="",
                               InstitutionName="", NumberOfSeriesRelatedInstances="")),
    ("STUDY", ("study",), keys(PatientID="PAR-*", StudyDate="20210101-20221231", Modality="DX")),
    ("SERIES", ("study", "patient"), keys(PatientID="PAR-0001", StudyInstanceUID=UIDS["doe-ct"], SeriesInstanceUID="",
                                          Modality="", SeriesNumber="", SeriesDescription="", BodyPartExamined="",
                                          NumberOfSeriesRelatedInstances="")),
    ("SERIES", ("study",), keys(PatientID="PAR-*", Modality="MR", SeriesInstanceUID="", StudyDate="",
                                PatientName="", SeriesDate="20240101-")),
    ("SERIES", ("study",), keys(PatientID="PAR-*", BodyPartExamined="ABDOMEN", SeriesInstanceUID="",
                                InstanceNumber="", StudyDescription="", PatientWeight="")),
    ("SERIES", ("study",), keys(PatientID="PAR-*", SeriesDescription="t*", SeriesInstanceUID="")),
    ("IMAGE", ("study", "patient"), keys(PatientID="PAR-0004", StudyInstanceUID=UIDS["berg-mr"],
                                         SeriesInstanceUID=series_uid(PATIENTS[3].studies[1],
                                                                      PATIENTS[3].studies[1].series[0]),
                                         SOPInstanceUID="", InstanceNumber="", ImageComments="")),
    ("IMAGE", ("study",), keys(PatientID="PAR-*", InstanceNumber="2", SOPInstanceUID="", Modality="",
                               StudyDate="", PatientName="")),
    ("IMAGE", ("study",), keys(PatientID="PAR-*", SOPInstanceUID="\\".join(
        sop_uid(DOE_CT, DOE_CT.series[0], i) for i in (0, 3)), SOPClassUID="", Rows=None, InstanceNumber="")),
    ("IMAGE", ("study",), keys(PatientID="PAR-*", ImageComments="slice 1 of*", SOPInstanceUID="",
                               SeriesDescription="")),
]


NO_MATCH = {6, 11, 17}


@pytest.mark.parametrize(("level", "roots", "query"), QUERIES,
                         ids=[f"{i:02d}-{q[0]}" for i, q in enumerate(QUERIES)])
def test_find_answers_match_stock_orthanc(request, native_archive, stock_orthanc, parity, level, roots, query):
    index = int(request.node.callspec.id.split("-")[0])
    for root in roots:
        expected = answers(stock_orthanc.conn(), level, query, root)
        got = answers(native_archive.conn(parity), level, query, root)
        # A query meant to match must match on Orthanc, or the comparison would prove nothing.
        assert (sum(expected.values()) == 0) == (index in NO_MATCH), f"stock Orthanc answered {expected}"
        assert got == expected, (f"{root} root {level}: stock only {list((expected - got).elements())}, "
                                 f"archive only {list((got - expected).elements())}")


def test_retrieve_ae_title_asked_explicitly_is_the_only_allowed_difference(native_archive, stock_orthanc,
                                                                             parity):
    """RETRIEVE_AET_ASKED (see the module docstring): stock leaves it empty, the archive fills it in."""
    query = keys(PatientID="PAR-*", StudyInstanceUID="", RetrieveAETitle="", PatientName="")
    expected = answers(stock_orthanc.conn(), "STUDY", query, "study")
    got = answers(native_archive.conn(parity), "STUDY", query, "study")
    aet_tag = "00080054"

    def aet_values(found: Counter) -> set[Any]:
        return {dict(answer)[aet_tag] for answer in found}

    assert aet_values(expected) == {""} and aet_values(got) == {native_archive.aet}

    def without_aet(found: Counter) -> Counter:
        return Counter({tuple(kv for kv in answer if kv[0] != aet_tag): n for answer, n in found.items()})

    assert without_aet(got) == without_aet(expected) and sum(expected.values()) == sum(len(p.studies) for p in PATIENTS)


def test_every_level_and_both_models_are_covered():
    covered = {(level, root) for level, roots, _ in QUERIES for root in roots}
    assert covered >= {("PATIENT", "patient"), ("STUDY", "study"), ("STUDY", "patient"), ("SERIES", "study"),
                       ("SERIES", "patient"), ("IMAGE", "study"), ("IMAGE", "patient")}


# -- tenancy: one Patient ID, two clinics, two people -------------------------------------------------------
SHARED_PID = "PAR-SHARED-12345"
TWIN_A = PatientSpec(SHARED_PID, "TWINA^ALICE", "19700101", "F", (
    StudySpec("twin-a1", "20200101", "090000", "CT twin A", (SeriesSpec("CT", 2, 1, "a"),)),
))
TWIN_B = PatientSpec(SHARED_PID, "TWINB^BOB", "19550505", "M", (
    StudySpec("twin-b1", "20210101", "090000", "MR twin B", (SeriesSpec("MR", 1, 1, "b"),)),
    StudySpec("twin-b2", "20220202", "090000", "DX twin B", (SeriesSpec("DX", 3, 1, "b"),
                                                             SeriesSpec("DX", 1, 2, "b2"))),
))


@pytest.fixture(scope="module")
def twins(native_archive, tmp_path_factory):
    clinics = {}
    for name, aet, patient in (("twinA", "TWINA", TWIN_A), ("twinB", "TWINB", TWIN_B)):
        folder = tmp_path_factory.mktemp(name)
        count = write_dataset((patient,), folder)
        clinic = native_archive.enrol(name, aet)
        summary = store(native_archive.conn(clinic), [folder])
        assert summary.success == count and summary.ok, summary.report()
        clinics[name] = (clinic, patient)
    return clinics


def test_orthanc_merges_the_two_people_into_one_patient(native_archive, twins):
    """The premise: without the engine's scoping both clinics would share this patient resource."""
    status, body = native_archive.https("/tools/lookup", auth=native_archive.admin_credential(), method="POST",
                                        data=SHARED_PID.encode())
    assert status == 200
    [patient] = [hit for hit in json.loads(body) if hit["Type"] == "Patient"]
    assert len(native_archive.admin_json(f"/patients/{patient['ID']}")["Studies"]) == 3


@pytest.mark.parametrize(("level", "root"), [("PATIENT", "patient"), ("STUDY", "patient"), ("STUDY", "study"),
                                             ("SERIES", "patient"), ("SERIES", "study"), ("IMAGE", "patient"),
                                             ("IMAGE", "study")])
def test_each_clinic_sees_only_its_own_person(native_archive, twins, level, root):
    for name, other in (("twinA", "twinB"), ("twinB", "twinA")):
        clinic, patient = twins[name]
        other_patient = twins[other][1]
        own_studies = {study_uid(s) for s in patient.studies}
        query = keys(PatientID=SHARED_PID, PatientName="", PatientBirthDate="", PatientSex="")
        if level != "PATIENT":
            query.StudyInstanceUID = ""
        found = list(find(native_archive.conn(clinic), level, query, root=root))
        expected_count = {"PATIENT": 1, "STUDY": len(patient.studies),
                          "SERIES": sum(len(s.series) for s in patient.studies),
                          "IMAGE": sum(se.instances for s in patient.studies for se in s.series)}[level]
        assert len(found) == expected_count, f"{name} {root} {level}: {len(found)} answers"
        for ds in found:
            assert (str(ds.PatientName), ds.PatientBirthDate, ds.PatientSex) == (
                patient.name, patient.birth, patient.sex)
            if level != "PATIENT":
                assert ds.StudyInstanceUID in own_studies
            text = str(ds)
            assert other_patient.name not in text and other_patient.birth not in text
        # The other clinic's person is not findable by name either, at any level.
        by_name = keys(PatientName=other_patient.name, PatientID="")
        assert list(find(native_archive.conn(clinic), level, by_name, root=root)) == []


def test_patient_level_counts_cover_only_the_clinics_studies(native_archive, twins):
    for name in ("twinA", "twinB"):
        clinic, patient = twins[name]
        [answer] = find(native_archive.conn(clinic), "PATIENT",
                        keys(PatientID=SHARED_PID, NumberOfPatientRelatedStudies="",
                             NumberOfPatientRelatedSeries="", NumberOfPatientRelatedInstances=""), root="patient")
        assert (answer.NumberOfPatientRelatedStudies, answer.NumberOfPatientRelatedSeries,
                answer.NumberOfPatientRelatedInstances) == (
            len(patient.studies), sum(len(s.series) for s in patient.studies),
            sum(se.instances for s in patient.studies for se in s.series))
