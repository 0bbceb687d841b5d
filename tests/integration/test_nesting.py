"""CVE-2026-10528 (deeply nested sequences crash DCMTK, so Orthanc) against the real archive.

A clinic sends the crafted 200,000-level object (7 MB, written byte by byte) by C-STORE through the
gateway, streamed from the file by pynetdicom without decoding it, and by STOW-RS: both are refused with
0xC000 before Orthanc parses them, and the same Orthanc process keeps serving. Without the guard, this
object kills Orthanc 1.10.1 (native) and 1.13.0 with Debian's DCMTK 3.7.0 (image) with SIGSEGV.
"""

from __future__ import annotations

import json
import secrets
import ssl
from pathlib import Path

import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config
from test_duplicate_elements import is_security_alert, last_seq, wait_for
from test_rejections import find_instance, orthanc_instance
from test_tenancy_matrix import add_user

from securepacs.dataset_limits.nesting import MAX_DEPTH
from securepacs.dicom import status_codes
from securepacs_tools import nested_samples

pytestmark = pytest.mark.integration

ROOT = "1.2.826.0.1.3680043.10.543.20"
STOW_FAILED_SOP_SEQUENCE, STOW_REFERENCED_SOP_SEQUENCE, FAILURE_REASON = "00081198", "00081199", "00081197"


def write(folder: Path, name: str, depth: int, syntax: str = ExplicitVRLittleEndian) -> tuple[Path, str]:
    sop_uid = f"{ROOT}.{secrets.randbelow(10**12)}.1.1"  # fresh each run: the archive outlives a test
    data = nested_samples.nested_file(depth, study_uid=sop_uid + ".0", series_uid=sop_uid + ".0.1", sop_uid=sop_uid,
                               patient_id=f"SYNNEST-{name}", syntax=syntax)
    path = folder / f"{name}.dcm"
    path.write_bytes(data)
    return path, sop_uid


def tls(clinic) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(clinic.ca))
    ctx.load_cert_chain(str(clinic.cert), str(clinic.key))
    return ctx


def send(archive, clinic, path: Path, syntax: str):
    """C-STORE the file's bytes as they are (pynetdicom streams them from disk): (status dataset, released)."""
    ae = AE(ae_title=clinic.aets[0])
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    ae.add_requested_context(nested_samples.SECONDARY_CAPTURE, [syntax])
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        assoc = ae.associate(archive.host, archive.dicom_port, ae_title=archive.aet,
                             tls_args=(tls(clinic), archive.host))
        assert assoc.is_established, "the association was not accepted"
        status = assoc.send_c_store(path)
        assoc.release()
        return status, assoc.is_released
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
        ae.shutdown()


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian],
                         ids=["explicit", "implicit", "deflated"])
def test_a_deeply_nested_c_store_is_refused_and_orthanc_keeps_serving(archive, clinic_a, tmp_path, syntax):
    before, seq = orthanc_instance(archive), last_seq(archive)
    deep, deep_uid = write(tmp_path, "deep", 200_000, syntax)
    assert deep.stat().st_size > (6_000_000 if syntax != DeflatedExplicitVRLittleEndian else 1_000)
    status, released = send(archive, clinic_a, deep, syntax)
    assert status.Status == status_codes.STORE_ERROR_CANNOT_UNDERSTAND, status
    assert f"deeper than {MAX_DEPTH} levels" in str(status.ErrorComment)
    assert released  # the gateway answered the release itself: a clean end for the clinic
    archive.assert_serving()
    assert orthanc_instance(archive) == before, "Orthanc restarted"
    assert find_instance(archive, deep_uid) == []
    alert = wait_for(archive, seq, is_security_alert("cstore-refused"))
    assert alert["details"]["status"] == str(0xC000) and "deeper than" in alert["details"]["reason"]
    # A normally nested object, on a new association, is stored.
    normal, normal_uid = write(tmp_path, "normal", 4, syntax)
    status, released = send(archive, clinic_a, normal, syntax)
    assert status.Status == status_codes.SUCCESS and released
    assert len(find_instance(archive, normal_uid)) == 1
    assert orthanc_instance(archive) == before


def test_the_limit_itself_is_stored(archive, clinic_a, tmp_path):
    path, uid = write(tmp_path, "limit", MAX_DEPTH)
    status, _ = send(archive, clinic_a, path, ExplicitVRLittleEndian)
    assert status.Status == status_codes.SUCCESS
    assert len(find_instance(archive, uid)) == 1


@pytest.fixture(scope="module")
def device(native_archive, tmp_path_factory) -> tuple[str, str]:
    return add_user(native_archive, tmp_path_factory.mktemp("nesting"), "dev-nest", "clinic-device", "clinicA")


def multipart(*parts: bytes, boundary: str = "nest-boundary") -> tuple[str, bytes]:
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n" for p in parts)
    return f'multipart/related; type="application/dicom"; boundary={boundary}', body + f"--{boundary}--\r\n".encode()


def test_stow_rs_refuses_a_deeply_nested_part_and_stores_the_other(native_archive, device, tmp_path):
    archive = native_archive
    before = orthanc_instance(archive)
    deep, deep_uid = write(tmp_path, "stow-deep", 200_000)
    normal, normal_uid = write(tmp_path, "stow-normal", 4)
    content_type, body = multipart(deep.read_bytes(), normal.read_bytes())
    status, answer = archive.https("/dicom-web/studies", auth=device, method="POST", data=body,
                                   headers={"Content-Type": content_type, "Accept": "application/dicom+json"})
    assert status == 202, answer[:300]
    response = json.loads(answer)
    [failed] = response[STOW_FAILED_SOP_SEQUENCE]["Value"]
    assert failed[FAILURE_REASON]["Value"] == [status_codes.STORE_ERROR_CANNOT_UNDERSTAND]
    [stored] = response[STOW_REFERENCED_SOP_SEQUENCE]["Value"]
    assert stored["00081155"]["Value"] == [normal_uid]
    assert find_instance(archive, deep_uid) == []
    archive.assert_serving()
    assert orthanc_instance(archive) == before


@pytest.mark.parametrize("path", ["/instances", "/tools/create-dicom", "/dicom-web/studies/1.2.826.0.1.3680043.10.1"])
def test_admins_cannot_upload_around_the_check(native_archive, tmp_path, path):
    """Orthanc's own upload routes would parse the body unchecked: refused (403) even for an admin, and the
    same Orthanc keeps serving. Admins upload with STOW-RS, which checks each part."""
    archive = native_archive
    before = orthanc_instance(archive)
    deep, deep_uid = write(tmp_path, "admin-deep", 200_000)
    content_type = "application/dicom" if path == "/instances" else 'multipart/related; type="application/dicom"'
    status, _ = archive.https(path, auth=archive.admin_credential(), method="POST", data=deep.read_bytes(),
                              headers={"Content-Type": content_type})
    assert status == 403
    assert find_instance(archive, deep_uid) == []
    archive.assert_serving()
    assert orthanc_instance(archive) == before
