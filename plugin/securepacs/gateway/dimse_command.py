"""DIMSE command sets (PS3.7 section 6.3 and chapter 9): the strict decoder and the one response we build.

A command set is always Implicit VR Little Endian and holds only group 0000 elements. The decoder is
deliberately strict (ascending tags, no duplicates, exact lengths, nothing left over): the archive behind
the gateway parses the same bytes with DCMTK, and the inspector's decision is only worth something if both
parsers necessarily read the same CommandField. Anything ambiguous is malformed, never "interpreted".
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

# Command fields (PS3.7 E.1-1)
C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
C_GET_RQ = 0x0010
C_GET_RSP = 0x8010
C_CANCEL_RQ = 0x0FFF
NO_DATA_SET = 0x0101  # CommandDataSetType: any other value means a data set follows (PS3.7 E.1-1)

AFFECTED_SOP_CLASS_UID = 0x00000002
COMMAND_FIELD = 0x00000100
MESSAGE_ID = 0x00000110
MESSAGE_ID_BEING_RESPONDED_TO = 0x00000120
AFFECTED_SOP_INSTANCE_UID = 0x00001000
COMMAND_DATA_SET_TYPE = 0x00000800
STATUS = 0x00000900
ERROR_COMMENT = 0x00000902
NUMBER_OF_COMPLETED_SUBOPERATIONS = 0x00001021
NUMBER_OF_FAILED_SUBOPERATIONS = 0x00001022
NUMBER_OF_WARNING_SUBOPERATIONS = 0x00001023

_ELEMENT = struct.Struct("<HHI")  # group, element, 32-bit value length (Implicit VR Little Endian)
_US = struct.Struct("<H")


class CommandError(ValueError):
    """Bytes that are not an unambiguous DIMSE command set."""


@dataclass(frozen=True)
class Command:
    field: int
    data_set_type: int
    message_id: int | None
    responding_to: int | None  # MessageIDBeingRespondedTo (C-CANCEL-RQ, responses)
    sop_class_raw: bytes | None  # AffectedSOPClassUID as sent; decoded only when needed
    sop_instance_raw: bytes | None = None  # AffectedSOPInstanceUID as sent (C-STORE-RQ)

    @property
    def has_data_set(self) -> bool:
        return self.data_set_type != NO_DATA_SET

    @property
    def sop_class(self) -> str:
        if self.sop_class_raw is None:
            raise CommandError("the command has no AffectedSOPClassUID")
        try:
            text = self.sop_class_raw.decode("ascii")
        except UnicodeDecodeError:
            raise CommandError("AffectedSOPClassUID is not ASCII") from None
        return text.rstrip("\0 ")


def decode_command(data: bytes) -> Command:
    values: dict[int, bytes] = {}
    pos, end, last = 0, len(data), -1
    while pos < end:
        if end - pos < _ELEMENT.size:
            raise CommandError(f"{end - pos} trailing byte(s) after the last command element")
        group, element, length = _ELEMENT.unpack_from(data, pos)
        tag = group << 16 | element
        if group != 0:
            raise CommandError(f"element ({group:04X},{element:04X}) in a command set: only group 0000 belongs there")
        if tag <= last:
            raise CommandError(f"command element (0000,{element:04X}) out of order or repeated")
        if length > end - pos - _ELEMENT.size:  # also catches 0xFFFFFFFF (undefined length)
            raise CommandError(f"command element (0000,{element:04X}) claims {length} bytes, "
                               f"{end - pos - _ELEMENT.size} remain")
        start = pos + _ELEMENT.size
        values[tag] = data[start : start + length]
        pos, last = start + length, tag
    return Command(
        field=_required_us(values, COMMAND_FIELD, "CommandField"),
        data_set_type=_required_us(values, COMMAND_DATA_SET_TYPE, "CommandDataSetType"),
        message_id=_optional_us(values, MESSAGE_ID, "MessageID"),
        responding_to=_optional_us(values, MESSAGE_ID_BEING_RESPONDED_TO, "MessageIDBeingRespondedTo"),
        sop_class_raw=values.get(AFFECTED_SOP_CLASS_UID),
        sop_instance_raw=values.get(AFFECTED_SOP_INSTANCE_UID),
    )


def _optional_us(values: dict[int, bytes], tag: int, name: str) -> int | None:
    raw = values.get(tag)
    if raw is None:
        return None
    if len(raw) != _US.size:
        raise CommandError(f"{name} has {len(raw)} bytes: expected 2 (US)")
    return _US.unpack(raw)[0]


def _required_us(values: dict[int, bytes], tag: int, name: str) -> int:
    value = _optional_us(values, tag, name)
    if value is None:
        raise CommandError(f"the command set has no {name}")
    return value


def encode_command(elements: Iterable[tuple[int, bytes]]) -> bytes:
    """A command set with its CommandGroupLength; values must already be padded to even length."""
    body = bytearray()
    for tag, value in sorted(elements):
        body += _ELEMENT.pack(tag >> 16, tag & 0xFFFF, len(value)) + value
    return _ELEMENT.pack(0, 0, 4) + struct.pack("<I", len(body)) + bytes(body)


def _pad(text: str, pad: bytes) -> bytes:
    raw = text.encode("ascii")
    return raw + pad if len(raw) % 2 else raw


def c_get_failure(sop_class: str, message_id: int, status: int, comment: str = "") -> bytes:
    """The final C-GET-RSP of a refused request (PS3.4 C.4.3.1.4, PS3.7 9.1.3.1).

    No sub-operation was attempted, so all counts are 0 and no data set (Failed SOP Instance UID List)
    follows. The comment is for the clinic's operator and must not contain identifiers.
    """
    if not 0 <= message_id <= 0xFFFF or not 0 <= status <= 0xFFFF:
        raise ValueError("message ID and status are 16-bit values")
    elements = [
        (AFFECTED_SOP_CLASS_UID, _pad(sop_class, b"\0")),
        (COMMAND_FIELD, _US.pack(C_GET_RSP)),
        (MESSAGE_ID_BEING_RESPONDED_TO, _US.pack(message_id)),
        (COMMAND_DATA_SET_TYPE, _US.pack(NO_DATA_SET)),
        (STATUS, _US.pack(status)),
        (NUMBER_OF_COMPLETED_SUBOPERATIONS, _US.pack(0)),
        (NUMBER_OF_FAILED_SUBOPERATIONS, _US.pack(0)),
        (NUMBER_OF_WARNING_SUBOPERATIONS, _US.pack(0)),
    ]
    return encode_command(elements + _comment(comment))


def c_store_failure(sop_class_raw: bytes, sop_instance_raw: bytes, message_id: int, status: int,
                    comment: str = "") -> bytes:
    """The C-STORE-RSP of a refused request (PS3.7 9.3.1.2): the affected UIDs echoed as the requestor
    sent them (so it can match the answer; they are never logged), no data set."""
    if not 0 <= message_id <= 0xFFFF or not 0 <= status <= 0xFFFF:
        raise ValueError("message ID and status are 16-bit values")
    elements = [
        (AFFECTED_SOP_CLASS_UID, sop_class_raw),
        (COMMAND_FIELD, _US.pack(C_STORE_RSP)),
        (MESSAGE_ID_BEING_RESPONDED_TO, _US.pack(message_id)),
        (COMMAND_DATA_SET_TYPE, _US.pack(NO_DATA_SET)),
        (STATUS, _US.pack(status)),
        (AFFECTED_SOP_INSTANCE_UID, sop_instance_raw),
    ]
    return encode_command(elements + _comment(comment))


def _comment(comment: str) -> list[tuple[int, bytes]]:
    if not comment:
        return []
    # Error Comment is LO: at most 64 characters of the default repertoire, without backslash.
    safe = "".join(c if " " <= c <= "~" and c != "\\" else "?" for c in comment)[:64]
    return [(ERROR_COMMENT, _pad(safe, b" "))]

