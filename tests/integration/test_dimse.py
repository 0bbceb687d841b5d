"""DICOM over mutual TLS against the real archive: echo, store, find, get, move, with our client and DCMTK.

Every test stores its own synthetic data (seeds and PatientIDs prefixed ``dimse``/``SYNDIMSE``) and scopes
its queries to it: the archive is shared by the whole session and other test files store too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import select
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pytest
from conftest import scp_credentials
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian

from securepacs.client import (
    Connection,
    ConnectionFailed,
    TlsConfig,
    create_context,
    echo,
    find,
    get,
    move,
    store,
)
from securepacs.client.scan import DicomFile, inspect
from securepacs_tools.synth import StudySpec, iter_pydicom_test_files, uid, write_study

pytestmark = pytest.mark.integration

DCMTK_TIMEOUT = 60

# -- helpers -------------------------------------------------------------------------------------------

# Explicit VR elements whose length field is 4 bytes (after 2 reserved bytes); all others have 2 bytes.
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}


def dataset_part(data: bytes) -> bytes:
    """The bytes after a Part 10 file's preamble and File Meta group (0002) — the encoded dataset itself.

    Walks the meta elements (always Explicit VR Little Endian) instead of trusting the group length, so a
    file written by any tool is cut at the right place.
    """
    assert data[128:132] == b"DICM", "not a Part 10 file (no DICM prefix)"
    pos = 132
    while data[pos:pos + 2] == b"\x02\x00":
        vr = data[pos + 4:pos + 6]
        if vr in _LONG_VRS:
            pos += 12 + struct.unpack_from("<I", data, pos + 8)[0]
        else:
            pos += 8 + struct.unpack_from("<H", data, pos + 6)[0]
    return data[pos:]


def file_dataset(path: Path) -> bytes:
    return dataset_part(path.read_bytes())


def lookup(archive, dicom_uid: str) -> list[dict]:
    """Orthanc's /tools/lookup (the body is the bare UID, not JSON)."""
    status, body = archive.https("/tools/lookup", auth=archive.admin_credential(), method="POST",
                                 data=dicom_uid.encode())
    assert status == 200, f"/tools/lookup {dicom_uid} -> {status}: {body[:200]!r}"
    return json.loads(body)


def orthanc_id(archive, dicom_uid: str, level: str) -> str | None:
    hits = [h for h in lookup(archive, dicom_uid) if h["Type"] == level]
    assert len(hits) <= 1, hits
    return hits[0]["ID"] if hits else None


def stored_sop_uids(archive, study_uid: str) -> list[str]:
    """SOP Instance UIDs Orthanc holds for a study (a list, so duplicates would show)."""
    study_id = orthanc_id(archive, study_uid, "Study")
    assert study_id is not None, f"study {study_uid} is not in the archive"
    instances = archive.admin_json(f"/studies/{study_id}/instances")
    return [inst["MainDicomTags"]["SOPInstanceUID"] for inst in instances]


def sop_uid_of(path: Path) -> str:
    item = inspect(path)
    assert isinstance(item, DicomFile), item
    return str(item.sop_instance_uid)


def store_all(archive, clinic, folder: Path, *, parallel: int = 1):
    return store(archive.conn(clinic), [folder], parallel=parallel)


def make_study(tmp_path: Path, seed: str, slices: int, patient_id: str) -> tuple[StudySpec, dict[str, Path]]:
    """Write a synthetic study; returns its spec and ``{SOP Instance UID: file}``."""
    spec = StudySpec(seed=f"dimse-{seed}", slices=slices, patient_id=patient_id,
                     patient_name=f"SYNDIMSE^{seed.upper()}", rows=64, columns=64)
    paths = write_study(spec, tmp_path / seed)
    return spec, {sop_uid_of(p): p for p in paths}


def stored_study(archive, clinic, tmp_path: Path, seed: str, slices: int,
                 patient_id: str) -> tuple[StudySpec, dict[str, Path]]:
    spec, files = make_study(tmp_path, seed, slices, patient_id)
    summary = store_all(archive, clinic, tmp_path / seed)
    assert summary.success == slices and summary.ok, summary.report()
    return spec, files


def assert_same_datasets(received: dict[str, bytes], originals: dict[str, Path]) -> None:
    assert set(received) == set(originals)
    for sop_uid, original in originals.items():
        expected = file_dataset(original)
        got = received[sop_uid]
        # Compare lengths first: a mismatch then reads as "N bytes vs M", not a megabyte diff.
        assert len(got) == len(expected), f"{sop_uid}: {len(got)} bytes received, {len(expected)} stored"
        assert got == expected, f"{sop_uid}: dataset bytes differ from the original file"


def dcmtk(*args: str) -> subprocess.CompletedProcess:
    """Run a DCMTK tool (Nagle off, as DESIGN.md recommends); fail with its output if it fails."""
    env = {**os.environ, "TCP_NODELAY": "1"}
    res = subprocess.run(list(args), env=env, capture_output=True, text=True,
                         timeout=DCMTK_TIMEOUT, check=False)
    assert res.returncode == 0, f"{' '.join(args)} -> {res.returncode}\n{res.stdout}\n{res.stderr}"
    return res


def dcmtk_tls(archive, clinic, aet: str | None = None) -> list[str]:
    """DCMTK's mutual TLS options for the clinic (PEM key/cert, trusted CA) and the AE titles."""
    return ["+tls", str(clinic.key), str(clinic.cert), "+cf", str(clinic.ca),
            "-aet", aet or clinic.aets[0], "-aec", archive.aet]


# -- 1. echo --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tls_version", ["1.2", "1.3"])
@pytest.mark.parametrize("aet", ["CLINICA", "CLINICA2"])
def test_echo_each_aet_and_tls_version(archive, clinic_a, aet, tls_version):
    # min = max = the pinned version in our client, so success means exactly that version was negotiated.
    assert echo(archive.conn(clinic_a, aet=aet, tls_version=tls_version)) == 0x0000


# -- 2. store a 100-slice CT series ----------------------------------------------------------------------


@pytest.mark.parametrize("parallel", [1, 4])
def test_store_100_slice_ct_series(archive, clinic_a, tmp_path, parallel):
    spec = StudySpec(seed=f"dimse-ct100-p{parallel}", slices=100, patient_id=f"SYNDIMSE-CT100-P{parallel}")
    paths = write_study(spec, tmp_path / "ct")
    expected = {sop_uid_of(p) for p in paths}
    assert len(expected) == 100

    summary = store_all(archive, clinic_a, tmp_path / "ct", parallel=parallel)
    assert (summary.success, summary.warning, summary.failure, summary.not_sent) == (100, 0, 0, 0), \
        summary.report()
    assert summary.bytes_sent == sum(p.stat().st_size for p in paths)

    stored = stored_sop_uids(archive, spec.study_uid)
    assert len(stored) == 100
    assert set(stored) == expected
    study_id = orthanc_id(archive, spec.study_uid, "Study")
    study = archive.admin_json(f"/studies/{study_id}")
    assert study["PatientMainDicomTags"]["PatientID"] == spec.patient_id
    assert len(study["Series"]) == 1
    series = archive.admin_json(f"/series/{study['Series'][0]}")
    assert series["MainDicomTags"]["SeriesInstanceUID"] == spec.series_uid
    assert len(series["Instances"]) == 100


# -- 3. pydicom's real-world test files ------------------------------------------------------------------

# Malformed files that make Orthanc (DCMTK) wait for data that never comes: it neither answers nor aborts
# until its 30 s DICOM idle timeout. Each would cost the folder test 30 s of Orthanc's timeout (plus,
# today, a client bug: see test_store_malformed_file_does_not_sink_the_next_one), so they are left out
# of the folder run and covered by that dedicated test instead.
MALFORMED = {
    "MR_truncated.dcm",       # pixel data cut short (even length)
    "SC_rgb_jpeg.dcm",        # garbage where an element header should be
    "rtplan_truncated.dcm",   # truncated to an odd dataset length
    "image_dfl.dcm",          # deflated stream of odd length (PS3.5 A.5 wants it padded to even)
}

# Measured with pydicom 3.0.2 (176 files under data/test_files, MALFORMED left out): 136 succeed. The
# others are not instances (DICOMDIRs, JSON, dumps, an ICC profile...), lack the UIDs Orthanc indexes, or
# are refused by Orthanc (e.g. meta and dataset SOP Instance UIDs that disagree: 0xA900). A margin of 5
# absorbs a pydicom upgrade adding or dropping odd files; a regression in the client's handling of
# big-endian, bare-dataset or compressed files loses more than that.
PYDICOM_MIN_SUCCESS = 136 - 5


def _dataset_sop_uid(path: Path) -> str:
    """The SOP Instance UID in the dataset (what Orthanc indexes), not the one in the file meta."""
    return str(dcmread(path, force=True, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)


def test_store_pydicom_test_files(archive, clinic_a, tmp_path):
    source = Path(pydicom.__file__).parent / "data" / "test_files"
    files = [f for f in iter_pydicom_test_files() if f.name not in MALFORMED]
    assert len(files) > 100, "pydicom's test files folder is (nearly) empty"
    folder = tmp_path / "pydicom"
    for f in files:  # a private copy: the summary's paths then name exactly what we sent
        target = folder / f.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, target)

    summary = store_all(archive, clinic_a, folder)
    assert summary.total == len(files), summary.report()
    assert summary.problems_omitted == 0
    assert summary.stopped_early is None, summary.report()
    not_successful = {p.path for p in summary.problems}
    succeeded = [p for p in sorted(folder.rglob("*")) if p.is_file() and p not in not_successful]
    assert len(succeeded) == summary.success, summary.report()
    assert summary.success >= PYDICOM_MIN_SUCCESS, summary.report()
    # No file may be lost to a broken association: every failure is the archive's verdict on that file.
    lost = [p for p in summary.problems if "no C-STORE response" in p.detail or "association" in p.detail]
    assert not lost, summary.report()

    missing = []
    for path in succeeded:
        sop_uid = _dataset_sop_uid(path)
        if orthanc_id(archive, sop_uid, "Instance") is None:
            missing.append(f"{path.name} ({sop_uid})")
    assert not missing, "reported stored but not in the archive: " + ", ".join(missing)
    archive.assert_serving()


def test_store_malformed_file_does_not_sink_the_next_one(archive, clinic_a, tmp_path):
    """A truncated file, then a good one, on one association (sorted order), as ``securepacs client store``
    sends a folder. Orthanc never answers the truncated file and aborts the association after its 30 s
    idle timeout; the good file must still be stored (on a new association), not reported as a failure
    and not left waiting for a response on the aborted association.

    The DIMSE timeout is above Orthanc's 30 s so that Orthanc's abort comes first, as with the CLI's
    default (no DIMSE timeout at all, where the client waited forever: the test would hang, not fail).
    """
    source = Path(pydicom.__file__).parent / "data" / "test_files"
    _, generated = make_study(tmp_path, "after-malformed", 1, "SYNDIMSE-AFTER-MALFORMED")
    folder = tmp_path / "malformed"
    folder.mkdir()
    shutil.copyfile(source / "MR_truncated.dcm", folder / "a-MR_truncated.dcm")
    good = folder / "b-good.dcm"
    shutil.copyfile(next(iter(generated.values())), good)

    conn = dataclasses.replace(archive.conn(clinic_a), dimse_timeout=45)
    summary = store(conn, [folder])
    assert [p.path.name for p in summary.problems] == ["a-MR_truncated.dcm"], summary.report()
    assert summary.success == 1, summary.report()
    assert orthanc_id(archive, _dataset_sop_uid(good), "Instance") is not None
    archive.assert_serving()


# -- 4. C-FIND ------------------------------------------------------------------------------------------


@dataclass
class FindData:
    # patient ID -> [(spec, {sop uid: path})]
    patients: dict[str, list[tuple[StudySpec, dict[str, Path]]]] = field(default_factory=dict)

    def studies(self, patient_id: str | None = None) -> list[StudySpec]:
        return [spec for pid, items in self.patients.items() if patient_id in (None, pid) for spec, _ in items]


FIND_PREFIX = "SYNDIMSE-FIND"


@pytest.fixture(scope="module")
def find_data(archive, clinic_a, tmp_path_factory) -> FindData:
    """Two patients: A with studies of 3 and 2 instances, B with one study of 4 instances."""
    root = tmp_path_factory.mktemp("find")
    data = FindData()
    for pid, seeds in ((f"{FIND_PREFIX}-A", [("find-a1", 3), ("find-a2", 2)]),
                       (f"{FIND_PREFIX}-B", [("find-b1", 4)])):
        data.patients[pid] = [stored_study(archive, clinic_a, root, seed, n, pid) for seed, n in seeds]
    return data


def _find(archive, clinic, level, keys, root="study"):
    return list(find(archive.conn(clinic), level, keys, root=root))


def test_find_patient_level(archive, clinic_a, find_data):
    pid = f"{FIND_PREFIX}-A"
    matches = _find(archive, clinic_a, "PATIENT", {
        "PatientID": pid, "PatientName": "", "NumberOfPatientRelatedStudies": "",
        "NumberOfPatientRelatedSeries": "", "NumberOfPatientRelatedInstances": "",
    }, root="patient")
    assert len(matches) == 1
    m = matches[0]
    assert m.PatientID == pid
    assert str(m.PatientName) == "SYNDIMSE^FIND-A1"
    assert int(m.NumberOfPatientRelatedStudies) == 2
    assert int(m.NumberOfPatientRelatedSeries) == 2
    assert int(m.NumberOfPatientRelatedInstances) == 5


def test_find_patient_wildcard(archive, clinic_a, find_data):
    # Scoped wildcard: exactly our two patients.
    mine = _find(archive, clinic_a, "PATIENT", {"PatientID": f"{FIND_PREFIX}*"}, root="patient")
    assert sorted(m.PatientID for m in mine) == sorted(find_data.patients)
    # The broad SYN* wildcard also matches other tests' synthetic patients: ours must be among them, and
    # everything returned must really match the pattern.
    broad = {str(m.PatientID) for m in _find(archive, clinic_a, "PATIENT", {"PatientID": "SYN*"}, root="patient")}
    assert set(find_data.patients) <= broad
    assert all(p.startswith("SYN") for p in broad), broad


@pytest.mark.parametrize("root", ["patient", "study"])
def test_find_study_level(archive, clinic_a, find_data, root):
    pid = f"{FIND_PREFIX}-A"
    matches = _find(archive, clinic_a, "STUDY", {
        "PatientID": pid, "StudyInstanceUID": "", "AccessionNumber": "", "StudyDescription": "",
        "NumberOfStudyRelatedSeries": "", "NumberOfStudyRelatedInstances": "",
    }, root=root)
    expected = {spec.study_uid: spec for spec in find_data.studies(pid)}
    assert sorted(m.StudyInstanceUID for m in matches) == sorted(expected)
    for m in matches:
        spec = expected[m.StudyInstanceUID]
        assert int(m.NumberOfStudyRelatedInstances) == spec.slices
        assert int(m.NumberOfStudyRelatedSeries) == 1
        assert m.StudyDescription == "Synthetic CT study"
        assert len(m.AccessionNumber) == 12


def test_find_study_by_uid_and_wildcard(archive, clinic_a, find_data):
    spec = find_data.studies(f"{FIND_PREFIX}-B")[0]
    matches = _find(archive, clinic_a, "STUDY", {
        "StudyInstanceUID": spec.study_uid, "PatientID": "", "PatientName": "",
        "NumberOfStudyRelatedInstances": "",
    })
    assert len(matches) == 1
    assert matches[0].PatientID == f"{FIND_PREFIX}-B"
    assert int(matches[0].NumberOfStudyRelatedInstances) == 4

    # A wildcard on PatientID at STUDY level returns every study of both patients.
    matches = _find(archive, clinic_a, "STUDY", {"PatientID": f"{FIND_PREFIX}*", "StudyInstanceUID": ""})
    assert sorted(m.StudyInstanceUID for m in matches) == sorted(s.study_uid for s in find_data.studies())

    # A StudyInstanceUID that was never stored matches nothing.
    assert _find(archive, clinic_a, "STUDY", {"StudyInstanceUID": uid("dimse-never-stored")}) == []


@pytest.mark.parametrize("root", ["patient", "study"])
def test_find_series_level(archive, clinic_a, find_data, root):
    spec = find_data.studies(f"{FIND_PREFIX}-A")[0]
    keys = {"StudyInstanceUID": spec.study_uid, "SeriesInstanceUID": "", "Modality": "",
            "SeriesDescription": "", "NumberOfSeriesRelatedInstances": ""}
    if root == "patient":
        keys["PatientID"] = f"{FIND_PREFIX}-A"
    matches = _find(archive, clinic_a, "SERIES", keys, root=root)
    assert len(matches) == 1
    m = matches[0]
    assert m.SeriesInstanceUID == spec.series_uid
    assert m.Modality == "CT"
    assert m.SeriesDescription == "Synthetic CT series"
    assert int(m.NumberOfSeriesRelatedInstances) == spec.slices


@pytest.mark.parametrize("root", ["patient", "study"])
def test_find_image_level(archive, clinic_a, find_data, root):
    spec, files = find_data.patients[f"{FIND_PREFIX}-B"][0]
    keys = {"StudyInstanceUID": spec.study_uid, "SeriesInstanceUID": spec.series_uid,
            "SOPInstanceUID": "", "SOPClassUID": "", "InstanceNumber": ""}
    if root == "patient":
        keys["PatientID"] = f"{FIND_PREFIX}-B"
    matches = _find(archive, clinic_a, "IMAGE", keys, root=root)
    assert sorted(m.SOPInstanceUID for m in matches) == sorted(files)
    assert {m.SOPClassUID for m in matches} == {"1.2.840.10008.5.1.4.1.1.2"}
    assert sorted(int(m.InstanceNumber) for m in matches) == list(range(1, spec.slices + 1))

    # One instance by its UID.
    one = sorted(files)[0]
    keys["SOPInstanceUID"] = one
    matches = _find(archive, clinic_a, "IMAGE", keys, root=root)
    assert [m.SOPInstanceUID for m in matches] == [one]


# -- 5. C-GET -------------------------------------------------------------------------------------------


def _received_datasets(out_dir: Path) -> dict[str, bytes]:
    return {sop_uid_of(p): file_dataset(p) for p in out_dir.iterdir() if p.suffix == ".dcm"}


def test_get_study_and_series_byte_for_byte(archive, clinic_a, tmp_path):
    study, study_files = stored_study(archive, clinic_a, tmp_path, "get-study", 6, "SYNDIMSE-GET-1")
    other, other_files = stored_study(archive, clinic_a, tmp_path, "get-series", 5, "SYNDIMSE-GET-2")

    out = tmp_path / "out-study"
    result = get(archive.conn(clinic_a), "STUDY", {"StudyInstanceUID": study.study_uid}, out_dir=out)
    assert result.ok and (result.completed, result.failed, result.files) == (6, 0, 6), result.report("C-GET")
    assert_same_datasets(_received_datasets(out), study_files)

    out = tmp_path / "out-series"
    # The series through the other AE title and the patient root model.
    result = get(archive.conn(clinic_a, aet="CLINICA2"), "SERIES",
                 {"PatientID": other.patient_id, "StudyInstanceUID": other.study_uid,
                  "SeriesInstanceUID": other.series_uid}, out_dir=out, root="patient")
    assert result.ok and (result.completed, result.files) == (5, 5), result.report("C-GET")
    assert_same_datasets(_received_datasets(out), other_files)


# -- 6. C-MOVE to a TLS storage SCP ---------------------------------------------------------------------


def test_move_study_to_tls_scp_byte_for_byte(native_archive, tmp_path, move_scp):
    archive = native_archive
    clinic_a = archive.clinics["clinicA"]
    spec, files = stored_study(archive, clinic_a, tmp_path, "move", 8, "SYNDIMSE-MOVE")
    result = move(archive.conn(clinic_a), "CLINICA", "STUDY", {"StudyInstanceUID": spec.study_uid})
    # The plugin's C-MOVE SCP sends the whole study as one sub-operation (plugin 4.0's move callback).
    assert result.ok and result.failed == 0 and result.completed >= 1, result.report("C-MOVE")

    assert_same_datasets(move_scp.received, files)
    assert move_scp.syntaxes == {ExplicitVRLittleEndian}
    assert move_scp.callers == {archive.aet}
    # Orthanc authenticated to the SCP with its own certificate (verified against the CA by the handshake).
    server_cert = x509.load_pem_x509_certificate((archive.certs_dir / "server" / "server.crt").read_bytes())
    assert set(move_scp.peer_certs) == {server_cert.public_bytes(serialization.Encoding.DER)}


# -- 7. DCMTK as an independent client -------------------------------------------------------------------


@pytest.mark.parametrize("aet", ["CLINICA", "CLINICA2"])
def test_dcmtk_echoscu(archive, clinic_a, aet):
    dcmtk("echoscu", *dcmtk_tls(archive, clinic_a, aet=aet), archive.host, str(archive.dicom_port))


@pytest.fixture
def dcmtk_study(archive, clinic_a, tmp_path) -> tuple[StudySpec, dict[str, Path]]:
    """A study stored with ``storescu +tls`` (recursive directory scan), checked through the REST API."""
    spec, files = make_study(tmp_path, "dcmtk", 12, "SYNDIMSE-DCMTK")
    # Nested folders: +r must find them all.
    nested = tmp_path / "dcmtk" / "nested"
    nested.mkdir()
    for path in sorted(files.values())[6:]:
        path.rename(nested / path.name)
        files[sop_uid_of(nested / path.name)] = nested / path.name
    dcmtk("storescu", *dcmtk_tls(archive, clinic_a), "+sd", "+r", archive.host, str(archive.dicom_port),
          str(tmp_path / "dcmtk"))
    assert sorted(stored_sop_uids(archive, spec.study_uid)) == sorted(files)
    return spec, files


def test_dcmtk_storescu_and_findscu(archive, clinic_a, dcmtk_study):
    spec, _ = dcmtk_study
    res = dcmtk("findscu", *dcmtk_tls(archive, clinic_a), "-S", "-k", "QueryRetrieveLevel=STUDY",
                "-k", f"StudyInstanceUID={spec.study_uid}", "-k", "PatientID",
                "-k", "NumberOfStudyRelatedInstances", archive.host, str(archive.dicom_port))
    output = res.stdout + res.stderr
    assert re.findall(r"\(0020,000d\) UI \[([0-9.]+)\]", output) == [spec.study_uid], output
    assert re.findall(r"\(0010,0020\) LO \[([^\]]*)\]", output) == ["SYNDIMSE-DCMTK"], output
    assert re.findall(r"\(0020,1208\) IS \[(\d+)\]", output) == ["12"], output


class TlsTunnel:
    """Plain TCP on 127.0.0.1 → mutual TLS (the clinic's credentials) to the archive.

    Debian's getscu (DCMTK 3.6.7) is built without TLS options (``getscu +tls`` → "Unknown option"), so it
    talks through this tunnel; the TLS handshake is done by Python's ssl with the clinic's key and
    certificate, everything inside it is DCMTK's. One thread per connection, non-blocking TLS so a TLS 1.3
    session ticket never blocks a read while the other side has data to send.
    """

    def __init__(self, archive, clinic) -> None:
        self.target = (archive.host, archive.dicom_port)
        self.context = create_context(TlsConfig(ca=clinic.ca, cert=clinic.cert, key=clinic.key))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.errors: list[BaseException] = []
        self.connections: list[threading.Thread] = []
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    def close(self) -> None:
        """Stop accepting and wait for the open connections to finish (their errors land in ``errors``)."""
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() (close() alone does not)
        self.listener.close()
        self.acceptor.join(10)
        assert not self.acceptor.is_alive(), "the tunnel's acceptor did not stop"
        for thread in self.connections:
            thread.join(10)
            assert not thread.is_alive(), "a tunnelled connection did not end"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(client,), daemon=True)
            self.connections.append(thread)
            thread.start()

    def _serve(self, client: socket.socket) -> None:
        try:
            raw = socket.create_connection(self.target, timeout=15)
            upstream = self.context.wrap_socket(raw, server_hostname=self.target[0])
            upstream.setblocking(False)
            with client, upstream:
                self._pump(client, upstream)
        except BaseException as exc:
            self.errors.append(exc)

    @staticmethod
    def _pump(client: socket.socket, upstream: ssl.SSLSocket) -> None:
        while True:
            ready = [upstream] if upstream.pending() else select.select([client, upstream], [], [], 60)[0]
            if not ready:
                raise TimeoutError("tunnel idle for 60 s")
            if upstream in ready:
                try:
                    data = upstream.recv(1 << 16)
                except ssl.SSLWantReadError:
                    data = None
                if data == b"":
                    return
                if data:
                    client.sendall(data)
            if client in ready:
                data = client.recv(1 << 16)
                if not data:
                    return
                view = memoryview(data)
                while view:
                    try:
                        view = view[upstream.send(view):]
                    except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                        select.select([], [upstream], [], 5)


def test_dcmtk_getscu_byte_for_byte(archive, clinic_a, dcmtk_study, tmp_path):
    spec, files = dcmtk_study
    tunnel = TlsTunnel(archive, clinic_a)
    try:
        out = tmp_path / "getscu"
        out.mkdir()
        dcmtk("getscu", "-aet", clinic_a.aets[0], "-aec", archive.aet, "-S", "-k", "QueryRetrieveLevel=STUDY",
              "-k", f"StudyInstanceUID={spec.study_uid}", "-od", str(out), "127.0.0.1", str(tunnel.port))
    finally:
        tunnel.close()
    assert not tunnel.errors, tunnel.errors
    received = {sop_uid_of(p): file_dataset(p) for p in out.iterdir()}
    assert_same_datasets(received, files)


def _wait_for_tls_scp(archive, clinic, port: int, proc: subprocess.Popen) -> None:
    """Until storescp answers a C-ECHO over mutual TLS (it prints nothing when it starts listening)."""
    conn = Connection("127.0.0.1", port, calling_aet="PROBE", called_aet="CLINICA", acse_timeout=5,
                      tls=TlsConfig(ca=archive.ca_cert, cert=clinic.cert, key=clinic.key))
    for _ in range(100):
        assert proc.poll() is None, f"storescp exited {proc.returncode}: {proc.communicate()}"
        try:
            assert echo(conn) == 0x0000
            return
        except ConnectionFailed:
            time.sleep(0.1)
    raise AssertionError("storescp never answered a TLS echo")


def test_dcmtk_movescu_to_storescp_tls_byte_for_byte(native_archive, move_scp_port, tmp_path):
    """C-MOVE with DCMTK on both ends: movescu asks, Orthanc sends to ``storescp +tls`` (AE CLINICA, the
    clinic's registered retrieve port), which requires and verifies Orthanc's client certificate.

    Debian's movescu has no TLS options either, so the request goes through the TLS tunnel; the transfer
    Orthanc → storescp is DCMTK-to-DCMTK TLS. storescp presents the SCP's serverAuth+clientAuth
    certificate (the clinic's is clientAuth-only). Native archive only: a container cannot reach it.
    """
    archive = native_archive
    clinic = archive.clinics["clinicA"]
    spec, files = stored_study(archive, clinic, tmp_path, "dcmtk-move", 7, "SYNDIMSE-DCMTK-MOVE")
    key, cert = scp_credentials(archive, tmp_path)
    out = tmp_path / "storescp"
    out.mkdir()
    scp = subprocess.Popen(
        ["storescp", "+tls", str(key), str(cert), "+cf", str(archive.ca_cert), "-aet", "CLINICA", "+B",
         "-od", str(out), str(move_scp_port)],
        env={**os.environ, "TCP_NODELAY": "1"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tunnel = TlsTunnel(archive, clinic)
    try:
        _wait_for_tls_scp(archive, clinic, move_scp_port, scp)
        dcmtk("movescu", "-aet", "CLINICA", "-aec", archive.aet, "-aem", "CLINICA", "-S",
              "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={spec.study_uid}",
              "127.0.0.1", str(tunnel.port))
    finally:
        tunnel.close()
        scp.terminate()
        scp_output, _ = scp.communicate(timeout=10)
    assert not tunnel.errors, tunnel.errors
    received = {sop_uid_of(p): file_dataset(p) for p in out.iterdir()}
    assert set(received) == set(files), scp_output
    assert_same_datasets(received, files)
