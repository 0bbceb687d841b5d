"""A clinic associates the moment ``securepacs clinic add`` returns (issue 12, finding 10).

The plugin pushes enrolments into Orthanc's modalities every ``ModalitySyncSeconds`` (2 s): before the
fix ``clinic add`` returned at once and the clinic's first association was rejected by Orthanc. No
``Archive.enrol`` here: it waits for the modalities itself, which is exactly what must not be needed.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from conftest import Archive, Clinic

from securepacs.client import echo, store
from securepacs_tools.synth import StudySpec, write_study

pytestmark = pytest.mark.integration


def test_a_new_clinic_can_echo_and_store_as_soon_as_clinic_add_returns(archive: Archive, tmp_path: Path) -> None:
    for attempt in range(3):  # the race was reliable before the fix; three tries leave no luck
        suffix = secrets.token_hex(3).upper()
        name, aet = f"enrol{attempt}-{suffix.lower()}", f"ENROL{attempt}{suffix}"
        result = archive.cli("clinic", "add", name, "--aet", aet)
        clinic = Clinic(name, (aet,), archive.certs_dir / "clinics" / name)
        assert echo(archive.conn(clinic)) == 0, f"attempt {attempt}: echo right after enrolment"
        spec = StudySpec(seed=f"enrol-{suffix}", patient_id=f"ENROL-{suffix}", slices=1, rows=8, columns=8)
        write_study(spec, tmp_path / name)
        sent = store(archive.conn(clinic), [tmp_path / name])
        assert sent.ok, sent.report()
        assert f"The running archive accepts AE title(s) {aet} now." in result.stdout, result.stdout
