"""Start/stop behaviour of ``securepacs serve`` with its own archive (not the shared session one)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from conftest import SECUREPACS, _start, make_archive, restart_archive, stop_archive

from securepacs.client import store
from securepacs.config import environment
from securepacs.ops import deploy
from securepacs_tools import synth


@pytest.fixture()
def own_archive():
    arc = make_archive("securepacs-life-")
    yield arc
    if arc.proc is not None and arc.proc.poll() is None:
        stop_archive(arc)
    shutil.rmtree(arc.root, ignore_errors=True)


def _key_material(arc) -> dict[str, bytes]:
    files = ["ca/ca.key", "ca/ca.crt", "server/server.key", "server/server.crt"]
    found = {f: (arc.certs_dir / f).read_bytes() for f in files}
    found["admin"] = (arc.data_dir / "secrets" / "admin-credential.txt").read_bytes()
    return found


def test_second_start_keeps_keys_credential_and_data(own_archive, tmp_path):
    arc = own_archive
    _start(arc)
    banner = arc.log_text()
    assert f"port {arc.dicom_port}  AE title SECUREPACS" in banner
    assert f"https://localhost:{arc.https_port}/" in banner
    assert "admin-credential.txt (mode 0600" in banner
    assert os.stat(arc.data_dir / "secrets" / "admin-credential.txt").st_mode & 0o777 == 0o600

    clinic = arc.enrol("lifeclinic", "LIFECLINIC")
    files = synth.write_study(synth.StudySpec(seed="lifecycle", patient_id="LIFE1", slices=5), tmp_path)
    assert store(arc.conn(clinic), files).ok
    before = _key_material(arc)

    restart_archive(arc)
    assert _key_material(arc) == before, "a second start must not regenerate keys or the admin credential"
    assert "created at first start" in arc.log_text()
    assert len(arc.admin_json("/instances")) == 5
    arc.wait_modalities(present=("LIFECLINIC",))
    arc.assert_serving()


def test_invalid_plugin_config_stops_orthanc_with_clear_message(own_archive):
    arc = own_archive
    s = environment.from_env(arc.env)
    prepared = deploy.prepare(s)
    runtime = prepared.config_dir / "10-runtime.json"
    config = json.loads(runtime.read_text())
    config["SecurePACS"]["AuthCacheSeconds"] = -5
    runtime.write_text(json.dumps(config))
    user = prepared.users.orthanc
    kwargs = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []} if user else {}
    res = subprocess.run(["Orthanc", str(prepared.config_dir)], env={**os.environ, **prepared.orthanc_env},
                         capture_output=True, text=True, timeout=60, check=False, **kwargs)
    assert res.returncode != 0, "Orthanc must not run with an invalid SecurePACS section"
    assert "SecurePACS.AuthCacheSeconds = -5 is invalid" in res.stderr
    assert "Refusing to start" in res.stderr


def test_serve_reports_bad_environment_clearly(own_archive):
    env = {**own_archive.env, "SECUREPACS_DICOM_PORT": "99999"}
    res = subprocess.run([str(SECUREPACS), "serve"], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 2
    assert "SECUREPACS_DICOM_PORT='99999' is invalid" in res.stderr
