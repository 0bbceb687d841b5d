"""SECUREPACS_INTERNAL_HOP=plain: the explicit single-host option. Clinics still need mutual TLS and the
gateway's checks; only the hop between the gateway and Orthanc is plain, and Orthanc accepts on it only
registered AE titles from 127.0.0.1."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Archive, _start, make_archive, stop_archive

from securepacs.client import Connection, ConnectionFailed, echo, find, get, store
from securepacs.synth import StudySpec, write_study

pytestmark = pytest.mark.integration

SPEC = StudySpec(seed="plain-hop", patient_id="PLAIN-P1", slices=3, rows=16, columns=16)


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Iterator[Archive]:
    archive = make_archive("securepacs-plainhop-")
    archive.env["SECUREPACS_INTERNAL_HOP"] = "plain"
    _start(archive)
    try:
        archive.enrol("plainA", "PLAINA")
        yield archive
    finally:
        if archive.running():
            stop_archive(archive)
        shutil.rmtree(archive.root, ignore_errors=True)


def test_clinics_store_find_and_get_through_the_gateway(plain: Archive, tmp_path: Path) -> None:
    clinic = plain.clinics["plainA"]
    write_study(SPEC, tmp_path / "study")
    assert store(plain.conn(clinic), [tmp_path / "study"]).ok
    assert len(list(find(plain.conn(clinic), "STUDY", {"PatientID": SPEC.patient_id}))) == 1
    result = get(plain.conn(clinic), "STUDY", {"StudyInstanceUID": SPEC.study_uid}, out_dir=tmp_path / "got")
    assert result.ok and result.files == 3, result.report("C-GET")
    config = (plain.data_dir / "config" / "00-base.json").read_text()
    assert '"DicomTlsEnabled": false' in config and '"DicomCheckModalityHost": true' in config


def test_the_public_port_stays_mutual_tls(plain: Archive) -> None:
    with pytest.raises(ConnectionFailed):
        echo(Connection(plain.host, plain.dicom_port, calling_aet="PLAINA", called_aet=plain.aet, acse_timeout=5))


def test_orthancs_plain_port_admits_only_registered_aets(plain: Archive) -> None:
    internal = int(plain.env["SECUREPACS_INTERNAL_DICOM_PORT"])
    with pytest.raises(ConnectionFailed):
        echo(Connection("127.0.0.1", internal, calling_aet="INTRUDER", called_aet=plain.aet, acse_timeout=5))
    plain.assert_serving()
