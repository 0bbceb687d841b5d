"""The gateway's view of the store is read-only: it sees enrolment changes, and cannot make any."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

from securepacs.gateway.store_view import ReadOnlyStore
from securepacs.store.database import Store


def test_the_view_reads_what_the_plugin_writes_and_cannot_write(tmp_path: Path) -> None:
    store = Store(tmp_path / "securepacs.db")
    view = ReadOnlyStore(tmp_path / "securepacs.db")
    before = view.generation()
    store.add_clinic("north", ["NORTH_CT"])
    assert view.generation() > before
    assert [c.name for c in view.list_clinics()] == ["north"]
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        view.add_clinic("rogue", ["ROGUE"])
    assert [c.name for c in store.list_clinics()] == ["north"]
    view.close()
    store.close()


def test_the_view_runs_no_schema_set_up(tmp_path: Path) -> None:
    Store(tmp_path / "securepacs.db").close()
    path = tmp_path / "securepacs.db"
    path.chmod(0o444)  # as on the gateway's read-only mount
    before = path.read_bytes()
    view = ReadOnlyStore(path)
    view.revoked_serials()
    view.close()
    assert path.read_bytes() == before


def test_opening_a_missing_store_names_it_and_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "absent" / "securepacs.db"
    with pytest.raises(sqlite3.OperationalError, match=re.escape(f"cannot open the store {path} read-only")):
        ReadOnlyStore(path)
    assert not path.exists() and not path.parent.exists()


def test_the_view_does_not_migrate_an_older_schema(tmp_path: Path) -> None:
    # A schema-1 store: users without the lockout/TOTP columns that Store() would add.
    path = tmp_path / "securepacs.db"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema_version', '1'), ('generation', '7');
        CREATE TABLE users (username TEXT PRIMARY KEY, password_hash TEXT NOT NULL, role TEXT NOT NULL,
                            clinic TEXT, disabled INTEGER NOT NULL DEFAULT 0, created_at TEXT NOT NULL);
    """)
    db.close()
    before = path.read_bytes()
    view = ReadOnlyStore(path)
    assert view.generation() == 7
    view.close()
    assert path.read_bytes() == before
    db = sqlite3.connect(path)
    columns = [row[1] for row in db.execute("PRAGMA table_info(users)")]
    tables = sorted(row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'"))
    db.close()
    assert columns == ["username", "password_hash", "role", "clinic", "disabled", "created_at"]
    assert tables == ["meta", "users"]
