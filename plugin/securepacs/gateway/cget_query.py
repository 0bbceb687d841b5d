"""What a C-GET identifier asks for: its retrieve level and the keys Orthanc will resolve.

Orthanc 1.10's C-GET SCP (OrthancGetRequestHandler) reads QueryRetrieveLevel, then looks up exactly one
key: PatientID (PATIENT), AccessionNumber if present else StudyInstanceUID (STUDY), SeriesInstanceUID
(SERIES) or SOPInstanceUID (IMAGE), each a backslash-separated list matched exactly. It sends every
instance below every match. So the gateway checks every UID the identifier carries (a superset of what
Orthanc uses), and refuses what it cannot check: a STUDY-level request naming an AccessionNumber (Orthanc
would match on it instead of the UID), universal or wildcard keys, and anything it cannot decode exactly.

The identifier is decoded with pydicom in the presentation context's transfer syntax, but pydicom is a
lenient reader (short values, trailing bytes, implicit-VR switches) while DCMTK reads the same bytes on
the other side. The structural checks here make the encoding unambiguous before any value is believed.
"""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.filereader import data_element_generator

from securepacs.dicom import status_codes
from securepacs.dicom.identifiers import LEVEL_KEY, UID_RE

IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
EXPLICIT_VR_BE = "1.2.840.10008.1.2.2"
DEFLATED_EXPLICIT_VR_LE = "1.2.840.10008.1.2.1.99"
# transfer syntax -> (implicit VR, little endian, deflated)
_SYNTAXES = {
    IMPLICIT_VR_LE: (True, True, False),
    EXPLICIT_VR_LE: (False, True, False),
    EXPLICIT_VR_BE: (False, False, False),
    DEFLATED_EXPLICIT_VR_LE: (False, True, True),
}
_VRS = frozenset((  # PS3.5 Table 6.2-1
    "AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "OB", "OD", "OF", "OL", "OV",
    "OW", "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UN", "UR", "US", "UT", "UV",
))

QUERY_RETRIEVE_LEVEL = 0x00080052
ACCESSION_NUMBER = 0x00080050
PATIENT_ID = 0x00100020
STUDY_INSTANCE_UID = 0x0020000D
SERIES_INSTANCE_UID = 0x0020000E
SOP_INSTANCE_UID = 0x00080018
_EXPECTED_VR = {QUERY_RETRIEVE_LEVEL: "CS", ACCESSION_NUMBER: "SH", PATIENT_ID: "LO",
                STUDY_INSTANCE_UID: "UI", SERIES_INSTANCE_UID: "UI", SOP_INSTANCE_UID: "UI"}
UID_KEYS = (("StudyInstanceUID", STUDY_INSTANCE_UID), ("SeriesInstanceUID", SERIES_INSTANCE_UID),
            ("SOPInstanceUID", SOP_INSTANCE_UID))

# The spellings Orthanc's StringToResourceType accepts (after upper-casing), mapped to the level we report.
# They must match Orthanc's exactly: a level read differently here would be checked as one level and
# served as another. Anything else is refused, which Orthanc would have refused too.
LEVELS = {
    "PATIENT": "PATIENT", "PATIENTS": "PATIENT",
    "STUDY": "STUDY", "STUDIES": "STUDY",
    "SERIES": "SERIES",
    "IMAGE": "IMAGE", "IMAGES": "IMAGE", "INSTANCE": "IMAGE", "INSTANCES": "IMAGE",
}
_UID = UID_RE
MAX_UIDS = 10_000  # bounds the ownership check one request can cause


class Unverifiable(Exception):
    """The identifier cannot be checked; ``status`` is the C-GET-RSP failure to answer with.

    The message is safe for logs and events: it never quotes a value from the identifier.
    """

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class GetQuery:
    level: str  # PATIENT | STUDY | SERIES | IMAGE
    keys: dict[str, list[str]]  # StudyInstanceUID / SeriesInstanceUID / SOPInstanceUID / PatientID

    def counts(self) -> dict[str, int]:
        """How many values each key names: what logs and events may say about a request."""
        return {k: len(v) for k, v in self.keys.items()}


def parse_identifier(data: bytes, transfer_syntax: str, limit: int) -> GetQuery:
    return query_from_elements(decode_elements(data, transfer_syntax, limit))


def decode_elements(data: bytes, transfer_syntax: str, limit: int) -> dict[int, tuple[str | None, bytes]]:
    """Top-level elements of an identifier: tag -> (VR or None for implicit VR, raw value bytes)."""
    try:
        implicit, little, deflated = _SYNTAXES[transfer_syntax]
    except KeyError:
        raise Unverifiable(status_codes.UNABLE_TO_PROCESS, "identifier in an unsupported transfer syntax") from None
    if deflated:
        data = _inflate(data, limit)
    elements: dict[int, tuple[str | None, bytes]] = {}
    end, last = 0, -1
    try:
        for elem in data_element_generator(io.BytesIO(data), implicit, little):
            if not isinstance(elem, RawDataElement) or elem.length == 0xFFFFFFFF:
                # Undefined length means nested items to find the end: see _may_nest.
                raise _bad("undefined-length element")
            tag, value = int(elem.tag), elem.value or b""
            if tag <= last or tag >> 16 == 0xFFFE:
                raise _bad("elements out of order, repeated, or an item tag at the top level")
            if len(value) != elem.length:
                raise _bad("truncated element value")
            if not implicit and elem.VR not in _VRS:
                raise _bad("unknown or missing explicit VR")
            if _may_nest(tag, None if implicit else str(elem.VR)):
                # A sequence's items are parsed by the far side too: two parsers, two chances to disagree
                # about where the top-level elements are. Unique keys never need one.
                raise _bad("sequence in a C-GET identifier")
            elements[tag] = (None if implicit else str(elem.VR), bytes(value))
            end, last = elem.value_tell + elem.length, tag
    except Unverifiable:
        raise
    except Exception:  # hostile bytes: whatever pydicom raises means "not decodable"
        raise _bad("undecodable identifier") from None
    if end != len(data):
        raise _bad("bytes after the last element")
    return elements


def _may_nest(tag: int, vr: str | None) -> bool:
    """Could this element hold items? A C-GET identifier holds unique keys only (PS3.4 C.4.3.2)."""
    if vr is not None:
        return vr in ("SQ", "UN")  # UN may be read as a sequence by the far side (PS3.5 6.2.2)
    try:
        return bool(dictionary_VR(tag) == "SQ")
    except KeyError:  # private or unknown: read as opaque bytes by both sides
        return False


def _bad(reason: str) -> Unverifiable:
    return Unverifiable(status_codes.UNABLE_TO_PROCESS, reason)


def _inflate(data: bytes, limit: int) -> bytes:
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)  # Deflated Explicit VR LE is raw deflate (PS3.5 A.5)
    try:
        out = inflater.decompress(data, limit + 1)  # bounded: a small deflate stream can expand enormously
    except zlib.error:
        raise _bad("identifier is not a valid deflate stream") from None
    if len(out) > limit:
        raise _bad(f"inflated identifier is larger than {limit} bytes")
    # A single NUL may pad the deflated bytes to even length (PS3.5 A.5); anything else is ambiguous.
    if not inflater.eof or inflater.unused_data not in (b"", b"\0"):
        raise _bad("incomplete or padded deflate stream")
    return out


def query_from_elements(elements: dict[int, tuple[str | None, bytes]]) -> GetQuery:
    for tag, (vr, _) in elements.items():
        if vr is not None and tag in _EXPECTED_VR and vr != _EXPECTED_VR[tag]:
            raise _bad("a key attribute is encoded with an unexpected VR")
    level_raw = _text(elements, QUERY_RETRIEVE_LEVEL)
    level = LEVELS.get((level_raw or "").upper())
    if level is None:
        raise Unverifiable(status_codes.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
                           "missing or unknown QueryRetrieveLevel")
    keys: dict[str, list[str]] = {}
    for name, tag in UID_KEYS:
        text = _text(elements, tag)
        if text:  # empty keys other than the level's are ignored by Orthanc; the level's is checked below
            keys[name] = _uids(text, name)
    if level == "PATIENT":
        # Below PATIENT level Orthanc ignores PatientID, so it is neither checked nor sent anywhere.
        patient_id = _text(elements, PATIENT_ID)
        if patient_id:
            keys["PatientID"] = list(dict.fromkeys(patient_id.split("\\")))
    if level == "STUDY" and ACCESSION_NUMBER in elements:
        # Orthanc resolves a STUDY-level C-GET by AccessionNumber whenever the tag is present (even empty),
        # and accession numbers are neither unique nor owned: refuse rather than check the wrong key.
        raise Unverifiable(status_codes.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
                           "STUDY-level C-GET with AccessionNumber: retrieve by StudyInstanceUID only")
    if LEVEL_KEY[level] not in keys:
        raise Unverifiable(status_codes.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
                           f"{level}-level C-GET without {LEVEL_KEY[level]} (universal matching is not allowed)")
    if sum(len(v) for v in keys.values()) > MAX_UIDS:
        raise _bad(f"C-GET names more than {MAX_UIDS} keys")
    return GetQuery(level, keys)


def _text(elements: dict[int, tuple[str | None, bytes]], tag: int) -> str | None:
    found = elements.get(tag)
    if found is None:
        return None
    try:
        text = found[1].decode("ascii")
    except UnicodeDecodeError:
        # Key values we act on are default-repertoire text; other bytes could decode differently elsewhere.
        raise Unverifiable(status_codes.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, "non-ASCII key value") from None
    return text.rstrip(" \0")  # trailing padding (space for text VRs, NUL for UI) is not part of the value


def _uids(text: str, name: str) -> list[str]:
    uids = text.split("\\")  # a list of UIDs is allowed in C-GET keys (PS3.4 C.4.3.2.1)
    for uid in uids:
        if len(uid) > 64 or not _UID.fullmatch(uid):
            raise Unverifiable(status_codes.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
                               f"{name} holds an empty value, a wildcard or an invalid UID")
    return list(dict.fromkeys(uids))  # duplicates change nothing Orthanc sends
