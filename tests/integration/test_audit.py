"""The audit trail end to end, on its own archive: a scripted session yields exactly the expected events,
verify finds tampering, and a kill -9 of Orthanc during ingest loses no acknowledged instance's record."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Archive, Clinic, MoveScp, _start, free_port, make_archive, scp_credentials, stop_archive
from lxml import etree
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, StoragePresentationContexts, evt
from test_rejections import client_context, dicom_attempt

from securepacs.audit import iter_entries
from securepacs.client import echo, find, get, move, store
from securepacs.dicom.identifiers import orthanc_id
from securepacs.pki import certificates, pem_files
from securepacs_tools.synth import CT_IMAGE_STORAGE, StudySpec, instance, write_study

pytestmark = pytest.mark.integration

SCHEMA = Path(__file__).resolve().parents[1] / "data" / "audit" / "audit-message.rng"
DOC_PW = "radiology-Passw0rd-2026-north"
AUDITOR_PW = "compliance-Passw0rd-2026-trail"
NORTH = StudySpec(seed="audit-north", patient_id="AUDIT-P1", patient_name="AUDIT^NORTH", slices=2, rows=16,
                  columns=16)
SOUTH = StudySpec(seed="audit-south", patient_id="AUDIT-P2", patient_name="AUDIT^SOUTH", slices=1, rows=16,
                  columns=16)


@pytest.fixture(scope="module")
def audited(tmp_path_factory) -> Iterator[Archive]:
    archive = make_archive("securepacs-audit-")
    _start(archive)
    try:
        scp_port = free_port()
        archive.env["AUDIT_SCP_PORT"] = str(scp_port)
        archive.enrol("auditA", "AUDITA", host="127.0.0.1", port=scp_port)  # C-MOVE destination: audit_scp
        archive.enrol("auditB", "AUDITB")
        secrets = tmp_path_factory.mktemp("audit-secrets")
        for name, role, clinic, password in (("doc", "physician", "auditA", DOC_PW),
                                             ("aud", "auditor", None, AUDITOR_PW)):
            (secrets / name).write_text(password + "\n")
            archive.cli("user", "add", name, "--role", role, *(["--clinic", clinic] if clinic else []),
                        "--password-file", str(secrets / name))
        data = tmp_path_factory.mktemp("audit-data")
        write_study(SOUTH, data / "south")
        assert store(archive.conn(archive.clinics["auditB"]), [data / "south"]).ok
        write_study(NORTH, data / "north")
        archive.env["AUDIT_TEST_DATA"] = str(data)
        yield archive
    finally:
        if archive.running():
            stop_archive(archive)
        shutil.rmtree(archive.root, ignore_errors=True)


@pytest.fixture(scope="module")
def audit_scp(audited: Archive, tmp_path_factory) -> Iterator[MoveScp]:
    """auditA's retrieve SCP (AE AUDITA), mutual TLS with the archive's CA, for the C-MOVE steps."""
    key, cert = scp_credentials(audited, tmp_path_factory.mktemp("audit-scp"))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(audited.ca_cert))
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_cert_chain(str(cert), str(key))
    scp = MoveScp()
    ae = AE(ae_title="AUDITA")
    for cx in StoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    server = ae.start_server(("127.0.0.1", int(audited.env["AUDIT_SCP_PORT"])), block=False, ssl_context=ctx,
                             evt_handlers=[(evt.EVT_C_STORE, scp.on_store)])
    try:
        yield scp
    finally:
        server.shutdown()


def trail_path(archive: Archive) -> Path:
    return archive.data_dir / "audit" / "trail.jsonl"


def records(archive: Archive, after: int = 0) -> list[dict]:
    return [{"seq": e.seq, **e.body} for e in iter_entries(trail_path(archive))
            if e.seq > after and not e.is_checkpoint]


def last_seq(archive: Archive) -> int:
    return max((e.seq for e in iter_entries(trail_path(archive))), default=0)


def summary(record: dict) -> tuple[str, str, int, str]:
    """(event code, action, outcome, reporter): what the session test compares."""
    reporter = "gateway" if record["source"]["source_id"].startswith("securepacs-gateway@") else "plugin"
    return record["event"]["code"], record["action"], record["outcome"], reporter


def wait_records(archive: Archive, after: int, count: int, timeout: float = 15) -> list[dict]:
    """The ``count`` records written after seq ``after`` (the gateway writes its record when the association
    has ended, a moment after the client returns)."""
    deadline = time.monotonic() + timeout
    while True:
        found = records(archive, after)
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def login(archive: Archive, username: str, password: str) -> int:
    status, _ = archive.https("/securepacs/login", method="POST",
                              data=json.dumps({"username": username, "password": password}).encode(),
                              headers={"Content-Type": "application/json"})
    return status


def test_a_scripted_session_yields_exactly_the_expected_events(audited: Archive, audit_scp: MoveScp,
                                                               tmp_path: Path) -> None:
    archive = audited
    clinic_a = archive.clinics["auditA"]
    north_study = orthanc_id(NORTH.patient_id, NORTH.study_uid)
    north_series = orthanc_id(NORTH.patient_id, NORTH.study_uid, NORTH.series_uid)
    first, second = (str(instance(NORTH, i).SOPInstanceUID) for i in range(2))
    south_study = orthanc_id(SOUTH.patient_id, SOUTH.study_uid)
    data = Path(archive.env["AUDIT_TEST_DATA"])

    def other_ca_credentials() -> tuple[Path, Path]:
        other_key = certificates.generate_key("rsa3072")
        ca_key, ca_cert = certificates.make_ca("Not The Archive's CA", days=30, key=other_key)
        # A day inside the CA's lifetime: equal lifetimes end after the CA when a second ticks in between.
        key, cert = certificates.make_cert(ca_key, ca_cert, "auditA", usage="client", days=29,
                                        uris=certificates.clinic_uris("auditA", ["AUDITA"]),
                                        organization=certificates.CLINIC_ORGANIZATION,
                                        key=certificates.generate_key("rsa3072"))
        pem_files.write_key(tmp_path / "rogue.key", key)
        pem_files.write_cert(tmp_path / "rogue.crt", cert)
        return tmp_path / "rogue.crt", tmp_path / "rogue.key"

    def admin_post(uri: str, body: object) -> int:
        return archive.https(uri, auth=archive.admin_credential(), method="POST", data=json.dumps(body).encode(),
                             headers={"Content-Type": "application/json"})[0]

    def moved(level: str, keys: dict[str, str]) -> bool:
        result = move(archive.conn(clinic_a), "AUDITA", level, keys)
        return result.ok and result.completed >= 1

    def refused_certificate() -> None:
        cert, key = other_ca_credentials()
        outcome = dicom_attempt(archive, client_context(archive, cert, key), calling="AUDITA")
        assert outcome.kind != "accepted", outcome

    steps: list[tuple[str, object, list[tuple[str, str, int, str]]]] = [
        ("failed login", lambda: login(archive, "doc", "not-the-password") == 403,
         [("110114", "E", 4, "plugin")]),
        ("login", lambda: login(archive, "doc", DOC_PW) == 200, [("110114", "E", 0, "plugin")]),
        ("store", lambda: store(archive.conn(clinic_a), [data / "north"]).ok,
         [("110104", "C", 0, "plugin")] * 2 + [("110114", "E", 0, "gateway")]),
        ("query", lambda: len(list(find(archive.conn(clinic_a), "STUDY", {"PatientID": NORTH.patient_id}))) == 1,
         [("110112", "E", 0, "plugin"), ("110114", "E", 0, "gateway")]),
        ("view", lambda: archive.https(f"/studies/{north_study}", auth=("doc", DOC_PW))[0] == 200,
         [("110103", "R", 0, "plugin")]),
        ("export", lambda: archive.https(f"/studies/{north_study}/archive", auth=("doc", DOC_PW))[0] == 200,
         [("110106", "R", 0, "plugin")]),
        # Issue 12, finding 5: each of these used to yield no record or one that named no study.
        ("WADO-URI by objectUID", lambda: archive.https(
            f"/wado?requestType=WADO&objectUID={first}&contentType=application/dicom", auth=("doc", DOC_PW))[0] == 200,
         [("110103", "R", 0, "plugin")]),
        ("tools/find", lambda: admin_post("/tools/find", {"Level": "Study", "Query": {"PatientID": NORTH.patient_id}})
         == 200, [("110112", "E", 0, "plugin")]),
        ("tools/create-archive", lambda: admin_post("/tools/create-archive", {"Resources": [north_study]}) == 200,
         [("110106", "R", 0, "plugin")]),
        ("tools/create-media", lambda: admin_post("/tools/create-media", {"Resources": [north_series]}) == 200,
         [("110106", "R", 0, "plugin")]),
        ("C-MOVE at SERIES level", lambda: moved("SERIES", {"SeriesInstanceUID": NORTH.series_uid}),
         [("110104", "R", 0, "plugin"), ("110114", "E", 0, "gateway")]),
        ("C-MOVE at IMAGE level", lambda: moved("IMAGE", {"SOPInstanceUID": second}),
         [("110104", "R", 0, "plugin"), ("110114", "E", 0, "gateway")]),
        ("C-GET at SERIES level", lambda: get(archive.conn(clinic_a), "SERIES", {"SeriesInstanceUID": NORTH.series_uid},
                                              out_dir=tmp_path / "got").ok,
         [("110104", "R", 0, "plugin"), ("110114", "E", 0, "gateway")]),
        ("refused certificate", lambda: refused_certificate() is None, [("110113", "E", 8, "gateway")]),
        ("cross-tenant read", lambda: archive.https(f"/studies/{south_study}", auth=("doc", DOC_PW))[0] == 403,
         [("110113", "E", 4, "plugin")]),
        ("delete", lambda: archive.https(f"/studies/{north_study}", auth=archive.admin_credential(),
                                         method="DELETE")[0] == 200,
         [("110105", "D", 0, "plugin")]),
    ]
    start = last_seq(archive)
    mark = start
    for name, action, expected in steps:
        assert action(), f"step {name!r} did not do what it should"
        got = wait_records(archive, mark, len(expected))
        assert sorted(summary(r) for r in got) == sorted(expected), f"step {name!r}: {[summary(r) for r in got]}"
        mark = got[-1]["seq"]
    # Nothing arrives late. Instead of a pause: one marker through each writer (an echo through the gateway,
    # a failed login at the plugin), recorded after everything above; once both are in, with nothing
    # before them, the session's records are final.
    assert echo(archive.conn(clinic_a)) == 0 and login(archive, "doc", "not-the-password") == 403
    markers = wait_records(archive, mark, 2)
    assert sorted(summary(r) for r in markers) == [("110114", "E", 0, "gateway"), ("110114", "E", 4, "plugin")], (
        f"records arrived late: {[summary(r) for r in markers]}")
    assert len(records(archive, start)) == sum(len(e) for _, _, e in steps) + len(markers)

    session = records(archive, start)
    stored = [r for r in session if r["event"]["code"] == "110104"]
    assert {o["object_id"] for r in stored for o in r["objects"]} == {NORTH.study_uid, NORTH.patient_id}
    gateway_login = next(r for r in session if summary(r)[3] == "gateway")
    peer = gateway_login["participants"][0]
    assert peer["ae_title"] == "AUDITA" and peer["clinic"] == "auditA" and len(peer["cert_sha256"]) == 64
    assert peer["network_access_point"] == "127.0.0.1"
    alert = next(r for r in session if summary(r) == ("110113", "E", 8, "gateway"))
    assert alert["event_types"][0]["code"] == "110126"  # Node Authentication
    view = next(r for r in session if r["event"]["code"] == "110103")
    assert view["participants"][0]["user_id"] == "doc"
    assert view["objects"][0]["object_id"] == NORTH.study_uid
    assert_complete_records_for_finding_5(session, archive.admin_credential()[0], first)

    # The auditor finds the patient's events over HTTPS; that search is itself the next record.
    before = last_seq(archive)
    status, body = archive.https(f"/securepacs/api/audit?patient={NORTH.patient_id}", auth=("aud", AUDITOR_PW))
    assert status == 200
    found = [json.loads(line)["record"] for line in body.decode().splitlines()]
    # The stores, the C-FIND, then what names the patient too: the admin's /tools/find, the two exports,
    # the C-MOVEs at SERIES and IMAGE level and the C-GET.
    assert [r["event"]["code"] for r in found] == ["110104", "110104", "110112", "110112", "110106", "110106",
                                                   "110104", "110104", "110104"]
    [used] = records(archive, before)
    assert summary(used) == ("110101", "R", 0, "plugin") and used["participants"][0]["user_id"] == "aud"
    assert archive.https("/securepacs/api/audit", auth=archive.admin_credential())[0] == 403

    # The command line: export validates against the PS3.15 schema; verify passes.
    export = archive.cli("audit", "export", "--study", NORTH.study_uid, "--format", "dicom-xml")
    schema = etree.RelaxNG(etree.parse(str(SCHEMA)))
    messages = export.stdout.strip().splitlines()
    assert len(messages) == 11  # 2 stores, view, export, WADO-URI, 2 tool exports, 2 C-MOVEs, C-GET, delete
    for message in messages:
        assert schema.validate(etree.fromstring(message.encode())), schema.error_log.last_error
    verified = archive.cli("audit", "verify")
    assert "OK" in verified.stdout or "ok" in verified.stdout.lower(), verified.stdout


def assert_complete_records_for_finding_5(session: list[dict], admin: str, wado_object: str) -> None:
    """Issue 12, finding 5: each of these records names who (user, address) and what (studies, patient)."""
    def objects(record: dict) -> set[str]:
        return {o["object_id"] for o in record["objects"]}

    north = {NORTH.study_uid, NORTH.patient_id}
    [wado] = [r for r in session if r["event"]["code"] == "110103" and r["details"]["uri"] == "/wado"]
    assert objects(wado) == {NORTH.study_uid} and wado["details"]["sop_instance_uid"] == wado_object
    assert wado["participants"][0]["user_id"] == "doc" and wado["participants"][0]["network_access_point"]

    [tool_find] = [r for r in session if r["event"]["code"] == "110112" and r["details"].get("uri") == "/tools/find"]
    assert tool_find["participants"][0]["user_id"] == admin and tool_find["participants"][0]["network_access_point"]
    assert json.loads(base64.b64decode(tool_find["objects"][0]["query"])) == {
        "Level": "Study", "Query": {"PatientID": NORTH.patient_id}}
    assert tool_find["details"]["patient_id"] == NORTH.patient_id and tool_find["details"]["answers"] == "1"

    exports = [r for r in session if r["event"]["code"] == "110106" and r["details"]["uri"].startswith("/tools/")]
    assert [r["details"]["uri"] for r in exports] == ["/tools/create-archive", "/tools/create-media"]
    for record in exports:
        assert objects(record) == north, record
        assert record["participants"][0]["user_id"] == admin and record["participants"][0]["network_access_point"]

    retrieves = [r for r in session if r["event"]["code"] == "110104" and r["action"] == "R"]
    assert [r["details"]["via"] for r in retrieves] == [
        "C-MOVE by AUDITA at SERIES level", "C-MOVE by AUDITA at IMAGE level", "C-GET at SERIES level"]
    for record in retrieves:
        assert objects(record) == north, record
        destination = record["participants"][1]
        assert (destination["ae_title"], destination["clinic"]) == ("AUDITA", "auditA"), record
    for move_record in retrieves[:2]:
        assert move_record["participants"][1]["network_access_point"] == "127.0.0.1"  # the clinic's SCP
        requestor = move_record["participants"][2]
        assert requestor["is_requestor"] and (requestor["ae_title"], requestor["clinic"]) == ("AUDITA", "auditA")
    # The C-GET record names the calling AE title the gateway saw, not just the clinic.
    assert retrieves[2]["participants"][1]["user_id"] == "AUDITA"


def copy_of_trail(archive: Archive, tmp_path: Path) -> list[bytes]:
    return trail_path(archive).read_bytes().splitlines(keepends=True)


@pytest.mark.parametrize("tamper", ["edit", "delete", "insert", "swap"])
def test_verify_reports_the_first_tampered_line(audited: Archive, tmp_path: Path, tamper: str) -> None:
    archive = audited
    lines = copy_of_trail(archive, tmp_path)
    assert len(lines) >= 6
    at = 3  # 0-based: the fourth line
    if tamper == "edit":
        record = json.loads(lines[at])
        record["body"]["outcome"] = 12 if record["body"].get("outcome") != 12 else 0
        lines[at] = (json.dumps(record, separators=(",", ":"), sort_keys=True) + "\n").encode()
    elif tamper == "delete":
        del lines[at]
    elif tamper == "insert":
        lines.insert(at, lines[at + 1])
    else:
        lines[at], lines[at + 1] = lines[at + 1], lines[at]
    copy = tmp_path / "trail.jsonl"
    copy.write_bytes(b"".join(lines))
    public = archive.certs_dir / "audit" / "checkpoint.pub"
    result = archive.cli("audit", "verify", "--trail", str(copy), "--public-key", str(public), check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"first bad line {at + 1} (seq" in result.stdout.lower(), result.stdout
    untouched = archive.cli("audit", "verify", "--public-key", str(public))
    assert untouched.returncode == 0


def orthanc_pid(archive: Archive) -> int:
    out = subprocess.run(["pgrep", "-f", f"^Orthanc {archive.data_dir / 'config'}"], capture_output=True, text=True)
    pids = [int(p) for p in out.stdout.split()]
    assert len(pids) == 1, f"expected one Orthanc of this archive, found {pids}"
    return pids[0]


def test_kill_9_during_ingest_keeps_a_record_of_every_acknowledged_instance(audited: Archive) -> None:
    archive = audited
    spec = StudySpec(seed="audit-crash", patient_id="AUDIT-CRASH", slices=400, rows=64, columns=64)
    clinic: Clinic = archive.clinics["auditA"]
    conn = archive.conn(clinic)
    acknowledged: list[str] = []
    killed = threading.Event()

    ae = AE(ae_title=clinic.aets[0])
    ae.add_requested_context(CT_IMAGE_STORAGE)
    assoc = ae.associate(archive.host, archive.dicom_port, ae_title=archive.aet,
                         tls_args=(conn.ssl_context(), archive.host))
    assert assoc.is_established
    pid = orthanc_pid(archive)
    try:
        for index in range(spec.slices):
            if len(acknowledged) == 40 and not killed.is_set():
                os.kill(pid, signal.SIGKILL)  # Orthanc dies with instances in flight
                killed.set()
            try:
                status = assoc.send_c_store(instance(spec, index))
            except RuntimeError:  # pynetdicom: the association already ended (the gateway saw Orthanc die)
                break
            if not status or status.Status != 0x0000:
                break
            acknowledged.append(str(instance(spec, index).SOPInstanceUID))
    finally:
        if assoc.is_established:
            assoc.abort()
    assert killed.is_set() and 40 <= len(acknowledged) < spec.slices
    # The launcher notices Orthanc died and stops the rest; start again, on the same data.
    archive.proc.wait(60)
    _start(archive)
    public = archive.certs_dir / "audit" / "checkpoint.pub"
    verified = archive.cli("audit", "verify", "--public-key", str(public), check=False)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    recorded = {dict(r.get("details", {})).get("sop_instance_uid") for r in records(archive)
                if r["event"]["code"] == "110104" and r["outcome"] == 0}
    missing = [uid for uid in acknowledged if uid not in recorded]
    assert not missing, f"{len(missing)} acknowledged instance(s) without a transfer record"
    archive.assert_serving()


def test_the_trail_files_are_the_service_users_alone(audited: Archive) -> None:
    audit_dir = audited.data_dir / "audit"
    # The trail group alone (the plugin and the gateway append, the audit signer reads); nothing for others.
    assert oct(audit_dir.stat().st_mode & 0o7777) == "0o2770"
    assert trail_path(audited).stat().st_mode & 0o007 == 0
    key = audited.certs_dir / "audit" / "checkpoint.key"
    assert key.stat().st_mode & 0o077 == 0  # the signing key: not next to the trail, owner only
    assert not key.is_relative_to(audited.data_dir)
    assert (audited.certs_dir / "audit" / "checkpoint.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")
