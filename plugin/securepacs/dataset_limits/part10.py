"""The nesting check for a whole DICOM file (PS3.10): file meta information first, then the data set.

Used where a file arrives whole (STOW-RS parts) and is handed to Orthanc's ``/instances``, whose DCMTK
reads the preamble and meta like this: the meta group is Explicit VR Little Endian and names the data
set's transfer syntax. A file without meta (no preamble, or no Transfer Syntax UID) is read the way DCMTK
guesses it: explicit VR if the bytes after the first tag look like a VR, else implicit.
"""

from __future__ import annotations

import struct

from securepacs.dataset_limits.nesting import (
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    MAX_DEPTH,
    Malformed,
    scanner_for,
)

PREAMBLE = 128
MAGIC = b"DICM"
TRANSFER_SYNTAX_UID = 0x00020010
_META_LONG_VRS = frozenset({b"OB", b"OW", b"UN", b"UT", b"SQ", b"UC", b"UR"})
_FEED = 256 * 1024  # the scanner is fed in slices, as if the file were streamed


def meta_end(data: bytes | memoryview) -> tuple[int, str | None]:
    """(offset of the data set, its transfer syntax UID from the meta or None)."""
    view = memoryview(data)
    pos = PREAMBLE + len(MAGIC) if bytes(view[PREAMBLE : PREAMBLE + 4]) == MAGIC else 0
    syntax: str | None = None
    while len(view) - pos >= 8:
        group, element = struct.unpack_from("<HH", view, pos)
        if group != 0x0002:
            break
        vr = bytes(view[pos + 4 : pos + 6])
        if vr in _META_LONG_VRS:
            if len(view) - pos < 12:
                raise Malformed("the file meta information ends inside an element header")
            (length,) = struct.unpack_from("<I", view, pos + 8)
            start = pos + 12
        else:
            (length,) = struct.unpack_from("<H", view, pos + 6)
            start = pos + 8
        if length == 0xFFFFFFFF or start + length > len(view):
            raise Malformed(f"file meta element (0002,{element:04X}) has an impossible length")
        if (group << 16 | element) == TRANSFER_SYNTAX_UID:
            syntax = bytes(view[start : start + length]).decode("ascii", "replace").rstrip("\0 ")
        pos = start + length
    return pos, syntax


def check_file(data: bytes | memoryview, max_depth: int = MAX_DEPTH) -> int:
    """Raise ``NestingError`` unless the file's data set nests at most ``max_depth`` sequence levels;
    the deepest nesting found otherwise."""
    view = memoryview(data)
    start, syntax = meta_end(view)
    if syntax is None:
        head = bytes(view[start + 4 : start + 6])
        syntax = EXPLICIT_VR_LE if len(head) == 2 and head.isalpha() and head.isupper() else IMPLICIT_VR_LE
    scanner = scanner_for(syntax, max_depth)
    for offset in range(start, len(view), _FEED):
        scanner.feed(view[offset : offset + _FEED])
    # Not ``finish()``: a truncated file nests no deeper than what was scanned; whether it is complete is
    # for the readers after us to judge (tenancy's, Orthanc's), as before this check existed.
    return scanner.deepest
