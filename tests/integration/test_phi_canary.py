"""No patient data in operational logs: a study with unique canary values goes through every path (C-STORE,
a refused cross-tenant store, C-FIND by name and ID, QIDO-RS, REST and WADO reads, an audit search), then
every log of the archive at its default verbosity is searched for them. They must be in the audit trail
only. The error paths too: a failed STOW-RS, a request nginx refuses and logs as an error, a request that
makes the plugin's filter raise (logged with its traceback)."""

from __future__ import annotations

import json
import secrets
import socket
import ssl
import time
import urllib.parse
from pathlib import Path

import pydicom
import pytest

from securepacs.client import find, store
from securepacs.dicom.identifiers import orthanc_id
from securepacs_tools.synth import StudySpec, write_study

pytestmark = pytest.mark.integration


def canary_spec(kind: str) -> StudySpec:
    token = secrets.token_hex(4).upper()
    return StudySpec(seed=f"canary-{kind}-{token}", patient_id=f"CANARYID{token}",
                     patient_name=f"CANARYSURNAME{token}^CANARYGIVEN{token}", slices=2, rows=16, columns=16)


def write_canary(spec: StudySpec, folder: Path) -> str:
    """The canary study on disk; returns its birth date (synth writes none: the third identifier)."""
    birth_date = f"19{secrets.randbelow(90) + 10}0{secrets.randbelow(9) + 1}1{secrets.randbelow(9) + 1}"
    write_study(spec, folder)
    for path in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        ds.PatientBirthDate = birth_date
        ds.save_as(path, enforce_file_format=True)
    return birth_date


def canaries(spec: StudySpec, birth_date: str) -> dict[str, str]:
    surname, given = spec.patient_name.split("^")
    return {"Patient ID": spec.patient_id, "surname": surname, "given name": given, "birth date": birth_date,
            "birth date (ISO)": f"{birth_date[:4]}-{birth_date[4:6]}-{birth_date[6:]}"}


def operational_logs(archive) -> dict[str, str]:
    """Every operational log at default verbosity: Orthanc's, the plugin's, the gateway's, nginx's."""
    logs = {"service output": archive.log_text()}
    events_file = archive.data_dir / "gateway" / "events.jsonl"
    if events_file.exists():
        logs["gateway events"] = events_file.read_text(errors="replace")
    assert len(logs["service output"]) > 1000  # the logs are really there (banner, Orthanc, nginx lines)
    return logs


def assert_in_no_log(archive, values: dict[str, str]) -> None:
    for log_name, text in operational_logs(archive).items():
        for what, value in values.items():
            assert value not in text, f"the {what} of the canary patient is in the {log_name}"


def add_account(archive, role: str, clinic: str | None) -> tuple[str, str]:
    name = f"canary{role.replace('-', '')[:6]}{secrets.token_hex(3)}"
    password = f"Can4ry-{secrets.token_hex(12)}"
    secret = archive.data_dir / f".{name}.pw"  # inside the data dir: the compose CLI container sees it
    secret.write_text(password + "\n")
    try:
        container_path = secret if archive.kind == "native" else Path("/var/lib/securepacs") / secret.name
        args = ["user", "add", name, "--role", role, "--password-file", str(container_path)]
        archive.cli(*args, *(["--clinic", clinic] if clinic else []))
    finally:
        secret.unlink()
    return name, password


def test_canary_patient_data_reaches_the_audit_trail_and_no_log(archive, clinic_a, tmp_path: Path) -> None:
    spec = canary_spec(archive.kind)
    birth_date = write_canary(spec, tmp_path / "canary")
    assert store(archive.conn(clinic_a), [tmp_path / "canary"]).ok

    # A second clinic adding an instance to the study is refused (and logged as a security event, without
    # identifiers). A new SOP Instance UID: Orthanc >= 1.13 acknowledges a re-sent instance that it already
    # holds without storing it and without asking the plugin (README, platform), so only a new instance
    # reaches tenancy on both platforms.
    other = archive.clinics.get("clinicB") or archive.enrol("clinicB", "CLINICB")
    intruder = tmp_path / "intruder"
    intruder.mkdir()
    ds = pydicom.dcmread(sorted((tmp_path / "canary").glob("*.dcm"))[0])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid(prefix="2.25.")
    ds.save_as(intruder / "one.dcm", enforce_file_format=True)
    assert not store(archive.conn(other), [intruder]).ok

    # Queries carrying the identifiers: C-FIND by ID and by name, QIDO-RS, the study list.
    assert len(list(find(archive.conn(clinic_a), "STUDY", {"PatientID": spec.patient_id}))) == 1
    assert len(list(find(archive.conn(clinic_a), "STUDY", {"PatientName": spec.patient_name}))) == 1
    admin = archive.admin_credential()
    qido = "/dicom-web/studies?" + urllib.parse.urlencode({"PatientID": spec.patient_id})
    status, body = archive.https(qido, auth=admin)
    assert status == 200 and spec.patient_id in body.decode()
    status, _ = archive.https("/securepacs/api/studies?" + urllib.parse.urlencode({"PatientName": "CANARY*"}),
                              auth=admin)
    assert status == 200
    study = orthanc_id(spec.patient_id, spec.study_uid)
    assert archive.https(f"/studies/{study}", auth=admin)[0] == 200
    assert archive.https(f"/dicom-web/studies/{spec.study_uid}/metadata", auth=admin)[0] == 200

    # The canary is in the trail (where it belongs) and an auditor can find it there.
    auditor, password = add_account(archive, "auditor", None)
    status, body = archive.https("/securepacs/api/audit?" + urllib.parse.urlencode({"patient": spec.patient_id}),
                                 auth=(auditor, password))
    assert status == 200
    events = [json.loads(line)["record"]["event"]["code"] for line in body.decode().splitlines()]
    assert events.count("110104") >= 2 and "110112" in events  # the stores and the query by ID
    assert spec.patient_id in (archive.data_dir / "audit" / "trail.jsonl").read_text()
    assert_in_no_log(archive, canaries(spec, birth_date))


# -- error paths -----------------------------------------------------------------------------------------


def multipart(parts: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = f"canary-{secrets.token_hex(8)}"
    body = b"".join(f"--{boundary}\r\nContent-Type: {ctype}\r\n\r\n".encode() + data + b"\r\n"
                    for ctype, data in parts)
    return body + f"--{boundary}--\r\n".encode(), f'multipart/related; type="application/dicom"; boundary={boundary}'


def oversized_post(archive, path_and_query: str) -> bytes:
    """A request announcing a body above nginx's client_max_body_size: nginx answers 413 without reading
    it and logs an error naming the request."""
    ctx = ssl.create_default_context(cafile=str(archive.ca_cert))
    with socket.create_connection((archive.host, archive.https_port), timeout=15) as raw, \
            ctx.wrap_socket(raw, server_hostname=archive.host) as sock:
        sock.sendall(f"POST {path_and_query} HTTP/1.1\r\nHost: {archive.host}\r\n"
                     "Content-Type: application/dicom\r\nContent-Length: 600000000\r\n\r\n".encode())
        return sock.recv(200)


def wait_logged(archive, offset: int, needle: str, timeout: float = 20) -> None:
    """Until ``needle`` appears in the service output after ``offset``: the positive event before a log is
    searched for what must not be there."""
    deadline = time.monotonic() + timeout
    while needle not in archive.log_text()[offset:]:
        assert time.monotonic() < deadline, f"{needle!r} was never logged:\n{archive.log_text()[offset:][-3000:]}"
        time.sleep(0.2)


def test_canary_on_error_paths_reaches_no_log(archive, clinic_a, tmp_path: Path) -> None:
    spec = canary_spec(f"err-{archive.kind}")
    birth_date = write_canary(spec, tmp_path / "canary")
    assert store(archive.conn(clinic_a), [tmp_path / "canary"]).ok
    values = canaries(spec, birth_date)
    text = " ".join(values.values()).encode()
    instance_bytes = sorted((tmp_path / "canary").glob("*.dcm"))[0].read_bytes()
    archive.clinics.get("clinicB") or archive.enrol("clinicB", "CLINICB")
    device_b = add_account(archive, "clinic-device", "clinicB")
    physician_a = add_account(archive, "physician", "clinicA")
    offset = len(archive.log_text())

    # A failed STOW-RS: clinic B uploads the canary instance into clinic A's study (refused), a part that is
    # not DICOM but carries the identifiers, and a truncated copy of the instance. None is stored: 409.
    body, ctype = multipart([("application/dicom", instance_bytes), ("application/dicom", b"NOT DICOM " + text),
                             ("application/dicom", instance_bytes[: len(instance_bytes) // 3])])
    status, answer = archive.https("/dicom-web/studies", auth=device_b, method="POST", data=body,
                                   headers={"Content-Type": ctype})
    assert status == 409, answer[:300]
    # A part of another type, the identifiers in its headers: refused as a whole (415).
    body, ctype = multipart([(f'text/plain; name="{spec.patient_name}"', text)])
    status, _ = archive.https("/dicom-web/studies", auth=device_b, method="POST", data=body,
                              headers={"Content-Type": ctype})
    assert status == 415

    # nginx logs an error for a body above its limit, naming the request: a client put the identifiers in
    # the query string (never our URLs, but nothing stops a client).
    query = urllib.parse.urlencode({"PatientID": spec.patient_id, "PatientName": spec.patient_name,
                                    "PatientBirthDate": birth_date})
    assert oversized_post(archive, f"/dicom-web/studies?{query}").startswith(b"HTTP/1.1 413 ")

    # A request that makes the plugin's HTTP filter raise (a NUL in a WADO-URI objectUID: Orthanc's lookup
    # refuses the string; the filter fails closed and logs the traceback), identifiers in its arguments.
    wado = ("/wado?" + urllib.parse.urlencode({"requestType": "WADO", "contentType": "application/dicom",
                                              "studyUID": spec.study_uid, "patient": spec.patient_name})
            + f"&objectUID={spec.patient_id}%00{birth_date}")
    assert archive.https(wado, auth=physician_a)[0] == 403

    # The positive events first (the requests were logged, nginx's error line arrived), then the search.
    wait_logged(archive, offset, '"POST /dicom-web/studies" 409')
    wait_logged(archive, offset, '"GET /wado" 403')
    wait_logged(archive, offset, "client intended to send too large body")
    assert_in_no_log(archive, values)
