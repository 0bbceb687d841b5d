"""RFC 5424 formatting, RFC 5425 framing, and the forwarder against an in-process mutual-TLS collector."""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from securepacs.audit import (
    ActiveParticipant,
    AuditSource,
    AuditTrail,
    Cursor,
    ForwardingError,
    SyslogForwarder,
    client_context,
    codes,
    create_checkpoint_key,
    events,
    format_message,
    frame,
    iter_entries,
    split_frames,
)
from securepacs.audit.rfc5424 import BOM

SOURCE = AuditSource("syslog-test")
PATIENT_ID = "SECRET-PATIENT-42"


# --- a tiny PKI ------------------------------------------------------------------------------------


def _cert(subject: str, key, issuer_name, issuer_key, *, ca: bool, sans: list[x509.GeneralName], eku=None):
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer_name or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
    return builder.sign(issuer_key or key, hashes.SHA256())


def make_pki(directory: Path, client_name: str = "client.test") -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("audit test CA", ca_key, None, None, ca=True, sans=[])
    out = {"ca": directory / "ca.crt"}
    out["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for name, sans, eku in (
        ("server", [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
         ExtendedKeyUsageOID.SERVER_AUTH),
        ("client", [x509.DNSName(client_name)], ExtendedKeyUsageOID.CLIENT_AUTH),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        cn = "localhost" if name == "server" else client_name
        cert = _cert(cn, key, ca.subject, ca_key, ca=False, sans=sans, eku=eku)
        out[f"{name}_cert"] = directory / f"{name}.crt"
        out[f"{name}_key"] = directory / f"{name}.key"
        out[f"{name}_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        out[f"{name}_key"].write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        out[f"{name}_key"].chmod(0o600)
    return out


# --- an in-process collector ------------------------------------------------------------------------


class Collector:
    """Accepts mutual-TLS connections and keeps every framed message; ``drop`` closes right after a read."""

    def __init__(self, pki: dict[str, Path]) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(pki["server_cert"], pki["server_key"])
        self.context.load_verify_locations(pki["ca"])
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.messages: list[bytes] = []
        self.drop = False
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                raw, _ = self.listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._handle, args=(raw,), daemon=True).start()

    def _handle(self, raw: socket.socket) -> None:
        try:
            with self.context.wrap_socket(raw, server_side=True) as conn:
                conn.settimeout(0.2)
                rest = b""
                while not self.stopped.is_set():
                    try:
                        data = conn.recv(65536)
                    except TimeoutError:
                        continue
                    if not data:
                        return
                    messages, rest = split_frames(rest + data)
                    self.messages.extend(messages)
                    if self.drop:
                        return  # the collector "crashes" right after reading: nothing it got counts
        except (OSError, ssl.SSLError):
            return

    def seqs(self) -> list[int]:
        return [int(re.search(rb' seq="(\d+)"', m).group(1)) for m in self.messages]

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(5)
        self.listener.close()


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    return make_pki(tmp_path / "pki")


@pytest.fixture
def collector(pki) -> Iterator[Collector]:
    c = Collector(pki)
    yield c
    c.close()


@pytest.fixture
def trail_path(tmp_path: Path) -> Path:
    path = tmp_path / "data" / "audit" / "trail.jsonl"
    with AuditTrail(path, source=SOURCE) as trail:
        append(trail, 4)
    return path


def append(trail: AuditTrail, count: int) -> None:
    user = ActiveParticipant("alice", clinic="north")
    for n in range(count):
        trail.append(events.instances_accessed(SOURCE, user, [events.study(f"1.2.{n}")], events.patient(PATIENT_ID)))


def forwarder(trail_path: Path, pki, port: int, **kwargs) -> SyslogForwarder:
    context = client_context(pki["ca"], pki["client_cert"], pki["client_key"])
    options = {"grace": 0.2, "ack_timeout": 3.0, "connect_timeout": 3.0} | kwargs
    return SyslogForwarder(trail_path, trail_path.parent / "forward.cursor", "localhost", port, context, **options)


# --- format and framing ------------------------------------------------------------------------------


def test_rfc5424_message_fields(trail_path: Path) -> None:
    entry = list(iter_entries(trail_path))[1]
    message = format_message(entry, hostname="archive.example")
    header, payload = message.split(BOM, 1)
    fields = header.decode().split(" ", 6)
    assert fields[0] == "<85>1"  # authpriv(10) * 8 + notice(5) for outcome 0
    assert fields[1] == entry.body["time"] and fields[1].endswith("Z")
    assert fields[2:6] == ["archive.example", "securepacs", "-", "InstancesAccessed"]
    assert fields[6] == f'[securepacs@32473 seq="2" prev="{entry.prev}" hash="{entry.hash}"] '
    assert payload + b"\n" == entry.line()


@pytest.mark.parametrize(("outcome", "pri"), [(0, "<85>"), (4, "<84>"), (8, "<83>"), (12, "<82>")])
def test_severity_follows_outcome(tmp_path: Path, outcome: int, pri: str) -> None:
    path = tmp_path / "trail.jsonl"
    with AuditTrail(path, source=SOURCE) as trail:
        entry = trail.append(events.user_authentication(SOURCE, ActiveParticipant("u"), login=True, outcome=outcome))
    assert format_message(entry, hostname="h").startswith(pri.encode() + b"1 ")
    assert format_message(entry, hostname="h", facility=16).startswith(f"<{128 + int(pri[1:-1]) % 8}>".encode())


def test_xml_payload_and_checkpoints(tmp_path: Path) -> None:
    key = tmp_path / "keys" / "checkpoint.key"
    create_checkpoint_key(key)
    path = tmp_path / "audit" / "trail.jsonl"
    with AuditTrail(path, source=SOURCE, signing_key=key) as trail:
        record = trail.append(events.user_authentication(SOURCE, ActiveParticipant("u"), login=False))
    checkpoint = list(iter_entries(path))[-1]
    xml = format_message(record, hostname="h", payload="xml")
    assert xml.split(BOM, 1)[1].startswith(b'<?xml version="1.0" encoding="UTF-8"?><AuditMessage>')
    assert b" UserAuthentication [" in xml
    cp = format_message(checkpoint, hostname="h", payload="xml")
    assert cp.startswith(b"<86>1 ") and b" Checkpoint [" in cp and cp.endswith(checkpoint.line().rstrip(b"\n"))
    with pytest.raises(ValueError, match="unknown syslog payload"):
        format_message(record, hostname="h", payload="yaml")


def test_header_fields_are_printable_ascii(trail_path: Path) -> None:
    entry = list(iter_entries(trail_path))[1]
    message = format_message(entry, hostname="bad host\u00e9")
    assert message.split(b" ")[2] == b"bad_host_"


def test_octet_counting_frames_round_trip() -> None:
    messages = [b"<85>1 a", "<85>1 é".encode(), b"x" * 300]
    stream = b"".join(frame(m) for m in messages)
    assert frame(b"abc") == b"3 abc"
    assert split_frames(stream) == (messages, b"")
    got, rest = split_frames(stream[:-5])
    assert got == messages[:2] and rest == frame(messages[2])[:-5]
    with pytest.raises(ValueError, match="bad octet count"):
        split_frames(b"abc def")
    with pytest.raises(ValueError, match="bad octet count"):
        split_frames(b"012 abc")


def test_cursor_is_atomic_and_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "cursor"
    assert Cursor.load(path) == Cursor()
    Cursor(3, "a" * 64, 999).save(path)
    assert Cursor.load(path) == Cursor(3, "a" * 64, 999)
    assert not list(tmp_path.glob(".cursor*"))
    path.write_text("{")
    with pytest.raises(ValueError, match=str(path)):
        Cursor.load(path)


# --- forwarding ---------------------------------------------------------------------------------------


def test_forwards_everything_in_order(trail_path: Path, pki, collector: Collector,
                                      caplog: pytest.LogCaptureFixture) -> None:
    fwd = forwarder(trail_path, pki, collector.port)
    with caplog.at_level(logging.INFO, logger="securepacs.audit"):
        assert fwd.pump_once() == 5
        assert fwd.pump_once() == 0
    fwd.close()
    assert collector.seqs() == [1, 2, 3, 4, 5]
    assert Cursor.load(trail_path.parent / "forward.cursor").seq == 5
    assert "delivered seq 1..5" in caplog.text
    assert PATIENT_ID not in caplog.text


def test_collector_dropping_the_connection_means_resend(trail_path: Path, pki, collector: Collector) -> None:
    fwd = forwarder(trail_path, pki, collector.port)
    collector.drop = True
    with pytest.raises(ForwardingError):
        fwd.pump_once()
    assert fwd.cursor.seq == 0 and Cursor.load(trail_path.parent / "forward.cursor").seq == 0
    collector.drop = False
    assert fwd.pump_once() == 5
    fwd.close()
    seqs = collector.seqs()
    assert sorted(set(seqs)) == [1, 2, 3, 4, 5] and seqs[-5:] == [1, 2, 3, 4, 5]


def test_unreachable_collector_keeps_the_backlog(trail_path: Path, pki) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound but not listening: connection refused
        fwd = forwarder(trail_path, pki, port)
        with pytest.raises(ForwardingError, match="cannot connect"):
            fwd.pump_once()
    assert fwd.cursor == Cursor()


def test_untrusted_collector_certificate_is_refused(trail_path: Path, pki, tmp_path: Path) -> None:
    other = make_pki(tmp_path / "other")
    collector = Collector(other)  # a server certificate from a CA the forwarder does not trust
    try:
        fwd = forwarder(trail_path, pki, collector.port)
        with pytest.raises(ForwardingError, match="TLS handshake"):
            fwd.pump_once()
    finally:
        collector.close()
    assert collector.messages == []


def test_resumes_from_the_cursor_across_restarts(trail_path: Path, pki, collector: Collector) -> None:
    fwd = forwarder(trail_path, pki, collector.port, batch_size=2)
    assert fwd.pump_once() == 2
    fwd.close()
    with AuditTrail(trail_path, source=SOURCE) as trail:
        append(trail, 2)
    again = forwarder(trail_path, pki, collector.port)  # a new process: only the cursor file survives
    assert again.cursor.seq == 2
    assert again.pump_once() == 5
    again.close()
    assert collector.seqs() == [1, 2, 3, 4, 5, 6, 7]


def test_cursor_is_found_again_when_the_offset_is_stale(trail_path: Path, pki, collector: Collector) -> None:
    entries = list(iter_entries(trail_path))
    Cursor(3, entries[2].hash, 1).save(trail_path.parent / "forward.cursor")  # right entry, wrong offset
    fwd = forwarder(trail_path, pki, collector.port)
    assert fwd.pump_once() == 2
    fwd.close()
    assert collector.seqs() == [4, 5]


def test_diverged_trail_is_resent_from_the_start(trail_path: Path, pki, collector: Collector,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    Cursor(9, "e" * 64, 10**6).save(trail_path.parent / "forward.cursor")  # delivered more than the trail holds
    fwd = forwarder(trail_path, pki, collector.port)
    with caplog.at_level(logging.ERROR):
        assert fwd.pump_once() == 5
    fwd.close()
    assert "no longer holds delivered seq 9" in caplog.text
    assert collector.seqs() == [1, 2, 3, 4, 5]


def test_torn_last_line_is_not_forwarded(trail_path: Path, pki, collector: Collector) -> None:
    with open(trail_path, "ab") as f:
        f.write(b'{"half')
    fwd = forwarder(trail_path, pki, collector.port)
    assert fwd.pump_once() == 5
    fwd.close()
    assert collector.seqs() == [1, 2, 3, 4, 5]


def test_run_retries_until_the_collector_comes(trail_path: Path, pki, tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    fwd = forwarder(trail_path, pki, port, backoff_initial=0.05, backoff_max=0.2, poll_interval=0.05)
    stop = threading.Event()
    runner = threading.Thread(target=fwd.run, args=(stop,), daemon=True)
    runner.start()
    try:
        time.sleep(0.3)  # a few refused attempts
        collector = Collector(pki)
        try:
            fwd.port = collector.port  # the collector came back (on a free port the test could get)
            deadline = time.monotonic() + 10
            while fwd.cursor.seq < 5 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert fwd.cursor.seq == 5
            with AuditTrail(trail_path, source=SOURCE) as trail:
                trail.append(events.security_alert(SOURCE, codes.NODE_AUTHENTICATION, ActiveParticipant("gw")))
            while fwd.cursor.seq < 6 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert collector.seqs() == [1, 2, 3, 4, 5, 6]
        finally:
            stop.set()
            runner.join(5)
            collector.close()
    finally:
        stop.set()
