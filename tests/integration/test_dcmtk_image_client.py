"""DCMTK 3.7 (the image's, Debian forky) as a second independent client version against the compose stack.

The native suite drives Debian 12's DCMTK 3.6.7, whose getscu/movescu have no TLS options (a tunnel stands
in); 3.7's have them, so here every tool speaks mutual TLS itself. The tools run in a container of the
image on the host's network, with the clinic's bundle mounted read-only (called by their full path, so a
pynetdicom app of the same name on PATH could never stand in for them; the image drops those)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from test_dimse import assert_same_datasets, file_dataset, make_study, sop_uid_of, stored_sop_uids

pytestmark = pytest.mark.compose


def image_dcmtk(arc, clinic, work: Path, tool: str, *args: str) -> subprocess.CompletedProcess:
    """``/usr/bin/<tool>`` from the image with the clinic's mutual TLS options; ``work`` is /work inside."""
    cmd = ["docker", "run", "--rm", "--network", "host", "--user", "0", "-e", "TCP_NODELAY=1",
           "-v", f"{clinic.bundle}:/bundle:ro", "-v", f"{work}:/work", arc.env["SECUREPACS_IMAGE"],
           f"/usr/bin/{tool}", "+tls", f"/bundle/{clinic.key.name}", f"/bundle/{clinic.cert.name}",
           "+cf", f"/bundle/{clinic.ca.name}", "-aet", clinic.aets[0], "-aec", arc.aet, *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
    assert res.returncode == 0, f"{tool} -> {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


def test_dcmtk_3_7_stores_finds_and_gets_over_mutual_tls(compose_archive, tmp_path):
    arc = compose_archive
    clinic = arc.clinics["clinicA"]
    version = image_dcmtk(arc, clinic, tmp_path, "echoscu", "--version")
    assert "v3.7." in version.stdout, version.stdout
    image_dcmtk(arc, clinic, tmp_path, "echoscu", "localhost", str(arc.dicom_port))

    spec, files = make_study(tmp_path, "dcmtk37", 6, "SYN-DCMTK37")
    image_dcmtk(arc, clinic, tmp_path, "storescu", "+sd", "+r", "localhost", str(arc.dicom_port), "/work/dcmtk37")
    assert sorted(stored_sop_uids(arc, spec.study_uid)) == sorted(files)

    found = image_dcmtk(arc, clinic, tmp_path, "findscu", "-S", "-k", "QueryRetrieveLevel=STUDY",
                        "-k", f"StudyInstanceUID={spec.study_uid}", "-k", "PatientID",
                        "-k", "NumberOfStudyRelatedInstances", "localhost", str(arc.dicom_port))
    output = found.stdout + found.stderr
    # 3.7 prints values with their padding (3.6.7 stripped it).
    assert re.findall(r"\(0010,0020\) LO \[([^\] ]*) ?\]", output) == ["SYN-DCMTK37"], output
    assert re.findall(r"\(0020,1208\) IS \[(\d+) ?\]", output) == ["6"], output

    out = tmp_path / "got"
    out.mkdir()
    image_dcmtk(arc, clinic, tmp_path, "getscu", "-S", "-k", "QueryRetrieveLevel=STUDY",
                "-k", f"StudyInstanceUID={spec.study_uid}", "-od", "/work/got", "localhost", str(arc.dicom_port))
    assert_same_datasets({sop_uid_of(p): file_dataset(p) for p in out.iterdir()}, files)


def test_dcmtk_3_7_with_another_clinics_aet_is_refused(compose_archive, tmp_path):
    """The certificate binds the AE title: clinic A's credentials calling as clinic B's AE title are
    refused at association (A-ASSOCIATE-RJ, calling AE title not recognized), whatever the client."""
    arc = compose_archive
    clinic = arc.clinics["clinicA"]
    other = arc.clinics.get("clinicB") or arc.enrol("clinicB", "CLINICB")
    cmd = ["docker", "run", "--rm", "--network", "host", "--user", "0", "-v", f"{clinic.bundle}:/bundle:ro",
           arc.env["SECUREPACS_IMAGE"], "/usr/bin/echoscu", "+tls", f"/bundle/{clinic.key.name}",
           f"/bundle/{clinic.cert.name}", "+cf", f"/bundle/{clinic.ca.name}", "-aet", other.aets[0],
           "-aec", arc.aet, "localhost", str(arc.dicom_port)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode != 0
    assert "Calling AE Title Not Recognized" in res.stdout + res.stderr, res.stdout + res.stderr
