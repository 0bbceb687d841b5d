"""The C-GET inspector, fed hand-built PDUs: what it forwards, holds, refuses and answers.

PDUs, command sets and identifiers are built here independently of the code under test (pydicom encodes
the datasets, struct the PDU framing), and the inspector's answers are decoded with pydicom.
"""

from __future__ import annotations

import asyncio
import io
import struct
import threading
import warnings
import zlib
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from _dicom import encode as part10
from _scp import TestSCP
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet  # type: ignore[attr-defined]

from securepacs.gateway.associate_pdu import parse_associate
from securepacs.gateway.dimse import MAX_HELD_BYTES, MAX_IDENTIFIER_BYTES, Action, CGetInspector, inspector_factory
from securepacs_tools.synth import StudySpec, instance

GET_MODEL = "1.2.840.10008.5.1.4.1.2.2.3"  # Study Root Query/Retrieve Information Model - GET
VERIFICATION = "1.2.840.10008.1.1"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
GET_CX, ECHO_CX, CT_CX, EXPLICIT_CX, BIG_CX, DEFLATED_CX, REFUSED_CX = 1, 3, 5, 7, 9, 11, 13
SYNTAX_OF = {GET_CX: ImplicitVRLittleEndian, ECHO_CX: ImplicitVRLittleEndian, CT_CX: ExplicitVRLittleEndian,
             EXPLICIT_CX: ExplicitVRLittleEndian, BIG_CX: ExplicitVRBigEndian,
             DEFLATED_CX: DeflatedExplicitVRLittleEndian}

OWN_STUDY, OWN_SERIES, OWN_IMAGE = "1.2.826.0.1.1", "1.2.826.0.1.1.1", "1.2.826.0.1.1.1.1"
OWN_STUDY2 = "1.2.826.0.1.2"
FOREIGN_STUDY, FOREIGN_SERIES, FOREIGN_IMAGE = "1.2.826.0.9.1", "1.2.826.0.9.1.1", "1.2.826.0.9.1.1.1"
OWNED = {OWN_STUDY, OWN_SERIES, OWN_IMAGE, OWN_STUDY2}


# --- builders ------------------------------------------------------------------------------------------


def item(kind: int, body: bytes) -> bytes:
    return struct.pack(">BxH", kind, len(body)) + body


def associate(pdu_type: int, contexts: bytes, max_length: int) -> bytes:
    body = struct.pack(">HH", 1, 0) + b"SECUREPACS".ljust(16) + b"NORTH_CT".ljust(16) + bytes(32)
    body += item(0x10, b"1.2.840.10008.3.1.1.1") + contexts
    body += item(0x50, item(0x51, struct.pack(">I", max_length)) + item(0x52, b"1.2.3.4"))
    return struct.pack(">BxI", pdu_type, len(body)) + body


def rq(max_length: int = 16384) -> bytes:
    contexts = b""
    for cx, abstract in ((GET_CX, GET_MODEL), (ECHO_CX, VERIFICATION), (CT_CX, CT_IMAGE), (EXPLICIT_CX, GET_MODEL),
                         (BIG_CX, GET_MODEL), (DEFLATED_CX, GET_MODEL), (REFUSED_CX, GET_MODEL)):
        syntaxes = b"".join(item(0x40, ts.encode()) for ts in (ImplicitVRLittleEndian, ExplicitVRLittleEndian))
        contexts += item(0x20, bytes([cx, 0, 0, 0]) + item(0x30, abstract.encode()) + syntaxes)
    return associate(0x01, contexts, max_length)


def ac(syntaxes: dict[int, str] | None = None) -> bytes:
    contexts = b"".join(item(0x21, bytes([cx, 0, 0, 0]) + item(0x40, ts.encode()))
                        for cx, ts in (syntaxes or SYNTAX_OF).items())
    contexts += item(0x21, bytes([REFUSED_CX, 0, 3, 0]) + item(0x40, ImplicitVRLittleEndian.encode()))
    return associate(0x02, contexts, 65536)


def pdata(*pdvs: tuple[int, int, bytes]) -> bytes:
    body = b"".join(struct.pack(">IBB", len(data) + 2, cx, control) + data for cx, control, data in pdvs)
    return struct.pack(">BxI", 0x04, len(body)) + body


def encode(ds: Dataset, syntax: str = ImplicitVRLittleEndian) -> bytes:
    fp = DicomBytesIO()
    fp.is_implicit_VR = syntax == ImplicitVRLittleEndian
    fp.is_little_endian = syntax != ExplicitVRBigEndian
    write_dataset(fp, ds)
    data = fp.getvalue()
    if syntax == DeflatedExplicitVRLittleEndian:
        deflater = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        data = deflater.compress(data) + deflater.flush()
        data += b"\0" * (len(data) % 2)
    return data


def command(field: int, message_id: int | None = 7, sop_class: str = GET_MODEL, has_data: bool = True,
            **extra: Any) -> bytes:
    ds = Dataset()
    ds.AffectedSOPClassUID = sop_class
    ds.CommandField = field
    if message_id is not None:
        ds.MessageID = message_id
    ds.CommandDataSetType = 0x0000 if has_data else 0x0101
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    body = encode(ds)
    return struct.pack("<HHII", 0, 0, 4, len(body)) + body


def identifier(level: str | None, syntax: str = ImplicitVRLittleEndian, **keys: Any) -> bytes:
    ds = Dataset()
    with warnings.catch_warnings():  # some identifiers are invalid on purpose (wildcards, lower-case levels)
        warnings.simplefilter("ignore", UserWarning)
        if level is not None:
            ds.QueryRetrieveLevel = level
        for keyword, value in keys.items():
            setattr(ds, keyword, value)
    return encode(ds, syntax)


def fragments(cx: int, data: bytes, size: int, is_command: bool) -> list[tuple[int, int, bytes]]:
    chunks = [data[i : i + size] for i in range(0, len(data), size)] or [b""]
    return [(cx, int(is_command) | (2 if i == len(chunks) - 1 else 0), c) for i, c in enumerate(chunks)]


def message(cx: int, cmd: bytes, data: bytes | None = None, size: int = 1 << 20) -> list[bytes]:
    """One PDV per PDU, as pynetdicom and DCMTK send: command fragments, then data set fragments."""
    pdvs = fragments(cx, cmd, size, True) + (fragments(cx, data, size, False) if data is not None else [])
    return [pdata(pdv) for pdv in pdvs]


def c_get(ident: bytes, cx: int = GET_CX, message_id: int = 7, size: int = 1 << 20) -> list[bytes]:
    return message(cx, command(0x0010, message_id), ident, size)


# --- harness -------------------------------------------------------------------------------------------


class Archive:
    """The ownership check as the inspector sees it: records the questions, answers from OWNED."""

    def __init__(self, answer: Callable[[str, str, dict[str, list[str]]], Awaitable[bool]] | None = None):
        self.calls: list[tuple[str, str, dict[str, list[str]]]] = []
        self.calling_aets: list[str] = []
        self._answer = answer

    async def authorize(self, clinic: str, level: str, keys: dict[str, list[str]], calling_aet: str = "") -> bool:
        self.calls.append((clinic, level, keys))
        self.calling_aets.append(calling_aet)
        if self._answer is not None:
            return await self._answer(clinic, level, keys)
        uids = [u for name, values in keys.items() if name != "PatientID" for u in values]
        return bool(uids) and all(u in OWNED for u in uids)


def make(archive: Archive | None = None, *, max_length: int = 16384, syntaxes: dict[int, str] | None = None,
         **kwargs: Any) -> tuple[CGetInspector, Archive, list[tuple[str, dict[str, Any]]]]:
    archive = archive or Archive()
    events: list[tuple[str, dict[str, Any]]] = []
    inspector = CGetInspector("north", rq(max_length), archive.authorize,
                              lambda kind, details: events.append((kind, details)), **kwargs)
    inspector.server_pdu(0x02, ac(syntaxes))
    return inspector, archive, events


def feed(inspector: CGetInspector, pdus: Iterable[bytes]) -> list[Action]:
    async def run() -> list[Action]:
        return [await inspector.client_pdu(p[0], p) for p in pdus]

    return asyncio.run(run())


def forwarded(actions: list[Action]) -> list[bytes]:
    return [p for a in actions for p in a.forward]


def replied(actions: list[Action]) -> list[bytes]:
    return [p for a in actions for p in a.reply]


def decode_reply(pdus: list[bytes]) -> tuple[int, Dataset]:
    """(presentation context, command set) of the inspector's answer, reassembled from its PDVs."""
    data, contexts = b"", set()
    for i, pdu in enumerate(pdus):
        assert pdu[0] == 0x04 and struct.unpack_from(">I", pdu, 2)[0] == len(pdu) - 6
        length, cx, control = struct.unpack_from(">IBB", pdu, 6)
        assert length == len(pdu) - 10  # one PDV per PDU
        assert control == (3 if i == len(pdus) - 1 else 1)  # command fragments, the last one flagged
        contexts.add(cx)
        data += pdu[12:]
    assert len(contexts) == 1
    ds = read_dataset(io.BytesIO(data), is_implicit_VR=True, is_little_endian=True)
    assert ds.CommandGroupLength == len(data) - 12  # everything after the group length element itself
    return contexts.pop(), ds


def assert_refused(actions: list[Action], status: int, message_id: int = 7, cx: int = GET_CX) -> Dataset:
    assert forwarded(actions) == [], "nothing of a refused C-GET reaches the archive"
    assert not any(a.close for a in actions)
    reply_cx, rsp = decode_reply(replied(actions))
    assert reply_cx == cx
    assert rsp.CommandField == 0x8010
    assert rsp.MessageIDBeingRespondedTo == message_id
    assert rsp.AffectedSOPClassUID == GET_MODEL
    assert rsp.CommandDataSetType == 0x0101
    assert rsp.Status == status
    assert (rsp.NumberOfCompletedSuboperations, rsp.NumberOfFailedSuboperations,
            rsp.NumberOfWarningSuboperations) == (0, 0, 0)
    return rsp


def assert_no_uids(events: list[tuple[str, dict[str, Any]]]) -> None:
    text = repr(events)
    for uid in (*OWNED, FOREIGN_STUDY, FOREIGN_SERIES, FOREIGN_IMAGE):
        assert uid not in text


# --- allowed and refused at every level ----------------------------------------------------------------

LEVELS = [
    ("STUDY", {"StudyInstanceUID": OWN_STUDY}, {"StudyInstanceUID": FOREIGN_STUDY}),
    ("SERIES", {"StudyInstanceUID": OWN_STUDY, "SeriesInstanceUID": OWN_SERIES},
     # Orthanc resolves SERIES by the series UID alone: an own study UID next to it must not help.
     {"StudyInstanceUID": OWN_STUDY, "SeriesInstanceUID": FOREIGN_SERIES}),
    ("IMAGE", {"SOPInstanceUID": OWN_IMAGE},
     {"StudyInstanceUID": OWN_STUDY, "SeriesInstanceUID": OWN_SERIES, "SOPInstanceUID": FOREIGN_IMAGE}),
]


@pytest.mark.parametrize(("level", "own", "foreign"), LEVELS)
def test_own_c_get_is_held_then_forwarded_byte_identical(level: str, own: dict, foreign: dict) -> None:
    inspector, archive, events = make()
    pdus = c_get(identifier(level, **own))
    actions = feed(inspector, pdus)
    assert actions[0] == Action(), "the command is held until the identifier is complete"
    assert forwarded(actions) == pdus and replied(actions) == []
    assert archive.calls == [("north", level, {k: [v] for k, v in own.items()})]
    assert archive.calling_aets == ["NORTH_CT"]  # the requestor's calling AE title, for the retrieve record
    assert [kind for kind, _ in events] == ["cget-allowed"]
    assert events[0][1]["level"] == level


@pytest.mark.parametrize(("level", "own", "foreign"), LEVELS)
def test_foreign_c_get_is_refused_with_not_authorized(level: str, own: dict, foreign: dict) -> None:
    inspector, archive, events = make()
    actions = feed(inspector, c_get(identifier(level, **foreign), message_id=41))
    assert_refused(actions, 0x0124, message_id=41)
    assert len(archive.calls) == 1
    assert [kind for kind, _ in events] == ["cget-refused"]
    assert events[0][1]["status"] == 0x0124 and events[0][1]["keys"] == {k: 1 for k in foreign}
    assert_no_uids(events)


def test_image_level_alias_instance_is_checked_as_image() -> None:
    inspector, archive, _ = make()
    actions = feed(inspector, c_get(identifier("instance", SOPInstanceUID=FOREIGN_IMAGE)))
    assert_refused(actions, 0x0124)
    assert archive.calls[0][1] == "IMAGE"


def test_uid_list_with_one_foreign_uid_is_refused() -> None:
    inspector, archive, _ = make()
    ident = identifier("STUDY", StudyInstanceUID=[OWN_STUDY, FOREIGN_STUDY, OWN_STUDY2])
    assert_refused(feed(inspector, c_get(ident)), 0x0124)
    assert archive.calls[0][2] == {"StudyInstanceUID": [OWN_STUDY, FOREIGN_STUDY, OWN_STUDY2]}
    inspector, archive, _ = make()
    ident = identifier("STUDY", StudyInstanceUID=[OWN_STUDY, OWN_STUDY2])
    pdus = c_get(ident)
    assert forwarded(feed(inspector, pdus)) == pdus


# --- fragmentation and encodings ------------------------------------------------------------------------


def test_command_and_identifier_fragmented_across_pdus_and_pdvs() -> None:
    cmd = command(0x0010, message_id=5)
    ident = identifier("STUDY", StudyInstanceUID=OWN_STUDY, PatientID="12345")
    c, d = fragments(GET_CX, cmd, 9, True), fragments(GET_CX, ident, 7, False)
    # Command split over two PDUs (several PDVs each); the last command PDV shares a PDU with data.
    pdus = [pdata(*c[:3]), pdata(*c[3:-1]), pdata(c[-1], *d[:2]), pdata(*d[2:5]), pdata(*d[5:])]
    inspector, archive, _ = make()
    actions = feed(inspector, pdus)
    assert all(a == Action() for a in actions[:-1])
    assert actions[-1].forward == pdus
    assert archive.calls == [("north", "STUDY", {"StudyInstanceUID": [OWN_STUDY]})]

    inspector, archive, _ = make()
    foreign = identifier("STUDY", StudyInstanceUID=FOREIGN_STUDY)
    d = fragments(GET_CX, foreign, 5, False)
    actions = feed(inspector, [pdata(*c[:4]), pdata(*c[4:]), pdata(*d[:3]), pdata(*d[3:])])
    assert_refused(actions, 0x0124, message_id=5)


def test_command_and_identifier_in_one_pdu() -> None:
    pdu = pdata((GET_CX, 3, command(0x0010)), (GET_CX, 2, identifier("SERIES", SeriesInstanceUID=OWN_SERIES)))
    inspector, _, _ = make()
    assert feed(inspector, [pdu]) == [Action(forward=[pdu])]


@pytest.mark.parametrize(("cx", "syntax"), [(GET_CX, ImplicitVRLittleEndian), (EXPLICIT_CX, ExplicitVRLittleEndian),
                                            (BIG_CX, ExplicitVRBigEndian),
                                            (DEFLATED_CX, DeflatedExplicitVRLittleEndian)])
def test_identifier_decoded_in_the_negotiated_transfer_syntax(cx: int, syntax: str) -> None:
    own = c_get(identifier("STUDY", syntax, StudyInstanceUID=[OWN_STUDY, OWN_STUDY2]), cx=cx)
    inspector, archive, _ = make()
    assert forwarded(feed(inspector, own)) == own
    assert archive.calls[0][2] == {"StudyInstanceUID": [OWN_STUDY, OWN_STUDY2]}
    inspector, _, _ = make()
    foreign = c_get(identifier("STUDY", syntax, StudyInstanceUID=FOREIGN_STUDY), cx=cx)
    assert_refused(feed(inspector, foreign), 0x0124, cx=cx)


def test_identifier_in_another_syntax_than_negotiated_is_not_believed() -> None:
    # Explicit VR bytes on an implicit VR context: decoded as the archive would, they are garbage.
    inspector, archive, _ = make()
    pdus = c_get(identifier("STUDY", ExplicitVRLittleEndian, StudyInstanceUID=OWN_STUDY), cx=GET_CX)
    actions = feed(inspector, pdus)
    assert forwarded(actions) == [] and archive.calls == []
    assert decode_reply(replied(actions))[1].Status in (0xA900, 0xC000)


def test_reply_respects_the_requestors_maximum_pdu_length() -> None:
    inspector, _, _ = make(max_length=40)
    actions = feed(inspector, c_get(identifier("STUDY", StudyInstanceUID=FOREIGN_STUDY)))
    pdus = replied(actions)
    assert len(pdus) > 3 and all(len(p) - 6 <= 40 for p in pdus)
    assert_refused(actions, 0x0124)


# --- everything else passes untouched -------------------------------------------------------------------


def test_c_echo_and_c_find_pass_at_once_without_a_check() -> None:
    inspector, archive, events = make()
    echo = message(ECHO_CX, command(0x0030, sop_class=VERIFICATION, has_data=False))
    find = message(GET_CX, command(0x0020), identifier("STUDY", StudyInstanceUID="*"))
    actions = feed(inspector, echo + find)
    assert [a.forward for a in actions] == [[p] for p in echo + find]
    assert all(a.forward[0] is p for a, p in zip(actions, echo + find, strict=True))
    assert archive.calls == [] and events == []


def test_large_c_store_flows_through_unbuffered() -> None:
    inspector, archive, _ = make()
    cmd = command(0x0001, sop_class=CT_IMAGE, Priority=0, AffectedSOPInstanceUID="1.2.3.4")
    value = bytes(range(256)) * (24 * 1024 * 4)  # 24 MiB of pixel data: a data set the nesting check passes
    data = struct.pack("<HH2s2xI", 0x7FE0, 0x0010, b"OW", len(value)) + value
    pdus = message(CT_CX, cmd, data, size=128 * 1024 - 6)
    actions = feed(inspector, pdus)
    assert all(len(a.forward) == 1 and a.forward[0] is p and not a.reply for a, p in zip(actions, pdus, strict=True))
    assert archive.calls == []
    assert inspector._held == [] and inspector._batch == []  # nothing of the data set is kept


def test_release_and_abort_are_forwarded() -> None:
    inspector, _, _ = make()
    release = bytes([0x05, 0, 0, 0, 0, 4, 0, 0, 0, 0])
    abort = bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 0, 0])
    assert feed(inspector, [release, abort]) == [Action(forward=[release]), Action(forward=[abort])]


def test_release_inside_a_held_c_get_drops_it() -> None:
    inspector, archive, _ = make()
    pdus = c_get(identifier("STUDY", StudyInstanceUID=OWN_STUDY), size=8)
    release = bytes([0x05, 0, 0, 0, 0, 4, 0, 0, 0, 0])
    actions = feed(inspector, [*pdus[:-1], release])
    assert forwarded(actions) == [release] and archive.calls == []


# --- what cannot be checked is refused -------------------------------------------------------------------


@pytest.mark.parametrize(("ident", "status"), [
    (identifier("STUDY"), 0xA900),  # universal matching
    (identifier("STUDY", StudyInstanceUID=""), 0xA900),
    (identifier("STUDY", StudyInstanceUID="1.2.826.0.1.*"), 0xA900),  # wildcard
    (identifier("SERIES", StudyInstanceUID=OWN_STUDY), 0xA900),  # level key missing
    (identifier("STUDY", StudyInstanceUID=OWN_STUDY, AccessionNumber="A1"), 0xA900),  # Orthanc would use it
    (identifier("STUDY", StudyInstanceUID=OWN_STUDY, AccessionNumber=""), 0xA900),
    (identifier(None, StudyInstanceUID=OWN_STUDY), 0xA900),
    (identifier(" STUDY", StudyInstanceUID=OWN_STUDY), 0xA900),
    (identifier("WORKLIST", StudyInstanceUID=OWN_STUDY), 0xA900),
    (identifier("STUDY", StudyInstanceUID=OWN_STUDY) + b"\x20\x00\x0d", 0xC000),  # trailing bytes
    (identifier("STUDY", StudyInstanceUID=OWN_STUDY)[:-4], 0xC000),  # truncated value
    (b"\x00\x00\x00\x00", 0xC000),
])
def test_uncheckable_identifiers_are_refused_without_asking(ident: bytes, status: int) -> None:
    inspector, archive, events = make()
    assert_refused(feed(inspector, c_get(ident)), status)
    assert archive.calls == []
    assert events[0][0] == "cget-refused"


def test_repeated_key_is_refused() -> None:
    # pydicom keeps the last of two equal tags, DCMTK the first: two readers, two answers. Refused.
    own = identifier("STUDY", StudyInstanceUID=OWN_STUDY)
    inspector, archive, _ = make()
    assert_refused(feed(inspector, c_get(own + identifier(None, StudyInstanceUID=FOREIGN_STUDY))), 0xC000)
    assert archive.calls == []


def test_sequence_in_identifier_is_refused() -> None:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = OWN_STUDY
    ds.ReferencedStudySequence = [Dataset()]
    inspector, archive, _ = make()
    assert_refused(feed(inspector, c_get(encode(ds))), 0xC000)
    assert archive.calls == []


def test_patient_level_is_left_to_the_archive_with_the_patient_id() -> None:
    inspector, archive, _ = make()
    assert_refused(feed(inspector, c_get(identifier("PATIENT", PatientID="12345"))), 0x0124)
    assert archive.calls == [("north", "PATIENT", {"PatientID": ["12345"]})]


def test_c_get_without_identifier_is_refused() -> None:
    inspector, archive, _ = make()
    actions = feed(inspector, message(GET_CX, command(0x0010, has_data=False)))
    assert_refused(actions, 0xA900)
    assert archive.calls == []


def test_oversized_identifier_is_refused_and_never_buffered() -> None:
    inspector, archive, _ = make()
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = "\\".join([OWN_STUDY] * (MAX_IDENTIFIER_BYTES // len(OWN_STUDY) + 10))
    pdus = c_get(encode(ds), size=64 * 1024)

    async def run() -> list[Action]:
        actions = []
        for pdu in pdus:
            actions.append(await inspector.client_pdu(pdu[0], pdu))
            assert inspector._held_bytes <= MAX_HELD_BYTES // 2
        return actions

    actions = asyncio.run(run())
    assert_refused(actions, 0xC000)
    assert archive.calls == []


def test_failing_or_slow_ownership_check_fails_closed() -> None:
    async def broken(*_: Any) -> bool:
        raise ConnectionRefusedError

    async def slow(*_: Any) -> bool:
        await asyncio.sleep(10)
        return True

    async def truthy(*_: Any) -> Any:
        return "yes"  # only True allows

    ident = identifier("STUDY", StudyInstanceUID=OWN_STUDY)
    for answer, status in ((broken, 0xC000), (slow, 0xC000), (truthy, 0x0124)):
        inspector, _, _ = make(Archive(answer), authorize_timeout=0.05)
        assert_refused(feed(inspector, c_get(ident)), status)


def test_c_get_on_a_context_that_was_not_accepted_is_refused() -> None:
    inspector, archive, _ = make()
    assert_refused(feed(inspector, c_get(identifier("STUDY", StudyInstanceUID=OWN_STUDY), cx=REFUSED_CX)),
                   0xC000, cx=REFUSED_CX)
    assert archive.calls == []


def test_factory_builds_from_the_parsed_request_and_needs_a_clinic() -> None:
    archive = Archive()
    build = inspector_factory(archive.authorize)
    peer = SimpleNamespace(clinic="north")
    inspector = build(peer, parse_associate(rq()))  # type: ignore[arg-type]
    inspector.server_pdu(0x02, ac())
    assert_refused(feed(inspector, c_get(identifier("STUDY", StudyInstanceUID=FOREIGN_STUDY))), 0x0124)
    assert archive.calls[0][0] == "north"
    with pytest.raises(ValueError, match="clinic"):
        build(SimpleNamespace(clinic=None), parse_associate(rq()))  # type: ignore[arg-type]


def test_without_an_association_accept_every_c_get_is_refused() -> None:
    archive = Archive()
    inspector = CGetInspector("north", rq(), archive.authorize)
    inspector.server_pdu(0x02, b"\x02\x00\x00\x00\x00\x01\x00")  # malformed: logged, nothing accepted
    assert_refused(feed(inspector, c_get(identifier("STUDY", StudyInstanceUID=OWN_STUDY))), 0xC000)


# --- cancels, mixed PDUs, garbage -----------------------------------------------------------------------


def cancel(responding_to: int) -> list[bytes]:
    ds = Dataset()
    ds.CommandField = 0x0FFF
    ds.MessageIDBeingRespondedTo = responding_to
    ds.CommandDataSetType = 0x0101
    body = encode(ds)
    return message(GET_CX, struct.pack("<HHII", 0, 0, 4, len(body)) + body)


def test_cancel_of_a_refused_c_get_is_dropped_and_of_an_allowed_one_forwarded() -> None:
    inspector, _, _ = make()
    actions = feed(inspector, [*c_get(identifier("STUDY", StudyInstanceUID=FOREIGN_STUDY), message_id=9),
                               *cancel(9)])
    assert actions[-1] == Action()
    assert_refused(actions, 0x0124, message_id=9)
    # The same message ID reused by an allowed C-GET is live again: its cancel reaches the archive.
    allowed = c_get(identifier("STUDY", StudyInstanceUID=OWN_STUDY), message_id=9)
    actions = feed(inspector, [*allowed, *cancel(9)])
    assert forwarded(actions) == allowed + cancel(9)


def test_refused_c_get_sharing_a_pdu_with_another_message_aborts() -> None:
    echo = command(0x0030, sop_class=VERIFICATION, has_data=False)
    foreign = pdata((ECHO_CX, 3, echo), (GET_CX, 3, command(0x0010)),
                    (GET_CX, 2, identifier("STUDY", StudyInstanceUID=FOREIGN_STUDY)))
    inspector, _, events = make()
    assert feed(inspector, [foreign]) == [Action(close=True)]  # the relay aborts both sides
    assert events[-1][0] == "dimse-protocol-violation"
    own = pdata((ECHO_CX, 3, echo), (GET_CX, 3, command(0x0010)),
                (GET_CX, 2, identifier("STUDY", StudyInstanceUID=OWN_STUDY)))
    inspector, _, _ = make()
    assert feed(inspector, [own]) == [Action(forward=[own])]


GARBAGE = [
    pdata((GET_CX, 0, b"data before any command")),
    pdata((GET_CX, 3, b"\x00\x00\x00\x01")),  # truncated command element
    pdata((GET_CX, 3, command(0x0010)[:-1])),
    bytes([0x04, 0, 0, 0, 0, 10, 0, 0, 0, 50, 1, 3, 0, 0, 0, 0]),  # PDV longer than the PDU
    bytes([0x04, 0, 0xFF, 0xFF, 0xFF, 0xFF]),  # length field larger than the PDU
    bytes([0x04, 0, 0, 0, 0, 0]),  # no PDV at all
    pdata((2, 3, command(0x0030, has_data=False))),  # even presentation context ID
    bytes([0x01, 0, 0, 0, 0, 0]),  # a second A-ASSOCIATE-RQ
    bytes([0x09, 0, 0, 0, 0, 0]),  # unknown PDU type
]


@pytest.mark.parametrize("pdu", GARBAGE)
def test_garbage_aborts_the_association(pdu: bytes) -> None:
    inspector, archive, events = make()
    actions = feed(inspector, [pdu, *message(ECHO_CX, command(0x0030, sop_class=VERIFICATION, has_data=False))])
    assert actions == [Action(close=True)] * 2, "nothing passes once the association is condemned"
    assert events[-1][0] == "dimse-protocol-violation" and archive.calls == []


def test_protocol_violations_inside_messages_abort() -> None:
    get_cmd = command(0x0010)
    cases = [
        [pdata((GET_CX, 1, get_cmd[:10])), pdata((GET_CX, 0, b"xx"))],  # data before the command ended
        [pdata((GET_CX, 3, get_cmd)), pdata((GET_CX, 1, b"xx"))],  # command fragment inside the data set
        [pdata((GET_CX, 3, get_cmd)), pdata((ECHO_CX, 2, b"xx"))],  # data set on another context
        [pdata((GET_CX, 3, struct.pack("<HHI", 0, 0x0100, 2) + b"\x10\x00"
                + struct.pack("<HHI", 0, 0x0002, 2) + b"1\0"))],  # tags out of order
        [pdata((GET_CX, 3, struct.pack("<HHI", 8, 0x0052, 2) + b"ST"))],  # not a command group
        [pdata((GET_CX, 3, command(0x0010, message_id=None)))],  # C-GET we could not answer
    ]
    for pdus in cases:
        inspector, archive, _ = make()
        actions = feed(inspector, pdus)
        assert actions[-1] == Action(close=True), pdus
        assert forwarded(actions) == [] and archive.calls == []


# --- end to end: pynetdicom SCU -> a minimal relay with the inspector -> pynetdicom SCP -------------------


class Relay:
    """The smallest relay that uses the inspector as the core does (not the core): whole PDUs both ways,
    the A-ASSOCIATE-AC shown to the inspector, replies written between the archive's PDUs."""

    def __init__(self, upstream_port: int, authorize: Callable[..., Awaitable[bool]]):
        self.upstream_port = upstream_port
        self.authorize = authorize
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0), self.loop).result(5)
        self.port = self.server.sockets[0].getsockname()[1]

    def close(self) -> None:
        async def shutdown() -> None:
            self.server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    @staticmethod
    async def _read_pdu(reader: asyncio.StreamReader) -> bytes | None:
        try:
            head = await reader.readexactly(6)
            return head + await reader.readexactly(struct.unpack_from(">I", head, 2)[0])
        except (asyncio.IncompleteReadError, ConnectionError):
            return None

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        rq_pdu = await self._read_pdu(client_r)
        assert rq_pdu is not None and rq_pdu[0] == 0x01
        inspector = CGetInspector("north", rq_pdu, self.authorize)
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        server_w.write(rq_pdu)
        to_client = asyncio.Lock()  # replies go between whole archive PDUs, never inside one

        async def archive_to_client() -> None:
            while (pdu := await self._read_pdu(server_r)) is not None:
                inspector.server_pdu(pdu[0], pdu)
                async with to_client:
                    client_w.write(pdu)
                    await client_w.drain()

        pump = asyncio.create_task(archive_to_client())
        while (pdu := await self._read_pdu(client_r)) is not None:
            action = await inspector.client_pdu(pdu[0], pdu)
            for out in action.forward:
                server_w.write(out)
            await server_w.drain()
            async with to_client:
                for out in action.reply:
                    client_w.write(out)
                await client_w.drain()
            if action.close:
                break
        if not pump.done():
            await asyncio.wait_for(pump, 5)
        server_w.close()
        client_w.close()


@pytest.fixture
def scp_with_study(tmp_path: Path) -> Iterator[tuple[TestSCP, Dataset]]:
    ds = instance(StudySpec(seed="gw-e2e", slices=1, rows=8, columns=8), 0)
    ds.StudyInstanceUID = OWN_STUDY
    path = tmp_path / "1.dcm"
    path.write_bytes(part10(ds))
    scp = TestSCP(ssl_context=None, retrieve_files=[path]).start()
    yield scp, ds
    scp.stop()


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian])
def test_pynetdicom_c_get_through_the_inspector(scp_with_study: tuple[TestSCP, Dataset], syntax: str) -> None:
    scp, stored = scp_with_study
    archive = Archive()
    relay = Relay(scp.port, archive.authorize)
    received: list[str] = []

    def on_store(event: evt.Event) -> int:
        received.append(str(event.dataset.SOPInstanceUID))
        return 0x0000

    ae = AE(ae_title="NORTH_CT")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet, [syntax])
    ae.add_requested_context(stored.SOPClassUID, [ExplicitVRLittleEndian])
    role = build_role(stored.SOPClassUID, scp_role=True)
    try:
        statuses: dict[str, list[int]] = {}
        for name, study in (("own", OWN_STUDY), ("foreign", FOREIGN_STUDY)):
            assoc = ae.associate("127.0.0.1", relay.port, ae_title="SECUREPACS", ext_neg=[role],
                                 evt_handlers=[(evt.EVT_C_STORE, on_store)])
            assert assoc.is_established
            query = Dataset()
            query.QueryRetrieveLevel = "STUDY"
            query.StudyInstanceUID = study
            responses = assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet)
            statuses[name] = [int(status.Status) for status, _ in responses if status]
            assoc.release()
    finally:
        relay.close()
    assert statuses["own"][-1] == 0x0000 and received == [stored.SOPInstanceUID]
    assert statuses["foreign"] == [0x0124], "the client gets the gateway's answer, and only that"
    assert [str(i.StudyInstanceUID) for i in scp.identifiers] == [OWN_STUDY], "the SCP never saw the foreign one"
    assert [c[2] for c in archive.calls] == [{"StudyInstanceUID": [OWN_STUDY]}, {"StudyInstanceUID": [FOREIGN_STUDY]}]
