"""Compose-only checks: the stack as admins deploy it (the shared end-to-end checks run via ``archive``)."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from securepacs.client import echo, find, store
from securepacs.client.errors import ConnectionFailed
from securepacs_tools import synth

pytestmark = pytest.mark.compose


def _inspect(container: str) -> dict:
    out = subprocess.run(["docker", "inspect", container], capture_output=True, text=True, check=True).stdout
    return json.loads(out)[0]


def _container(arc, service: str) -> str:
    return arc.compose("ps", "-q", service).stdout.strip()


def test_stack_runs_unprivileged_and_publishes_only_tls_ports(compose_archive):
    arc = compose_archive
    archive = _inspect(_container(arc, "archive"))
    published = {k for k, v in archive["NetworkSettings"]["Ports"].items() if v}
    assert published == {"2762/tcp", "8443/tcp"}, "Orthanc's HTTP port must never be published"
    assert archive["Config"]["User"] == "orthanc"
    https = _inspect(_container(arc, "https"))
    assert https["Config"]["User"] == "securepacs-web"  # not the Orthanc uid (test_compose_privsep.py)
    assert https["State"]["Health"]["Status"] in ("healthy", "starting")
    # No keys or passwords baked into the image: the CA key lives only in the certs volume, root-only.
    res = subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "--entrypoint",
            "sh",
            arc.env["SECUREPACS_IMAGE"],
            "-c",
            "find / -xdev \\( -name '*.key' -o -name 'admin-credential*' \\) 2>/dev/null | grep -v ^/usr/share || true",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert res.stdout.strip() == ""
    assert oct((arc.certs_dir / "ca" / "ca.key").stat().st_mode & 0o777) == "0o600"
    assert (arc.certs_dir / "ca" / "ca.key").stat().st_uid == 0


def test_image_carries_debians_orthanc_1_13_with_its_plugins(compose_archive):
    """The image's platform (README): Debian forky's Orthanc 1.13, python plugin 7.1 (built for the image's
    Python, which the plugin's venv uses too), DICOMweb 1.24 and DCMTK 3.7."""
    script = ("Orthanc --version | head -n1; dpkg-query -W -f '${Package} ${Version}\\n' orthanc-python "
              "orthanc-dicomweb dcmtk; /opt/securepacs/.venv/bin/python -c 'import sys; print(sys.base_prefix)'; "
              "command -v storescu")
    res = subprocess.run(["docker", "run", "--rm", compose_archive.env["SECUREPACS_IMAGE"], "sh", "-c", script],
                         capture_output=True, text=True, check=True)
    lines = res.stdout.splitlines()
    assert lines[0].startswith("Orthanc 1.13."), lines
    versions = dict(line.split(" ", 1) for line in lines[1:4])
    assert versions["orthanc-python"].startswith("7.1"), versions
    assert versions["orthanc-dicomweb"].startswith("1.24"), versions
    assert versions["dcmtk"].split("really")[-1].startswith("3.7."), versions
    assert lines[4] == "/usr", lines  # Debian's python3: the one libOrthancPython embeds
    assert lines[5] == "/usr/bin/storescu", lines  # DCMTK's, not a pynetdicom app of the same name


def test_data_survives_down_and_up(compose_archive, tmp_path):
    arc = compose_archive
    clinic = arc.enrol("persist", "PERSIST")
    spec = synth.StudySpec(seed="compose-persist", patient_id="CPERSIST", slices=4)
    assert store(arc.conn(clinic), synth.write_study(spec, tmp_path)).ok
    arc.restart()  # docker compose down + up: containers replaced, volumes kept
    arc.wait_modalities(present=("PERSIST",))
    # The gateway container starts after the archive's health answers: wait until it accepts associations.
    deadline = time.monotonic() + 60
    while True:
        try:
            if echo(arc.conn(clinic)) == 0:
                break
        except ConnectionFailed:
            pass
        assert time.monotonic() < deadline, "the gateway did not accept associations within 60 s of up"
        time.sleep(0.5)
    found = list(
        find(arc.conn(clinic), "STUDY", {"StudyInstanceUID": spec.study_uid, "NumberOfStudyRelatedInstances": ""})
    )
    assert [int(ds.NumberOfStudyRelatedInstances) for ds in found] == [4]
    arc.assert_serving()
