"""DICOM files with a chosen sequence nesting, written byte by byte, to prove the check on a deployment.

pydicom writes (and reads) sequences recursively, so it cannot produce the 200,000-level object of
CVE-2026-10528; these are assembled from headers instead, iteratively. The files carry no patient data:
a Secondary Capture instance with the identifiers given and one Content Sequence (0040,A730) nesting
``depth`` levels, each level one item holding the next level's sequence.
"""

from __future__ import annotations

import struct
import zlib

from securepacs.dataset_limits.nesting import DEFLATED_EXPLICIT_VR_LE, EXPLICIT_VR_BE, EXPLICIT_VR_LE, IMPLICIT_VR_LE

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
CONTENT_SEQUENCE = 0x0040A730
_UNDEFINED = 0xFFFFFFFF


def _pad(value: str, pad: bytes) -> bytes:
    raw = value.encode("ascii")
    return raw + pad if len(raw) % 2 else raw


class _Encoder:
    def __init__(self, syntax: str):
        self.explicit = syntax != IMPLICIT_VR_LE
        self.order = ">" if syntax == EXPLICIT_VR_BE else "<"

    def element(self, tag: int, vr: str, value: bytes) -> bytes:
        if not self.explicit:
            return struct.pack(self.order + "HHI", tag >> 16, tag & 0xFFFF, len(value)) + value
        return struct.pack(self.order + "HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), len(value)) + value

    def sequence(self, tag: int, length: int) -> bytes:
        if not self.explicit:
            return struct.pack(self.order + "HHI", tag >> 16, tag & 0xFFFF, length)
        return struct.pack(self.order + "HH2s2xI", tag >> 16, tag & 0xFFFF, b"SQ", length)

    def marker(self, tag: int, length: int) -> bytes:  # items and delimiters: tag and length only
        return struct.pack(self.order + "HHI", tag >> 16, tag & 0xFFFF, length)


def nested_dataset(depth: int, *, syntax: str = EXPLICIT_VR_LE, defined_length: bool = False,
                   tag: int = CONTENT_SEQUENCE) -> bytes:
    """``depth`` nested sequences (each with one item), undefined or defined lengths, as one bytes object."""
    enc = _Encoder(syntax)
    if not defined_length:
        opening = enc.sequence(tag, _UNDEFINED) + enc.marker(0xFFFEE000, _UNDEFINED)
        closing = enc.marker(0xFFFEE00D, 0) + enc.marker(0xFFFEE0DD, 0)
        return opening * depth + closing * depth
    # Lengths from the innermost level out: a level's item holds the next level's sequence.
    header = len(enc.sequence(tag, 0))
    item_length, parts = 0, []
    for _ in range(depth):
        sequence_length = 8 + item_length
        parts.append(enc.sequence(tag, sequence_length) + enc.marker(0xFFFEE000, item_length))
        item_length = header + sequence_length
    return b"".join(reversed(parts))


def nested_file(depth: int, *, study_uid: str, series_uid: str, sop_uid: str, patient_id: str,
                syntax: str = EXPLICIT_VR_LE, defined_length: bool = False) -> bytes:
    """A Part 10 file: file meta, the identifiers, and ``depth`` nested Content Sequence levels (in
    Deflated Explicit VR Little Endian, the data set deflated: 200,000 levels shrink to a few KB)."""
    deflated = syntax == DEFLATED_EXPLICIT_VR_LE
    encoding = EXPLICIT_VR_LE if deflated else syntax
    enc = _Encoder(encoding)
    meta_body = b"".join(
        struct.pack("<HH2sH", 0x0002, element, vr.encode(), len(value)) + value
        for element, vr, value in (
            (0x0002, "UI", _pad(SECONDARY_CAPTURE, b"\0")),
            (0x0003, "UI", _pad(sop_uid, b"\0")),
            (0x0010, "UI", _pad(syntax, b"\0")),
            (0x0012, "UI", _pad("1.2.826.0.1.3680043.10.543.1", b"\0")),
        )
    )
    version = struct.pack("<HH2s2xI", 0x0002, 0x0001, b"OB", 2) + b"\x00\x01"  # OB: a 4-byte length
    meta_body = version + meta_body
    meta = struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(meta_body)) + meta_body
    dataset = b"".join((
        enc.element(0x00080016, "UI", _pad(SECONDARY_CAPTURE, b"\0")),
        enc.element(0x00080018, "UI", _pad(sop_uid, b"\0")),
        enc.element(0x00080060, "CS", b"OT"),
        enc.element(0x00100020, "LO", _pad(patient_id, b" ")),
        enc.element(0x0020000D, "UI", _pad(study_uid, b"\0")),
        enc.element(0x0020000E, "UI", _pad(series_uid, b"\0")),
        nested_dataset(depth, syntax=encoding, defined_length=defined_length),
    ))
    if deflated:
        deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)  # raw deflate (PS3.5 A.5)
        dataset = deflater.compress(dataset) + deflater.flush()
        dataset += b"\0" * (len(dataset) % 2)
    return b"\0" * 128 + b"DICM" + meta + dataset
