"""Image-only checks of what Orthanc 1.13 and its python plugin 7.1 give the archive (issue 20).

C-MOVE through ``RegisterMoveCallback3``: a refusal answers a failure status with no sub-operations (and
leaves no stack trace in Orthanc's log), an admitted move has one sub-operation per instance. Orthanc's
own TLS knobs restrict the internal DICOM port (no OPENSSL_CONF), and its HTTP port binds loopback only.
Native Debian 12 (Orthanc 1.10.1, plugin 4.0) has none of these: tests/integration/test_tenancy_matrix.py
checks its behaviour (a refusal is one failed sub-operation, 0xB000).
"""

from __future__ import annotations

import json
import re
import ssl
import subprocess
from pathlib import Path

import pytest
from conftest import MoveScp, free_port
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, StoragePresentationContexts, evt

from securepacs.client import move, store
from securepacs.dicom import status_codes
from securepacs.pki import authority, certificates, pem_files
from securepacs.pki.internal_ca import InternalPki
from securepacs_tools import synth

pytestmark = pytest.mark.compose

CONTAINER_CERTS = "/etc/securepacs/certs"  # compose.yaml: where every service mounts the certs volume
# A Python frame in a traceback, as Orthanc's python plugin logs it.
FRAME_RE = re.compile(r'^\s*File "[^"]+", line \d+', re.MULTILINE)


def _container(arc, service: str) -> str:
    return arc.compose("ps", "-q", service).stdout.strip()


def _exec(arc, service: str, *cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", "exec", _container(arc, service), *cmd], capture_output=True, text=True,
                          timeout=60, check=False)


def _archive_log(arc) -> str:
    return arc.compose("logs", "--no-color", "archive", check=False).stdout


def _runtime_config(arc) -> dict:
    return json.loads((arc.data_dir / "config" / "10-runtime.json").read_text())


# -- C-MOVE ----------------------------------------------------------------------------------------------


def test_a_refused_cmove_fails_with_no_sub_operations_and_no_traceback(compose_archive, tmp_path):
    arc = compose_archive
    owner = arc.enrol("platowner", "PLATOWNER")
    # A clinic with a retrieve address (never dialled: both moves are refused before anything is sent).
    other = arc.enrol("platother", "PLATOTHER", host="192.0.2.1", port=11112)
    spec = synth.StudySpec(seed="platform-move-refused", patient_id="PLATREFUSED", slices=2)
    assert store(arc.conn(owner), synth.write_study(spec, tmp_path)).ok
    logged = len(_archive_log(arc))

    # Another clinic's study to the caller's own destination, and a destination nobody registered.
    foreign = move(arc.conn(other), "PLATOTHER", "STUDY", {"StudyInstanceUID": spec.study_uid})
    unknown = move(arc.conn(owner), "NOWHERE", "STUDY", {"StudyInstanceUID": spec.study_uid})
    for result in (foreign, unknown):
        # Orthanc answers a refusal in the move callback with Unable to process and no sub-operations: none
        # was attempted (plugin 4.0 could only fail its one sub-operation, 0xB000 with 1 failed).
        counts = (result.status, result.completed, result.failed, result.warning, result.remaining)
        assert counts == (status_codes.UNABLE_TO_PROCESS, 0, 0, 0, 0), result.report("C-MOVE")

    log = _archive_log(arc)[logged:]
    # The plugin's warnings say why.
    assert "C-MOVE refused: STUDY-level C-MOVE from clinic 'platother' names a resource that is not" in log
    assert "C-MOVE refused: move destination 'NOWHERE' is not registered to clinic 'platowner'" in log
    # Orthanc's python plugin logs the refusal it was handed: its class and message, no stack frames.
    assert log.count("Error in the Python C-MOVE SCP callback (Create v3)") == 2, log[-3000:]
    assert "securepacs.archive.move_scp.MoveRefused" in log
    assert not FRAME_RE.search(log), log[-3000:]
    assert "Traceback (most recent call last)" not in log


def _bridge_gateway(arc) -> str:
    """This host's address on the stack's Docker network: reachable from the gateway's egress relay."""
    out = subprocess.run(["docker", "inspect", _container(arc, "archive")], capture_output=True, text=True,
                         check=True).stdout
    return next(iter(json.loads(out)[0]["NetworkSettings"]["Networks"].values()))["Gateway"]


def test_an_admitted_cmove_counts_one_sub_operation_per_instance(compose_archive, tmp_path):
    arc = compose_archive
    host, port = _bridge_gateway(arc), free_port()
    clinic = arc.enrol("platmove", "PLATMOVE", host=host, port=port)
    spec = synth.StudySpec(seed="platform-move-counted", patient_id="PLATCOUNTED", slices=3, rows=16, columns=16)
    assert store(arc.conn(clinic), synth.write_study(spec, tmp_path / "study")).ok

    # The clinic's retrieve SCP on this host, with a server certificate for the address it registered.
    ca_key, ca_cert = authority.Pki(arc.certs_dir).load_ca()
    key, cert = certificates.make_cert(ca_key, ca_cert, "platmove retrieve SCP", usage="server+client",
                              ip_addresses=[host], days=1)
    pem_files.write_key(tmp_path / "scp.key", key)
    pem_files.write_cert(tmp_path / "scp.crt", cert)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(arc.ca_cert))
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_cert_chain(str(tmp_path / "scp.crt"), str(tmp_path / "scp.key"))
    scp = MoveScp()
    ae = AE(ae_title="PLATMOVE")
    for cx in StoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    server = ae.start_server((host, port), block=False, ssl_context=ctx,
                             evt_handlers=[(evt.EVT_C_STORE, scp.on_store)])
    try:
        result = move(arc.conn(clinic), "PLATMOVE", "STUDY", {"StudyInstanceUID": spec.study_uid})
    finally:
        server.shutdown()
    assert (result.status, result.completed, result.failed, result.warning) == (
        status_codes.SUCCESS, spec.slices, 0, 0), result.report("C-MOVE")
    assert len(scp.received) == spec.slices


# -- Orthanc's own configuration (platform/orthanc_options.py) --------------------------------------------


def _probe_internal_port(arc, *args: str) -> str:
    """openssl s_client inside the gateway's container (the stack's network namespace, where the internal
    DICOM port listens), with the gateway's internal certificate."""
    internal = InternalPki(arc.certs_dir)

    def inside(path: Path) -> str:
        return f"{CONTAINER_CERTS}/{path.relative_to(arc.certs_dir)}"

    port = _runtime_config(arc)["DicomPort"]
    res = _exec(arc, "gateway", "openssl", "s_client", "-connect", f"127.0.0.1:{port}",
                "-CAfile", inside(internal.ca_cert_path), "-cert", inside(internal.cert_path("gateway")),
                "-key", inside(internal.key_path("gateway")), *args)
    return res.stdout + res.stderr


def test_the_internal_dicom_port_speaks_only_tls_1_2_and_up_with_aead_suites(compose_archive):
    arc = compose_archive
    config = _runtime_config(arc)
    assert config["DicomTlsMinimumProtocolVersion"] == 4
    env = _exec(arc, "archive", "sh", "-c", "tr '\\0' '\\n' < /proc/$(pidof Orthanc)/environ")
    assert env.returncode == 0 and "TCP_NODELAY=1" in env.stdout, env.stderr
    assert "OPENSSL_CONF" not in env.stdout  # Orthanc's own options, not the 1.10.1 workaround

    good = _probe_internal_port(arc, "-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256")
    assert re.search(r"Cipher is ECDHE-RSA-AES128-GCM-SHA256", good), good[-2000:]
    tls13 = _probe_internal_port(arc, "-tls1_3")
    assert re.search(r"New, TLSv1\.3, Cipher is TLS_", tls13), tls13[-2000:]
    for version in ("-tls1", "-tls1_1"):
        old = _probe_internal_port(arc, version, "-cipher", "DEFAULT:@SECLEVEL=0")
        assert "alert protocol version" in old and "Cipher is (NONE)" in old, old[-2000:]
    # Orthanc 1.10.1 accepted AES128-SHA here (DCMTK's BCP 195 list, which OPENSSL_CONF cannot override).
    for suite in ("AES128-SHA", "ECDHE-RSA-AES128-SHA", "AES128-GCM-SHA256", "DHE-RSA-AES128-GCM-SHA256"):
        weak = _probe_internal_port(arc, "-tls1_2", "-cipher", f"{suite}:@SECLEVEL=0")
        assert "Cipher is (NONE)" in weak and "alert handshake failure" in weak, (suite, weak[-2000:])


def _listening(arc, service: str, port: int) -> set[str]:
    """Local addresses (hex, as the kernel lists them) with a TCP socket listening on ``port``."""
    out = _exec(arc, service, "cat", "/proc/net/tcp", "/proc/net/tcp6").stdout
    return {local.split(":")[0] for local, state in
            (fields[1:4:2] for fields in (line.split() for line in out.splitlines()[1:]) if len(fields) > 3)
            if state == "0A" and int(local.split(":")[1], 16) == port}


def test_orthancs_http_port_binds_loopback_only(compose_archive):
    arc = compose_archive
    config = _runtime_config(arc)
    assert config["HttpBindAddresses"] == ["127.0.0.1"]
    assert _listening(arc, "archive", config["HttpPort"]) == {"0100007F"}  # 127.0.0.1, nothing else
    # (The DICOM port still listens on every address: Orthanc 1.13 cannot bind it to one; only the
    # archive's network namespace reaches it, and it trusts only the internal CA.)
    assert _listening(arc, "archive", config["DicomPort"])


def test_bulk_data_uris_point_at_the_origin_the_viewer_called(compose_archive, tmp_path):
    """A viewer follows the BulkDataURIs of WADO-RS metadata: they must name nginx's HTTPS origin (DICOMweb's
    PublicRoot, the Host and X-Forwarded-Proto headers nginx passes), never Orthanc's loopback port."""
    arc = compose_archive
    clinic = arc.enrol("platbulk", "PLATBULK")
    spec = synth.StudySpec(seed="platform-bulk", patient_id="PLATBULK", slices=1, rows=16, columns=16)
    assert store(arc.conn(clinic), synth.write_study(spec, tmp_path)).ok
    assert _runtime_config(arc)["DicomWeb"]["PublicRoot"] == "/dicom-web/"
    status, body = arc.https(f"/dicom-web/studies/{spec.study_uid}/series/{spec.series_uid}/metadata",
                             auth=arc.admin_credential())
    assert status == 200, body[:500]
    uris = [value["BulkDataURI"] for dataset in json.loads(body) for value in dataset.values()
            if isinstance(value, dict) and "BulkDataURI" in value]
    origin = f"https://{arc.host}:{arc.https_port}/dicom-web/studies/{spec.study_uid}/"
    assert uris and all(uri.startswith(origin) for uri in uris), uris
