"""The plugin's SQLite store: clinics, certificates, users, generation and file permissions."""

from __future__ import annotations

import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from securepacs.store.database import Store
from securepacs.store.records import CertificateRecord, StoreError


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "data" / "securepacs.db")
    yield s
    s.close()


def cert(serial: str, clinic: str, not_before: str = "2025-01-01T00:00:00+00:00") -> CertificateRecord:
    return CertificateRecord(serial, clinic, f"CN={clinic}", "ab" * 32, not_before, "2026-01-01T00:00:00+00:00")


def test_new_store_file_is_private(store: Store) -> None:
    assert store.path.is_file()
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600


def test_new_store_starts_empty_at_generation_zero(store: Store) -> None:
    assert store.generation() == 0
    assert store.list_clinics() == []
    assert store.count_users() == 0
    assert store.certificates() == []
    assert store.revoked_serials() == []


def test_reopening_keeps_data_and_generation(tmp_path: Path) -> None:
    path = tmp_path / "securepacs.db"
    first = Store(path)
    first.add_clinic("north", ["NORTH_CT"])
    first.close()
    again = Store(path)
    try:
        assert again.generation() == 1
        assert [c.name for c in again.list_clinics()] == ["north"]
    finally:
        again.close()


def test_add_clinic(store: Store) -> None:
    clinic = store.add_clinic("north", ["NORTH_CT", "NORTH_MR"], move_host="10.1.2.3", move_port=11112)
    assert clinic.active and clinic.revoked_at is None
    assert clinic.aets == ("NORTH_CT", "NORTH_MR")
    assert store.get_clinic("north") == clinic
    assert store.list_clinics() == [clinic]
    assert store.clinic_for_aet("NORTH_MR") == clinic
    assert store.clinic_for_aet("UNKNOWN") is None
    assert store.generation() == 1


def test_clinics_are_listed_by_name(store: Store) -> None:
    store.add_clinic("south", ["S1"])
    store.add_clinic("north", ["N1"])
    assert [c.name for c in store.list_clinics()] == ["north", "south"]


def test_duplicate_clinic_is_refused(store: Store) -> None:
    store.add_clinic("north", ["NORTH_CT"])
    with pytest.raises(StoreError, match="clinic 'north' already exists"):
        store.add_clinic("north", ["OTHER_AET"])
    assert store.generation() == 1
    assert store.clinic_for_aet("OTHER_AET") is None


def test_aet_enrolled_elsewhere_is_refused_without_partial_write(store: Store) -> None:
    store.add_clinic("north", ["SHARED"])
    with pytest.raises(StoreError, match="AE title 'SHARED' is already enrolled for clinic 'north'"):
        store.add_clinic("south", ["SOUTH", "SHARED"])
    assert [c.name for c in store.list_clinics()] == ["north"]
    assert store.clinic_for_aet("SOUTH") is None
    assert store.generation() == 1


def test_duplicate_aet_within_one_clinic_is_refused(store: Store) -> None:
    with pytest.raises(StoreError, match="contain a duplicate"):
        store.add_clinic("north", ["CT", "CT"])
    assert store.list_clinics() == []
    assert store.generation() == 0


def test_clinic_needs_an_aet(store: Store) -> None:
    with pytest.raises(StoreError, match="clinic 'north' needs at least one AE title"):
        store.add_clinic("north", [])


def test_unknown_clinic(store: Store) -> None:
    with pytest.raises(StoreError, match="unknown clinic 'nowhere'"):
        store.get_clinic("nowhere")
    with pytest.raises(StoreError, match="unknown clinic 'nowhere'"):
        store.revoke_clinic("nowhere")


def test_revoke_marks_clinic_and_its_certificates(store: Store) -> None:
    store.add_clinic("north", ["NORTH_CT"])
    store.add_clinic("south", ["SOUTH_CT"])
    store.add_certificate(cert("01", "north", "2025-01-01T00:00:00+00:00"))
    store.add_certificate(cert("02", "north", "2025-02-01T00:00:00+00:00"))
    store.add_certificate(cert("03", "south"))
    before = store.generation()

    assert sorted(store.revoke_clinic("north")) == ["01", "02"]

    north = store.get_clinic("north")
    assert not north.active and north.revoked_at is not None
    assert store.get_clinic("south").active
    assert sorted(store.revoked_serials()) == ["01", "02"]
    assert all(c.revoked_at == north.revoked_at for c in store.certificates("north"))
    assert store.certificates("south")[0].revoked_at is None
    assert store.generation() == before + 1
    # The AE titles stay reserved: a revoked clinic's AET cannot silently be handed to someone else.
    with pytest.raises(StoreError, match="already enrolled"):
        store.add_clinic("impostor", ["NORTH_CT"])


def test_revoking_twice_is_refused(store: Store) -> None:
    store.add_clinic("north", ["NORTH_CT"])
    store.revoke_clinic("north")
    generation = store.generation()
    with pytest.raises(StoreError, match="clinic 'north' was already revoked at "):
        store.revoke_clinic("north")
    assert store.generation() == generation


def test_certificates_are_listed_by_clinic_in_issue_order(store: Store) -> None:
    store.add_clinic("north", ["N"])
    store.add_clinic("south", ["S"])
    store.add_certificate(cert("b", "north", "2025-03-01T00:00:00+00:00"))
    store.add_certificate(cert("a", "north", "2025-01-01T00:00:00+00:00"))
    store.add_certificate(cert("c", "south"))
    assert [c.serial for c in store.certificates("north")] == ["a", "b"]
    assert len(store.certificates()) == 3
    assert store.generation() == 5


def test_certificate_for_unknown_clinic_is_refused(store: Store) -> None:
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
        store.add_certificate(cert("01", "nowhere"))
    assert store.generation() == 0


def test_remove_clinic_undoes_an_enrolment(store: Store) -> None:
    store.add_clinic("north", ["NORTH_CT"])
    store.add_certificate(cert("01", "north"))
    store.remove_clinic("north")
    assert store.list_clinics() == []
    assert store.certificates() == []
    assert store.clinic_for_aet("NORTH_CT") is None
    store.add_clinic("north", ["NORTH_CT"])  # the name and AET are free again


def test_users(store: Store) -> None:
    user = store.add_user("alice", "scrypt$hash", "admin")
    assert (user.username, user.role, user.clinic, user.disabled) == ("alice", "admin", None, False)
    assert store.get_user("alice") == user
    assert store.get_user("nobody") is None
    store.add_clinic("north", ["N"])
    store.add_user("bob", "scrypt$other", "physician", clinic="north")
    assert store.get_user("bob").clinic == "north"
    assert store.count_users() == 2
    assert store.count_users("admin") == 1
    assert store.count_users("auditor") == 0
    assert store.generation() == 3


def test_duplicate_user_is_refused(store: Store) -> None:
    store.add_user("alice", "scrypt$hash", "admin")
    with pytest.raises(StoreError, match="user 'alice' already exists"):
        store.add_user("alice", "scrypt$other", "physician")
    assert store.get_user("alice").password_hash == "scrypt$hash"


def test_user_of_unknown_clinic_is_refused(store: Store) -> None:
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
        store.add_user("bob", "scrypt$hash", "physician", clinic="nowhere")
    assert store.get_user("bob") is None


def test_a_second_connection_sees_changes_through_the_generation(store: Store) -> None:
    # The CLI and the plugin open the same file; the plugin notices CLI changes by polling generation().
    cli = Store(store.path)
    try:
        assert store.generation() == 0
        cli.add_clinic("north", ["NORTH_CT"])
        assert store.generation() == 1
        assert store.get_clinic("north").aets == ("NORTH_CT",)
        cli.revoke_clinic("north")
        assert store.generation() == 2
        assert not store.get_clinic("north").active
    finally:
        cli.close()


def test_no_wal_side_files(store: Store) -> None:
    store.add_clinic("north", ["N"])
    assert sorted(p.name for p in store.path.parent.iterdir()) == ["securepacs.db"]


def test_study_ownership_claims_are_first_come(store: Store) -> None:
    store.add_clinic("north", ["NORTH_CT"])
    store.add_clinic("south", ["SOUTH_CT"])
    first = store.claim_study("1.2.3", "north", "oid-1", "dicom:NORTH_CT")
    again = store.claim_study("1.2.3", "south", "oid-2", "dicom:SOUTH_CT")
    assert first == again and again.clinic == "north" and again.orthanc_id == "oid-1"
    assert store.owner_of_orthanc_study("oid-1") == "north"
    assert store.owner_of_orthanc_study("oid-2") is None
    assert store.clinic_orthanc_studies("north") == {"oid-1"} and store.clinic_orthanc_studies("south") == set()
    assert store.study_uids_of(["oid-1", "unknown"]) == {"oid-1": "1.2.3"}
    assert store.claim_series("1.2.3.1", "1.2.3") == "1.2.3"
    assert store.claim_series("1.2.3.1", "9.9.9") == "1.2.3"  # a series never moves to another study
    assert store.study_of_series("1.2.3.1") == "1.2.3" and store.study_of_series("x") is None


def test_schema_1_store_gains_the_account_columns(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE users (username TEXT PRIMARY KEY, password_hash TEXT NOT NULL, role TEXT NOT NULL,"
        " clinic TEXT, disabled INTEGER NOT NULL DEFAULT 0, created_at TEXT NOT NULL);"
        "INSERT INTO users VALUES ('admin', 'h', 'admin', NULL, 0, '2026-01-01');"
    )
    db.close()
    upgraded = Store(path)
    try:
        user = upgraded.get_user("admin")
        assert user is not None and user.failed_logins == 0 and user.totp_secret is None
    finally:
        upgraded.close()
