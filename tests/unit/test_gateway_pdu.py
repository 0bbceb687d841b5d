"""The gateway's PDU code, checked against pynetdicom's independent encoder/decoder and hostile input."""

from __future__ import annotations

import random
import struct

import pytest
from pynetdicom.pdu import A_ABORT_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ, P_DATA_TF
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    P_DATA,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import build_context

from securepacs.gateway import associate_pdu, pdu

CT = "1.2.840.10008.5.1.4.1.1.2"
VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT, EXPLICIT = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1"


def _user_info(max_length: int = 16382) -> list:
    ml = MaximumLengthNotification()
    ml.maximum_length_received = max_length
    impl = ImplementationClassUIDNotification()
    impl.implementation_class_uid = "1.2.826.0.1.3680043.9.3811.2.0.4"
    version = ImplementationVersionNameNotification()
    version.implementation_version_name = "PYNETDICOM_204"
    role = SCP_SCU_RoleSelectionNegotiation()
    role.sop_class_uid, role.scu_role, role.scp_role = CT, False, True
    return [ml, impl, version, role]


def pynetdicom_rq(calling: str = "CLINICA", called: str = "SECUREPACS") -> bytes:
    prim = A_ASSOCIATE()
    prim.application_context_name = "1.2.840.10008.3.1.1.1"
    prim.calling_ae_title, prim.called_ae_title = calling, called
    echo = build_context(VERIFICATION, [IMPLICIT, EXPLICIT])
    echo.context_id = 1
    ct = build_context(CT, [EXPLICIT])
    ct.context_id = 3
    prim.presentation_context_definition_list = [echo, ct]
    prim.user_information = _user_info()
    rq = A_ASSOCIATE_RQ()
    rq.from_primitive(prim)
    return rq.encode()


def pynetdicom_ac() -> bytes:
    prim = A_ASSOCIATE()
    prim.application_context_name = "1.2.840.10008.3.1.1.1"
    prim.calling_ae_title, prim.called_ae_title = "CLINICA", "SECUREPACS"
    prim.result = 0x00
    accepted = build_context(VERIFICATION, [IMPLICIT])
    accepted.context_id, accepted.result = 1, 0
    refused = build_context(CT, [EXPLICIT])
    refused.context_id, refused.result = 3, 3  # abstract syntax not supported
    prim.presentation_context_definition_results_list = [accepted, refused]
    prim.user_information = _user_info(131072)[:2]
    ac = A_ASSOCIATE_AC()
    ac.from_primitive(prim)
    return ac.encode()


# -- A-ASSOCIATE-RQ / AC -------------------------------------------------------------------------------


def test_parses_an_associate_rq_encoded_by_pynetdicom():
    rq = associate_pdu.parse_associate(pynetdicom_rq())
    assert (rq.pdu_type, rq.protocol_version) == (pdu.A_ASSOCIATE_RQ, 1)
    assert (rq.calling_aet, rq.called_aet) == ("CLINICA", "SECUREPACS")
    assert rq.application_context == "1.2.840.10008.3.1.1.1"
    assert [(c.id, c.abstract_syntax, c.transfer_syntaxes) for c in rq.contexts] == [
        (1, VERIFICATION, (IMPLICIT, EXPLICIT)), (3, CT, (EXPLICIT,))]
    assert rq.max_length == 16382
    assert rq.implementation_class_uid == "1.2.826.0.1.3680043.9.3811.2.0.4"
    assert rq.implementation_version == "PYNETDICOM_204"
    assert rq.roles == (associate_pdu.RoleSelection(CT, scu=False, scp=True),)


def test_parses_an_associate_ac_encoded_by_pynetdicom():
    ac = associate_pdu.parse_associate(pynetdicom_ac())
    assert ac.pdu_type == pdu.A_ASSOCIATE_AC
    assert [(c.id, c.result, c.transfer_syntaxes) for c in ac.contexts] == [(1, 0, (IMPLICIT,)), (3, 3, (EXPLICIT,))]
    assert ac.accepted_context_ids == frozenset({1})
    assert ac.max_length == 131072


def test_built_rq_and_ac_decode_in_pynetdicom():
    contexts = [associate_pdu.PresentationContext(1, VERIFICATION, (IMPLICIT,)),
                associate_pdu.PresentationContext(3, CT, (EXPLICIT,))]
    data = associate_pdu.build_associate(pdu.A_ASSOCIATE_RQ, "SECUREPACS", "CLINICA", contexts, max_length=32768)
    decoded = A_ASSOCIATE_RQ()
    decoded.decode(data)
    assert decoded.calling_ae_title == "CLINICA" and decoded.called_ae_title == "SECUREPACS"
    assert [str(c.abstract_syntax) for c in decoded.presentation_context] == [VERIFICATION, CT]
    assert decoded.to_primitive().maximum_length_received == 32768
    assert associate_pdu.parse_associate(data).contexts == tuple(contexts)

    answer = [associate_pdu.PresentationContext(1, None, (IMPLICIT,), 0)]
    ac = A_ASSOCIATE_AC()
    ac.decode(associate_pdu.build_associate(pdu.A_ASSOCIATE_AC, "SECUREPACS", "CLINICA", answer))
    assert [(c.context_id, c.result) for c in ac.presentation_context] == [(1, 0)]


def test_ae_titles_are_space_padded_and_hostile_bytes_survive_decoding():
    assert associate_pdu.encode_aet("CLINICA") == b"CLINICA         "
    assert associate_pdu.decode_aet(b"  CLINICA       ") == "CLINICA"
    assert associate_pdu.decode_aet(b"CLINIC\x00\xff\\A      ") == "CLINIC\x00\xff\\A"
    with pytest.raises(pdu.PduError):
        associate_pdu.encode_aet("X" * 17)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d[:-1], "does not match"),
    (lambda d: d + b"\0", "does not match"),
    (lambda d: pdu.header(1, 68) + d[6:74], "no application context"),
    (lambda d: pdu.header(1, 10) + d[6:16], "too short"),
    (lambda d: b"\x03" + d[1:], "expected an A-ASSOCIATE-RQ or -AC"),
])
def test_malformed_associate_rq_is_refused(mutate, message):
    data = pynetdicom_rq()
    with pytest.raises(pdu.PduError, match=message):
        associate_pdu.parse_associate(mutate(data))


def _rq_with_item(item: bytes) -> bytes:
    base = pynetdicom_rq()
    body = base[6:] + item
    return pdu.header(pdu.A_ASSOCIATE_RQ, len(body)) + body


def test_item_lengths_are_checked_before_use():
    # An item claiming 65535 bytes when 4 remain must raise, not read past the end.
    with pytest.raises(pdu.PduError, match="claims 65535 bytes"):
        associate_pdu.parse_associate(_rq_with_item(struct.pack(">BBH", 0x50, 0, 0xFFFF) + b"abcd"))
    with pytest.raises(pdu.PduError, match="too short for an item header"):
        associate_pdu.parse_associate(_rq_with_item(b"\x50\x00"))
    even_id = struct.pack(">BBH", 0x20, 0, 4) + bytes([2, 0, 0, 0])
    with pytest.raises(pdu.PduError, match="odd number"):
        associate_pdu.parse_associate(_rq_with_item(even_id))
    no_syntax = struct.pack(">BBH", 0x20, 0, 4) + bytes([5, 0, 0, 0])
    with pytest.raises(pdu.PduError, match="one abstract syntax"):
        associate_pdu.parse_associate(_rq_with_item(no_syntax))
    # Unknown item types are skipped (PS3.8 9.3.1) once their length is known to be sane.
    unknown = _rq_with_item(struct.pack(">BBH", 0x7E, 0, 2) + b"zz")
    assert associate_pdu.parse_associate(unknown).calling_aet == "CLINICA"


def test_parser_raises_only_pdu_error_on_random_mutations():
    rng = random.Random(1)
    original = pynetdicom_rq()
    outcomes = {"parsed": 0, "refused": 0}
    for _ in range(5000):
        data = bytearray(original)
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.3:
            data = data[: rng.randrange(len(data))]
        try:
            associate_pdu.parse_associate(bytes(data))
            outcomes["parsed"] += 1
        except pdu.PduError:
            outcomes["refused"] += 1
    assert outcomes["refused"] > 1000 and outcomes["parsed"] > 100, outcomes


# -- RJ, ABORT, RELEASE -----------------------------------------------------------------------------------


def test_reject_decodes_in_pynetdicom_with_the_right_fields():
    data = pdu.build_reject(pdu.RESULT_REJECTED_PERMANENT, pdu.SOURCE_SERVICE_USER,
                            pdu.REASON_CALLING_AET_NOT_RECOGNIZED)
    assert data == b"\x03\x00\x00\x00\x00\x04\x00\x01\x01\x03"
    rj = A_ASSOCIATE_RJ()
    rj.decode(data)
    assert (rj.result, rj.source, rj.reason_diagnostic) == (1, 1, 3)
    assert rj.reason_str == "Calling AE title not recognised"
    assert pdu.parse_reject(data) == (1, 1, 3)
    limit = A_ASSOCIATE_RJ()
    limit.decode(pdu.build_reject(2, 3, 2))
    assert limit.reason_str == "Local limit exceeded"


def test_abort_and_release_pdus():
    data = pdu.build_abort(pdu.ABORT_SOURCE_SERVICE_PROVIDER, pdu.ABORT_REASON_UNEXPECTED_PDU)
    abort = A_ABORT_RQ()
    abort.decode(data)
    assert (abort.source, abort.reason_diagnostic) == (2, 2)
    assert pdu.parse_abort(data) == (2, 2)
    assert pdu.build_release_rq() == b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00"
    assert pdu.build_release_rp()[0] == pdu.A_RELEASE_RP
    with pytest.raises(pdu.PduError):
        pdu.parse_abort(data + b"\0")
    with pytest.raises(pdu.PduError):
        pdu.parse_reject(data)


# -- P-DATA-TF ------------------------------------------------------------------------------------------


def test_p_data_round_trip_with_pynetdicom():
    prim = P_DATA()
    prim.presentation_data_value_list = [[1, b"\x03" + b"command"], [1, b"\x00" + b"data set frag"]]
    theirs = P_DATA_TF()
    theirs.from_primitive(prim)
    data = theirs.encode()
    pdvs = list(pdu.iter_pdvs(data))
    assert [(p.context_id, p.is_command, p.is_last, bytes(p.data)) for p in pdvs] == [
        (1, True, True, b"command"), (1, False, False, b"data set frag")]
    ours = pdu.build_p_data([(1, 0x03, b"command"), (1, 0x00, b"data set frag")])
    assert ours == data
    pdu.check_p_data_body(data[6:], frozenset({1}))
    with pytest.raises(pdu.PduError, match="not accepted"):
        pdu.check_p_data_body(data[6:], frozenset({3}))


@pytest.mark.parametrize("body, message", [
    (b"", "no presentation data value"),
    (b"\x00\x00\x00", "too short for a PDV"),
    (struct.pack(">IBB", 1, 1, 0), "claims length 1"),
    (struct.pack(">IBB", 0xFFFFFFFF, 1, 0) + b"x", "claims length 4294967295"),
    (struct.pack(">IBB", 3, 1, 0) + b"x" + b"\0", "trailing"),
    (struct.pack(">IBB", 3, 2, 0) + b"x", "context ID 2"),
    (struct.pack(">IBB", 3, 1, 0x04) + b"x", "reserved bits"),
])
def test_malformed_p_data_is_refused(body, message):
    with pytest.raises(pdu.PduError, match=message):
        pdu.check_p_data_body(body)


def test_boundary_tracker_follows_pdus_split_anywhere():
    stream = pdu.build_p_data([(1, 3, b"x" * 300)]) + pdu.build_release_rp() + pdu.build_abort()
    ends = {len(pdu.build_p_data([(1, 3, b"x" * 300)])), len(stream) - 10, len(stream)}
    for cut in range(1, len(stream)):
        tracker = pdu.PduBoundary()
        tracker.feed(stream[:cut])
        assert tracker.at_boundary == (cut in ends), cut
        tracker.feed(stream[cut:])
        assert tracker.at_boundary and tracker.pdus == 3 and tracker.last_type == pdu.A_ABORT
    byte_by_byte = pdu.PduBoundary()
    for i in range(len(stream)):
        byte_by_byte.feed(stream[i : i + 1])
    assert byte_by_byte.pdus == 3 and byte_by_byte.at_boundary


def test_header_parsing():
    assert pdu.parse_header(b"\x01\x00\xff\xff\xff\xff") == (1, 0xFFFFFFFF)
    with pytest.raises(pdu.PduError):
        pdu.parse_header(b"\x01\x00")
