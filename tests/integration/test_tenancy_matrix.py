"""Clinics are tenants: the adversarial matrix against the real archive over mutual TLS.

Two clinics use the same Patient ID "12345" for different people (Orthanc itself merges them into one
patient). Every route we expose — C-FIND at every level and root, C-MOVE, C-GET, C-STORE, Orthanc REST,
the plugin's study list, DICOMweb (QIDO/WADO/STOW) with ``dicomweb-client``, DCMTK ``findscu``/``movescu``
— is driven as clinic A; no answer may contain any identifier of clinic B's data ("leak tokens"), and no
write by B may land in A's study.
"""

from __future__ import annotations

import io
import json
import re
import secrets
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset
from test_dimse import TlsTunnel, dcmtk_tls

from securepacs.client import find, get, move, store
from securepacs.dicom import status_codes
from securepacs.dicom.identifiers import orthanc_id
from securepacs_tools.synth import StudySpec, instance, write_study

pytestmark = pytest.mark.integration

SHARED_PID = "12345"

# Orthanc 1.10.1's request filter can only refuse with 403, also when no or wrong credentials were sent.
DENIED = 403
UNAUTHENTICATED = 403
ROLES = ("admin", "physician", "clinic-device", "auditor")


@dataclass
class Tenant:
    clinic: str
    studies: list[StudySpec]
    users: dict[str, tuple[str, str]] = field(default_factory=dict)  # role -> (username, password)
    sop_uids: set[str] = field(default_factory=set)

    @property
    def study_uids(self) -> set[str]:
        return {s.study_uid for s in self.studies}

    def tokens(self) -> set[str]:
        """Strings that identify this tenant's data: none may appear in another tenant's answers."""
        found = set(self.study_uids) | {s.series_uid for s in self.studies} | self.sop_uids
        found |= {s.patient_name for s in self.studies}
        found |= {s.patient_id for s in self.studies if s.patient_id != SHARED_PID}
        found |= {orthanc_id(s.patient_id, s.study_uid) for s in self.studies}
        return found


@dataclass
class World:
    archive: object
    a: Tenant
    b: Tenant

    def assert_no_leak(self, payload: bytes | str, context: str) -> None:
        text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else payload
        leaked = sorted(t for t in self.b.tokens() if t in text)
        assert not leaked, f"{context}: clinic B data leaked to clinic A: {leaked}"


def add_user(archive, tmp_path: Path, name: str, role: str, clinic: str | None) -> tuple[str, str]:
    password = "Tn-" + secrets.token_urlsafe(18)
    pw_file = tmp_path / f"{name}.pw"
    pw_file.write_text(password + "\n")
    args = ["user", "add", name, "--role", role, "--password-file", str(pw_file)]
    if clinic:
        args += ["--clinic", clinic]
    archive.cli(*args)
    return name, password


def spec(seed: str, pid: str, name: str, slices: int = 2) -> StudySpec:
    return StudySpec(seed=f"tenancy-{seed}", patient_id=pid, patient_name=name, slices=slices, rows=16, columns=16)


@pytest.fixture(scope="module")
def world(native_archive, tmp_path_factory) -> World:
    archive = native_archive
    root = tmp_path_factory.mktemp("tenancy")
    if "clinicB" not in archive.clinics:
        archive.enrol("clinicB", "CLINICB")
    a = Tenant("clinicA", [spec("a1", SHARED_PID, "TENANT^ALICE", 3), spec("a2", "TEN-A-777", "TENANT^ANNA")])
    b = Tenant("clinicB", [spec("b1", SHARED_PID, "TENANT^BOB", 3), spec("b2", "TEN-B-888", "TENANT^BERT")])
    for tenant in (a, b):
        clinic = archive.clinics[tenant.clinic]
        for study in tenant.studies:
            folder = root / study.seed
            paths = write_study(study, folder)
            tenant.sop_uids |= {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths}
            summary = store(archive.conn(clinic), [folder])
            assert summary.ok and summary.success == study.slices, summary.report()
        tenant.users["physician"] = add_user(archive, root, f"dr-{tenant.clinic}", "physician", tenant.clinic)
        tenant.users["clinic-device"] = add_user(archive, root, f"dev-{tenant.clinic}", "clinic-device",
                                                 tenant.clinic)
    return World(archive, a, b)


# -- ownership ----------------------------------------------------------------------------------------


def test_studies_are_attributed_to_the_sending_clinic(world):
    for tenant in (world.a, world.b):
        for study in tenant.studies:
            orthanc = world.archive.admin_json(f"/studies/{orthanc_id(study.patient_id, study.study_uid)}")
            assert orthanc["MainDicomTags"]["StudyInstanceUID"] == study.study_uid  # our ID is Orthanc's ID


def study_instance_count(world, study: StudySpec) -> int:
    return len(world.archive.admin_json(f"/studies/{orthanc_id(study.patient_id, study.study_uid)}/instances"))


def test_cstore_into_another_clinics_study_is_refused(world, tmp_path):
    target = world.a.studies[0]
    before = study_instance_count(world, target)
    spoof = instance(world.b.studies[0], 7)
    spoof.StudyInstanceUID = target.study_uid  # B's device claims A's study (same shared Patient ID)
    spoof.ensure_file_meta()
    path = tmp_path / "spoof.dcm"
    spoof.save_as(path, enforce_file_format=True)
    summary = store(world.archive.conn(world.archive.clinics["clinicB"]), [path])
    assert summary.success == 0 and summary.failure == 1, summary.report()
    assert "0x0124" in summary.report()
    assert study_instance_count(world, target) == before
    assert "cross-tenant" in world.archive.log_text()


# -- C-FIND ---------------------------------------------------------------------------------------------

LEVEL_KEYS = {
    "PATIENT": {"PatientName": "", "PatientID": "", "PatientBirthDate": "", "PatientSex": "",
                "NumberOfPatientRelatedStudies": "", "NumberOfPatientRelatedSeries": "",
                "NumberOfPatientRelatedInstances": ""},
    "STUDY": {"PatientName": "", "PatientID": "", "StudyInstanceUID": "", "StudyDate": "", "AccessionNumber": "",
              "ModalitiesInStudy": "", "NumberOfStudyRelatedSeries": "", "NumberOfStudyRelatedInstances": ""},
    "SERIES": {"StudyInstanceUID": "", "SeriesInstanceUID": "", "Modality": "", "SeriesNumber": "",
               "NumberOfSeriesRelatedInstances": ""},
    "IMAGE": {"StudyInstanceUID": "", "SeriesInstanceUID": "", "SOPInstanceUID": "", "InstanceNumber": ""},
}


def find_variants(world) -> list[tuple[str, dict[str, str]]]:
    a1, b1 = world.a.studies[0], world.b.studies[0]
    return [
        ("universal", {}),
        ("shared patient id", {"PatientID": SHARED_PID}),
        ("name wildcard", {"PatientName": "TENANT*"}),
        ("name ? wildcard", {"PatientName": "TENANT^B?B"}),
        ("foreign study uid", {"StudyInstanceUID": b1.study_uid}),
        ("uid list own+foreign", {"StudyInstanceUID": f"{a1.study_uid}\\{b1.study_uid}"}),
        ("foreign series uid", {"StudyInstanceUID": b1.study_uid, "SeriesInstanceUID": b1.series_uid}),
        ("foreign patient id", {"PatientID": "TEN-B-888"}),
    ]


@pytest.mark.parametrize("root", ["patient", "study"])
@pytest.mark.parametrize("level", ["PATIENT", "STUDY", "SERIES", "IMAGE"])
def test_cfind_never_answers_from_another_clinic(world, level, root):
    if root == "study" and level == "PATIENT":
        pytest.skip("the Study Root model has no PATIENT level")
    archive, clinic = world.archive, world.archive.clinics["clinicA"]
    for name, constraints in find_variants(world):
        if level == "PATIENT":  # only patient attributes are keys at the patient level
            constraints = {k: v for k, v in constraints.items() if k.startswith("Patient")}
        keys = {**LEVEL_KEYS[level], **constraints}
        answers = list(find(archive.conn(clinic), level, keys, root=root))
        for ds in answers:
            world.assert_no_leak(str(ds), f"C-FIND {root} root {level} {name}")
            if "StudyInstanceUID" in ds and ds.StudyInstanceUID:
                assert ds.StudyInstanceUID not in world.b.study_uids


def test_cfind_patient_level_is_per_clinic_despite_the_shared_patient_id(world):
    for tenant, other in ((world.a, world.b), (world.b, world.a)):
        clinic = world.archive.clinics[tenant.clinic]
        answers = list(find(world.archive.conn(clinic), "PATIENT",
                            {**LEVEL_KEYS["PATIENT"], "PatientID": SHARED_PID}, root="patient"))
        assert len(answers) == 1, answers
        own = tenant.studies[0]
        assert str(answers[0].PatientName) == own.patient_name
        assert int(answers[0].NumberOfPatientRelatedStudies) == 1
        assert int(answers[0].NumberOfPatientRelatedInstances) == own.slices
        assert other.studies[0].patient_name not in str(answers[0])


def test_cfind_study_level_finds_own_studies(world):
    clinic = world.archive.clinics["clinicA"]
    answers = list(find(world.archive.conn(clinic), "STUDY",
                        {**LEVEL_KEYS["STUDY"], "PatientName": "TENANT*"}))
    assert {str(ds.StudyInstanceUID) for ds in answers} == world.a.study_uids


def test_dcmtk_findscu_sees_only_its_clinic(world):
    archive = world.archive
    for tenant in (world.a, world.b):
        clinic = archive.clinics[tenant.clinic]
        res = subprocess.run(
            ["findscu", *dcmtk_tls(archive, clinic), "-S", "-k", "QueryRetrieveLevel=STUDY",
             "-k", f"PatientID={SHARED_PID}", "-k", "PatientName", "-k", "StudyInstanceUID",
             archive.host, str(archive.dicom_port)],
            capture_output=True, text=True, timeout=60, check=False)
        assert res.returncode == 0, res.stderr
        output = res.stdout + res.stderr
        # A UID of odd length is padded with NUL (DCMTK prints "^@"), never with a space.
        assert re.findall(r"\(0020,000d\) UI \[([0-9.]+)\x00?\]", output) == [tenant.studies[0].study_uid], output
        other = world.b if tenant is world.a else world.a
        assert other.studies[0].patient_name not in output


# -- C-MOVE / C-GET ----------------------------------------------------------------------------------------


def assert_move_refused(result) -> None:
    # Plugin 4.0's move callback cannot choose the status: Orthanc 1.10.1 reports a refusal raised there as
    # a failed sub-operation under 0xB000 (Sub-operations Complete - One or more Failures), never success.
    assert result.status == status_codes.SUBOPS_COMPLETE_WITH_FAILURES and result.failed >= 1, result.report("C-MOVE")


def test_cmove_own_study_reaches_own_destination_only(world, move_scp):
    conn = world.archive.conn(world.archive.clinics["clinicA"])
    a1 = world.a.studies[0]
    result = move(conn, "CLINICA", "STUDY", {"StudyInstanceUID": a1.study_uid})
    # The plugin's move is one sub-operation for Orthanc (it sends the whole study in one go).
    assert result.ok and result.completed >= 1, result.report("C-MOVE")
    assert set(move_scp.received) == {str(instance(a1, i).SOPInstanceUID) for i in range(a1.slices)}


def test_cmove_of_another_clinics_study_is_refused(world, move_scp):
    conn = world.archive.conn(world.archive.clinics["clinicA"])
    b1 = world.b.studies[0]
    for level, keys in (("STUDY", {"StudyInstanceUID": b1.study_uid}),
                        ("SERIES", {"StudyInstanceUID": b1.study_uid, "SeriesInstanceUID": b1.series_uid}),
                        ("IMAGE", {"StudyInstanceUID": b1.study_uid, "SeriesInstanceUID": b1.series_uid,
                                   "SOPInstanceUID": sorted(world.b.sop_uids)[0]}),
                        ("STUDY", {"StudyInstanceUID": f"{world.a.studies[0].study_uid}\\{b1.study_uid}"})):
        assert_move_refused(move(conn, "CLINICA", level, keys))
    # PATIENT level with the shared Patient ID moves only A's own study of that patient.
    result = move(conn, "CLINICA", "PATIENT", {"PatientID": SHARED_PID}, root="patient")
    assert result.ok, result.report("C-MOVE")
    assert not set(move_scp.received) & world.b.sop_uids
    assert set(move_scp.received) == {u for u in world.a.sop_uids if u in move_scp.received}


def test_cmove_to_another_clinics_destination_is_refused(world, move_scp):
    conn = world.archive.conn(world.archive.clinics["clinicA"])
    assert_move_refused(move(conn, "CLINICB", "STUDY", {"StudyInstanceUID": world.a.studies[0].study_uid}))
    assert not move_scp.received


def test_cmove_without_a_registered_address_is_refused(world):
    conn = world.archive.conn(world.archive.clinics["clinicB"])
    # clinicB has no retrieve address: a move is refused with a reason, never sent anywhere.
    assert_move_refused(move(conn, "CLINICB", "PATIENT", {"PatientID": SHARED_PID}, root="patient"))
    assert "no C-MOVE address" in world.archive.log_text()


def test_dcmtk_movescu_of_a_foreign_study_fails(world, move_scp):
    archive = world.archive
    clinic = archive.clinics["clinicA"]
    tunnel = TlsTunnel(archive, clinic)
    try:
        res = subprocess.run(
            ["movescu", "-aet", "CLINICA", "-aec", archive.aet, "-aem", "CLINICA", "-S",
             "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={world.b.studies[0].study_uid}",
             "127.0.0.1", str(tunnel.port)],
            capture_output=True, text=True, timeout=60, check=False)
    finally:
        tunnel.close()
    output = res.stdout + res.stderr
    # Refused in the plugin's move callback, which Orthanc reports as 0xB000 (see assert_move_refused).
    assert "Move response with warning status (Warning: SubOperationsCompleteOneOrMoreFailures)" in output, output
    assert not move_scp.received


def test_cget_of_another_clinics_study_is_refused_by_the_gateway(world, tmp_path):
    conn = world.archive.conn(world.archive.clinics["clinicA"])
    b1 = world.b.studies[0]
    result = get(conn, "STUDY", {"StudyInstanceUID": b1.study_uid}, out_dir=tmp_path)
    # The gateway answers the C-GET-RQ itself: Refused, Not Authorized; nothing reaches Orthanc.
    assert result.status == status_codes.REFUSED_NOT_AUTHORIZED and result.files == 0, result.report("C-GET")
    assert not list(tmp_path.iterdir())


# -- HTTP: Orthanc REST and the plugin's API --------------------------------------------------------------


def https(world, tenant: Tenant, role: str, path: str, **kw) -> tuple[int, bytes]:
    return world.archive.https(path, auth=tenant.users[role], **kw)


def test_physician_study_list_is_tenant_scoped_and_paged(world):
    status, body = https(world, world.a, "physician", "/securepacs/api/studies?name=tenant&limit=1")
    assert status == 200, body
    page = json.loads(body)
    assert page["total"] == 2 and len(page["studies"]) == 1
    world.assert_no_leak(body, "study list")
    status, body = https(world, world.a, "physician", f"/securepacs/api/studies?patient={SHARED_PID}")
    rows = json.loads(body)["studies"]
    assert [r["StudyInstanceUID"] for r in rows] == [world.a.studies[0].study_uid]
    assert rows[0]["PatientName"] == "TENANT^ALICE"
    status, body = https(world, world.a, "physician", "/securepacs/api/studies?from=2099&limit=1")
    assert status == 400 and b"from" in body


def test_orthanc_rest_reaches_only_own_resources(world):
    a1, b1 = world.a.studies[0], world.b.studies[0]
    own, foreign = orthanc_id(a1.patient_id, a1.study_uid), orthanc_id(b1.patient_id, b1.study_uid)
    for role in ("physician", "clinic-device"):
        assert https(world, world.a, role, f"/studies/{own}")[0] == 200
        status, body = https(world, world.a, role, f"/studies/{own}/series")
        assert status == 200
        series_id = json.loads(body)[0]["ID"]
        assert https(world, world.a, role, f"/series/{series_id}/archive")[0] == 200
        status, body = https(world, world.a, role, f"/studies/{own}/instances")
        inst = json.loads(body)[0]["ID"]
        assert https(world, world.a, role, f"/instances/{inst}/file")[0] == 200
        for path in (f"/studies/{foreign}", f"/studies/{foreign}/archive", f"/patients/{orthanc_id(SHARED_PID)}",
                     "/patients", "/studies", "/instances", "/tools/find", "/modalities", "/jobs",
                     "/app/explorer.html", f"/studies/{own}/patient", "/system"):
            status, body = https(world, world.a, role, path)
            assert status == DENIED, f"{role} GET {path} -> {status}, expected exactly {DENIED}"
            world.assert_no_leak(body, f"GET {path}")
    b_inst = json.loads(https(world, world.b, "physician", f"/studies/{foreign}/instances")[1])[0]["ID"]
    assert https(world, world.a, "physician", f"/instances/{b_inst}/file")[0] == 403
    assert https(world, world.a, "physician", f"/instances/{b_inst}/preview")[0] == 403
    status, _ = https(world, world.a, "physician", "/tools/find", method="POST",
                      data=json.dumps({"Level": "Study", "Query": {}}).encode())
    assert status == 403
    assert https(world, world.a, "physician", f"/studies/{own}", method="DELETE")[0] == 403
    assert world.archive.admin_json(f"/studies/{own}")["ID"] == own


# -- DICOMweb ------------------------------------------------------------------------------------------------


def dicomweb(world, tenant: Tenant, role: str) -> DICOMwebClient:
    session = requests.Session()
    session.trust_env = False  # REQUESTS_CA_BUNDLE from the environment would override ``verify``
    session.auth = tenant.users[role]
    session.verify = str(world.archive.ca_cert)
    return DICOMwebClient(f"https://{world.archive.host}:{world.archive.https_port}/dicom-web", session=session)


def test_qido_rs_searches_only_own_studies(world):
    client = dicomweb(world, world.a, "physician")
    found = client.search_for_studies(search_filters={"PatientID": SHARED_PID})
    assert [Dataset.from_json(f).StudyInstanceUID for f in found] == [world.a.studies[0].study_uid]
    everything = client.search_for_studies()
    uids = {Dataset.from_json(f).StudyInstanceUID for f in everything}
    assert world.a.study_uids <= uids and not uids & world.b.study_uids
    world.assert_no_leak(json.dumps(everything), "QIDO-RS studies")
    series = client.search_for_series()
    world.assert_no_leak(json.dumps(series), "QIDO-RS series")
    instances = client.search_for_instances(search_filters={"PatientName": "TENANT*"})
    assert {Dataset.from_json(f).SOPInstanceUID for f in instances} == world.a.sop_uids
    page = client.search_for_studies(search_filters={"PatientName": "TENANT*"}, limit=1, offset=1)
    assert len(page) == 1


def test_wado_rs_and_wado_uri_only_for_own_studies(world):
    client = dicomweb(world, world.a, "physician")
    a1, b1 = world.a.studies[0], world.b.studies[0]
    datasets = client.retrieve_study(a1.study_uid)
    assert {str(ds.SOPInstanceUID) for ds in datasets} <= world.a.sop_uids and len(datasets) == a1.slices
    assert client.retrieve_study_metadata(a1.study_uid)
    for call in (lambda: client.retrieve_study(b1.study_uid),
                 lambda: client.retrieve_study_metadata(b1.study_uid),
                 lambda: client.retrieve_series(a1.study_uid, b1.series_uid),
                 lambda: client.search_for_series(b1.study_uid)):
        with pytest.raises(requests.HTTPError) as err:
            call()
        assert err.value.response.status_code == 403
    def wado_uri(sop: str) -> str:
        # Orthanc's WADO-URI does not percent-decode contentType: keep the "/" literal, as viewers send it.
        return (f"/wado?requestType=WADO&studyUID={a1.study_uid}&seriesUID={a1.series_uid}&objectUID={sop}"
                "&contentType=application/dicom")

    assert https(world, world.a, "physician", wado_uri(sorted(world.b.sop_uids)[0]))[0] == 403
    a_sop = str(instance(a1, 0).SOPInstanceUID)
    status, body = https(world, world.a, "physician", wado_uri(a_sop))
    assert status == 200 and pydicom.dcmread(io.BytesIO(body)).SOPInstanceUID == a_sop


def test_stow_rs_attributes_uploads_and_refuses_foreign_studies(world):
    device_b = dicomweb(world, world.b, "clinic-device")
    fresh = spec("b-stow", "TEN-B-STOW", "TENANT^BERTA", 1)
    new_ds = instance(fresh, 0)
    new_ds.ensure_file_meta()
    result = device_b.store_instances([new_ds])
    assert result.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == new_ds.SOPInstanceUID
    world.b.studies.append(fresh)
    world.b.sop_uids.add(str(new_ds.SOPInstanceUID))
    # Visible to B's physician, not to A's.
    assert dicomweb(world, world.b, "physician").search_for_studies(
        search_filters={"StudyInstanceUID": fresh.study_uid})
    assert not dicomweb(world, world.a, "physician").search_for_studies(
        search_filters={"StudyInstanceUID": fresh.study_uid})

    target = world.a.studies[0]
    before = study_instance_count(world, target)
    spoof = instance(world.b.studies[0], 9)
    spoof.StudyInstanceUID = target.study_uid
    spoof.ensure_file_meta()
    with pytest.raises(requests.HTTPError) as err:
        device_b.store_instances([spoof])
    assert err.value.response.status_code == 409
    assert study_instance_count(world, target) == before
    # Physicians read; they do not upload.
    with pytest.raises(requests.HTTPError) as err:
        dicomweb(world, world.a, "physician").store_instances([new_ds])
    assert err.value.response.status_code == 403


# -- the role matrix through the real HTTPS front door ----------------------------------------------------


@pytest.fixture(scope="module")
def auditor(world, tmp_path_factory) -> tuple[str, str]:
    return add_user(world.archive, tmp_path_factory.mktemp("auditor"), "auditor-1", "auditor", None)


def allow(*roles: str) -> dict[str, int]:
    """Exactly 200 for ``roles``, exactly 403 for every other role: a 404 or 500 is never a denial."""
    return {role: 200 if role in roles else DENIED for role in ROLES}


def role_matrix(world) -> list[tuple[str, str, dict[str, int]]]:
    a1, b1 = world.a.studies[0], world.b.studies[0]
    own, foreign = orthanc_id(a1.patient_id, a1.study_uid), orthanc_id(b1.patient_id, b1.study_uid)
    unknown_uid = "2.25.1" + "0" * 30
    unknown = orthanc_id("NOBODY", unknown_uid)
    readers = ("admin", "physician", "clinic-device")
    return [
        ("GET", "/patients", allow("admin")),
        ("GET", "/studies", allow("admin")),
        ("GET", "/system", allow("admin")),
        ("GET", "/modalities", allow("admin")),
        ("GET", "/jobs", allow("admin")),
        ("GET", "/app/explorer.html", allow("admin")),
        ("GET", "/plugins", allow("admin")),
        ("GET", "/dicom-web/servers", allow("admin")),
        ("GET", "/securepacs/api/users", allow("admin")),
        ("GET", "/securepacs/api/clinics", allow("admin")),
        ("GET", "/securepacs/api/me", allow(*ROLES)),
        ("GET", "/securepacs/api/audit", allow("auditor")),  # separation of duties: not even admins
        ("GET", "/securepacs/api/studies", allow(*readers)),
        ("GET", "/dicom-web/studies", allow(*readers)),
        ("GET", f"/studies/{own}", allow(*readers)),
        ("GET", f"/studies/{own}/archive", allow(*readers)),
        ("GET", f"/dicom-web/studies/{a1.study_uid}/metadata", allow(*readers)),
        ("GET", f"/studies/{foreign}", allow("admin")),
        ("GET", f"/dicom-web/studies/{b1.study_uid}/metadata", allow("admin")),
        ("GET", f"/studies/{own}/patient", allow("admin")),
        ("POST", "/tools/find", allow("admin")),
        # Unknown resources are refused exactly like foreign ones: a clinic cannot tell "absent" from
        # "another clinic's". Only the admin learns that they do not exist.
        ("GET", f"/studies/{unknown}", {**allow(), "admin": 404}),
        ("GET", f"/dicom-web/studies/{unknown_uid}/metadata", {**allow(), "admin": 404}),
        ("GET", "/securepacs/api/no-such-route", {**allow(), "admin": 404}),
        ("DELETE", f"/studies/{unknown}", {**allow(), "admin": 404}),
    ]


def test_http_role_matrix_end_to_end(world, auditor):
    credentials = {
        "admin": world.archive.admin_credential(),
        "physician": world.a.users["physician"],
        "clinic-device": world.a.users["clinic-device"],
        "auditor": auditor,
    }
    wrong = []
    for method, path, expected in role_matrix(world):
        data = b'{"Level": "Study", "Query": {}}' if method == "POST" else None
        for role, auth in credentials.items():
            status, body = world.archive.https(path, auth=auth, method=method, data=data)
            if status != expected[role]:
                wrong.append(f"{role} {method} {path} -> {status}, expected exactly {expected[role]}")
            # Admins and auditors (the whole trail) see every clinic by design; nobody else, and no denial.
            if role not in ("admin", "auditor") or status != 200:
                world.assert_no_leak(body, f"{role} {method} {path}")
        # An unknown user name: a wrong password for a real account would lock it out.
        for who, auth in (("anonymous", None), ("unknown user", ("no-such-user", "Not-1t-at-all"))):
            status, body = world.archive.https(path, auth=auth, method=method, data=data)
            if status != UNAUTHENTICATED:
                wrong.append(f"{who} {method} {path} -> {status}, expected exactly {UNAUTHENTICATED}")
            world.assert_no_leak(body, f"{who} {method} {path}")
    assert not wrong, "\n".join(wrong)
    clinics = world.archive.admin_json("/securepacs/api/clinics")["clinics"]
    assert {c["name"] for c in clinics} >= {"clinicA", "clinicB"}
    assert next(c for c in clinics if c["name"] == "clinicB")["moveDestination"] is None
