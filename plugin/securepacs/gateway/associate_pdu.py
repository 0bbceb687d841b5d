"""A-ASSOCIATE-RQ and -AC (PS3.8 sections 9.3.2-9.3.3): AE titles, presentation contexts, user information.

Split from ``pdu`` (framing, P-DATA-TF, the four-byte PDUs) because negotiation is a concept of its own;
the same rules hold: every length read from the wire is checked before use, malformed input raises
``pdu.PduError`` naming the field and the offending value.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from securepacs.gateway.pdu import (
    A_ASSOCIATE_AC,
    A_ASSOCIATE_RQ,
    HEADER_LENGTH,
    PduError,
    header,
    parse_header,
    pdu_name,
)

# Protocol version, reserved, called AE, calling AE, 32 reserved bytes: fixed part of RQ and AC.
ASSOCIATE_FIXED_LENGTH = 2 + 2 + 16 + 16 + 32
_ITEM = struct.Struct(">BxH")

# Item types inside A-ASSOCIATE-RQ/AC (PS3.8 9.3.2.1-9.3.2.3, 9.3.3.2, Annex D)
ITEM_APPLICATION_CONTEXT = 0x10
ITEM_PRESENTATION_CONTEXT_RQ = 0x20
ITEM_PRESENTATION_CONTEXT_AC = 0x21
ITEM_ABSTRACT_SYNTAX = 0x30
ITEM_TRANSFER_SYNTAX = 0x40
ITEM_USER_INFORMATION = 0x50
SUB_MAXIMUM_LENGTH = 0x51
SUB_IMPLEMENTATION_CLASS_UID = 0x52
SUB_ROLE_SELECTION = 0x54
SUB_IMPLEMENTATION_VERSION = 0x55

# Presentation context results in an A-ASSOCIATE-AC (PS3.8 Table 9-18)
CONTEXT_ACCEPTED = 0


# -- AE titles and UIDs ---------------------------------------------------------------------------------


def encode_aet(aet: str) -> bytes:
    """An AE title as the 16-byte, space-padded field of an A-ASSOCIATE-RQ/AC."""
    raw = aet.encode("ascii")
    if not 0 < len(raw) <= 16:
        raise PduError(f"AE title {aet!r} is invalid: expected 1-16 ASCII characters")
    return raw.ljust(16, b" ")


def decode_aet(field: bytes) -> str:
    """The AE title in a 16-byte field; leading/trailing spaces are not significant (PS3.8 9.3.2).

    Decoded as Latin-1, which maps every byte to one character: hostile bytes survive unchanged and can
    never equal a (validated, printable ASCII) enrolled AE title, and they cannot raise here.
    """
    return field.decode("latin-1").strip(" ")


def _uid(raw: bytes, what: str) -> str:
    # UIDs are NUL-padded to an even length by some implementations (PS3.5 9.1); the padding is not part of it.
    text = raw.rstrip(b"\x00 ").decode("latin-1")
    if not text or len(text) > 64:
        raise PduError(f"{what} {text!r} is invalid: expected a UID of 1-64 characters")
    return text


# -- A-ASSOCIATE-RQ / AC --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PresentationContext:
    """A proposed (RQ: abstract syntax + transfer syntaxes) or answered (AC: result + one syntax) context."""

    id: int
    abstract_syntax: str | None = None  # RQ only
    transfer_syntaxes: tuple[str, ...] = ()
    result: int | None = None  # AC only: 0 accepted, 1-4 refused (PS3.8 Table 9-18)

    @property
    def accepted(self) -> bool:
        return self.result == CONTEXT_ACCEPTED


@dataclass(frozen=True)
class RoleSelection:
    sop_class: str
    scu: bool
    scp: bool


@dataclass(frozen=True)
class Associate:
    """A parsed A-ASSOCIATE-RQ or -AC. ``max_length`` 0 means "no limit" (PS3.8 D.1)."""

    pdu_type: int
    protocol_version: int
    called_aet: str
    calling_aet: str
    application_context: str
    contexts: tuple[PresentationContext, ...]
    max_length: int | None = None
    implementation_class_uid: str | None = None
    implementation_version: str | None = None
    roles: tuple[RoleSelection, ...] = ()

    @property
    def accepted_context_ids(self) -> frozenset[int]:
        return frozenset(c.id for c in self.contexts if c.accepted)


def _items(data: bytes, start: int, end: int, what: str) -> Iterator[tuple[int, int, int]]:
    """(item type, body start, body end) for each item in data[start:end], checking every length."""
    pos = start
    while pos < end:
        if end - pos < _ITEM.size:
            raise PduError(f"{what}: {end - pos} trailing byte(s) at offset {pos}, too short for an item header")
        kind, length = _ITEM.unpack_from(data, pos)
        body = pos + _ITEM.size
        if length > end - body:
            raise PduError(f"{what}: item 0x{kind:02X} at offset {pos} claims {length} bytes, "
                           f"only {end - body} remain")
        yield kind, body, body + length
        pos = body + length


def _presentation_context(data: bytes, start: int, end: int, kind: int) -> PresentationContext:
    if end - start < 4:
        raise PduError(f"presentation context item at offset {start - 4} has {end - start} bytes: expected >= 4")
    context_id, result = data[start], data[start + 2]
    if context_id % 2 == 0:
        raise PduError(f"presentation context ID {context_id} is invalid: expected an odd number 1-255")
    abstract: str | None = None
    syntaxes: list[str] = []
    for sub, s, e in _items(data, start + 4, end, f"presentation context {context_id}"):
        if sub == ITEM_ABSTRACT_SYNTAX and kind == ITEM_PRESENTATION_CONTEXT_RQ:
            if abstract is not None:
                raise PduError(f"presentation context {context_id} has more than one abstract syntax")
            abstract = _uid(data[s:e], f"abstract syntax of presentation context {context_id}")
        elif sub == ITEM_TRANSFER_SYNTAX:
            syntaxes.append(_uid(data[s:e], f"transfer syntax of presentation context {context_id}"))
        else:
            raise PduError(f"presentation context {context_id} holds sub-item 0x{sub:02X}: expected "
                           + ("0x30 and 0x40" if kind == ITEM_PRESENTATION_CONTEXT_RQ else "0x40"))
    if kind == ITEM_PRESENTATION_CONTEXT_RQ:
        if abstract is None or not syntaxes:
            raise PduError(f"presentation context {context_id} needs one abstract syntax and at least one "
                           f"transfer syntax (found {int(abstract is not None)} and {len(syntaxes)})")
        return PresentationContext(context_id, abstract, tuple(syntaxes))
    if len(syntaxes) > 1:
        raise PduError(f"accepted presentation context {context_id} names {len(syntaxes)} transfer syntaxes: "
                       "expected at most one")
    return PresentationContext(context_id, None, tuple(syntaxes), result)


def _user_information(data: bytes, start: int, end: int) -> dict[str, object]:
    found: dict[str, object] = {"roles": []}
    for sub, s, e in _items(data, start, end, "user information"):
        if sub == SUB_MAXIMUM_LENGTH:
            if e - s != 4:
                raise PduError(f"maximum length sub-item has {e - s} bytes: expected 4")
            found["max_length"] = struct.unpack_from(">I", data, s)[0]
        elif sub == SUB_IMPLEMENTATION_CLASS_UID:
            found["implementation_class_uid"] = _uid(data[s:e], "implementation class UID")
        elif sub == SUB_IMPLEMENTATION_VERSION:
            found["implementation_version"] = data[s:e].decode("latin-1").strip(" ")
        elif sub == SUB_ROLE_SELECTION:
            if e - s < 4:
                raise PduError(f"role selection sub-item has {e - s} bytes: expected >= 4")
            uid_length = struct.unpack_from(">H", data, s)[0]
            if uid_length + 4 != e - s:
                raise PduError(f"role selection sub-item: UID length {uid_length} does not fit its "
                               f"{e - s}-byte item")
            uid = _uid(data[s + 2 : s + 2 + uid_length], "role selection SOP class")
            found["roles"].append(RoleSelection(uid, bool(data[e - 2]), bool(data[e - 1])))  # type: ignore[union-attr]
        # Other sub-items (asynchronous operations, extended negotiation, user identity) pass untouched.
    return found


def parse_associate(pdu: bytes) -> Associate:
    """Parse a complete A-ASSOCIATE-RQ or -AC (header included); raise PduError when malformed."""
    if len(pdu) < HEADER_LENGTH:
        raise PduError(f"PDU has {len(pdu)} bytes: too short for a header")
    kind, length = parse_header(pdu[:HEADER_LENGTH])
    if kind not in (A_ASSOCIATE_RQ, A_ASSOCIATE_AC):
        raise PduError(f"PDU type 0x{kind:02X} ({pdu_name(kind)}): expected an A-ASSOCIATE-RQ or -AC")
    if length != len(pdu) - HEADER_LENGTH:
        raise PduError(f"{pdu_name(kind)} length field {length} does not match the {len(pdu) - HEADER_LENGTH} "
                       "bytes that follow the header")
    if length < ASSOCIATE_FIXED_LENGTH:
        raise PduError(f"{pdu_name(kind)} length {length} is too short: expected >= {ASSOCIATE_FIXED_LENGTH}")
    version = struct.unpack_from(">H", pdu, 6)[0]
    called, calling = decode_aet(pdu[10:26]), decode_aet(pdu[26:42])
    app_context: str | None = None
    contexts: list[PresentationContext] = []
    user: dict[str, object] = {"roles": []}
    context_kind = ITEM_PRESENTATION_CONTEXT_RQ if kind == A_ASSOCIATE_RQ else ITEM_PRESENTATION_CONTEXT_AC
    start = HEADER_LENGTH + ASSOCIATE_FIXED_LENGTH
    for item, s, e in _items(pdu, start, len(pdu), pdu_name(kind)):
        if item == ITEM_APPLICATION_CONTEXT:
            app_context = _uid(pdu[s:e], "application context name")
        elif item == context_kind:
            contexts.append(_presentation_context(pdu, s, e, item))
        elif item == ITEM_USER_INFORMATION:
            user = _user_information(pdu, s, e)
        # PS3.8 9.3.1: items of unrecognized types are ignored (their lengths were still checked).
    if app_context is None:
        raise PduError(f"{pdu_name(kind)} has no application context item (0x10)")
    if kind == A_ASSOCIATE_RQ and not contexts:
        raise PduError("A-ASSOCIATE-RQ proposes no presentation context (item 0x20)")
    return Associate(
        pdu_type=kind,
        protocol_version=version,
        called_aet=called,
        calling_aet=calling,
        application_context=app_context,
        contexts=tuple(contexts),
        max_length=user.get("max_length"),  # type: ignore[arg-type]
        implementation_class_uid=user.get("implementation_class_uid"),  # type: ignore[arg-type]
        implementation_version=user.get("implementation_version"),  # type: ignore[arg-type]
        roles=tuple(user["roles"]),  # type: ignore[arg-type]
    )


def _item(kind: int, body: bytes) -> bytes:
    if len(body) > 0xFFFF:
        raise PduError(f"item 0x{kind:02X} body has {len(body)} bytes: expected <= 65535")
    return _ITEM.pack(kind, len(body)) + body


def build_associate(
    pdu_type: int,
    called_aet: str,
    calling_aet: str,
    contexts: Sequence[PresentationContext],
    *,
    max_length: int = 16384,
    implementation_class_uid: str = "1.2.826.0.1.3680043.10.1337.1",
    application_context: str = "1.2.840.10008.3.1.1.1",
) -> bytes:
    """An A-ASSOCIATE-RQ (contexts with abstract syntax) or -AC (contexts with result); for tests and tools."""
    if pdu_type not in (A_ASSOCIATE_RQ, A_ASSOCIATE_AC):
        raise PduError(f"PDU type 0x{pdu_type:02X}: expected A-ASSOCIATE-RQ or -AC")
    body = bytearray(struct.pack(">HH", 1, 0) + encode_aet(called_aet) + encode_aet(calling_aet) + bytes(32))
    body += _item(ITEM_APPLICATION_CONTEXT, application_context.encode("ascii"))
    for cx in contexts:
        syntaxes = b"".join(_item(ITEM_TRANSFER_SYNTAX, ts.encode("ascii")) for ts in cx.transfer_syntaxes)
        if pdu_type == A_ASSOCIATE_RQ:
            abstract = _item(ITEM_ABSTRACT_SYNTAX, (cx.abstract_syntax or "").encode("ascii"))
            body += _item(ITEM_PRESENTATION_CONTEXT_RQ, bytes([cx.id, 0, 0, 0]) + abstract + syntaxes)
        else:
            body += _item(ITEM_PRESENTATION_CONTEXT_AC, bytes([cx.id, 0, cx.result or 0, 0]) + syntaxes)
    user = _item(SUB_MAXIMUM_LENGTH, struct.pack(">I", max_length))
    user += _item(SUB_IMPLEMENTATION_CLASS_UID, implementation_class_uid.encode("ascii"))
    body += _item(ITEM_USER_INFORMATION, user)
    return header(pdu_type, len(body)) + bytes(body)
