"""SECUREPACS_INTERNAL_HOP=plain: the explicit single-host option. Clinics still need mutual TLS and the
gateway's checks; only the hop between the gateway and Orthanc is plain, and Orthanc accepts on it only
registered AE titles from 127.0.0.1.

Orthanc 1.10.1 cannot bind its DICOM port to one address, so the plain port is reachable from the network;
the host check is what keeps other machines out. That is shown from a real second host: a network
namespace joined to this one by a veth pair, with link-local addresses on both ends."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from _netns import second_host
from conftest import Archive, _start, make_archive, stop_archive
from test_rejections import associate_rq

from securepacs.client import Connection, ConnectionFailed, echo, find, get, store
from securepacs_tools.synth import StudySpec, write_study

pytestmark = pytest.mark.integration

SPEC = StudySpec(seed="plain-hop", patient_id="PLAIN-P1", slices=3, rows=16, columns=16)


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Iterator[Archive]:
    archive = make_archive("securepacs-plainhop-")
    archive.env["SECUREPACS_INTERNAL_HOP"] = "plain"
    _start(archive)
    try:
        archive.enrol("plainA", "PLAINA")
        yield archive
    finally:
        if archive.running():
            stop_archive(archive)
        shutil.rmtree(archive.root, ignore_errors=True)


def test_clinics_store_find_and_get_through_the_gateway(plain: Archive, tmp_path: Path) -> None:
    clinic = plain.clinics["plainA"]
    write_study(SPEC, tmp_path / "study")
    assert store(plain.conn(clinic), [tmp_path / "study"]).ok
    assert len(list(find(plain.conn(clinic), "STUDY", {"PatientID": SPEC.patient_id}))) == 1
    result = get(plain.conn(clinic), "STUDY", {"StudyInstanceUID": SPEC.study_uid}, out_dir=tmp_path / "got")
    assert result.ok and result.files == 3, result.report("C-GET")
    config = (plain.data_dir / "config" / "00-base.json").read_text()
    assert '"DicomTlsEnabled": false' in config and '"DicomCheckModalityHost": true' in config


def test_the_public_port_stays_mutual_tls(plain: Archive) -> None:
    with pytest.raises(ConnectionFailed):
        echo(Connection(plain.host, plain.dicom_port, calling_aet="PLAINA", called_aet=plain.aet, acse_timeout=5))


def test_orthancs_plain_port_admits_only_registered_aets(plain: Archive) -> None:
    internal = int(plain.env["SECUREPACS_INTERNAL_DICOM_PORT"])
    with pytest.raises(ConnectionFailed):
        echo(Connection("127.0.0.1", internal, calling_aet="INTRUDER", called_aet=plain.aet, acse_timeout=5))
    plain.assert_serving()


# -- a second host: a network namespace behind a veth pair -----------------------------------------------

# Runs inside the namespace: send one PDU, print the first answer (hex; empty if the peer closed).
_PROBE = """
import socket, sys
host, port, pdu = sys.argv[1], int(sys.argv[2]), bytes.fromhex(sys.argv[3])
with socket.create_connection((host, port), timeout=10) as sock:
    sock.sendall(pdu)
    data = b""
    while len(data) < 10:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
print(data.hex())
"""


def first_answer(host: str, port: int, pdu: bytes, netns: str | None = None) -> bytes:
    cmd = [sys.executable, "-c", _PROBE, host, str(port), pdu.hex()]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, f"the probe from {netns or 'this host'} failed: {res.stderr[-2000:]}"
    return bytes.fromhex(res.stdout.strip())


def test_orthancs_plain_port_refuses_an_enrolled_aet_from_another_host(plain: Archive) -> None:
    """The same A-ASSOCIATE-RQ (an enrolled AE title, Verification) is accepted from 127.0.0.1 and refused
    with an A-ASSOCIATE-RJ from a second host that reaches Orthanc's plain port over a real link."""
    internal = int(plain.env["SECUREPACS_INTERNAL_DICOM_PORT"])
    request = associate_rq("PLAINA", plain.aet)
    # Control: from loopback the request is a valid one (A-ASSOCIATE-AC), so a refusal below is the host check.
    assert first_answer("127.0.0.1", internal, request)[:1] == b"\x02"
    with second_host() as (ns, host_ip, ns_ip):
        answer = first_answer(host_ip, internal, request, netns=ns)
        # Orthanc answered (so the port is reachable from there) and refused: A-ASSOCIATE-RJ, rejected
        # permanent, by the service user, calling AE title not recognized (PS3.8 9.3.4).
        assert answer[:1] == b"\x03", f"from {ns_ip}: expected an A-ASSOCIATE-RJ, got {answer[:12]!r}"
        assert (answer[7], answer[8], answer[9]) == (1, 1, 3), answer[:10]
    plain.assert_serving()
