"""Encode a pydicom dataset as Part 10 bytes, as a device would send it (shared by unit tests)."""

from __future__ import annotations

import io

from pydicom.dataset import Dataset


def encode(ds: Dataset) -> bytes:
    ds = ds.copy()
    ds.ensure_file_meta()
    buf = io.BytesIO()
    ds.save_as(buf, implicit_vr=False, little_endian=True, enforce_file_format=True)
    return buf.getvalue()
