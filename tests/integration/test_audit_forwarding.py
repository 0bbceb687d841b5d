"""Audit forwarding into a REAL rsyslog (Debian rsyslog + rsyslog-gnutls) over mutual TLS, RFC 5425 framing.

rsyslogd runs in the foreground with its own config, work dir and pid file in tmp_path: imtcp with the
gtls stream driver in mode 1 (TLS only) and authMode x509/name (the client certificate must chain to
the test CA and name "client.test"), writing every received message raw to a file.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
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
    ForwardingError,
    SyslogForwarder,
    client_context,
    create_checkpoint_key,
    events,
    verify,
)
from securepacs.audit.rfc5424 import BOM

pytestmark = pytest.mark.integration

SOURCE = AuditSource("forwarding-it")
CLIENT_NAME = "client.test"


# --- test PKI -------------------------------------------------------------------------------------


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    path.chmod(0o600)


def _issue(ca_key, ca_name, cn: str, sans: list, usage) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("audit-pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "audit forwarding test CA")])
    now = dt.datetime.now(dt.UTC)
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    paths = {"ca": directory / "ca.crt"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    issued = {
        "server": ("localhost", [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
                   ExtendedKeyUsageOID.SERVER_AUTH),
        "client": (CLIENT_NAME, [x509.DNSName(CLIENT_NAME)], ExtendedKeyUsageOID.CLIENT_AUTH),
        "stranger": ("stranger.test", [x509.DNSName("stranger.test")], ExtendedKeyUsageOID.CLIENT_AUTH),
    }
    for name, (cn, sans, usage) in issued.items():
        cert, key = _issue(ca_key, ca_name, cn, sans, usage)
        paths[f"{name}_cert"], paths[f"{name}_key"] = directory / f"{name}.crt", directory / f"{name}.key"
        paths[f"{name}_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(paths[f"{name}_key"], key)
    return paths


# --- a real rsyslog -----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Rsyslog:
    def __init__(self, root: Path, pki: dict[str, Path]) -> None:
        self.root, self.port = root, _free_port()
        self.received = root / "received.log"
        self.conf = root / "rsyslog.conf"
        (root / "work").mkdir(parents=True, exist_ok=True)
        self.conf.write_text(f"""
global(
  workDirectory="{root / 'work'}"
  maxMessageSize="64k"
  DefaultNetstreamDriver="gtls"
  DefaultNetstreamDriverCAFile="{pki['ca']}"
  DefaultNetstreamDriverCertFile="{pki['server_cert']}"
  DefaultNetstreamDriverKeyFile="{pki['server_key']}"
)
module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1" StreamDriver.AuthMode="x509/name"
       PermittedPeer=["{CLIENT_NAME}"])
input(type="imtcp" address="127.0.0.1" port="{self.port}")
template(name="raw" type="string" string="%rawmsg%\\n")
action(type="omfile" file="{self.received}" template="raw")
""")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.root / "rsyslogd.out", "ab")  # noqa: SIM115 - handed to the child, closed in stop()
        self.proc = subprocess.Popen(
            ["rsyslogd", "-n", "-f", str(self.conf), "-i", str(self.root / "rsyslogd.pid")],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                output = (self.root / "rsyslogd.out").read_text()
                raise RuntimeError(f"rsyslogd exited {self.proc.returncode}: {output}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"rsyslogd did not listen on {self.port}: {(self.root / 'rsyslogd.out').read_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def messages(self) -> list[tuple[int, bytes, bytes]]:
        """(seq, header, payload) of every received message, in arrival order."""
        if not self.received.exists():
            return []
        out = []
        for line in self.received.read_bytes().splitlines():
            header, _, payload = line.partition(BOM)
            out.append((int(re.search(rb' seq="(\d+)"', header).group(1)), header, payload))
        return out

    def wait_for(self, last_seq: int, timeout: float = 15) -> list[tuple[int, bytes, bytes]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.messages()
            if got and max(seq for seq, _, _ in got) >= last_seq:
                return got
            time.sleep(0.1)
        raise AssertionError(f"rsyslog got seqs {[s for s, _, _ in self.messages()]}, waited for {last_seq}")


@pytest.fixture
def rsyslog(tmp_path: Path, pki) -> Iterator[Rsyslog]:
    if shutil.which("rsyslogd") is None or not list(Path("/usr/lib").glob("*/rsyslog/lmnsd_gtls.so")):
        pytest.fail("rsyslogd with the gtls driver is missing: apt-get install rsyslog rsyslog-gnutls")
    server = Rsyslog(tmp_path / "rsyslog", pki)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def keyed_trail(tmp_path: Path) -> tuple[Path, Path, Path]:
    key = tmp_path / "certs" / "audit" / "checkpoint.key"
    public = create_checkpoint_key(key)
    return tmp_path / "data" / "audit" / "trail.jsonl", key, public


def append(trail_path: Path, key: Path, count: int, start: int = 0) -> int:
    with AuditTrail(trail_path, source=SOURCE, signing_key=key, checkpoint_every=7) as trail:
        for n in range(start, start + count):
            user = ActiveParticipant(f"user{n}", clinic="north", ae_title="NORTH_CT", network_access_point="192.0.2.9")
            trail.append(events.instances_accessed(SOURCE, user, [events.study(f"1.2.3.{n}", {"1.2.840.1": n})],
                                                   events.patient(f"P{n}", "Doe^Jane")))
        assert trail.last is not None
    return verify(trail_path, None).last_seq


def forwarder(trail_path: Path, pki, port: int, *, client: str = "client", **options) -> SyslogForwarder:
    context = client_context(pki["ca"], pki[f"{client}_cert"], pki[f"{client}_key"])
    settings = {"grace": 0.3, "ack_timeout": 5.0, "connect_timeout": 5.0, "batch_size": 10} | options
    return SyslogForwarder(trail_path, trail_path.parent / "forward.cursor", "localhost", port, context, **settings)


def pump_all(fwd: SyslogForwarder, last_seq: int) -> None:
    deadline = time.monotonic() + 30
    while fwd.cursor.seq < last_seq:
        assert time.monotonic() < deadline, f"forwarder stuck at seq {fwd.cursor.seq}"
        fwd.pump_once()


def dedup(seqs: list[int]) -> list[int]:
    seen: dict[int, None] = {}
    for seq in seqs:
        seen.setdefault(seq)
    return list(seen)


def received_copy_verifies(tmp_path: Path, messages, public: Path, last_seq: int) -> None:
    """Rebuild the trail from what the collector holds (first copy of each seq) and verify the chain."""
    first: dict[int, bytes] = {}
    for seq, _, payload in messages:
        first.setdefault(seq, payload)
    copy = tmp_path / "collector-copy.jsonl"
    copy.write_bytes(b"".join(first[seq] + b"\n" for seq in sorted(first)))
    report = verify(copy, public)
    assert report.ok, report.summary()
    assert report.last_seq == last_seq and report.checkpoints > 0


def test_records_arrive_in_order_and_the_copy_verifies(rsyslog: Rsyslog, pki, keyed_trail, tmp_path: Path) -> None:
    trail_path, key, public = keyed_trail
    last = append(trail_path, key, 25)
    fwd = forwarder(trail_path, pki, rsyslog.port)
    pump_all(fwd, last)
    fwd.close()
    messages = rsyslog.wait_for(last)
    assert [seq for seq, _, _ in messages] == list(range(1, last + 1))
    header = messages[1][1].decode()
    assert header.startswith("<85>1 ") and " securepacs - InstancesAccessed [securepacs@32473 " in header
    received_copy_verifies(tmp_path, messages, public, last)


def test_collector_restart_loses_nothing(rsyslog: Rsyslog, pki, keyed_trail, tmp_path: Path) -> None:
    trail_path, key, public = keyed_trail
    first = append(trail_path, key, 12)
    fwd = forwarder(trail_path, pki, rsyslog.port)
    pump_all(fwd, first)  # the connection stays open across the outage below

    rsyslog.stop()
    second = append(trail_path, key, 15, start=100)
    with pytest.raises(ForwardingError):
        fwd.pump_once()  # broken connection or refused: nothing counts, nothing is lost
    assert fwd.cursor.seq == first

    rsyslog.start()  # same port, same output file
    stop = threading.Event()
    runner = threading.Thread(target=fwd.run, args=(stop,), daemon=True)
    fwd.backoff_initial, fwd.poll_interval = 0.1, 0.05
    runner.start()
    try:
        third = append(trail_path, key, 5, start=200)  # appended while the forwarder runs
        messages = rsyslog.wait_for(third, timeout=30)
    finally:
        stop.set()
        runner.join(10)
    seqs = [seq for seq, _, _ in messages]
    assert set(seqs) == set(range(1, third + 1)), "every seq must arrive (duplicates are allowed)"
    assert dedup(seqs) == list(range(1, third + 1)), "after dropping repeats, seqs arrive in order"
    assert second < third
    received_copy_verifies(tmp_path, messages, public, third)


def test_xml_payload_is_a_dicom_audit_message(rsyslog: Rsyslog, pki, keyed_trail) -> None:
    trail_path, key, _public = keyed_trail
    last = append(trail_path, key, 3)
    fwd = forwarder(trail_path, pki, rsyslog.port, payload="xml")
    pump_all(fwd, last)
    fwd.close()
    messages = rsyslog.wait_for(last)
    xml = [payload for _, header, payload in messages if b" InstancesAccessed " in header]
    assert len(xml) == 3
    root = ET.fromstring(xml[0])  # noqa: S314 - our own message, just forwarded
    assert root.tag == "AuditMessage" and root.find("EventIdentification/EventID").get("csd-code") == "110103"


def test_client_certificate_with_another_name_is_refused(rsyslog: Rsyslog, pki, keyed_trail) -> None:
    trail_path, key, _public = keyed_trail
    last = append(trail_path, key, 2)
    fwd = forwarder(trail_path, pki, rsyslog.port, client="stranger")
    with pytest.raises(ForwardingError):
        fwd.pump_once()  # TLS 1.3: the server rejects the client certificate after our side's handshake
    assert fwd.cursor.seq == 0
    fwd.close()
    # A positive event to wait for instead of a fixed pause: the rightful client then forwards the same
    # records; once they have arrived, anything the stranger had got through would be there too (twice).
    rightful = forwarder(trail_path, pki, rsyslog.port)
    pump_all(rightful, last)
    rightful.close()
    assert [seq for seq, _, _ in rsyslog.wait_for(last)] == list(range(1, last + 1))
