"""A streaming check of how deeply a DICOM data set nests sequences, before any DICOM parser reads it.

Why: DCMTK parses sequences recursively, one C++ stack frame chain per level, and Orthanc parses every
received data set with it before a plugin sees it. A few MB holding 200,000 nested sequences exhaust the
stack and kill Orthanc (CVE-2026-10528; the fix needs a DCMTK hot-fix that Debian's DCMTK 3.7.0 lacks, and
Debian 12/13's Orthanc predates it). So the gateway and the STOW-RS handler run this scanner first.

The scanner is fed the data set's bytes in chunks of any size (PDV fragments as they arrive) and follows
only the structure: element headers, items and delimiters. Values are skipped, never kept. Memory is one
small frame per open level (capped at the limit, so O(limit)) plus at most one partial header; no
recursion. It reads sequences where DCMTK does, and errs on the side of reading more as one:

* explicit VR: VR SQ (defined or undefined length); any other VR with undefined length (DCMTK reads
  OB/OW/UN/unknown VRs of undefined length as a sequence; UN's items in Implicit VR Little Endian,
  PS3.5 6.2.2) -- except Pixel Data (7FE0,0010) of undefined length, which is encapsulated pixel data:
  one level whose items are fragments (opaque bytes), never data sets;
* implicit VR: any undefined length (DCMTK reads it as a sequence), a defined-length element whose
  dictionary VR is SQ (pydicom's dictionary), and a private or unknown element whose value starts with
  an item tag (a private dictionary may know it as SQ);
* explicit VR UN of defined length is opaque: DCMTK does not look inside (unknown-VR conversion is off).

A structure that does not add up (a child longer than its parent, an item outside a sequence, a
delimiter where none belongs) is refused too: whatever another parser makes of it, we cannot vouch for the
depth of what follows. A data set that merely ends early is not (``finish`` tells, for those who ask).
Real-world objects nest rarely beyond ~8 levels (e.g. RT Structure Sets, SR content trees); the limit is
far above that and far below a stack's reach.
"""

from __future__ import annotations

import struct
import zlib
from typing import Protocol

from pydicom.datadict import DicomDictionary

# Sequence levels a data set may open, nested. Real objects rarely exceed ~8 (SR trees, RT plans);
# DCMTK needs several KB of stack per level, so 32 is both generous and harmless.
MAX_DEPTH = 32

IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
DEFLATED_EXPLICIT_VR_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BE = "1.2.840.10008.1.2.2"

UNDEFINED_LENGTH = 0xFFFFFFFF
ITEM = 0xFFFEE000
ITEM_DELIMITATION = 0xFFFEE00D
SEQUENCE_DELIMITATION = 0xFFFEE0DD
PIXEL_DATA = 0x7FE00010

# Explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2).
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_SQ_TAGS = frozenset(tag for tag, entry in DicomDictionary.items() if entry[0] == "SQ")
_ITEM_TAG_LE = b"\xfe\xff\x00\xe0"
_MAX_HEADER = 12  # the longest header we read at once: explicit long VR (12), implicit + peek (8 + 4)
_INFLATE_CHUNK = 64 * 1024  # inflated bytes produced per step: a deflate bomb never lands in memory whole

# Frame kinds: a data set or item holds elements; a sequence holds items; pixel data holds fragments.
_DATASET, _SEQUENCE, _FRAGMENTS = 0, 1, 2


class NestingError(ValueError):
    """The data set must not reach a DICOM parser: ``reason`` says why, without any value from it."""


class TooDeep(NestingError):
    pass


class Malformed(NestingError):
    pass


class Scanner(Protocol):
    @property
    def deepest(self) -> int: ...

    def feed(self, data: bytes | memoryview) -> None: ...
    def finish(self) -> None: ...


class _Frame:
    __slots__ = ("end", "explicit", "kind", "limit", "little")

    def __init__(self, kind: int, end: int | None, limit: int | None, explicit: bool, little: bool):
        self.kind, self.end, self.limit, self.explicit, self.little = kind, end, limit, explicit, little


class NestingScanner:
    """Follows one data set's structure chunk by chunk; raises ``NestingError`` as soon as it must."""

    def __init__(self, *, explicit: bool, little: bool = True, max_depth: int = MAX_DEPTH):
        if max_depth < 1:
            raise ValueError(f"max_depth {max_depth}: expected at least 1")
        self.max_depth = max_depth
        self.depth = 0  # sequence levels open now
        self.deepest = 0
        self._stack = [_Frame(_DATASET, None, None, explicit, little)]
        self._pos = 0  # offset in the data set of the next byte to parse
        self._skip = 0  # value bytes still to pass over
        self._pending = b""  # the start of a header split across chunks (< _MAX_HEADER bytes)

    def feed(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        n, i = len(view), 0
        if self._pending:
            need = _MAX_HEADER - len(self._pending)
            joined = self._pending + bytes(view[:need])
            used = self._step(joined, 0)
            if used < 0:  # still incomplete: the chunk was shorter than the rest of the header
                self._pending = joined
                return
            i = used - len(self._pending)
            self._pending = b""
        while True:
            if self._skip:
                take = min(self._skip, n - i)
                self._skip -= take
                self._pos += take
                i += take
                if self._skip:
                    return
                self._close_ended()
            if i >= n:
                return
            used = self._step(view, i)
            if used < 0:
                self._pending = bytes(view[i:])
                return
            i = used

    def finish(self) -> None:
        """The data set ended: it must not end inside an element, an item or a sequence. For callers that
        need a complete structure; the guards do not (a truncated data set nests no deeper than its bytes)."""
        if self._pending or self._skip:
            raise Malformed(f"the data set ends inside an element (at byte {self._pos})")
        if len(self._stack) > 1:
            raise Malformed(f"the data set ends inside {self.depth} open sequence level(s)")

    # -- one header ----------------------------------------------------------------------------------
    def _step(self, buf: bytes | memoryview, i: int) -> int:
        """Parse the header at ``buf[i:]``; the offset after it, or -1 if ``buf`` ends before it does."""
        frame = self._stack[-1]
        avail = len(buf) - i
        if avail < 8:
            return -1
        little = frame.little
        group, element = struct.unpack_from("<HH" if little else ">HH", buf, i)
        tag = group << 16 | element
        vr = None
        if frame.kind != _DATASET or group == 0xFFFE or not frame.explicit:
            size = 8
            (length,) = struct.unpack_from("<I" if little else ">I", buf, i + 4)
        else:
            vr = bytes(buf[i + 4 : i + 6])
            if not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
                raise Malformed(f"element ({group:04X},{element:04X}) has no valid VR")
            if vr in _LONG_VRS:
                if avail < 12:
                    return -1
                size = 12
                (length,) = struct.unpack_from("<I" if little else ">I", buf, i + 8)
            else:
                size = 8
                (length,) = struct.unpack_from("<H" if little else ">H", buf, i + 6)
        peek = None
        if (frame.kind == _DATASET and not frame.explicit and group != 0xFFFE and length != UNDEFINED_LENGTH
                and length >= 4 and tag not in _SQ_TAGS and (group & 1 or tag not in DicomDictionary)):
            if avail < size + 4:
                return -1
            peek = bytes(buf[i + size : i + size + 4])
        if frame.limit is not None and self._pos + size > frame.limit:
            raise Malformed(f"a header at byte {self._pos} crosses the end of its enclosing item or sequence")
        if frame.kind != _DATASET and tag not in (ITEM, SEQUENCE_DELIMITATION):
            raise Malformed(f"({group:04X},{element:04X}) where a sequence item belongs")
        self._pos += size
        defined = length != UNDEFINED_LENGTH
        if defined and frame.limit is not None and self._pos + length > frame.limit:
            raise Malformed(f"({group:04X},{element:04X}) is longer than its enclosing item or sequence")
        if frame.kind == _SEQUENCE:
            self._in_sequence(frame, tag, length)
        elif frame.kind == _FRAGMENTS:
            self._in_fragments(frame, tag, length)
        else:
            self._in_dataset(frame, tag, vr, length, peek)
        self._close_ended()
        return i + size

    def _in_dataset(self, frame: _Frame, tag: int, vr: bytes | None, length: int, peek: bytes | None) -> None:
        if tag == ITEM_DELIMITATION and len(self._stack) > 1 and frame.end is None:
            self._stack.pop()  # an item, not a sequence level: the depth stays
            return
        if tag >> 16 == 0xFFFE:
            raise Malformed(f"item or delimiter ({tag >> 16:04X},{tag & 0xFFFF:04X}) where an element belongs")
        if length == UNDEFINED_LENGTH:
            if vr == b"UN":  # PS3.5 6.2.2: its items are Implicit VR Little Endian, whatever the transfer syntax
                self._push(_SEQUENCE, None, explicit=False, little=True)
            elif tag == PIXEL_DATA and vr != b"SQ":
                self._push(_FRAGMENTS, None, frame.explicit, frame.little)
            else:
                self._push(_SEQUENCE, None, frame.explicit, frame.little)
            return
        is_sequence = vr == b"SQ" if frame.explicit else (tag in _SQ_TAGS or peek == _ITEM_TAG_LE)
        if is_sequence:
            self._push(_SEQUENCE, self._pos + length, frame.explicit, frame.little)
        else:
            self._skip = length

    def _in_sequence(self, frame: _Frame, tag: int, length: int) -> None:
        if tag == ITEM:
            end = None if length == UNDEFINED_LENGTH else self._pos + length
            self._stack.append(_Frame(_DATASET, end, end if end is not None else frame.limit,
                                      frame.explicit, frame.little))
        elif tag == SEQUENCE_DELIMITATION and frame.end is None:
            self._pop_level()
        else:
            raise Malformed(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) where a sequence item belongs")

    def _in_fragments(self, frame: _Frame, tag: int, length: int) -> None:
        if tag == ITEM and length != UNDEFINED_LENGTH:
            self._skip = length  # a fragment of compressed pixel data: bytes, not a data set
        elif tag == SEQUENCE_DELIMITATION:
            self._pop_level()
        else:
            raise Malformed("encapsulated pixel data holds something other than defined-length fragments")

    # -- levels --------------------------------------------------------------------------------------
    def _push(self, kind: int, end: int | None, explicit: bool, little: bool) -> None:
        if self.depth >= self.max_depth:
            raise TooDeep(f"sequences nested deeper than {self.max_depth} levels")
        parent = self._stack[-1]
        self._stack.append(_Frame(kind, end, end if end is not None else parent.limit, explicit, little))
        self.depth += 1
        self.deepest = max(self.deepest, self.depth)

    def _pop_level(self) -> None:
        self._stack.pop()
        self.depth -= 1

    def _close_ended(self) -> None:
        """Close every defined-length item and sequence that ends where parsing now stands."""
        stack = self._stack
        while len(stack) > 1 and stack[-1].limit is not None and self._pos >= stack[-1].limit:
            frame = stack.pop()
            if frame.end is None or self._pos > frame.end:
                raise Malformed("an undefined-length item or sequence is not closed within its enclosing length")
            if frame.kind != _DATASET:
                self.depth -= 1


class DeflatedScanner:
    """Deflated Explicit VR Little Endian (PS3.5 A.5): inflate step by step, scan what comes out."""

    def __init__(self, *, max_depth: int = MAX_DEPTH):
        self._inner = NestingScanner(explicit=True, little=True, max_depth=max_depth)
        self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)  # raw deflate, no zlib header

    @property
    def deepest(self) -> int:
        return self._inner.deepest

    def feed(self, data: bytes | memoryview) -> None:
        chunk = bytes(data)
        while chunk and not self._inflater.eof:
            try:
                out = self._inflater.decompress(chunk, _INFLATE_CHUNK)
            except zlib.error:
                raise Malformed("the deflated data set is not a valid deflate stream") from None
            self._inner.feed(out)
            chunk = self._inflater.unconsumed_tail

    def finish(self) -> None:
        if not self._inflater.eof:
            raise Malformed("the deflated data set ends inside its deflate stream")
        self._inner.finish()


def scanner_for(transfer_syntax: str, max_depth: int = MAX_DEPTH) -> Scanner:
    """The scanner for a data set in ``transfer_syntax``. Every standard transfer syntax other than these
    three encodes the data set in Explicit VR Little Endian (PS3.5 A.4: compression touches Pixel Data only).
    """
    syntax = transfer_syntax.rstrip("\0 ")
    if syntax == IMPLICIT_VR_LE:
        return NestingScanner(explicit=False, max_depth=max_depth)
    if syntax == EXPLICIT_VR_BE:
        return NestingScanner(explicit=True, little=False, max_depth=max_depth)
    if syntax == DEFLATED_EXPLICIT_VR_LE:
        return DeflatedScanner(max_depth=max_depth)
    return NestingScanner(explicit=True, max_depth=max_depth)
