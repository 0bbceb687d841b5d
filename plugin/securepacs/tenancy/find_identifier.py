"""The C-FIND identifier: its level, keys and values, and the tag tables of Orthanc's index.

Split from the engine because QIDO-RS and the C-FIND callback need the identifier side (parse Orthanc's
FindQuery items, build and encode data elements, which tags Orthanc indexes at which level) without
the matching against Orthanc or the answer building.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Any

from pydicom.config import IGNORE
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")
# What Orthanc accepts for (0008,0052) (case-insensitive), mapped to our level names.
_LEVEL_NAMES = {"PATIENT": "PATIENT", "PATIENTS": "PATIENT", "STUDY": "STUDY", "STUDIES": "STUDY",
                "SERIES": "SERIES", "IMAGE": "IMAGE", "INSTANCE": "IMAGE", "INSTANCES": "IMAGE"}

SPECIFIC_CHARACTER_SET = 0x00080005
QUERY_RETRIEVE_LEVEL = 0x00080052
RETRIEVE_AE_TITLE = 0x00080054
MODALITY = 0x00080060
MODALITIES_IN_STUDY = 0x00080061
SOP_CLASSES_IN_STUDY = 0x00080062
STUDY_INSTANCE_UID = 0x0020000D
N_PATIENT_STUDIES, N_PATIENT_SERIES, N_PATIENT_INSTANCES = 0x00201200, 0x00201202, 0x00201204
N_STUDY_SERIES, N_STUDY_INSTANCES, N_SERIES_INSTANCES = 0x00201206, 0x00201208, 0x00201209


def _tags(*keywords: str) -> frozenset[int]:
    return frozenset(int(tag_for_keyword(k)) for k in keywords)  # type: ignore[arg-type]


# Orthanc 1.10's indexed ("main") tags per level, as /patients, /studies, /series, /instances report them.
MAIN_TAGS: dict[str, frozenset[int]] = {
    "PATIENT": _tags("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "OtherPatientIDs"),
    "STUDY": _tags("StudyDate", "StudyTime", "StudyID", "StudyDescription", "AccessionNumber", "StudyInstanceUID",
                   "RequestedProcedureDescription", "InstitutionName", "RequestingPhysician",
                   "ReferringPhysicianName"),
    "SERIES": _tags("SeriesDate", "SeriesTime", "Modality", "Manufacturer", "StationName", "SeriesDescription",
                    "BodyPartExamined", "SequenceName", "ProtocolName", "SeriesNumber", "CardiacNumberOfImages",
                    "ImagesInAcquisition", "NumberOfTemporalPositions", "NumberOfSlices", "NumberOfTimeSlices",
                    "SeriesInstanceUID", "ImageOrientationPatient", "SeriesType", "OperatorsName",
                    "PerformedProcedureStepDescription", "AcquisitionDeviceProcessingDescription",
                    "ContrastBolusAgent"),
    "IMAGE": _tags("InstanceCreationDate", "InstanceCreationTime", "AcquisitionNumber", "ImageIndex",
                   "InstanceNumber", "NumberOfFrames", "TemporalPositionIdentifier", "SOPInstanceUID",
                   "ImagePositionPatient", "ImageComments", "ImageOrientationPatient"),
}
ALL_MAIN_TAGS = frozenset().union(*MAIN_TAGS.values())
# Main tags visible to a query at each level: its own and those of the levels above (Orthanc 1.6+).
VISIBLE_TAGS = {level: frozenset().union(*(MAIN_TAGS[lv] for lv in LEVELS[: i + 1])) for i, level in enumerate(LEVELS)}
COMPUTED_TAGS: dict[str, frozenset[int]] = {
    "PATIENT": frozenset({N_PATIENT_STUDIES, N_PATIENT_SERIES, N_PATIENT_INSTANCES}),
    "STUDY": frozenset({N_STUDY_SERIES, N_STUDY_INSTANCES, MODALITIES_IN_STUDY, SOP_CLASSES_IN_STUDY}),
    "SERIES": frozenset({N_SERIES_INSTANCES}),
    "IMAGE": frozenset(),
}
# Keys that never make Orthanc's SCP read the stored files (every other non-main key does).
NO_FILE_TAGS = frozenset().union(*COMPUTED_TAGS.values()) | {SPECIFIC_CHARACTER_SET, QUERY_RETRIEVE_LEVEL}

_BINARY_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}
_INT_VRS = {"US", "SS", "UL", "SL", "UV", "SV"}
_FLOAT_VRS = {"FL", "FD"}


class QueryError(ValueError):
    """The identifier cannot be answered (no or unknown Query/Retrieve Level, malformed value)."""


# -- identifiers ------------------------------------------------------------------------------------------
def vr_of(tag: int) -> str:
    try:
        return dictionary_VR(tag).split(" or ")[0]
    except KeyError:
        group, element = tag >> 16, tag & 0xFFFF
        # Private creators are LO by definition; other unknown tags travel as raw bytes.
        return "LO" if group % 2 and 0x10 <= element <= 0xFF else "UN"


def make_element(tag: int, text: str | None, vr: str | None = None) -> DataElement:
    """A data element from Orthanc's text form of a value (``\\``-separated for several values)."""
    vr = vr or vr_of(tag)
    if vr == "SQ":
        return DataElement(tag, vr, Sequence())
    if not text:
        return DataElement(tag, vr, None, validation_mode=IGNORE)
    try:
        if vr in _INT_VRS or vr in _FLOAT_VRS:
            kind = int if vr in _INT_VRS else float
            numbers = [kind(part) for part in text.split("\\")]
            return DataElement(tag, vr, numbers if len(numbers) > 1 else numbers[0], validation_mode=IGNORE)
        if vr in _BINARY_VRS or vr == "AT":
            return _raw_element(tag, text)
        # IGNORE: Orthanc's values are passed on as they are, even outside the VR's rules (no warnings).
        return DataElement(tag, vr, text, validation_mode=IGNORE)
    except (ValueError, OverflowError):
        # A value its VR cannot hold (e.g. IS "abc"): keep the bytes rather than drop or reject it.
        return _raw_element(tag, text)


def _raw_element(tag: int, text: str) -> DataElement:
    # Built as OB then relabelled: pydicom would turn a UN element of a known tag back into its VR.
    elem = DataElement(tag, "OB", text.encode("utf-8"))
    elem.VR = "UN"
    return elem


def _scalar_text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace").rstrip("\x00 ")
    if isinstance(value, float) and value.is_integer():
        return str(value)
    return str(value)


def element_text(elem: DataElement) -> str:
    """The value as Orthanc's FindQuery would give it: text, several values joined by ``\\``."""
    value = elem.value
    if value is None or value == "" or value == b"":
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(_scalar_text(v) for v in value)
    return _scalar_text(value)


PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"


def find_sop_class(level: str) -> str:
    """The C-FIND information model a query most likely used (the audit record's SOP Class UID): Orthanc does
    not pass it to the plugin; PATIENT level exists only in Patient Root, anything else is named Study Root."""
    return PATIENT_ROOT_FIND if level == "PATIENT" else STUDY_ROOT_FIND


def parse_find_query(items: list[tuple[int, int, str]]) -> tuple[str, Dataset]:
    """``(level, identifier)`` from Orthanc's FindQuery items ``(group, element, value)``.

    Orthanc 1.10 passes every key of the identifier including (0008,0005) and (0008,0052), drops group
    lengths, gives values as UTF-8 text (several values joined by ``\\``) and passes a sequence as its tag
    with an empty value (its items are lost). Level names are those Orthanc's own SCP accepts.
    """
    identifier = Dataset()
    for group, element, value in items:
        if element == 0x0000:
            continue  # group length: never a key (Orthanc's SCP ignores them too)
        tag = (group << 16) | element
        identifier.add(make_element(tag, value))
    raw = str(identifier.get("QueryRetrieveLevel", "") or "").strip()
    if not raw:
        raise QueryError("the identifier has no Query/Retrieve Level (0008,0052)")
    level = _LEVEL_NAMES.get(raw.upper())
    if level is None:
        raise QueryError(f"Query/Retrieve Level {raw!r} is not one of {', '.join(LEVELS)}")
    return level, identifier


def encode_answer(ds: Dataset) -> bytes:
    """Implicit VR Little Endian dataset bytes for ``answers.FindAddAnswer``.

    Written in Orthanc's default encoding (Latin-1, ISO_IR 100) whenever the values allow it: Orthanc
    converts any other character set into its own, and that conversion (DCMTK) re-pads UIDs with a space
    instead of NUL. Values Latin-1 cannot hold go as UTF-8; Orthanc then drops what Latin-1 lacks, exactly
    as its own SCP does.
    """
    for charset in ("ISO_IR 100", "ISO_IR 192"):
        out = Dataset()
        out.update(ds)
        out.SpecificCharacterSet = charset
        buffer = io.BytesIO()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # pydicom only warns when a value does not fit the charset
                dcmwrite(buffer, out, implicit_vr=True, little_endian=True)
        except (UnicodeError, UserWarning):
            continue
        return buffer.getvalue()
    raise QueryError("an answer cannot be encoded even as UTF-8")


@dataclass(frozen=True)
class Key:
    tag: int
    text: str  # "" = universal matching / return key
    sequence: bool = False


@dataclass(frozen=True)
class Request:
    """A parsed identifier: its keys (without character set/level), constraints and the level text."""

    level: str
    keys: tuple[Key, ...]
    level_text: str | None = None

    @classmethod
    def of(cls, level: str, identifier: Dataset) -> Request:
        if level not in LEVELS:
            raise QueryError(f"query level {level!r} is not one of {', '.join(LEVELS)}")
        keys = []
        level_text = None
        for elem in identifier:
            tag = int(elem.tag)
            if tag == QUERY_RETRIEVE_LEVEL:
                level_text = element_text(elem)
            elif tag != SPECIFIC_CHARACTER_SET and tag & 0xFFFF:
                keys.append(Key(tag, "" if elem.VR == "SQ" else element_text(elem), elem.VR == "SQ"))
        return cls(level, tuple(keys), level_text)

    @property
    def constraints(self) -> dict[int, str]:
        return {k.tag: k.text for k in self.keys if k.text and not k.sequence}

    def asks(self, tag: int) -> bool:
        return any(k.tag == tag for k in self.keys)

    @property
    def reads_files(self) -> bool:
        """Whether Orthanc's SCP answers this identifier from the stored tags rather than its index."""
        return any(k.sequence or (k.tag not in ALL_MAIN_TAGS and k.tag not in NO_FILE_TAGS) for k in self.keys)
