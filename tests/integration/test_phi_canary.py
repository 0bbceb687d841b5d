"""No patient data in operational logs: a study with unique canary values goes through every path (C-STORE,
a refused cross-tenant store, C-FIND by name and ID, QIDO-RS, REST and WADO reads, an audit search), then
every log of the archive at its default verbosity is searched for them. They must be in the audit trail
only."""

from __future__ import annotations

import json
import secrets
import urllib.parse
from pathlib import Path

import pydicom
import pytest

from securepacs.client import find, store
from securepacs.synth import StudySpec, write_study
from securepacs.tenancy import orthanc_id

pytestmark = pytest.mark.integration


def canary_spec(kind: str) -> StudySpec:
    token = secrets.token_hex(4).upper()
    return StudySpec(seed=f"canary-{kind}-{token}", patient_id=f"CANARYID{token}",
                     patient_name=f"CANARYSURNAME{token}^CANARYGIVEN{token}", slices=2, rows=16, columns=16)


def test_canary_patient_data_reaches_the_audit_trail_and_no_log(archive, clinic_a, tmp_path: Path) -> None:
    spec = canary_spec(archive.kind)
    birth_date = f"19{secrets.randbelow(90) + 10}0{secrets.randbelow(9) + 1}1{secrets.randbelow(9) + 1}"
    write_study(spec, tmp_path / "canary")
    # synth writes no birth date: add one, the third identifier the logs must never show.
    for path in sorted((tmp_path / "canary").glob("*.dcm")):
        ds = pydicom.dcmread(path)
        ds.PatientBirthDate = birth_date
        ds.save_as(path, enforce_file_format=True)
    assert store(archive.conn(clinic_a), [tmp_path / "canary"]).ok

    # A second clinic reusing the study is refused (and logged as a security event, without identifiers).
    other = archive.clinics.get("clinicB") or archive.enrol("clinicB", "CLINICB")
    assert not store(archive.conn(other), [tmp_path / "canary"]).ok

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
    auditor = f"canaryaud{secrets.token_hex(3)}"
    password = f"Aud1t-{secrets.token_hex(12)}"
    secret = archive.data_dir / f".{auditor}.pw"  # inside the data dir: the compose CLI container sees it
    secret.write_text(password + "\n")
    try:
        container_path = secret if archive.kind == "native" else Path("/var/lib/securepacs") / secret.name
        archive.cli("user", "add", auditor, "--role", "auditor", "--password-file", str(container_path))
    finally:
        secret.unlink()
    status, body = archive.https("/securepacs/api/audit?" + urllib.parse.urlencode({"patient": spec.patient_id}),
                                 auth=(auditor, password))
    assert status == 200
    events = [json.loads(line)["record"]["event"]["code"] for line in body.decode().splitlines()]
    assert events.count("110104") >= 2 and "110112" in events  # the stores and the query by ID
    assert spec.patient_id in (archive.data_dir / "audit" / "trail.jsonl").read_text()

    # Every operational log at default verbosity: Orthanc's, the plugin's, the gateway's, nginx's.
    logs = {"service output": archive.log_text()}
    events_file = archive.data_dir / "gateway" / "events.jsonl"
    if events_file.exists():
        logs["gateway events"] = events_file.read_text(errors="replace")
    assert len(logs["service output"]) > 1000  # the logs are really there (banner, Orthanc, nginx lines)
    surname, given = spec.patient_name.split("^")
    canaries = {"Patient ID": spec.patient_id, "surname": surname, "given name": given, "birth date": birth_date,
                "birth date (ISO)": f"{birth_date[:4]}-{birth_date[4:6]}-{birth_date[6:]}"}
    for log_name, text in logs.items():
        for what, value in canaries.items():
            assert value not in text, f"the {what} of the canary patient is in the {log_name}"
