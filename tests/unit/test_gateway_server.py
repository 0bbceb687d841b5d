"""The gateway over real sockets and real TLS: a pynetdicom SCP stands in for Orthanc's internal port.

Clinics talk to it with our client, pynetdicom, or raw TLS sockets (to see the exact PDUs it answers).
"""

from __future__ import annotations

import argparse
import json
import socket
import ssl
import struct
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from _gateway_env import (
    AET,
    GatewayThread,
    Pki,
    RecordingUpstream,
    associate_rq,
    client_context,
    enrol,
    make_config,
    read_pdu,
    server_context,
)
from _scp import TestSCP
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from securepacs.client import Connection, ConnectionFailed, TlsConfig, echo, open_association, store
from securepacs.config import environment
from securepacs.gateway import Action, GatewayError, associate_pdu, pdu
from securepacs.gateway import command as gateway_cmd
from securepacs.gateway.connection_events import ConnectionEvent, EventLog
from securepacs.store.database import Store
from securepacs_tools.synth import StudySpec, write_study


def wait_for(condition: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} not met within {timeout}s"
        time.sleep(0.05)


class World:
    """PKI, store with clinics, the stand-in upstream and SCPs, shared by the module."""

    def __init__(self, root: Path):
        self.root = root
        self.pki = Pki(root / "certs")
        self.store = Store(root / "store.db")
        self.clinics = {}
        for name, aets in (("clinicA", ["CLINICA", "CLINICA2"]), ("clinicB", ["CLINICB"])):
            self.clinics[name] = self.pki.clinic(name, aets)
            enrol(self.store, self.clinics[name], name, aets)
        p = self.pki
        self.upstream = TestSCP(ssl_context=server_context(p.orthanc_internal.cert, p.orthanc_internal.key,
                                                           p.internal_ca)).start()
        # Clinic M's retrieve SCP (egress destination): its bundle names clinic M and the host it is at.
        self.clinic_m = p.clinic("clinicM", ["CLINICM"], usage="server+client", ip_addresses=["127.0.0.1"])
        self.scp_m = TestSCP(ssl_context=server_context(self.clinic_m.cert, self.clinic_m.key, p.clinic_ca),
                             ae_title="CLINICM").start()
        enrol(self.store, self.clinic_m, "clinicM", ["CLINICM"], ("127.0.0.1", self.scp_m.port))
        # Clinic N's registered address answers with clinic A's certificate: an impostor.
        impostor = p.clinic("impostor", ["CLINICA"], usage="server+client", ip_addresses=["127.0.0.1"],
                            uris=["urn:securepacs:clinic:clinicA"])
        self.scp_n = TestSCP(ssl_context=server_context(impostor.cert, impostor.key, p.clinic_ca),
                             ae_title="CLINICN").start()
        self.store.add_clinic("clinicN", ["CLINICN"], "127.0.0.1", self.scp_n.port)
        self.gateways: list[GatewayThread] = []

    def gateway(self, upstream_port: int | None = None, inspector_factory=None, **overrides) -> GatewayThread:
        port = upstream_port or self.upstream.port
        config = make_config(self.pki, self.store.path, ("127.0.0.1", port), **overrides)
        gw = GatewayThread(config, inspector_factory)
        self.gateways.append(gw)
        return gw

    def conn(self, gw: GatewayThread, clinic: str = "clinicA", aet: str = "CLINICA", **kwargs) -> Connection:
        cred = self.clinics[clinic]
        kwargs.setdefault("acse_timeout", 5.0)
        kwargs.setdefault("dimse_timeout", 10.0)
        return Connection("127.0.0.1", gw.port, calling_aet=aet, called_aet=kwargs.pop("called", AET),
                          tls=TlsConfig(ca=self.pki.clinic_ca, cert=cred.cert, key=cred.key), **kwargs)

    def raw(self, gw: GatewayThread, payload: bytes, clinic: str = "clinicA", cred=None) -> bytes:
        """Send ``payload`` over mutual TLS and return the first answer PDU (b"" if the gateway closed)."""
        ctx = client_context(cred or self.clinics[clinic], self.pki.clinic_ca)
        with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock, \
                ctx.wrap_socket(sock, server_hostname="127.0.0.1") as tls:
            if payload:
                tls.sendall(payload)
            return read_pdu(tls)

    def close(self) -> None:
        for gw in self.gateways:
            gw.stop(grace=0.5)
        for scp in (self.upstream, self.scp_m, self.scp_n):
            scp.stop()
        self.store.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World(tmp_path_factory.mktemp("gateway"))
    yield w
    w.close()


@pytest.fixture(scope="module")
def gw(world: World) -> GatewayThread:
    return world.gateway(egress_listen=("127.0.0.1", 0))


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    d = tmp_path_factory.mktemp("study")
    return write_study(StudySpec(seed="gw-unit", patient_name="SECRET^NAME", patient_id="PID-SECRET",
                                 slices=5, rows=32, columns=32), d)


def rejection(answer: bytes) -> tuple[int, int, int]:
    assert answer[:1] == b"\x03", f"expected an A-ASSOCIATE-RJ, got {answer[:10]!r}"
    return pdu.parse_reject(answer)


def last_event(gw: GatewayThread, predicate: Callable[[dict], bool] | None = None, **match) -> dict:
    """The newest event with these field values (and satisfying ``predicate``), waiting for it briefly."""
    def found() -> dict | None:
        for event in reversed(gw.events()):
            if all(event.get(k) == v for k, v in match.items()) and (predicate is None or predicate(event)):
                return event
        return None
    wait_for(lambda: found() is not None, what=f"event {match}")
    return found()  # type: ignore[return-value]


def tls_failure(event: dict) -> bool:
    return event.get("reason", "").startswith("tls-handshake-failed")


# -- the normal path ------------------------------------------------------------------------------------


def test_echo_and_store_pass_through_unchanged(world, gw, study):
    world.upstream.reset()
    assert echo(world.conn(gw)) == 0
    summary = store(world.conn(gw, aet="CLINICA2"), study)
    assert summary.ok and summary.success == 5, summary.report()
    assert len(world.upstream.received) == 5
    assert {r.calling_aet for r in world.upstream.received.values()} == {"CLINICA2"}
    event = last_event(gw, calling_aet="CLINICA2")
    assert event["outcome"] == "accepted" and event["end"] == "released"
    assert event["clinic"] == "clinicA" and event["serial"] == str(world.clinics["clinicA"].serial)
    assert event["tls_version"] in ("TLSv1.2", "TLSv1.3") and "cipher" in event
    assert event["bytes_from_requestor"] > 5 * 32 * 32 * 2 and event["bytes_from_acceptor"] > 0
    # AE titles and certificate names, never patient data.
    text = gw.events_path.read_text()
    assert "SECRET" not in text


def test_every_socket_has_tcp_nodelay(world, gw):
    assoc = open_association(world.conn(gw), [build_context(Verification)])
    try:
        def flags() -> list[int]:
            return [ep.writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                    for relay in gw.gateway.relays for ep in (relay.requestor, relay.acceptor)]
        values = gw.run(flags)
        assert values and all(values), values
    finally:
        assoc.release()


def test_inspector_sees_the_ac_and_every_requestor_pdu(world, study):
    seen: list[tuple[str, int]] = []

    class Recorder:
        def __init__(self, peer, rq):
            assert peer.clinic == "clinicA" and rq.calling_aet == "CLINICA"

        def server_pdu(self, pdu_type: int, data: bytes) -> None:
            seen.append(("server", pdu_type))
            assert associate_pdu.parse_associate(data).accepted_context_ids

        async def client_pdu(self, pdu_type: int, data: bytes) -> Action:
            seen.append(("client", pdu_type))
            return Action(forward=[data])

    gw = world.gateway(inspector_factory=Recorder)
    world.upstream.reset()
    assert store(world.conn(gw), study[:2]).ok
    assert seen[0] == ("server", pdu.A_ASSOCIATE_AC)
    assert ("client", pdu.P_DATA_TF) in seen and seen[-1] == ("client", pdu.A_RELEASE_RQ)
    assert len(world.upstream.received) == 2


def test_inspector_can_answer_and_close_without_forwarding(world, study):
    class Blocker:
        def __init__(self, peer, rq):
            pass

        def server_pdu(self, pdu_type: int, data: bytes) -> None:
            pass

        async def client_pdu(self, pdu_type: int, data: bytes) -> Action:
            return Action(close=True)

    gw = world.gateway(inspector_factory=Blocker)
    world.upstream.reset()
    summary = store(world.conn(gw), study[:1])
    assert not summary.ok and not world.upstream.received
    assert last_event(gw, outcome="accepted")["end"] == "inspector-closed"


# -- identity binding ---------------------------------------------------------------------------------------


def test_another_clinics_calling_aet_is_rejected_with_reason_3(world, gw):
    assert rejection(world.raw(gw, associate_rq("CLINICB"))) == (1, 1, 3)
    with pytest.raises(ConnectionFailed, match="Calling AE title not recognised"):
        echo(world.conn(gw, aet="CLINICB"))
    event = last_event(gw, calling_aet="CLINICB")
    assert event["outcome"] == "refused" and event["reason"] == "calling-aet-not-in-certificate"
    assert event["clinic"] == "clinicA"


def test_wrong_called_aet_is_rejected_with_reason_7(world, gw):
    assert rejection(world.raw(gw, associate_rq("CLINICA", called="ORTHANC"))) == (1, 1, 7)
    assert last_event(gw, called_aet="ORTHANC")["reason"] == "called-aet-not-ours"


def test_the_archives_own_certificate_cannot_act_as_a_clinic(world, gw):
    # Issued by the clinic CA with clientAuth (Orthanc dials out with it), but it names no clinic.
    answer = world.raw(gw, associate_rq("CLINICA"), cred=world.pki.server)
    assert rejection(answer) == (1, 1, 3)


def test_revocation_applies_to_new_associations_without_restart(world, gw):
    p = world.pki
    crl_clinic, store_clinic = p.clinic("clinicC", ["CLINICC"]), p.clinic("clinicD", ["CLINICD"])
    enrol(world.store, crl_clinic, "clinicC", ["CLINICC"])
    enrol(world.store, store_clinic, "clinicD", ["CLINICD"])
    world.clinics.update(clinicC=crl_clinic, clinicD=store_clinic)
    assert echo(world.conn(gw, "clinicC", "CLINICC")) == 0
    assert echo(world.conn(gw, "clinicD", "CLINICD")) == 0

    p.write_crl([crl_clinic.serial])  # a CRL listing the serial: the store does not know
    world.store.revoke_clinic("clinicD")  # the store only (what `securepacs clinic revoke` does first)
    started = time.monotonic()
    for clinic, aet in (("clinicC", "CLINICC"), ("clinicD", "CLINICD")):
        wait_for(lambda c=clinic, a=aet: world.raw(gw, associate_rq(a), c)[:1] == b"\x03", 3.0, f"{clinic} refused")
        assert rejection(world.raw(gw, associate_rq(aet), clinic)) == (1, 1, 1)
    assert time.monotonic() - started < 3.0
    assert last_event(gw, calling_aet="CLINICC", outcome="refused")["reason"] == "certificate-revoked"
    assert last_event(gw, calling_aet="CLINICD", outcome="refused")["reason"] == "certificate-revoked"
    assert echo(world.conn(gw)) == 0  # everybody else unaffected


def test_revoking_a_clinic_aborts_its_running_associations(world, gw):
    cred = world.pki.clinic("clinicE", ["CLINICE"])
    enrol(world.store, cred, "clinicE", ["CLINICE"])
    world.clinics["clinicE"] = cred
    assoc = open_association(world.conn(gw, "clinicE", "CLINICE"), [build_context(Verification)])
    assert assoc.send_c_echo().Status == 0
    world.store.revoke_clinic("clinicE")
    wait_for(lambda: not assoc.is_established, 5.0, "association aborted")
    assert assoc.is_aborted
    event = last_event(gw, calling_aet="CLINICE", outcome="accepted")
    assert event["end"] == "revoked" and event["reason"] == "certificate-revoked"


def test_expired_certificate_fails_the_handshake(world, gw):
    past = datetime.now(UTC) - timedelta(hours=2)
    expired = world.pki.clinic("clinicA", ["CLINICA"], not_before=past - timedelta(days=1), not_after=past)
    try:
        answer = world.raw(gw, associate_rq("CLINICA"), cred=expired)
    except (ssl.SSLError, ConnectionError):
        answer = b""
    assert answer == b""
    event = last_event(gw, lambda e: "expired" in e.get("reason", ""), outcome="refused")
    assert tls_failure(event)


# -- TLS policy --------------------------------------------------------------------------------------------


def _handshake(gw: GatewayThread, ctx: ssl.SSLContext, session: ssl.SSLSession | None = None) -> ssl.SSLSocket:
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
    try:
        return ctx.wrap_socket(sock, server_hostname="127.0.0.1", session=session)
    except BaseException:
        sock.close()
        raise


def test_resumed_tls_sessions_keep_the_identity_and_its_checks(world, gw):
    cred = world.pki.clinic("clinicG", ["CLINICG"])
    enrol(world.store, cred, "clinicG", ["CLINICG"])
    session = None
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        ctx = client_context(cred, world.pki.clinic_ca)
        ctx.maximum_version = version
        session = None
        for _ in range(2):
            with _handshake(gw, ctx, session) as tls:
                tls.sendall(associate_rq("CLINICA"))  # not this certificate's AE title
                assert rejection(read_pdu(tls)) == (1, 1, 3)
                reused, session = tls.session_reused, tls.session
        assert reused, version
    # A session resumed after revocation is refused too: the check is ours, not only OpenSSL's.
    world.store.revoke_clinic("clinicG")
    wait_for(lambda: gw.run(lambda: "clinicG" in gw.gateway.trust.snapshot.clinics
                            and not gw.gateway.trust.snapshot.clinics["clinicG"].active), what="revocation seen")
    with _handshake(gw, ctx, session) as tls:
        assert tls.session_reused
        tls.sendall(associate_rq("CLINICG"))
        assert rejection(read_pdu(tls)) == (1, 1, 1)


def test_tls_1_1_and_non_aead_suites_are_refused(world, gw):
    ctx = client_context(world.clinics["clinicA"], world.pki.clinic_ca)
    ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    with pytest.warns(DeprecationWarning):
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _handshake(gw, ctx)
    cbc = client_context(world.clinics["clinicA"], world.pki.clinic_ca)
    cbc.maximum_version = ssl.TLSVersion.TLSv1_2
    cbc.set_ciphers("ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA:ECDHE-ECDSA-AES128-SHA")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _handshake(gw, cbc)
    gcm = client_context(world.clinics["clinicA"], world.pki.clinic_ca)
    gcm.maximum_version = ssl.TLSVersion.TLSv1_2
    gcm.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")
    with _handshake(gw, gcm) as tls:
        assert tls.version() == "TLSv1.2"
        tls.sendall(associate_rq("CLINICA"))
        assert read_pdu(tls)[:1] == b"\x02"
    assert last_event(gw, lambda e: "protocol" in e["reason"] or "version" in e["reason"], outcome="refused")
    assert last_event(gw, lambda e: "cipher" in e["reason"], outcome="refused")


def test_client_without_certificate_or_from_another_ca_gets_nothing(world, gw, tmp_path):
    no_cert = client_context(None, world.pki.clinic_ca)
    other = Pki(tmp_path / "other")
    foreign = client_context(other.clinic("clinicA", ["CLINICA"]), world.pki.clinic_ca)
    for ctx in (no_cert, foreign):
        try:
            with _handshake(gw, ctx) as tls:
                tls.sendall(associate_rq("CLINICA"))
                answer = read_pdu(tls)  # TLS 1.3 reports the refused certificate only on first read
        except (ssl.SSLError, ConnectionError):
            answer = b""
        assert answer == b""


def test_plain_dicom_on_the_tls_port_is_refused(world, gw):
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(associate_rq("CLINICA"))
        try:
            answer = sock.recv(64)
        except ConnectionError:
            answer = b""
    assert not answer.startswith(b"\x02") and not answer.startswith(b"\x03")
    assert last_event(gw, lambda e: "wrong version number" in e.get("reason", ""), outcome="refused")


# -- hostile input never reaches the upstream --------------------------------------------------------------


@pytest.fixture(scope="module")
def recorder(world: World) -> Iterator[tuple[RecordingUpstream, GatewayThread]]:
    upstream = RecordingUpstream(world.pki)
    gw = world.gateway(upstream_port=upstream.port, handshake_timeout=1.0)
    yield upstream, gw
    upstream.close()


RQ = associate_rq("CLINICA")


@pytest.mark.parametrize("name, payload, expect_abort", [
    ("http", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", True),
    ("p-data first", pdu.build_p_data([(1, 3, b"\x00" * 16)]), True),
    ("a-abort first", pdu.build_abort(), True),
    ("unknown type", b"\x42\x00\x00\x00\x00\x04abcd", True),
    ("length 0xFFFFFFFF", b"\x01\x00\xff\xff\xff\xff", True),
    ("length 0", b"\x01\x00\x00\x00\x00\x00", True),
    ("garbage after a valid header", RQ[:6] + bytes(range(256)) * 2 + bytes(len(RQ) - 6 - 512)
     if len(RQ) > 518 else RQ[:6] + b"\xee" * (len(RQ) - 6), True),
    ("corrupt item length", RQ[:74] + b"\x10\x00\xff\xff" + RQ[78:], True),
    ("truncated", RQ[: len(RQ) // 2], True),  # then silence: the handshake timeout answers
    ("nothing", b"", True),
])
def test_non_dicom_first_bytes_are_dropped_before_the_upstream(world, recorder, name, payload, expect_abort):
    upstream, gw = recorder
    started = time.monotonic()
    answer = world.raw(gw, payload)
    assert answer[:1] != b"\x02", name
    if expect_abort:
        assert answer[:1] == b"\x07", f"{name}: expected an A-ABORT, got {answer!r}"
        source, _ = pdu.parse_abort(answer)
        assert source == pdu.ABORT_SOURCE_SERVICE_PROVIDER
    assert time.monotonic() - started < 3.0  # never waited for 4 GiB
    assert upstream.connections == 0 and upstream.bytes == 0


def test_refused_associations_never_reach_the_upstream(world, recorder):
    upstream, gw = recorder
    assert rejection(world.raw(gw, associate_rq("CLINICB"))) == (1, 1, 3)
    assert rejection(world.raw(gw, associate_rq("CLINICA", "OTHER"))) == (1, 1, 7)
    assert upstream.connections == 0 and upstream.bytes == 0


def test_garbage_after_negotiation_aborts_both_sides(world, gw):
    ctx = client_context(world.clinics["clinicA"], world.pki.clinic_ca)
    cases = {
        "unknown context": pdu.build_p_data([(99, 3, b"x")]),
        "second RQ": RQ,
        "oversized PDU": b"\x04\x00" + struct.pack(">I", 64 * 1024 * 1024),
        "noise": b"\x04\x00\x00\x00\x00\x03\xff\xff\xff",
    }
    for name, payload in cases.items():
        with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock, \
                ctx.wrap_socket(sock, server_hostname="127.0.0.1") as tls:
            tls.sendall(RQ)
            assert read_pdu(tls)[:1] == b"\x02", name
            tls.sendall(payload)
            answer = read_pdu(tls)
            assert answer[:1] == b"\x07", f"{name}: {answer!r}"
        event = last_event(gw, outcome="accepted", end="protocol-error")
        assert event["reason"]
    assert echo(world.conn(gw)) == 0  # the upstream SCP is still fine


def test_finished_connections_leave_no_tls_buffers_to_the_cyclic_gc(world, recorder):
    """Refused and failed connections must be freed by reference counting alone.

    asyncio keeps a connection's error in futures its frames reference; an error kept with its traceback
    forms a cycle that holds the connection's 256 KiB TLS buffer until a full GC (measured before the
    fix: +40 MB RSS after a few thousand refused connections).
    """
    import asyncio.sslproto
    import gc

    _, gw = recorder
    rogue = client_context(Pki(world.root / "rogue").clinic("clinicA", ["CLINICA"]), world.pki.clinic_ca)
    gc.collect()
    gc.disable()
    try:
        for payload in (b"GET / HTTP/1.1\r\n\r\n", RQ[:20], associate_rq("CLINICB"), b""):
            world.raw(gw, payload)  # refused after TLS; the last two wait for the handshake timeout
        for context in (rogue, None):
            with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
                try:
                    if context is None:
                        sock.sendall(RQ)  # plain DICOM on the TLS port
                        sock.recv(16)
                    else:
                        with context.wrap_socket(sock, server_hostname="127.0.0.1") as tls:
                            read_pdu(tls)
                except (OSError, ssl.SSLError):
                    pass
        wait_for(lambda: gw.run(lambda: len(gw.gateway._handlers)) == 0, what="handlers finished")
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        leaked = [o for o in gc.garbage if isinstance(o, asyncio.sslproto.SSLProtocol)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert leaked == []


# -- edge hygiene ------------------------------------------------------------------------------------------


def test_handshake_timeout_closes_silent_connections(world, recorder):
    _, gw = recorder  # handshake_timeout=1
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        assert sock.recv(16) == b""  # no TLS ClientHello: closed
    assert 0.8 < time.monotonic() - started < 3.0
    assert last_event(gw, reason="handshake-timeout")["outcome"] == "refused"


def test_rate_limit_closes_before_the_tls_handshake(world):
    gw = world.gateway(rate_per_ip=0.5, rate_burst=2)
    ctx = client_context(world.clinics["clinicA"], world.pki.clinic_ca)
    for _ in range(2):
        _handshake(gw, ctx).close()
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _handshake(gw, ctx)
    event = last_event(gw, reason="rate-limited")
    assert event["peer_ip"] == "127.0.0.1" and event["count"] >= 1


def test_per_clinic_and_global_association_limits(world):
    gw = world.gateway(max_per_clinic=1, max_associations=2)
    held = [open_association(world.conn(gw), [build_context(Verification)])]
    try:
        assert rejection(world.raw(gw, associate_rq("CLINICA2"))) == (2, 3, 2)  # clinic A: 1 of 1
        held.append(open_association(world.conn(gw, "clinicB", "CLINICB"), [build_context(Verification)]))
        cred = world.pki.clinic("clinicF", ["CLINICF"])
        enrol(world.store, cred, "clinicF", ["CLINICF"])
        assert rejection(world.raw(gw, associate_rq("CLINICF"), cred=cred)) == (2, 3, 2)  # 2 of 2 overall
        assert last_event(gw, reason="too-many-associations-for-clinic")["calling_aet"] == "CLINICA2"
        assert last_event(gw, reason="too-many-associations")["calling_aet"] == "CLINICF"
    finally:
        for assoc in held:
            assoc.release()
    wait_for(lambda: gw.run(lambda: gw.gateway.limits.total) == 0, what="slots released")
    assert echo(world.conn(gw)) == 0


def test_idle_associations_are_aborted(world):
    gw = world.gateway(idle_timeout=0.5)
    assoc = open_association(world.conn(gw), [build_context(Verification)])
    wait_for(lambda: not assoc.is_established, 4.0, "idle association aborted")
    assert last_event(gw, outcome="accepted")["end"] == "idle-timeout"


def test_graceful_shutdown_lets_running_associations_finish(world):
    gw = world.gateway()
    assoc = open_association(world.conn(gw), [build_context(Verification)])
    stopping = gw.shutdown_async(grace=10)

    def refused() -> bool:
        try:
            socket.create_connection(("127.0.0.1", gw.port), timeout=1).close()
        except ConnectionRefusedError:
            return True
        except ConnectionResetError:
            # The probe's connection sat in the backlog while the listener closed: poll again.
            return False
        return False
    wait_for(refused, what="listener closed")
    assert not stopping.done()
    assert assoc.send_c_echo().Status == 0  # still served after shutdown began
    assoc.release()
    stopping.result(timeout=5)
    assert last_event(gw, outcome="accepted")["end"] == "released"


def test_shutdown_aborts_what_outlives_the_grace_period(world):
    gw = world.gateway()
    assoc = open_association(world.conn(gw), [build_context(Verification)])
    gw.shutdown_async(grace=0.3).result(timeout=10)
    wait_for(lambda: assoc.is_aborted, 3.0, "association aborted")
    assert last_event(gw, outcome="accepted")["end"] == "shutdown"


# -- egress: Orthanc's C-MOVE sub-associations to the clinic -----------------------------------------------


def orthanc_conn(world: World, gw: GatewayThread, called: str, calling: str = AET) -> Connection:
    p = world.pki
    return Connection("127.0.0.1", gw.egress_port, calling_aet=calling, called_aet=called, acse_timeout=5,
                      dimse_timeout=10, tls=TlsConfig(ca=p.internal_ca, cert=p.orthanc_internal.cert,
                                                      key=p.orthanc_internal.key))


def test_egress_relays_to_the_clinic_that_owns_the_called_aet(world, gw, study):
    world.scp_m.reset()
    summary = store(orthanc_conn(world, gw, "CLINICM"), study[:3])
    assert summary.ok and len(world.scp_m.received) == 3
    assert {r.calling_aet for r in world.scp_m.received.values()} == {AET}
    event = last_event(gw, direction="egress", outcome="accepted")
    assert event["clinic"] == "clinicM" and event["destination"] == f"127.0.0.1:{world.scp_m.port}"
    assert event["serial"] == str(world.clinic_m.serial)


def test_egress_refuses_unknown_destinations_and_impostors(world, gw):
    with pytest.raises(ConnectionFailed, match="Called AE title not recognised"):
        echo(orthanc_conn(world, gw, "NOBODY"))
    with pytest.raises(ConnectionFailed, match="Called AE title not recognised"):
        echo(orthanc_conn(world, gw, "CLINICN"))
    assert last_event(gw, direction="egress", called_aet="CLINICN")["reason"] == \
        "destination-certificate-of-another-clinic"
    with pytest.raises(ConnectionFailed, match="Calling AE title not recognised"):
        echo(orthanc_conn(world, gw, "CLINICM", calling="CLINICA"))


def test_egress_port_trusts_only_the_internal_ca(world, gw):
    cred = world.clinics["clinicA"]
    conn = Connection("127.0.0.1", gw.egress_port, calling_aet=AET, called_aet="CLINICM", acse_timeout=5,
                      tls=TlsConfig(ca=world.pki.internal_ca, cert=cred.cert, key=cred.key))
    with pytest.raises(ConnectionFailed):
        echo(conn)


def test_the_plain_internal_hop_relays_both_ways_without_tls_to_orthanc(world, study):
    """SECUREPACS_INTERNAL_HOP=plain: clinics still need mutual TLS; only the hop to and from Orthanc is plain."""
    plain_orthanc = TestSCP(ssl_context=None).start()
    try:
        gw = world.gateway(plain_orthanc.port, egress_listen=("127.0.0.1", 0), internal_tls=False)
        summary = store(world.conn(gw), study[:2])
        assert summary.ok and len(plain_orthanc.received) == 2
        assert last_event(gw, direction="ingress", outcome="accepted")["tls_version"] in ("TLSv1.2", "TLSv1.3")
        with pytest.raises(ConnectionFailed):  # the clinic side is never plain
            echo(Connection("127.0.0.1", gw.port, calling_aet="CLINICA", called_aet=AET, acse_timeout=3))
        # Orthanc's C-MOVE association arrives plain on the egress relay and leaves with TLS to the clinic.
        world.scp_m.reset()
        orthanc = Connection("127.0.0.1", gw.egress_port, calling_aet=AET, called_aet="CLINICM", acse_timeout=5,
                             dimse_timeout=10)
        assert store(orthanc, study[:1]).ok and len(world.scp_m.received) == 1
        assert last_event(gw, direction="egress", outcome="accepted")["clinic"] == "clinicM"
    finally:
        plain_orthanc.stop()


# -- the command ---------------------------------------------------------------------------------------------


def test_command_builds_its_config_from_settings_and_flags(tmp_path):
    s = environment.from_env({"SECUREPACS_DATA": str(tmp_path / "data"), "SECUREPACS_CERTS": str(tmp_path / "c"),
                           "SECUREPACS_DICOM_PORT": "3000"}, cwd=tmp_path)
    config = gateway_cmd.build_config(s, SimpleNamespace())
    assert config.listen == ("", 3000) and config.upstream == ("127.0.0.1", s.internal_dicom_port)
    assert config.egress_listen == ("127.0.0.1", s.egress_port)
    assert config.server_cert == tmp_path / "c" / "server" / "server.crt"
    assert config.internal_key == tmp_path / "c" / "internal" / "gateway.key"
    assert config.events_path == tmp_path / "data" / "gateway" / "events.jsonl"
    assert config.store_path == s.store_path
    args = argparse.Namespace(listen=("::1", 2762), upstream=None, no_egress=True, rate_per_ip=0.0)
    config = gateway_cmd.build_config(s, args)
    assert config.listen == ("::1", 2762) and config.egress_listen is None and config.rate_per_ip == 0


@pytest.mark.parametrize("text, expected", [
    ("2762", ("", 2762)), (":2762", ("", 2762)), ("127.0.0.1:2762", ("127.0.0.1", 2762)),
    ("[::1]:2762", ("::1", 2762)), ("gw.example:0", ("gw.example", 0)),
])
def test_address_flag(text, expected):
    assert gateway_cmd.address(text) == expected


@pytest.mark.parametrize("text", ["x", "host:99999", "::1:2762", "host:"])
def test_address_flag_refuses_nonsense(text):
    with pytest.raises(argparse.ArgumentTypeError):
        gateway_cmd.address(text)


def test_command_refuses_to_start_without_the_gateway_credential(tmp_path, monkeypatch, capsys):
    # Behind the gateway Orthanc allows C-GET for clinics: without the ownership check it must not run.
    monkeypatch.setenv("SECUREPACS_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("SECUREPACS_CERTS", str(tmp_path / "certs"))
    args = argparse.Namespace(listen=("127.0.0.1", 0))
    assert gateway_cmd.run(args) == 2
    assert "credential.txt does not exist" in capsys.readouterr().err


def test_credential_file_format(tmp_path):
    path = tmp_path / "cred.txt"
    path.write_text("username: gateway\npassword: a: b\n")
    assert gateway_cmd.read_credential(path) == ("gateway", "a: b")
    path.write_text("password: x\n")
    with pytest.raises(GatewayError, match=r"expected 'username: \.\.\.'"):
        gateway_cmd.read_credential(path)


# -- visibility -------------------------------------------------------------------------------------------


def test_event_log_writes_json_lines_and_follows_rotation(tmp_path):
    log = EventLog(tmp_path / "gw" / "events.jsonl")
    event = ConnectionEvent("ingress", "192.0.2.7", 40000, calling_aet="CLINIC\x00A", clinic="clinicA")
    log.emit(event)
    (tmp_path / "gw" / "events.jsonl").rename(tmp_path / "gw" / "events.jsonl.1")
    log.record("cget-refused", {"clinic": "clinicA", "status": 0x0124})
    log.close()
    rotated = [json.loads(line) for line in (tmp_path / "gw" / "events.jsonl.1").read_text().splitlines()]
    current = [json.loads(line) for line in (tmp_path / "gw" / "events.jsonl").read_text().splitlines()]
    assert rotated[0]["kind"] == "connection" and rotated[0]["calling_aet"] == "CLINIC\x00A"
    assert rotated[0]["time"].endswith("+00:00") and rotated[0]["duration_s"] >= 0
    assert current == [{"kind": "cget-refused", "time": current[0]["time"], "clinic": "clinicA", "status": 292}]


def test_standalone_entry_point_offers_the_gateway_flags(capsys):
    from securepacs.gateway.__main__ import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--listen" in out and "--no-cget-check" not in out


def test_a_refused_handshake_tells_the_client_why(world, gw, tmp_path):
    """The TLS alert reaches the client (asyncio alone would drop it and just close)."""
    other = Pki(tmp_path / "other-ca")
    foreign = client_context(other.clinic("clinicA", ["CLINICA"]), world.pki.clinic_ca)
    foreign.maximum_version = ssl.TLSVersion.TLSv1_2  # TLS 1.2: the alert ends the handshake itself
    with pytest.raises(ssl.SSLError, match=r"(?i)alert unknown ca"):
        _handshake(gw, foreign)
    tls13 = client_context(other.clinic("clinicB", ["CLINICB"]), world.pki.clinic_ca)
    tls13.minimum_version = ssl.TLSVersion.TLSv1_3
    with pytest.raises(ssl.SSLError, match=r"(?i)alert unknown ca"), _handshake(gw, tls13) as tls:
        tls.recv(6)  # TLS 1.3: the client learns it on its first read
    old = client_context(world.clinics["clinicA"], world.pki.clinic_ca)
    old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    with pytest.warns(DeprecationWarning):
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("ALL:@SECLEVEL=0")
    with pytest.raises(ssl.SSLError, match=r"(?i)alert protocol version"):
        _handshake(gw, old)
