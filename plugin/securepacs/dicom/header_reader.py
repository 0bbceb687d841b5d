"""The identifiers tenancy needs, read straight from a DICOM Part 10 byte string.

Every stored instance passes the C-STORE filter, and a full pydicom parse of its header cost about
0.3 ms per instance (a tenth of Orthanc's own ingest time for a CT slice). The five identifiers all sit
in groups 0008-0020, near the start of the data set, so a walk over the top-level elements up to
(0020,000E) finds them in a few microseconds.

The walk only answers when the answer is unambiguous: Explicit or Implicit VR Little Endian, defined
lengths, plain printable ASCII values. Anything else (deflate, big endian, an undefined-length sequence
before the identifiers, a character set, a multi-valued or malformed element) returns None and the caller
parses with pydicom as before, so this is a shortcut, never a second interpretation of the data.

One thing is never left to a fallback: a repeated or out-of-order element in the file meta group or in the
data set up to the identifiers raises ``AmbiguousHeader``. Readers disagree on which copy of a repeated
element counts (DCMTK, and so Orthanc, keeps the first; pydicom the last), so such a data set can name one
study to tenancy and another to Orthanc's index; PS3.5 7.1 requires ascending tags anyway.
"""

from __future__ import annotations

import struct

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"

# Tag (group << 16 | element) -> keyword, as tenancy names them.
IDENTIFIER_TAGS = {
    0x00080016: "SOPClassUID",
    0x00080018: "SOPInstanceUID",
    0x00100020: "PatientID",
    0x0020000D: "StudyInstanceUID",
    0x0020000E: "SeriesInstanceUID",
}
LAST_IDENTIFIER_TAG = max(IDENTIFIER_TAGS)
_PREAMBLE = 128
_MAGIC = b"DICM"
_UNDEFINED_LENGTH = 0xFFFFFFFF
# Explicit VR encodings with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2).
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_TAG = struct.Struct("<HH")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")


class AmbiguousHeader(ValueError):
    """A repeated or out-of-order element where the identifiers are read: no reading of it can be trusted.

    ``read`` holds the identifiers read before the offending element (first copies), for the audit trail.
    """

    def __init__(self, message: str, read: dict[str, str]):
        super().__init__(message)
        self.read = read


def tag_name(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def out_of_order(tag: int, previous: int, where: str, read: dict[str, str], repeated: bool = False) -> AmbiguousHeader:
    what = "repeated" if repeated or tag == previous else f"out of order (after {tag_name(previous)})"
    return AmbiguousHeader(f"element {tag_name(tag)} in the {where} is {what}: the data set is ambiguous", read)


def _element(data: bytes, pos: int, explicit: bool) -> tuple[int, int, int] | None:
    """(tag, value offset, value length) of the element at ``pos``, or None past the end."""
    if pos + 8 > len(data):
        return None
    group, elem = _TAG.unpack_from(data, pos)
    if not explicit:
        return group << 16 | elem, pos + 8, _U32.unpack_from(data, pos + 4)[0]
    if data[pos + 4 : pos + 6] in _LONG_VRS:
        if pos + 12 > len(data):
            return None
        return group << 16 | elem, pos + 12, _U32.unpack_from(data, pos + 8)[0]
    return group << 16 | elem, pos + 8, _U16.unpack_from(data, pos + 6)[0]


def _text(raw: bytes) -> str | None:
    """The value as tenancy compares it (padding and surrounding spaces gone), or None if not plain."""
    value = raw.rstrip(b"\x00 ")
    if any(b < 0x20 or b > 0x7E for b in value) or b"\\" in value:
        return None
    return value.decode("ascii").strip()


def identifiers(data: bytes) -> dict[str, str] | None:
    """Keyword -> value for the identifiers present at the top level, or None to say "parse it fully".

    Raises ``AmbiguousHeader`` for a repeated or out-of-order element before or among the identifiers.
    """
    if len(data) < _PREAMBLE + 4 or data[_PREAMBLE : _PREAMBLE + 4] != _MAGIC:
        return None
    pos = _PREAMBLE + 4
    transfer_syntax = None
    values: dict[str, str] = {}
    previous = -1
    # File meta information: always Explicit VR Little Endian (PS3.10 7.1).
    while (found := _element(data, pos, explicit=True)) is not None and found[0] >> 16 == 0x0002:
        tag, start, length = found
        if tag <= previous:
            raise out_of_order(tag, previous, "file meta information", values)
        previous = tag
        if length == _UNDEFINED_LENGTH or start + length > len(data):
            return None
        if tag == 0x00020010:
            transfer_syntax = _text(data[start : start + length])
        pos = start + length
    if transfer_syntax == EXPLICIT_VR_LITTLE_ENDIAN:
        explicit = True
    elif transfer_syntax == IMPLICIT_VR_LITTLE_ENDIAN:
        explicit = False
    else:
        return None
    previous = -1
    while (found := _element(data, pos, explicit)) is not None:
        tag, start, length = found
        if tag <= previous:
            raise out_of_order(tag, previous, "data set", values)
        if tag > LAST_IDENTIFIER_TAG:
            break
        previous = tag
        if length == _UNDEFINED_LENGTH or start + length > len(data):
            return None
        keyword = IDENTIFIER_TAGS.get(tag)
        if keyword is not None:
            text = _text(data[start : start + length])
            if text is None:
                return None
            values[keyword] = text
        pos = start + length
    if len(values) < len(IDENTIFIER_TAGS):
        # Not all five before the first later tag: one may still follow out of order (DCMTK would find it).
        return None
    return values
