"""The gateway's view of the store is read-only: it sees enrolment changes, and cannot make any."""

from __future__ import annotations

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
