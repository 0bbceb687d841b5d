"""The fast identifier reader agrees with pydicom wherever it answers, and declines the rest."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRBigEndian, ImplicitVRLittleEndian

from securepacs import dicom_header, synth
from securepacs.tenancy import _IDENT_TAGS, _parsed_ids, read_ids

SPEC = synth.StudySpec(seed="header", slices=1, rows=8, columns=8)


def encode(ds: Dataset, transfer_syntax: str | None = None) -> bytes:
    if transfer_syntax:
        ds.file_meta.TransferSyntaxUID = transfer_syntax
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_reads_the_synthetic_instance() -> None:
    ds = synth.instance(SPEC, 0)
    found = dicom_header.identifiers(encode(ds))
    assert found == {
        "PatientID": SPEC.patient_id, "StudyInstanceUID": SPEC.study_uid, "SeriesInstanceUID": SPEC.series_uid,
        "SOPInstanceUID": ds.SOPInstanceUID, "SOPClassUID": ds.SOPClassUID,
    }


def test_implicit_vr_is_read_too() -> None:
    ds = synth.instance(SPEC, 0)
    assert dicom_header.identifiers(encode(ds, ImplicitVRLittleEndian))["SOPInstanceUID"] == ds.SOPInstanceUID


@pytest.mark.parametrize("change", [
    pytest.param(lambda ds: setattr(ds, "PatientID", "MÜLLER"), id="non-ascii"),
    pytest.param(lambda ds: setattr(ds, "PatientID", ["A", "B"]), id="multi-valued"),
    pytest.param(lambda ds: setattr(ds.file_meta, "TransferSyntaxUID", ExplicitVRBigEndian), id="big-endian"),
])
def test_declines_what_it_does_not_decide(change) -> None:
    ds = synth.instance(SPEC, 0)
    change(ds)
    data = encode(ds)
    assert dicom_header.identifiers(data) is None
    read_ids(data)  # pydicom still answers (or refuses) as before


def test_declines_an_undefined_length_sequence_before_the_identifiers() -> None:
    ds = synth.instance(SPEC, 0)
    item = Dataset()
    item.ReferencedSOPInstanceUID = "1.2.3"
    ds.ReferencedImageSequence = [item]  # (0008,1140), before (0010,0020)
    data = encode(ds)
    # pydicom writes defined lengths; make this one undefined as some devices do.
    assert dicom_header.identifiers(data) is not None
    raw = bytearray(data)
    at = raw.index(b"\x08\x00\x40\x11SQ\x00\x00")
    length = int.from_bytes(raw[at + 8 : at + 12], "little")
    raw[at + 8 : at + 12] = b"\xff\xff\xff\xff"
    raw[at + 12 + length : at + 12 + length] = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    assert dicom_header.identifiers(bytes(raw)) is None
    assert read_ids(bytes(raw)).sop_uid == ds.SOPInstanceUID


@pytest.mark.parametrize("data", [
    b"", b"DICM", b"\x00" * 128 + b"DICM", b"\x00" * 128 + b"DICM\x02\x00\x10\x00UI\xff\xff",
])
def test_truncated_or_foreign_input_is_declined(data: bytes) -> None:
    assert dicom_header.identifiers(data) is None


def _pydicom_files() -> list[Path]:
    return sorted(synth.iter_pydicom_test_files())


def test_agrees_with_pydicom_on_its_test_files() -> None:
    """Wherever the fast path answers, it gives what pydicom gives (the old, only, path)."""
    answered = 0
    for path in _pydicom_files():
        data = path.read_bytes()
        fast = dicom_header.identifiers(data)
        if fast is None:
            continue
        assert {k: fast.get(k, "") for k in _IDENT_TAGS} == _parsed_ids(data), path.name
        answered += 1
    assert answered >= 20  # the common files really take the fast path
