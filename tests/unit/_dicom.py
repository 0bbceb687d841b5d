"""Encode a pydicom dataset as Part 10 bytes, as a device would send it (shared by unit tests)."""

from __future__ import annotations

import io
import struct

from pydicom.dataset import Dataset


def encode(ds: Dataset) -> bytes:
    ds = ds.copy()
    ds.ensure_file_meta()
    buf = io.BytesIO()
    ds.save_as(buf, implicit_vr=False, little_endian=True, enforce_file_format=True)
    return buf.getvalue()


def element(tag: int, vr: str, value: str, explicit: bool = True) -> bytes:
    """One little-endian data element, encoded by hand: pydicom will not write a repeated element."""
    raw = value.encode()
    if len(raw) % 2:
        raw += b"\x00" if vr == "UI" else b" "
    if explicit:
        return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), len(raw)) + raw
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(raw)) + raw


def insert_before(data: bytes, tag: int, extra: bytes, *, in_meta: bool = False) -> bytes:
    """``extra`` spliced in just before the first ``tag`` element of the data set (or of the file meta)."""
    start = 132 if in_meta else 132 + 12 + struct.unpack_from("<I", data, 132 + 8)[0]
    at = data.index(struct.pack("<HH", tag >> 16, tag & 0xFFFF), start)
    return data[:at] + extra + data[at:]
