"""A data set that names two studies must not land in either: repeated and out-of-order elements.

DCMTK (and so Orthanc) keeps the *first* copy of a repeated element; pydicom and our fast header reader
kept the *last*. A clinic device could therefore put another clinic's Study Instance UID and Patient ID
first and fresh ones second: tenancy admitted the fresh study, Orthanc filed the instance in the other
clinic's study (STOW-RS answered 200). Here clinic B sends such files, crafted byte by byte (pydicom will
not write a repeated element), by STOW-RS and by C-STORE, against the real archive.

Over C-STORE, DCMTK has already collapsed the copies when the plugin's filter sees the data set (Orthanc
re-encodes what it received), so the filter reads what Orthanc indexes: the other clinic's study, refused
as a cross-tenant write. Over STOW-RS the plugin reads the uploaded bytes themselves and must refuse them.
"""

from __future__ import annotations

import io
import json
import struct
import time
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from test_tenancy_matrix import add_user

from securepacs.audit import iter_entries
from securepacs.client import store
from securepacs.dicom import status_codes
from securepacs.dicom.identifiers import orthanc_id
from securepacs_tools.synth import StudySpec, instance, write_study

pytestmark = pytest.mark.integration

A_STUDY = StudySpec(seed="dup-a", patient_id="DUP-A-1", patient_name="DUP^ALICE", slices=2, rows=16, columns=16)
SYNTAXES = {"explicit": ExplicitVRLittleEndian, "implicit": ImplicitVRLittleEndian}
STUDY_UID_TAG, PATIENT_ID_TAG, SOP_CLASS_TAG = 0x0020000D, 0x00100020, 0x00080016
STOW_FAILED_SOP_SEQUENCE, STOW_REFERENCED_SOP_SEQUENCE, FAILURE_REASON = "00081198", "00081199", "00081197"


def element(tag: int, vr: str, value: str, explicit: bool) -> bytes:
    raw = value.encode()
    if len(raw) % 2:
        raw += b"\x00" if vr == "UI" else b" "
    if explicit:
        return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), len(raw)) + raw
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(raw)) + raw


def _offset(data: bytes, tag: int) -> int:
    """Where the top-level element ``tag`` starts (after the 132-byte preamble and the meta group)."""
    meta_end = 132 + 12 + struct.unpack_from("<I", data, 132 + 8)[0]
    return data.index(struct.pack("<HH", tag >> 16, tag & 0xFFFF), meta_end)


def crafted(ds: Dataset, syntax: str, layout: str, victim: StudySpec) -> bytes:
    """``ds`` encoded in ``syntax`` with the victim's Study Instance UID and Patient ID spliced in first.

    repeated: each victim copy sits just before the sender's own copy of the same element.
    out-of-order: both victim copies open the data set, before (0008,0016); the sender's follow in place.
    """
    explicit = syntax == "explicit"
    ds = ds.copy()
    ds.ensure_file_meta()
    ds.file_meta.TransferSyntaxUID = SYNTAXES[syntax]
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    study = element(STUDY_UID_TAG, "UI", victim.study_uid, explicit)
    patient = element(PATIENT_ID_TAG, "LO", victim.patient_id, explicit)
    if layout == "repeated":
        for tag, copy in ((STUDY_UID_TAG, study), (PATIENT_ID_TAG, patient)):
            at = _offset(data, tag)
            data = data[:at] + copy + data[at:]
    else:
        at = _offset(data, SOP_CLASS_TAG)
        data = data[:at] + study + patient + data[at:]
    return data


@pytest.fixture(scope="module")
def world(native_archive, tmp_path_factory):
    archive = native_archive
    root = tmp_path_factory.mktemp("duplicates")
    if "dupB" not in archive.clinics:
        archive.enrol("dupB", "DUPB")
    folder = root / "a"
    write_study(A_STUDY, folder)
    summary = store(archive.conn(archive.clinics["clinicA"]), [folder])
    assert summary.ok and summary.success == A_STUDY.slices, summary.report()
    device = add_user(archive, root, "dev-dupb", "clinic-device", "dupB")
    return archive, device


def a_study_sop_uids(archive) -> set[str]:
    found = archive.admin_json(f"/studies/{orthanc_id(A_STUDY.patient_id, A_STUDY.study_uid)}/instances")
    return {i["MainDicomTags"]["SOPInstanceUID"] for i in found}


A_SOP_UIDS = {str(instance(A_STUDY, i).SOPInstanceUID) for i in range(A_STUDY.slices)}


def trail_after(archive, seq: int) -> list[dict]:
    path = archive.data_dir / "audit" / "trail.jsonl"
    return [{"seq": e.seq, **e.body} for e in iter_entries(path) if e.seq > seq and not e.is_checkpoint]


def last_seq(archive) -> int:
    return max((e.seq for e in iter_entries(archive.data_dir / "audit" / "trail.jsonl")), default=0)


def wait_for(archive, seq: int, match, timeout: float = 15) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        found = [r for r in trail_after(archive, seq) if match(r)]
        if found:
            return found[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"no matching audit record after seq {seq}: {trail_after(archive, seq)}")
        time.sleep(0.2)


def is_store_record(sop_uid: str, status: int):
    def match(record: dict) -> bool:
        return (record["event"]["code"] == "110104" and record["action"] == "C"
                and record["details"].get("sop_instance_uid", "") in (sop_uid, "")
                and record["details"].get("status") == f"0x{status:04X}" and record["outcome"] == 8)
    return match


def is_security_alert(kind: str):
    def match(record: dict) -> bool:
        return record["event"]["code"] == "110113" and str(record.get("outcome_description", "")).startswith(kind)
    return match


def fresh(channel: str, layout: str, syntax: str) -> StudySpec:
    return StudySpec(seed=f"dup-b-{channel}-{layout}-{syntax}", patient_id=f"DUP-B-{channel}-{layout}-{syntax}",
                     patient_name="DUP^BOB", slices=1, rows=16, columns=16)


def multipart(part: bytes, boundary: str = "dup-boundary") -> tuple[str, bytes]:
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part
            + f"\r\n--{boundary}--\r\n".encode())
    return f'multipart/related; type="application/dicom"; boundary={boundary}', body


@pytest.mark.parametrize("syntax", sorted(SYNTAXES))
@pytest.mark.parametrize("layout", ["repeated", "out-of-order"])
def test_stow_rs_of_a_data_set_naming_two_studies_is_refused(world, layout, syntax):
    archive, device = world
    own = fresh("stow", layout, syntax)
    ds = instance(own, 0)
    seq = last_seq(archive)
    content_type, body = multipart(crafted(ds, syntax, layout, A_STUDY))
    status, answer = archive.https("/dicom-web/studies", auth=device, method="POST", data=body,
                                   headers={"Content-Type": content_type, "Accept": "application/dicom+json"})
    assert status == 409, answer[:300]
    response = json.loads(answer)
    assert STOW_REFERENCED_SOP_SEQUENCE not in response
    [failed] = response[STOW_FAILED_SOP_SEQUENCE]["Value"]
    assert failed[FAILURE_REASON]["Value"] == [status_codes.STORE_ERROR_CANNOT_UNDERSTAND]
    # Nothing of B's in A's study, and no trace of the fresh study either.
    assert a_study_sop_uids(archive) == A_SOP_UIDS
    for patient, study in ((own.patient_id, own.study_uid), (A_STUDY.patient_id, own.study_uid)):
        assert archive.https(f"/studies/{orthanc_id(patient, study)}", auth=archive.admin_credential())[0] == 404
    stored = wait_for(archive, seq, is_store_record("", status_codes.STORE_ERROR_CANNOT_UNDERSTAND))
    assert any(p["user_id"] == device[0] for p in stored["participants"]), stored
    alert = wait_for(archive, seq, is_security_alert("ambiguous-identifiers"))
    assert alert["details"]["clinic"] == "dupB"


@pytest.mark.parametrize("syntax", sorted(SYNTAXES))
@pytest.mark.parametrize("layout", ["repeated", "out-of-order"])
def test_cstore_of_a_data_set_naming_two_studies_is_refused(world, layout, syntax, tmp_path: Path):
    archive, _ = world
    own = fresh("cstore", layout, syntax)
    ds = instance(own, 0)
    path = tmp_path / "crafted.dcm"
    path.write_bytes(crafted(ds, syntax, layout, A_STUDY))
    seq = last_seq(archive)
    summary = store(archive.conn(archive.clinics["dupB"]), [path])
    assert summary.success == 0 and summary.failure == 1, summary.report()
    # DCMTK keeps the first copies (A's): the filter sees A's study and refuses the cross-tenant write.
    assert status_codes.describe(status_codes.REFUSED_NOT_AUTHORIZED) in summary.report()
    assert a_study_sop_uids(archive) == A_SOP_UIDS
    assert archive.https(f"/studies/{orthanc_id(own.patient_id, own.study_uid)}",
                         auth=archive.admin_credential())[0] == 404
    wait_for(archive, seq, is_store_record(str(ds.SOPInstanceUID), status_codes.REFUSED_NOT_AUTHORIZED))
    wait_for(archive, seq, is_security_alert("cross-tenant-write"))
