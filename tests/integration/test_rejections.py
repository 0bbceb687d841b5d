"""Everything the DICOM port (and, for TLS versions and suites, the HTTPS port) must refuse.

Each rejection is observed from the client's side with real sockets and real TLS against the running
archive, and is followed by ``archive.assert_serving()``: a refused peer must never take the service down.

Two probes are used besides our client API (``securepacs.client``):

* ``dicom_attempt`` opens TCP (optionally TLS), sends a hand-built A-ASSOCIATE-RQ for Verification and
  reports what came back: an A-ASSOCIATE-AC ("accepted"), an A-ASSOCIATE-RJ with its (result, source,
  reason), an A-ABORT, a TLS alert from the server, or a closed connection. It does not depend on
  pynetdicom's error handling, so "not accepted" really means no A-ASSOCIATE-AC arrived.
* ``https_attempt`` does a TLS handshake with the HTTPS port and, if it completes, one GET of the health
  endpoint.

Every kind of refusal has a control that uses the very same probe and differs only in the property under
test (a certificate made the same way but valid, TLS 1.2 instead of 1.0, an AEAD suite instead of a CBC
one, an enrolled AE title), so a passing test cannot be explained by a broken probe.
"""

from __future__ import annotations

import re
import shutil
import socket
import ssl
import struct
import subprocess
import time
import uuid
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.x509.oid import NameOID
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID

from securepacs.client import Connection, ConnectionFailed, TlsConfig, echo, store
from securepacs.pki import authority, certificates, pem_files
from securepacs_tools import synth

pytestmark = pytest.mark.integration

VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"
DICOM_APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"

# A-ASSOCIATE-RJ (result, source, reason), PS3.8 9.3.4: rejected-permanent by the service user because ...
REJECT_CALLING_AE = (1, 1, 3)  # ... the calling AE title is not recognised
REJECT_CALLED_AE = (1, 1, 7)  # ... the called AE title is not recognised
# A revoked clinic is refused by the gateway (reason 1, no reason given: PS3.8 has no "revoked", the event log
# says it) or, if the plugin's modality sync (every 2 s) removed the AE title from Orthanc first, by Orthanc.
REVOKED_REJECTS = {(1, 1, 1), REJECT_CALLING_AE}
# The gateway re-reads the store and the CRL every second (gateway.config refresh_interval): an association
# that starts this long after `securepacs clinic revoke` returned must be refused.
REVOCATION_BOUND = 2.0

# OpenSSL reasons for alerts *received from the peer* (a locally detected problem has another name).
PEER_ALERT_RE = re.compile(r"^(SSLV3|TLSV1|TLSV13)_ALERT_")
# OpenSSL reasons meaning the local library would not even offer what we asked for.
LOCAL_REFUSALS = {"NO_PROTOCOLS_AVAILABLE", "UNSUPPORTED_PROTOCOL", "NO_CIPHERS_AVAILABLE"}

OLD_TLS = {"TLS 1.0": (ssl.TLSVersion.TLSv1, "-tls1"), "TLS 1.1": (ssl.TLSVersion.TLSv1_1, "-tls1_1")}

# TLS 1.2 suites outside "ECDHE/DHE + AEAD": CBC-mode (MAC-then-encrypt) suites, with and without
# forward secrecy, and an AEAD suite without forward secrecy (static RSA key transport).
WEAK_SUITES = {
    "AES128-SHA": "static RSA key transport, CBC, SHA-1 (DCMTK's BCP195 'backwards compatibility' suite)",
    "ECDHE-RSA-AES128-SHA": "CBC, SHA-1",
    "ECDHE-RSA-AES256-SHA384": "CBC, SHA-384",
    "DHE-RSA-AES128-SHA256": "CBC, SHA-256",
    "AES128-GCM-SHA256": "AEAD but static RSA key transport (no forward secrecy)",
}
GOOD_SUITE = "ECDHE-RSA-AES128-GCM-SHA256"


# -- probes ----------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    kind: str  # accepted | rejected | aborted | closed | tls-refused | timeout | established (HTTPS)
    detail: str = ""
    reject: tuple[int, int, int] | None = None
    version: str | None = None
    cipher: str | None = None

    @property
    def peer_alert(self) -> bool:
        return self.kind == "tls-refused" and bool(PEER_ALERT_RE.match(self.detail))

    def refused_by_server(self, port_kind: str, alerts: set[str]) -> bool:
        """The server (nginx on the HTTPS port, the gateway on the DICOM port) ended the attempt with one of
        ``alerts``: it refused, not our library, and told the client why."""
        return self.peer_alert and self.detail in alerts

    def __str__(self) -> str:
        tls = f" over {self.version} {self.cipher}" if self.version else ""
        return f"{self.kind}{tls} {self.detail or ''}{self.reject or ''}".strip()


def _item(item_type: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(payload)) + payload


def associate_rq(calling: str, called: str) -> bytes:
    """An A-ASSOCIATE-RQ PDU proposing Verification in Implicit VR Little Endian (PS3.8 9.3.2)."""
    pres_ctx = _item(
        0x20, bytes([1, 0, 0, 0]) + _item(0x30, VERIFICATION.encode()) + _item(0x40, IMPLICIT_VR_LE.encode())
    )
    user_info = _item(0x50, _item(0x51, struct.pack(">I", 16384)) + _item(0x52, PYDICOM_IMPLEMENTATION_UID.encode()))
    body = (
        struct.pack(">HH", 1, 0)
        + called.encode().ljust(16)
        + calling.encode().ljust(16)
        + bytes(32)
        + _item(0x10, DICOM_APPLICATION_CONTEXT.encode())
        + pres_ctx
        + user_info
    )
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


A_RELEASE_RQ = struct.pack(">BBI", 0x05, 0, 4) + bytes(4)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _tls_failure(exc: ssl.SSLError) -> Outcome:
    if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return Outcome("closed", exc.reason or "EOF during TLS")
    return Outcome("tls-refused", exc.reason or str(exc))


def _await_tls13_verdict(sock: ssl.SSLSocket, limit: float = 5.0) -> None:
    """Let a TLS 1.3 server judge our certificate before we send anything.

    In TLS 1.3 the client's handshake is over before the server has checked the client certificate; the
    verdict is either an alert or the server's session tickets. Sending the A-ASSOCIATE-RQ before that
    verdict lets the server close a socket with unread data, and the resulting TCP reset can destroy the
    alert. So read (there is no application data yet) until a ticket or an alert arrives; a server that
    issues no tickets only costs ``limit`` seconds, after which the association request decides.
    """
    sock.settimeout(0.1)
    try:
        for _ in range(int(limit / 0.1)):
            if sock.session is not None and sock.session.has_ticket:
                return
            try:
                if not sock.recv(1):
                    return  # closed: the association request will report it
            except TimeoutError:
                continue
    finally:
        sock.settimeout(15)


def dicom_attempt(archive, ctx: ssl.SSLContext | None, *, calling: str, called: str | None = None) -> Outcome:
    """Connect to the DICOM port (TLS if ``ctx``), request an association, report the server's answer."""
    version = cipher = None
    try:
        sock = socket.create_connection((archive.host, archive.dicom_port), timeout=15)
    except OSError as exc:
        return Outcome("closed", f"connect: {exc}")
    try:
        if ctx is not None:
            try:
                sock = ctx.wrap_socket(sock, server_hostname=archive.host)
            except ssl.SSLError as exc:
                return _tls_failure(exc)
            version, cipher = sock.version(), sock.cipher()[0]
            if version == "TLSv1.3":
                try:
                    _await_tls13_verdict(sock)
                except ssl.SSLError as exc:
                    return _tls_failure(exc)
        try:
            sock.sendall(associate_rq(calling, called or archive.aet))
            header = _recv_exact(sock, 6)
            if len(header) < 6:
                return Outcome("closed", "no PDU", version=version, cipher=cipher)
            pdu_type, _, length = struct.unpack(">BBI", header)
            body = _recv_exact(sock, length)
        except ssl.SSLError as exc:  # TLS 1.3: the server's verdict on our certificate arrives here
            return _tls_failure(exc)
        except TimeoutError:
            return Outcome("timeout", "no answer within 15 s", version=version, cipher=cipher)
        except (ConnectionResetError, BrokenPipeError) as exc:
            return Outcome("closed", type(exc).__name__, version=version, cipher=cipher)
        if pdu_type == 0x02:
            # Release politely so the server logs a normal association end.
            try:
                sock.sendall(A_RELEASE_RQ)
                _recv_exact(sock, 10)
            except (OSError, ssl.SSLError):
                pass
            return Outcome("accepted", version=version, cipher=cipher)
        if pdu_type == 0x03:
            return Outcome("rejected", reject=(body[1], body[2], body[3]), version=version, cipher=cipher)
        if pdu_type == 0x07:
            return Outcome("aborted", version=version, cipher=cipher)
        return Outcome("closed", f"unexpected PDU type {pdu_type:#x}", version=version, cipher=cipher)
    finally:
        sock.close()


def https_attempt(archive, ctx: ssl.SSLContext) -> Outcome:
    """TLS handshake with the HTTPS port; if it completes, GET the health endpoint over it."""
    try:
        with socket.create_connection((archive.host, archive.https_port), timeout=15) as raw:
            try:
                with ctx.wrap_socket(raw, server_hostname=archive.host) as tls:
                    tls.sendall(b"GET /securepacs/health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                    status_line = tls.recv(64).split(b"\r\n", 1)[0].decode(errors="replace")
                    return Outcome("established", status_line, version=tls.version(), cipher=tls.cipher()[0])
            except ssl.SSLError as exc:
                return _tls_failure(exc)
    except (ConnectionResetError, BrokenPipeError) as exc:
        return Outcome("closed", type(exc).__name__)


def attempt_until_refused(archive, ctx: ssl.SSLContext, *, calling: str) -> Outcome:
    """Open associations until one is refused; fail if one that started REVOCATION_BOUND seconds from now is
    still accepted (poll to a deadline: no fixed wait before the negative assertion)."""
    deadline = time.monotonic() + REVOCATION_BOUND
    while True:
        started = time.monotonic()
        outcome = dicom_attempt(archive, ctx, calling=calling)
        # "aborted": accepted just before the gateway's refresh, then ended as a live association of a revoked
        # clinic. That is the revocation arriving, not yet the refusal at association time: keep polling.
        if outcome.kind not in ("accepted", "aborted"):
            return outcome
        assert started < deadline, f"an association from {calling!r} started {REVOCATION_BOUND} s after the " \
            "revocation was still accepted"
        time.sleep(0.05)


def client_context(
    archive,
    cert: Path | None = None,
    key: Path | None = None,
    *,
    version: ssl.TLSVersion | None = None,
    ciphers: str | None = None,
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(archive.ca_cert))
    if version is not None:
        with warnings.catch_warnings():  # TLSv1/TLSv1_1 are deprecated: we use them on purpose
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = version
            ctx.maximum_version = version
    if ciphers is not None:
        ctx.set_ciphers(ciphers)
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


def connection(
    archive,
    cert: Path | None,
    key: Path | None,
    *,
    aet: str,
    called: str | None = None,
    tls_version: str | None = None,
    tls: bool = True,
) -> Connection:
    config = TlsConfig(ca=archive.ca_cert, cert=cert, key=key, version=tls_version) if tls else None
    return Connection(
        archive.host,
        archive.dicom_port,
        calling_aet=aet,
        called_aet=called or archive.aet,
        tls=config,
        acse_timeout=15,
        dimse_timeout=30,
    )


def find_instance(archive, sop_instance_uid: str) -> list[str]:
    return archive.admin_json(
        "/tools/find", "POST", {"Level": "Instance", "Query": {"SOPInstanceUID": sop_instance_uid}}
    )


def orthanc_instance(archive) -> str:
    """Something that changes when Orthanc restarts: its PID (native) or its container's start time (compose)."""
    if archive.kind == "compose":
        container = archive.compose("ps", "-q", "archive").stdout.strip()
        res = subprocess.run(
            ["docker", "inspect", "-f", "{{.State.StartedAt}} {{.RestartCount}}", container],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return f"container {container[:12]} {res.stdout.strip()}"
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        comm = text[text.index("(") + 1 : text.rindex(")")]
        ppid = int(text[text.rindex(")") + 2 :].split()[1])
        if ppid == archive.proc.pid and comm == "Orthanc":
            return f"pid {stat.parent.name}"
    raise AssertionError("no Orthanc child process of securepacs serve")


# -- crafted client certificates ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Credential:
    cert: Path
    key: Path


@pytest.fixture(scope="module")
def crafted(archive, tmp_path_factory) -> dict[str, Credential]:
    """Client certificates that differ from a valid clinic certificate in exactly one property.

    All name clinicA and its AE title CLINICA in the same SAN URIs as a real bundle, so only the tested
    property (issuer, validity, extended key usage) can be the reason for a refusal.
    """
    out = tmp_path_factory.mktemp("crafted-certs")
    ca_key, ca_cert = authority.Pki(archive.certs_dir).load_ca()
    leaf_key = certificates.generate_key("rsa3072")
    identity = {
        "uris": certificates.clinic_uris("clinicA", ["CLINICA"]),
        "organization": certificates.CLINIC_ORGANIZATION,
        "key": leaf_key,
    }
    now = datetime.now(UTC)
    certs = {
        # Same recipe as the refused ones, but valid: the control.
        "valid-control": certificates.make_cert(ca_key, ca_cert, "clinicA", usage="client", days=30, **identity)[1],
        "expired": certificates.make_cert(
            ca_key,
            ca_cert,
            "clinicA",
            usage="client",
            not_before=now - timedelta(days=30),
            not_after=now - timedelta(days=1),
            **identity,
        )[1],
        "not-yet-valid": certificates.make_cert(
            ca_key,
            ca_cert,
            "clinicA",
            usage="client",
            not_before=now + timedelta(days=1),
            not_after=now + timedelta(days=30),
            **identity,
        )[1],
        "serverAuth-only": certificates.make_cert(ca_key, ca_cert, "clinicA", usage="server", days=30, **identity)[1],
    }
    other_ca_key = certificates.generate_key("rsa3072")
    other_key, other_cert = certificates.make_ca("Another CA", days=365, key=other_ca_key)
    certs["other-ca"] = certificates.make_cert(other_key, other_cert, "clinicA", usage="client", days=30, **identity)[1]
    # A look-alike CA: the very same subject DN as the archive's CA, a different key.
    our_cn = ca_cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    twin_key, twin_cert = certificates.make_ca(our_cn, days=365, key=other_ca_key)
    assert twin_cert.subject == ca_cert.subject
    certs["look-alike-ca"] = certificates.make_cert(twin_key, twin_cert, "clinicA", usage="client", days=30,
                                                    **identity)[1]

    key_path = out / "leaf.key"
    pem_files.write_key(key_path, leaf_key)
    result = {}
    for name, cert in certs.items():
        pem_files.write_cert(out / f"{name}.crt", cert)
        result[name] = Credential(out / f"{name}.crt", key_path)
    return result


# -- the probes themselves work ------------------------------------------------------------------------------


def test_probe_sees_an_accepted_association(archive, clinic_a):
    """Control for every DICOM test below: a valid clinic gets an A-ASSOCIATE-AC from the same probe."""
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        ctx = client_context(archive, clinic_a.cert, clinic_a.key, version=version)
        outcome = dicom_attempt(archive, ctx, calling="CLINICA")
        assert outcome.kind == "accepted", outcome
    assert echo(archive.conn(clinic_a)) == 0


@pytest.mark.parametrize("tls_version", ["1.2", "1.3"])
def test_crafted_valid_certificate_is_accepted(archive, clinic_a, crafted, tls_version):
    """Control for the crafted certificates: the same recipe with nothing wrong is accepted."""
    good = crafted["valid-control"]
    assert echo(connection(archive, good.cert, good.key, aet="CLINICA", tls_version=tls_version)) == 0


# -- client certificates -------------------------------------------------------------------------------------


@pytest.mark.parametrize("tls_version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["TLS1.2", "TLS1.3"])
def test_no_client_certificate_is_refused(archive, clinic_a, tls_version):
    outcome = dicom_attempt(archive, client_context(archive, version=tls_version), calling="CLINICA")
    assert outcome.kind != "accepted", outcome
    # TLS 1.2: handshake_failure during the handshake; TLS 1.3: certificate_required right after it.
    assert outcome.refused_by_server(
        "dicom", {"SSLV3_ALERT_HANDSHAKE_FAILURE", "TLSV13_ALERT_CERTIFICATE_REQUIRED"}
    ), f"expected the server to refuse, got {outcome}"

    with pytest.raises(ConnectionFailed):
        echo(connection(archive, None, None, aet="CLINICA"))
    archive.assert_serving()


# name -> alerts that say "your certificate is refused" for that reason
CERT_CASES = {
    "other-ca": {"TLSV1_ALERT_UNKNOWN_CA", "SSLV3_ALERT_BAD_CERTIFICATE"},
    "look-alike-ca": {"TLSV1_ALERT_UNKNOWN_CA", "TLSV1_ALERT_DECRYPT_ERROR", "SSLV3_ALERT_BAD_CERTIFICATE"},
    "expired": {"SSLV3_ALERT_CERTIFICATE_EXPIRED", "SSLV3_ALERT_BAD_CERTIFICATE"},
    "not-yet-valid": {"SSLV3_ALERT_BAD_CERTIFICATE", "SSLV3_ALERT_CERTIFICATE_EXPIRED"},
    "serverAuth-only": {"SSLV3_ALERT_UNSUPPORTED_CERTIFICATE", "SSLV3_ALERT_BAD_CERTIFICATE"},
}


@pytest.mark.parametrize("tls_version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["TLS1.2", "TLS1.3"])
@pytest.mark.parametrize("case", sorted(CERT_CASES))
def test_bad_client_certificate_is_refused(archive, clinic_a, crafted, case, tls_version):
    cred = crafted[case]
    ctx = client_context(archive, cred.cert, cred.key, version=tls_version)
    outcome = dicom_attempt(archive, ctx, calling="CLINICA")
    assert outcome.kind != "accepted", f"{case} certificate: association accepted ({outcome})"
    assert outcome.refused_by_server("dicom", CERT_CASES[case]), (
        f"{case} certificate: expected the server to refuse it, got {outcome}"
    )

    version = "1.2" if tls_version == ssl.TLSVersion.TLSv1_2 else "1.3"
    with pytest.raises(ConnectionFailed):
        echo(connection(archive, cred.cert, cred.key, aet="CLINICA", tls_version=version))
    archive.assert_serving()


# -- plain DICOM ---------------------------------------------------------------------------------------------


def test_plain_association_is_not_accepted(archive, clinic_a):
    """The DICOM port speaks TLS only: a plain A-ASSOCIATE-RQ (even from an enrolled AE) gets no AC."""
    outcome = dicom_attempt(archive, None, calling="CLINICA")
    assert outcome.kind == "closed", f"plain association: {outcome}"

    with pytest.raises(ConnectionFailed):
        echo(connection(archive, None, None, aet="CLINICA", tls=False))
    archive.assert_serving()


# -- TLS versions and suites, DICOM and HTTPS ----------------------------------------------------------------


def _attempt(archive, clinic, port_kind: str, ctx: ssl.SSLContext) -> Outcome:
    if port_kind == "dicom":
        return dicom_attempt(archive, ctx, calling=clinic.aets[0])
    return https_attempt(archive, ctx)


SUCCESS = {"dicom": "accepted", "https": "established"}


@pytest.mark.parametrize("port_kind", ["dicom", "https"])
def test_tls12_control_succeeds_with_the_same_client(archive, clinic_a, port_kind):
    """The refusals below use exactly this client setup, only with another version or suite."""
    for ciphers in ("DEFAULT:@SECLEVEL=0", f"{GOOD_SUITE}:@SECLEVEL=0"):
        ctx = client_context(archive, clinic_a.cert, clinic_a.key, version=ssl.TLSVersion.TLSv1_2, ciphers=ciphers)
        outcome = _attempt(archive, clinic_a, port_kind, ctx)
        assert outcome.kind == SUCCESS[port_kind], outcome
        assert outcome.version == "TLSv1.2", outcome
        if port_kind == "https":
            assert outcome.detail == "HTTP/1.1 200 OK", outcome


@pytest.mark.parametrize("label", sorted(OLD_TLS))
@pytest.mark.parametrize("port_kind", ["dicom", "https"])
def test_old_tls_version_is_refused(archive, clinic_a, port_kind, label):
    ctx = client_context(archive, clinic_a.cert, clinic_a.key, version=OLD_TLS[label][0], ciphers="DEFAULT:@SECLEVEL=0")
    outcome = _attempt(archive, clinic_a, port_kind, ctx)
    if outcome.kind == "tls-refused" and outcome.detail in LOCAL_REFUSALS:
        pytest.skip(
            f"the local OpenSSL will not offer {label} ({outcome.detail}); "
            "test_old_tls_version_is_refused_openssl_cli covers it"
        )
    assert outcome.kind not in SUCCESS.values(), f"{port_kind} port accepted {label}: {outcome}"
    # protocol_version (alert 70) *received from the server*: the server refused, not our library.
    assert outcome.refused_by_server(port_kind, {"TLSV1_ALERT_PROTOCOL_VERSION"}), outcome
    archive.assert_serving()


def _s_client(archive, clinic, port: int, *args: str) -> str:
    res = subprocess.run(
        [
            "openssl",
            "s_client",
            "-connect",
            f"127.0.0.1:{port}",
            "-servername",
            archive.host,
            "-CAfile",
            str(archive.ca_cert),
            "-cert",
            str(clinic.cert),
            "-key",
            str(clinic.key),
            *args,
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return res.stdout + res.stderr


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl command line tool not installed")
@pytest.mark.parametrize("label", sorted(OLD_TLS))
@pytest.mark.parametrize("port_kind", ["dicom", "https"])
def test_old_tls_version_is_refused_openssl_cli(archive, clinic_a, port_kind, label):
    """The same check with another client (openssl s_client), which reports the alert number it received."""
    port = archive.dicom_port if port_kind == "dicom" else archive.https_port
    control = _s_client(archive, clinic_a, port, "-tls1_2", "-cipher", "DEFAULT:@SECLEVEL=0")
    assert re.search(r"New, TLSv1\.2, Cipher is (?!\(NONE\))", control), control[-2000:]

    output = _s_client(archive, clinic_a, port, OLD_TLS[label][1], "-cipher", "DEFAULT:@SECLEVEL=0")
    assert "Cipher is (NONE)" in output or "no peer certificate available" in output, output[-2000:]
    assert not re.search(r"New, TLSv1(\.[01])?, Cipher is (?!\(NONE\))", output), output[-2000:]
    # The server says why: protocol_version (alert 70), from nginx and from the gateway alike.
    assert "alert protocol version" in output and "SSL alert number 70" in output, output[-2000:]
    archive.assert_serving()


# Orthanc 1.10.1 alone accepted AES128-SHA on the DICOM port (DCMTK's BCP195 list overrides OPENSSL_CONF);
# the gateway terminates TLS in front of it with AEAD suites only, so every weak suite is refused now.
def _suite_cases() -> list:
    cases = []
    for port_kind in ("dicom", "https"):
        for suite in sorted(WEAK_SUITES):
            cases.append(pytest.param(port_kind, suite, id=f"{port_kind}-{suite}"))
    return cases


@pytest.mark.parametrize(("port_kind", "suite"), _suite_cases())
def test_weak_tls12_suite_is_refused(archive, clinic_a, port_kind, suite):
    ctx = client_context(
        archive, clinic_a.cert, clinic_a.key, version=ssl.TLSVersion.TLSv1_2, ciphers=f"{suite}:@SECLEVEL=0"
    )
    outcome = _attempt(archive, clinic_a, port_kind, ctx)
    assert outcome.kind not in SUCCESS.values(), (
        f"{port_kind} port negotiated {suite} ({WEAK_SUITES[suite]}) and went on: {outcome}"
    )
    assert outcome.refused_by_server(port_kind, {"SSLV3_ALERT_HANDSHAKE_FAILURE"}), outcome
    archive.assert_serving()


# -- AE titles -----------------------------------------------------------------------------------------------


@pytest.fixture
def study_file(tmp_path) -> tuple[Path, str]:
    """One small synthetic instance with unique UIDs and patient; (path, SOP Instance UID)."""
    tag = uuid.uuid4().hex[:12]
    spec = synth.StudySpec(seed=f"rejections-{tag}", patient_id=f"REJ{tag}", slices=1, rows=16, columns=16)
    path = synth.write_study(spec, tmp_path / "study")[0]
    return path, synth.instance(spec, 0).SOPInstanceUID


def test_unknown_calling_ae_cannot_store(archive, clinic_a, study_file):
    path, sop_uid = study_file
    # A valid clinic certificate, but an AE title nobody enrolled.
    ctx = client_context(archive, clinic_a.cert, clinic_a.key)
    outcome = dicom_attempt(archive, ctx, calling="NOTENROLLED")
    assert outcome.kind == "rejected" and outcome.reject == REJECT_CALLING_AE, outcome

    with pytest.raises(ConnectionFailed, match="rejected the association"):
        store(archive.conn(clinic_a, aet="NOTENROLLED"), [path])
    assert find_instance(archive, sop_uid) == [], "an instance from an unknown AE title was stored"
    archive.assert_serving()

    # Control: the same file from the enrolled AE title is stored and found by the same REST query.
    summary = store(archive.conn(clinic_a), [path])
    assert summary.ok and summary.success == 1, summary.report()
    found = find_instance(archive, sop_uid)
    assert len(found) == 1
    status, _ = archive.https(f"/instances/{found[0]}", auth=archive.admin_credential(), method="DELETE")
    assert status == 200


def test_wrong_called_ae_is_rejected(archive, clinic_a):
    ctx = client_context(archive, clinic_a.cert, clinic_a.key)
    outcome = dicom_attempt(archive, ctx, calling="CLINICA", called="WRONGAET")
    assert outcome.kind == "rejected" and outcome.reject == REJECT_CALLED_AE, outcome

    with pytest.raises(ConnectionFailed, match="rejected the association"):
        echo(archive.conn(clinic_a, called="WRONGAET"))
    archive.assert_serving()


def test_revoked_clinic_is_refused_without_restart(archive, clinic_a, study_file):
    path, sop_uid = study_file
    name, aet = "rejRevoked", "REJREVOKED"
    clinic = archive.enrol(name, aet)
    try:
        before = orthanc_instance(archive)
        assert echo(archive.conn(clinic)) == 0  # control: works while enrolled

        ctx = client_context(archive, clinic.cert, clinic.key)
        res = archive.cli("clinic", "revoke", name)
        assert "Revoked clinic" in res.stdout
        # The gateway checks the CRL and the store's revocations after the handshake and answers an
        # A-ASSOCIATE-RJ: permanent, service user, reason 1 (PS3.8 has no "revoked"; the event log says it).
        outcome = attempt_until_refused(archive, ctx, calling=aet)
        assert outcome.kind == "rejected" and outcome.reject in REVOKED_REJECTS, outcome
        archive.wait_modalities(absent=(aet,))  # and Orthanc forgets the AE title too

        with pytest.raises(ConnectionFailed):
            echo(archive.conn(clinic))
        with pytest.raises(ConnectionFailed):
            store(archive.conn(clinic), [path])
        assert find_instance(archive, sop_uid) == [], "a revoked clinic stored an instance"
        assert orthanc_instance(archive) == before, "Orthanc restarted: revocation must apply while it runs"
    finally:
        # Keep later tests (and assert_serving) on the clinics that are still enrolled.
        archive.clinics.pop(name, None)
    archive.assert_serving()
