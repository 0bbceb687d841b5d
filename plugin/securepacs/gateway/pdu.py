"""DICOM Upper Layer PDUs (PS3.8 section 9.3): framing, parsing and building, bounds-checked throughout.

The gateway never re-encodes what it forwards: these functions only look at bytes (to decide) and build
the few PDUs the gateway itself sends (A-ASSOCIATE-RJ, A-ABORT). Every length read from the wire is
checked against what is actually there before it is used, so a hostile length can neither allocate nor
read past the end; malformed input raises ``PduError`` naming the field and the offending value.
A-ASSOCIATE-RQ/AC (presentation contexts, user information) live in ``associate_pdu``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

# PDU types (PS3.8 Table 9-1 and sections 9.3.2-9.3.8)
A_ASSOCIATE_RQ = 0x01
A_ASSOCIATE_AC = 0x02
A_ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04
A_RELEASE_RQ = 0x05
A_RELEASE_RP = 0x06
A_ABORT = 0x07
PDU_NAMES = {
    A_ASSOCIATE_RQ: "A-ASSOCIATE-RQ",
    A_ASSOCIATE_AC: "A-ASSOCIATE-AC",
    A_ASSOCIATE_RJ: "A-ASSOCIATE-RJ",
    P_DATA_TF: "P-DATA-TF",
    A_RELEASE_RQ: "A-RELEASE-RQ",
    A_RELEASE_RP: "A-RELEASE-RP",
    A_ABORT: "A-ABORT",
}

HEADER = struct.Struct(">BxI")  # type, reserved, length of what follows
HEADER_LENGTH = HEADER.size  # 6
_PDV_HEADER = struct.Struct(">IBB")  # item length, presentation context ID, message control header

# A-ASSOCIATE-RJ fields (PS3.8 Table 9-21)
RESULT_REJECTED_PERMANENT = 1
RESULT_REJECTED_TRANSIENT = 2
SOURCE_SERVICE_USER = 1
SOURCE_PROVIDER_ACSE = 2
SOURCE_PROVIDER_PRESENTATION = 3
REASON_NO_REASON = 1  # source 1 (and 2)
REASON_CALLING_AET_NOT_RECOGNIZED = 3  # source 1
REASON_CALLED_AET_NOT_RECOGNIZED = 7  # source 1
REASON_PROTOCOL_VERSION_NOT_SUPPORTED = 2  # source 2
REASON_TEMPORARY_CONGESTION = 1  # source 3
REASON_LOCAL_LIMIT_EXCEEDED = 2  # source 3

# A-ABORT fields (PS3.8 Table 9-26)
ABORT_SOURCE_SERVICE_USER = 0
ABORT_SOURCE_SERVICE_PROVIDER = 2
ABORT_REASON_NOT_SPECIFIED = 0
ABORT_REASON_UNRECOGNIZED_PDU = 1
ABORT_REASON_UNEXPECTED_PDU = 2
ABORT_REASON_INVALID_PARAMETER = 6

# Message control header bits of a PDV (PS3.8 Annex E.2)
PDV_COMMAND = 0x01
PDV_LAST = 0x02


class PduError(ValueError):
    """Bytes that are not a well-formed PDU; the message names the field and the value found."""


def pdu_name(pdu_type: int) -> str:
    return PDU_NAMES.get(pdu_type, f"unknown PDU type 0x{pdu_type:02X}")


def parse_header(header: bytes) -> tuple[int, int]:
    """(PDU type, length of the PDU body) from the 6-byte header."""
    if len(header) != HEADER_LENGTH:
        raise PduError(f"PDU header has {len(header)} bytes: expected {HEADER_LENGTH}")
    return HEADER.unpack(header)


def header(pdu_type: int, length: int) -> bytes:
    return HEADER.pack(pdu_type, length)


# -- A-ASSOCIATE-RJ, A-RELEASE, A-ABORT -----------------------------------------------------------------


def build_reject(result: int, source: int, reason: int) -> bytes:
    """A-ASSOCIATE-RJ (PS3.8 9.3.4): reserved, result, source, reason/diagnostic."""
    return header(A_ASSOCIATE_RJ, 4) + bytes([0, result, source, reason])


def build_abort(source: int = ABORT_SOURCE_SERVICE_PROVIDER, reason: int = ABORT_REASON_NOT_SPECIFIED) -> bytes:
    """A-ABORT (PS3.8 9.3.8): two reserved bytes, source, reason/diagnostic."""
    return header(A_ABORT, 4) + bytes([0, 0, source, reason])


def build_release_rq() -> bytes:
    return header(A_RELEASE_RQ, 4) + bytes(4)


def build_release_rp() -> bytes:
    return header(A_RELEASE_RP, 4) + bytes(4)


def _four_byte_pdu(pdu: bytes, expected: int) -> bytes:
    kind, length = parse_header(pdu[:HEADER_LENGTH]) if len(pdu) >= HEADER_LENGTH else (None, None)
    if kind != expected or length != 4 or len(pdu) != HEADER_LENGTH + 4:
        raise PduError(f"{pdu[:HEADER_LENGTH].hex()} ({len(pdu)} bytes) is not a 10-byte {pdu_name(expected)}")
    return pdu[HEADER_LENGTH:]


def parse_reject(pdu: bytes) -> tuple[int, int, int]:
    """(result, source, reason) of an A-ASSOCIATE-RJ."""
    body = _four_byte_pdu(pdu, A_ASSOCIATE_RJ)
    return body[1], body[2], body[3]


def parse_abort(pdu: bytes) -> tuple[int, int]:
    """(source, reason) of an A-ABORT."""
    body = _four_byte_pdu(pdu, A_ABORT)
    return body[2], body[3]


# -- P-DATA-TF ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pdv:
    """One presentation data value: a fragment of a DIMSE command or data set (PS3.8 9.3.5.1, Annex E)."""

    context_id: int
    control: int
    data: memoryview  # a view into the PDU: no copy; bytes(pdv.data) when it must outlive the PDU

    @property
    def is_command(self) -> bool:
        return bool(self.control & PDV_COMMAND)

    @property
    def is_last(self) -> bool:
        return bool(self.control & PDV_LAST)


def iter_pdvs(pdu: bytes) -> Iterator[Pdv]:
    """The PDVs of a complete P-DATA-TF PDU; raises PduError unless the items exactly tile the PDU."""
    if len(pdu) < HEADER_LENGTH:
        raise PduError(f"PDU has {len(pdu)} bytes: too short for a header")
    kind, length = parse_header(pdu[:HEADER_LENGTH])
    if kind != P_DATA_TF:
        raise PduError(f"PDU type 0x{kind:02X} ({pdu_name(kind)}): expected P-DATA-TF")
    if length != len(pdu) - HEADER_LENGTH:
        raise PduError(f"P-DATA-TF length field {length} does not match the {len(pdu) - HEADER_LENGTH} bytes "
                       "that follow the header")
    return iter_pdv_items(pdu, HEADER_LENGTH)


def iter_pdv_items(data: bytes, start: int = 0) -> Iterator[Pdv]:
    """The PDV items in ``data[start:]`` (a P-DATA-TF body); raises PduError unless they tile it exactly."""
    view = memoryview(data)
    pos, end = start, len(data)
    if pos == end:
        raise PduError("P-DATA-TF holds no presentation data value")
    while pos < end:
        if end - pos < _PDV_HEADER.size:
            raise PduError(f"P-DATA-TF: {end - pos} trailing byte(s) at offset {pos}, too short for a PDV item")
        item_length, context_id, control = _PDV_HEADER.unpack_from(data, pos)
        if item_length < 2 or item_length > end - pos - 4:
            raise PduError(f"P-DATA-TF: PDV item at offset {pos} claims length {item_length}, "
                           f"expected 2-{end - pos - 4}")
        if context_id % 2 == 0:
            raise PduError(f"P-DATA-TF: PDV presentation context ID {context_id} is invalid: expected odd 1-255")
        if control & ~(PDV_COMMAND | PDV_LAST):
            raise PduError(f"P-DATA-TF: PDV message control header 0x{control:02X} sets reserved bits")
        yield Pdv(context_id, control, view[pos + _PDV_HEADER.size : pos + 4 + item_length])
        pos += 4 + item_length


def check_p_data_body(body: bytes, accepted: frozenset[int] | None = None) -> None:
    """Raise PduError unless ``body`` (a P-DATA-TF without its header) is well formed and its PDVs use
    only ``accepted`` presentation contexts. Reads item headers only: cost grows with PDVs, not bytes."""
    for pdv in iter_pdv_items(body):
        if accepted is not None and pdv.context_id not in accepted:
            raise PduError(f"P-DATA-TF: PDV for presentation context {pdv.context_id}, which was not accepted "
                           f"(accepted: {sorted(accepted)})")


def build_p_data(pdvs: Iterable[tuple[int, int, bytes]]) -> bytes:
    """A P-DATA-TF from (context ID, message control header, fragment) triples."""
    body = bytearray()
    for context_id, control, data in pdvs:
        body += _PDV_HEADER.pack(len(data) + 2, context_id, control)
        body += data
    return header(P_DATA_TF, len(body)) + bytes(body)


class PduBoundary:
    """Follows PDU boundaries in a raw byte stream without buffering it (for the spliced direction).

    ``feed`` is O(number of PDUs) per chunk, not O(bytes): it only reads headers. ``at_boundary`` tells
    whether a PDU of our own (an A-ABORT) can be written now without landing inside the peer's PDU.
    """

    __slots__ = ("_header", "_remaining", "last_type", "pdus")

    def __init__(self) -> None:
        self._remaining = 0  # body bytes of the current PDU still to come
        self._header = b""  # a partial header split across chunks
        self.pdus = 0
        self.last_type: int | None = None

    @property
    def at_boundary(self) -> bool:
        return self._remaining == 0 and not self._header

    def feed(self, chunk: bytes) -> None:
        pos, end = 0, len(chunk)
        while pos < end:
            if self._remaining:
                step = min(self._remaining, end - pos)
                self._remaining -= step
                pos += step
                continue
            need = HEADER_LENGTH - len(self._header)
            self._header += chunk[pos : pos + need]
            pos += need
            if len(self._header) == HEADER_LENGTH:
                self.last_type, self._remaining = HEADER.unpack(self._header)
                self._header = b""
                self.pdus += 1
