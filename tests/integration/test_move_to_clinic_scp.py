"""C-MOVE back to a clinic's own, stock SCP that uses nothing but the enrolled bundle (issue 12, finding 9).

A clinic enrolled with a retrieve address (``clinic add --host H --port P``) gets one certificate for both
roles: its SCU (store, find, move requests) and its SCP (the C-MOVE destination). Third-party SCPs are
configured the way their own documentation says, with the bundle's clinic.crt/clinic.key and ca.crt:

(a) a stock Orthanc (Debian's binary, a minimal JSON configuration, no plugin) stores a study to the
    archive, finds it, deletes its copy and C-MOVEs the study back to itself;
(b) DCMTK's ``storescp +tls clinic.key clinic.crt +cf ca.crt`` receives a C-MOVE that our client asks for.

Both SCPs require and verify the archive's certificate (the egress connection's client side), and the
gateway verifies theirs (serverAuth, the registered host in the SAN, the clinic in the SAN URIs). Native
archive only: the SCPs listen on this host, which a container cannot reach.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import Archive, Clinic, free_port
from pydicom import dcmread

from securepacs.client import move, store
from securepacs_tools.synth import StudySpec, uid, write_study

pytestmark = pytest.mark.integration

START_TIMEOUT = 60
SLICES = 4


def _study(tmp_path: Path, seed: str) -> tuple[StudySpec, list[Path]]:
    spec = StudySpec(seed=f"scp-move-{seed}", patient_id=f"SYNSCP-{seed.upper()}", slices=SLICES, rows=32, columns=32)
    return spec, write_study(spec, tmp_path / seed)


def _gateway_log(archive: Archive) -> str:
    """The archive's recent log lines about egress (where a refused destination shows why)."""
    lines = [line for line in archive.log_text().splitlines() if "egress" in line or "destination" in line]
    return "\n".join(lines[-15:])


# -- (a) a stock Orthanc as the clinic's local archive ------------------------------------------------


class StockOrthanc:
    """Debian's Orthanc with the clinic bundle for DICOM TLS; REST on loopback only, no plugin."""

    def __init__(self, archive: Archive, clinic: Clinic, dicom_port: int):
        # Not pytest's tmp_path (a 0700 tree): Orthanc may run as another user where the suite runs as root.
        self.root = Path(tempfile.mkdtemp(prefix="securepacs-clinic-orthanc-"))
        self.http_port = free_port()
        self.aet = clinic.aets[0]
        config = {
            "Name": "clinic-local-archive",
            "StorageDirectory": str(self.root / "storage"),
            "IndexDirectory": str(self.root / "storage"),
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomAet": self.aet,
            "DicomPort": dicom_port,
            "DicomTlsEnabled": True,
            "DicomTlsCertificate": str(clinic.cert),
            "DicomTlsPrivateKey": str(clinic.key),
            "DicomTlsTrustedCertificates": str(clinic.ca),
            "DicomTlsRemoteCertificateRequired": True,
            "DicomModalities": {
                "archive": {"AET": archive.aet, "Host": "127.0.0.1", "Port": archive.dicom_port, "UseDicomTls": True},
            },
            "Plugins": [],
        }
        (self.root / "orthanc.json").write_text(json.dumps(config, indent=2))
        self.log = (self.root / "orthanc.log").open("wb")
        # Nagle off (DESIGN.md); the archive's OPENSSL_CONF is not this Orthanc's business.
        env = {k: v for k, v in os.environ.items() if k != "OPENSSL_CONF"} | {"TCP_NODELAY": "1"}
        self.proc = subprocess.Popen(["Orthanc", str(self.root / "orthanc.json")], env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert self.proc.poll() is None, f"Orthanc exited {self.proc.returncode}:\n{self.log_text()}"
            try:
                self.rest("GET", "/system")
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"Orthanc did not start:\n{self.log_text()}") from None
                time.sleep(0.3)

    def log_text(self) -> str:
        return (self.root / "orthanc.log").read_text(errors="replace")[-3000:]

    def rest(self, method: str, path: str, body: object | bytes | None = None) -> tuple[int, object]:
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=data, method=method)
        try:
            with urllib.request.urlopen(req, timeout=120) as resp:
                status, payload = resp.status, resp.read()
        except urllib.error.HTTPError as err:
            status, payload = err.code, err.read()
        try:
            return status, json.loads(payload) if payload else None
        except ValueError:
            return status, payload.decode(errors="replace")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        shutil.rmtree(self.root, ignore_errors=True)


@contextmanager
def stock_orthanc(archive: Archive, clinic: Clinic, dicom_port: int) -> Iterator[StockOrthanc]:
    orthanc = StockOrthanc(archive, clinic, dicom_port)
    try:
        yield orthanc
    finally:
        orthanc.close()


def test_stock_orthanc_stores_finds_and_moves_back_to_itself(native_archive, tmp_path):
    archive = native_archive
    port = free_port()
    clinic = archive.enrol("clinic-orthanc", "ORTHCLINIC", host="127.0.0.1", port=port)
    spec, files = _study(tmp_path, "orthanc")
    with stock_orthanc(archive, clinic, port) as local:
        for path in files:
            status, answer = local.rest("POST", "/instances", path.read_bytes())
            assert status == 200, answer
        study_id = answer["ParentStudy"]

        # C-STORE to the archive, through the gateway, with the bundle as client certificate.
        status, answer = local.rest("POST", "/modalities/archive/store", {"Resources": [study_id], "Synchronous": True})
        assert status == 200 and answer["FailedInstancesCount"] == 0, (answer, local.log_text())

        # C-FIND: the archive answers with the study.
        status, answer = local.rest("POST", "/modalities/archive/query",
                                    {"Level": "Study", "Query": {"StudyInstanceUID": spec.study_uid}})
        assert status == 200, answer
        status, answers = local.rest("GET", f"/queries/{answer['ID']}/answers?expand&simplify")
        assert status == 200 and [a["StudyInstanceUID"] for a in answers] == [spec.study_uid], answers

        # Forget the local copy, then C-MOVE the study back to this Orthanc's own AE title.
        assert local.rest("DELETE", f"/studies/{study_id}")[0] == 200
        assert local.rest("GET", "/studies")[1] == []
        status, answer = local.rest("POST", "/modalities/archive/move", {
            "Level": "Study", "Resources": [{"StudyInstanceUID": spec.study_uid}],
            "TargetAet": local.aet, "Synchronous": True})
        assert status == 200, f"C-MOVE failed: {answer}\n{_gateway_log(archive)}\n{local.log_text()}"
        status, instances = local.rest("GET", f"/studies/{study_id}/instances")
        assert status == 200 and len(instances) == SLICES, instances
        received = {local.rest("GET", f"/instances/{i['ID']}/simplified-tags")[1]["SOPInstanceUID"]
                    for i in instances}
        assert received == {uid(f"{spec.seed}/instance/{i}") for i in range(SLICES)}


# -- (b) DCMTK storescp as the C-MOVE destination ---------------------------------------------------


def _wait_for_storescp(port: int, proc: subprocess.Popen) -> None:
    """Until storescp accepts TCP connections (it prints nothing when it starts listening). Plain TCP, not a
    TLS echo: whether a TLS client accepts the bundle as a server certificate is what the C-MOVE tests."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        assert proc.poll() is None, f"storescp exited {proc.returncode}: {proc.communicate()}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError("storescp never listened") from None
            time.sleep(0.2)


def test_dcmtk_storescp_with_the_bundle_receives_a_move(native_archive, tmp_path):
    archive = native_archive
    port = free_port()
    # A DNS name this time: the bundle's SAN carries it and the gateway dials it.
    clinic = archive.enrol("clinic-dcmtk", "DCMTKCLINIC", host="localhost", port=port)
    spec, files = _study(tmp_path, "dcmtk")
    summary = store(archive.conn(clinic), files)
    assert summary.ok and summary.success == SLICES, summary.report()

    out = tmp_path / "received"
    out.mkdir()
    scp = subprocess.Popen(
        ["storescp", "+tls", str(clinic.key), str(clinic.cert), "+cf", str(clinic.ca), "-aet", clinic.aets[0],
         "-od", str(out), str(port)],
        env={**os.environ, "TCP_NODELAY": "1"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for_storescp(port, scp)
        result = move(archive.conn(clinic), clinic.aets[0], "STUDY", {"StudyInstanceUID": spec.study_uid})
    finally:
        scp.terminate()
        scp_output, _ = scp.communicate(timeout=10)
    # Orthanc counts a study-level C-MOVE as one sub-operation: the files received are what counts.
    assert result.ok and result.failed == 0, (
        f"{result.report('C-MOVE')}\n{_gateway_log(archive)}\nstorescp:\n{scp_output[-2000:]}")
    received = {str(dcmread(path, stop_before_pixels=True).SOPInstanceUID) for path in out.iterdir()}
    assert received == {uid(f"{spec.seed}/instance/{i}") for i in range(SLICES)}, scp_output[-2000:]
