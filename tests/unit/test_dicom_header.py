"""The fast identifier reader agrees with pydicom wherever it answers, and declines the rest."""

from __future__ import annotations

import contextlib
import io
import random
from pathlib import Path

import pytest
from _dicom import element, insert_before
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from securepacs.dicom import header_reader
from securepacs.tenancy.ownership import _IDENT_TAGS, AmbiguousIds, NotDicom, _parsed_ids, read_ids
from securepacs_tools import synth

SPEC = synth.StudySpec(seed="header", slices=1, rows=8, columns=8)


def encode(ds: Dataset, transfer_syntax: str | None = None) -> bytes:
    if transfer_syntax:
        ds.file_meta.TransferSyntaxUID = transfer_syntax
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_reads_the_synthetic_instance() -> None:
    ds = synth.instance(SPEC, 0)
    found = header_reader.identifiers(encode(ds))
    assert found == {
        "PatientID": SPEC.patient_id, "StudyInstanceUID": SPEC.study_uid, "SeriesInstanceUID": SPEC.series_uid,
        "SOPInstanceUID": ds.SOPInstanceUID, "SOPClassUID": ds.SOPClassUID,
    }


def test_implicit_vr_is_read_too() -> None:
    ds = synth.instance(SPEC, 0)
    assert header_reader.identifiers(encode(ds, ImplicitVRLittleEndian))["SOPInstanceUID"] == ds.SOPInstanceUID


@pytest.mark.parametrize("change", [
    pytest.param(lambda ds: setattr(ds, "PatientID", "MÜLLER"), id="non-ascii"),
    pytest.param(lambda ds: setattr(ds, "PatientID", ["A", "B"]), id="multi-valued"),
    pytest.param(lambda ds: setattr(ds.file_meta, "TransferSyntaxUID", ExplicitVRBigEndian), id="big-endian"),
])
def test_declines_what_it_does_not_decide(change) -> None:
    ds = synth.instance(SPEC, 0)
    change(ds)
    data = encode(ds)
    assert header_reader.identifiers(data) is None
    read_ids(data)  # pydicom still answers (or refuses) as before


def test_declines_an_undefined_length_sequence_before_the_identifiers() -> None:
    ds = synth.instance(SPEC, 0)
    item = Dataset()
    item.ReferencedSOPInstanceUID = "1.2.3"
    ds.ReferencedImageSequence = [item]  # (0008,1140), before (0010,0020)
    data = encode(ds)
    # pydicom writes defined lengths; make this one undefined as some devices do.
    assert header_reader.identifiers(data) is not None
    raw = bytearray(data)
    at = raw.index(b"\x08\x00\x40\x11SQ\x00\x00")
    length = int.from_bytes(raw[at + 8 : at + 12], "little")
    raw[at + 8 : at + 12] = b"\xff\xff\xff\xff"
    raw[at + 12 + length : at + 12 + length] = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    assert header_reader.identifiers(bytes(raw)) is None
    assert read_ids(bytes(raw)).sop_uid == ds.SOPInstanceUID


@pytest.mark.parametrize("data", [
    b"", b"DICM", b"\x00" * 128 + b"DICM", b"\x00" * 128 + b"DICM\x02\x00\x10\x00UI\xff\xff",
])
def test_truncated_or_foreign_input_is_declined(data: bytes) -> None:
    assert header_reader.identifiers(data) is None


def _pydicom_files() -> list[Path]:
    return sorted(synth.iter_pydicom_test_files())


def test_agrees_with_pydicom_on_its_test_files() -> None:
    """Wherever the fast path answers, it gives what pydicom gives (the old, only, path)."""
    answered = 0
    for path in _pydicom_files():
        data = path.read_bytes()
        fast = header_reader.identifiers(data)
        if fast is None:
            continue
        assert {k: fast.get(k, "") for k in _IDENT_TAGS} == _parsed_ids(data), path.name
        answered += 1
    assert answered >= 20  # the common files really take the fast path


# -- repeated and out-of-order elements: DCMTK (Orthanc) keeps the first copy, pydicom the last -------------
VICTIM = synth.StudySpec(seed="victim", patient_id="VICTIM-1", slices=1, rows=8, columns=8)
STUDY, PATIENT, SOP_CLASS, SERIES = 0x0020000D, 0x00100020, 0x00080016, 0x0020000E
SYNTAXES = {"explicit": ExplicitVRLittleEndian, "implicit": ImplicitVRLittleEndian}


def _victim_copies(explicit: bool) -> tuple[bytes, bytes]:
    return (element(STUDY, "UI", VICTIM.study_uid, explicit), element(PATIENT, "LO", VICTIM.patient_id, explicit))


def repeated(syntax: str) -> bytes:
    """The victim's Study UID and Patient ID just before the sender's own copies."""
    data = encode(synth.instance(SPEC, 0), SYNTAXES[syntax])
    study, patient = _victim_copies(syntax == "explicit")
    return insert_before(insert_before(data, STUDY, study), PATIENT, patient)


def out_of_order(syntax: str) -> bytes:
    """The victim's Study UID and Patient ID opening the data set, the sender's own in their place."""
    data = encode(synth.instance(SPEC, 0), SYNTAXES[syntax])
    study, patient = _victim_copies(syntax == "explicit")
    return insert_before(data, SOP_CLASS, study + patient)


CRAFTED = {"repeated": repeated, "out-of-order": out_of_order}


@pytest.mark.parametrize("syntax", sorted(SYNTAXES))
@pytest.mark.parametrize("layout", sorted(CRAFTED))
def test_a_repeated_or_out_of_order_identifier_is_refused_not_guessed(layout: str, syntax: str) -> None:
    data = CRAFTED[layout](syntax)
    with pytest.raises(header_reader.AmbiguousHeader, match=r"element \(0010,0020\) in the data set is "
                       + ("repeated" if layout == "repeated" else r"out of order \(after \(0020,000D\)\)")):
        header_reader.identifiers(data)
    with pytest.raises(AmbiguousIds) as refused:
        read_ids(data)
    assert isinstance(refused.value, NotDicom)  # callers that only know NotDicom still refuse it
    # The pydicom fallback refuses it too (it used to keep the last copy: the sender's fresh study).
    with pytest.raises(AmbiguousIds, match=r"\(0010,0020\)"):
        _parsed_ids(data)


def test_the_refusal_keeps_what_was_read_for_the_audit_trail() -> None:
    with pytest.raises(header_reader.AmbiguousHeader) as refused:
        header_reader.identifiers(out_of_order("explicit"))
    assert refused.value.read == {"StudyInstanceUID": VICTIM.study_uid}
    assert VICTIM.study_uid not in str(refused.value)  # the message may reach logs: no identifiers in it


def test_a_repeated_transfer_syntax_in_the_file_meta_is_refused() -> None:
    # Implicit first (what DCMTK would use), explicit second: the two readings decode different data sets.
    data = encode(synth.instance(SPEC, 0), ExplicitVRLittleEndian)
    data = insert_before(data, 0x00020010, element(0x00020010, "UI", ImplicitVRLittleEndian), in_meta=True)
    length = int.from_bytes(data[140:144], "little") + len(element(0x00020010, "UI", ImplicitVRLittleEndian))
    data = data[:140] + length.to_bytes(4, "little") + data[144:]
    with pytest.raises(header_reader.AmbiguousHeader, match=r"\(0002,0010\) in the file meta information is repeated"):
        header_reader.identifiers(data)
    with pytest.raises(AmbiguousIds, match=r"\(0002,0010\)"):
        _parsed_ids(data)
    with pytest.raises(AmbiguousIds):
        read_ids(data)


def test_the_fallback_refuses_what_the_fast_path_left_to_it() -> None:
    # A non-ASCII Patient ID sends the instance to pydicom before the repeated Study UID is reached.
    ds = synth.instance(SPEC, 0)
    ds.PatientID = "MÜLLER"
    ds.SpecificCharacterSet = "ISO_IR 100"
    data = insert_before(encode(ds, ExplicitVRLittleEndian), STUDY, element(STUDY, "UI", VICTIM.study_uid))
    assert header_reader.identifiers(data) is None
    with pytest.raises(AmbiguousIds, match=r"\(0020,000D\) in the data set is repeated"):
        read_ids(data)


def test_a_repeat_after_the_identifiers_leaves_the_first_copy_in_force() -> None:
    # Past (0020,000E) the fast path stops: a later copy is ignored, as DCMTK ignores every later copy.
    data = encode(synth.instance(SPEC, 0), ExplicitVRLittleEndian)
    late = element(STUDY, "UI", VICTIM.study_uid)
    data = insert_before(data, 0x00280010, late)  # after (0020,0013) ... (0028,0004), before Rows
    assert header_reader.identifiers(data)["StudyInstanceUID"] == SPEC.study_uid
    with pytest.raises(AmbiguousIds):  # pydicom would keep the late copy: the fallback refuses
        _parsed_ids(data)


def test_ordered_files_still_take_both_paths() -> None:
    for syntax in SYNTAXES.values():
        data = encode(synth.instance(SPEC, 0), syntax)
        assert header_reader.identifiers(data) is not None
        assert _parsed_ids(data)["StudyInstanceUID"] == SPEC.study_uid


def test_an_identifier_after_the_walk_ends_is_left_to_pydicom_which_finds_it() -> None:
    # Patient ID moved behind Rows: the fast walk stops at Rows without it, DCMTK (which sorts) still finds
    # it; the fast path must not answer "no Patient ID", and the fallback reads the one copy there is.
    ds = synth.instance(SPEC, 0)
    data = encode(ds, ExplicitVRLittleEndian)
    own = element(PATIENT, "LO", SPEC.patient_id)
    at = data.index(own)
    data = insert_before(data[:at] + data[at + len(own):], 0x00280010, own)
    assert header_reader.identifiers(data) is None
    assert read_ids(data).patient_id == SPEC.patient_id


@pytest.mark.filterwarnings("ignore")  # pydicom warns about each damaged element on the way
def test_a_damaged_header_is_refused_as_not_dicom_never_an_unexpected_error() -> None:
    # Seeded byte flips in the meta and the identifiers: pydicom raises NotImplementedError (unknown VR) and
    # BytesLengthException on some, which used to escape read_ids (a STOW-RS upload answered 500).
    base = encode(synth.instance(SPEC, 0), ExplicitVRLittleEndian)
    rng = random.Random(1)
    for _ in range(600):
        data = bytearray(base)
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(128, 900)] = rng.randrange(256)
        with contextlib.suppress(NotDicom):
            read_ids(bytes(data))
