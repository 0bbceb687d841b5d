"""The gateway's C-STORE nesting guard (CVE-2026-10528), on the inspector's PDU contract."""

from __future__ import annotations

import zlib

import pytest
from test_gateway_dimse import (
    BIG_CX,
    CT_CX,
    CT_IMAGE,
    DEFLATED_CX,
    ECHO_CX,
    GET_CX,
    SYNTAX_OF,
    VERIFICATION,
    command,
    feed,
    forwarded,
    make,
    message,
    pdata,
    replied,
)

from securepacs.dataset_limits.nesting import MAX_DEPTH
from securepacs.dicom import status_codes
from securepacs.gateway.dimse import Action
from securepacs.gateway.dimse_command import C_STORE_RSP, decode_command
from securepacs.gateway.pdu import A_ABORT, A_RELEASE_RP, build_abort, build_release_rp, iter_pdvs
from securepacs_tools import nested_samples

SOP_UID = "1.2.826.0.1.3680043.10.543.7.1"
RELEASE_RQ = bytes([0x05, 0, 0, 0, 0, 4, 0, 0, 0, 0])


def store_rq(message_id: int = 11) -> bytes:
    return command(0x0001, message_id, sop_class=CT_IMAGE, Priority=0, AffectedSOPInstanceUID=SOP_UID)


def _rsp(pdus: list[bytes]) -> tuple[int, int, str]:
    data = b"".join(bytes(p.data) for pdu in pdus for p in iter_pdvs(pdu))
    cmd = decode_command(data)
    assert cmd.field == C_STORE_RSP and cmd.sop_instance_raw is not None
    status = int.from_bytes(_element(data, 0x0900), "little")
    return cmd.responding_to or 0, status, cmd.sop_instance_raw.rstrip(b"\0").decode()


def _element(data: bytes, element: int) -> bytes:
    pos = 0
    while pos < len(data):
        el = int.from_bytes(data[pos + 2 : pos + 4], "little")
        length = int.from_bytes(data[pos + 4 : pos + 8], "little")
        if el == element:
            return data[pos + 8 : pos + 8 + length]
        pos += 8 + length
    raise KeyError(element)


@pytest.mark.parametrize("cx", [CT_CX, GET_CX, BIG_CX], ids=["explicit-le", "implicit-le", "explicit-be"])
def test_a_too_deep_c_store_never_reaches_the_archive_whole_and_is_answered(cx: int) -> None:
    inspector, _, events = make()
    data = nested_samples.nested_dataset(200_000, syntax=SYNTAX_OF[cx])
    pdus = message(cx, store_rq(), data, size=16384 - 6)
    actions = feed(inspector, pdus)
    sent = forwarded(actions)
    # The command and the data set's PDUs up to the one crossing the limit: at most the limit's nesting.
    assert sent == pdus[: len(sent)] and 1 <= len(sent) <= 2
    assert nested_samples.nested_dataset(MAX_DEPTH + 1, syntax=SYNTAX_OF[cx])[:100] in pdus[1]  # crossed in PDU 1
    assert all(not a.reply for a in actions[:-1]) and not any(a.close for a in actions)
    responding_to, status, sop_uid = _rsp(actions[-1].reply)
    assert (responding_to, status, sop_uid) == (11, status_codes.STORE_ERROR_CANNOT_UNDERSTAND, SOP_UID)
    assert [k for k, _ in events] == ["cstore-refused"]
    details = events[0][1]
    assert details["status"] == 0xC000 and "deeper than 32 levels" in details["reason"]
    assert SOP_UID not in repr(details)  # no identifiers in security events
    # The archive is inside that message: the release is answered here and the archive's side aborted.
    assert feed(inspector, [RELEASE_RQ]) == [Action(forward=[build_abort()], reply=[build_release_rp()])]
    assert build_release_rp()[0] == A_RELEASE_RP and build_abort()[0] == A_ABORT


def test_a_message_after_a_refused_c_store_aborts_the_association() -> None:
    inspector, _, events = make()
    feed(inspector, message(CT_CX, store_rq(), nested_samples.nested_dataset(MAX_DEPTH + 1)))
    echo = message(ECHO_CX, command(0x0030, 12, sop_class=VERIFICATION, has_data=False))
    assert feed(inspector, echo) == [Action(close=True)]
    assert events[-1][0] == "dimse-protocol-violation"


@pytest.mark.parametrize("cx", [CT_CX, GET_CX, BIG_CX], ids=["explicit-le", "implicit-le", "explicit-be"])
def test_the_limit_itself_flows_through(cx: int) -> None:
    inspector, _, events = make()
    for depth in (3, MAX_DEPTH):
        pdus = message(cx, store_rq(), nested_samples.nested_dataset(depth, syntax=SYNTAX_OF[cx]), size=7)
        actions = feed(inspector, pdus)
        assert forwarded(actions) == pdus and not replied(actions)
    assert events == []


def test_a_deflated_c_store_is_inflated_and_checked() -> None:
    inspector, _, events = make()
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    data = deflater.compress(nested_samples.nested_dataset(200_000)) + deflater.flush()
    actions = feed(inspector, message(DEFLATED_CX, store_rq(), data, size=1024))
    assert _rsp(actions[-1].reply)[1] == 0xC000 and [k for k, _ in events] == ["cstore-refused"]


def test_a_malformed_c_store_data_set_is_refused_too() -> None:
    inspector, _, events = make()
    actions = feed(inspector, message(CT_CX, store_rq(), b"\xfe\xff\x00\xe0\x00\x00\x00\x00"))
    assert _rsp(actions[-1].reply)[1] == 0xC000
    assert "where an element belongs" in events[0][1]["reason"]


def test_a_refused_c_store_sharing_a_pdu_with_another_message_aborts() -> None:
    inspector, _, _ = make()
    echo = command(0x0030, 12, sop_class=VERIFICATION, has_data=False)
    shared = pdata((ECHO_CX, 0x03, echo), (CT_CX, 0x03, store_rq()), (CT_CX, 0x02, nested_samples.nested_dataset(40)))
    assert feed(inspector, [shared]) == [Action(close=True)]


def test_a_truncated_c_store_data_set_is_left_to_the_archive() -> None:
    # It nests no deeper than its bytes: as before the guard, the archive decides what to make of it.
    inspector, _, events = make()
    pdus = message(CT_CX, store_rq(), nested_samples.nested_dataset(5)[:-20], size=64)
    actions = feed(inspector, pdus)
    assert forwarded(actions) == pdus and not replied(actions) and events == []
