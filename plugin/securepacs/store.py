"""The plugin's own state: clinics, their AE titles and certificates, users.

One narrow interface over SQLite in the data dir. The SQL sticks to what PostgreSQL also accepts
(``ON CONFLICT``, no SQLite-only types) so a second backend is a new class, not a rewrite. The command
line and the Orthanc plugin open the same file: every mutation bumps ``generation`` so the plugin can
notice changes made by ``securepacs clinic ...`` without a restart.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS clinics (
    name TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    revoked_at TEXT,
    move_host TEXT,
    move_port INTEGER
);
CREATE TABLE IF NOT EXISTS clinic_aets (
    aet TEXT PRIMARY KEY,
    clinic TEXT NOT NULL REFERENCES clinics(name)
);
CREATE TABLE IF NOT EXISTS certificates (
    serial TEXT PRIMARY KEY,
    clinic TEXT NOT NULL REFERENCES clinics(name),
    subject TEXT NOT NULL,
    fingerprint_sha256 TEXT NOT NULL,
    not_before TEXT NOT NULL,
    not_after TEXT NOT NULL,
    revoked_at TEXT
);
CREATE TABLE IF NOT EXISTS users (
    username TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    role TEXT NOT NULL,
    clinic TEXT REFERENCES clinics(name),
    disabled INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL
);
"""


class StoreError(Exception):
    """A store operation was refused (duplicate, unknown name); the message says which value."""


@dataclass(frozen=True)
class Clinic:
    name: str
    aets: tuple[str, ...]
    created_at: str
    revoked_at: str | None = None
    move_host: str | None = None
    move_port: int | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True)
class CertificateRecord:
    serial: str
    clinic: str
    subject: str
    fingerprint_sha256: str
    not_before: str
    not_after: str
    revoked_at: str | None = None


@dataclass(frozen=True)
class User:
    username: str
    password_hash: str
    role: str
    clinic: str | None
    disabled: bool
    created_at: str


def utcnow() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Store:
    """SQLite-backed store. Thread-safe: one connection, serialised by a lock (writes are rare)."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        self._lock = threading.RLock()
        # Rollback journal (not WAL): no persistent side files, so a root-run CLI cannot leave
        # root-owned -wal/-shm files that the unprivileged Orthanc process could not open.
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA foreign_keys = ON")
        if created:
            os.chmod(self.path, 0o600)
            _match_owner(self.path, self.path.parent)
        with self._tx() as db:
            # executescript() would commit our transaction first; run the statements one by one instead.
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(
                "INSERT INTO meta(key, value) VALUES ('schema_version', ?) ON CONFLICT(key) DO NOTHING",
                (str(SCHEMA_VERSION),),
            )
            db.execute("INSERT INTO meta(key, value) VALUES ('generation', '0') ON CONFLICT(key) DO NOTHING")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _bump(self, db: sqlite3.Connection) -> None:
        db.execute("UPDATE meta SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT) WHERE key = 'generation'")

    def generation(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        return int(row[0])

    # -- clinics ---------------------------------------------------------------------------------------
    def add_clinic(
        self, name: str, aets: list[str], move_host: str | None = None, move_port: int | None = None
    ) -> Clinic:
        if not aets:
            raise StoreError(f"clinic {name!r} needs at least one AE title")
        with self._tx() as db:
            if db.execute("SELECT 1 FROM clinics WHERE name = ?", (name,)).fetchone():
                raise StoreError(f"clinic {name!r} already exists")
            for aet in aets:
                row = db.execute("SELECT clinic FROM clinic_aets WHERE aet = ?", (aet,)).fetchone()
                if row:
                    raise StoreError(f"AE title {aet!r} is already enrolled for clinic {row[0]!r}")
            if len(set(aets)) != len(aets):
                raise StoreError(f"AE titles {aets!r} contain a duplicate")
            now = utcnow()
            db.execute(
                "INSERT INTO clinics(name, created_at, move_host, move_port) VALUES (?, ?, ?, ?)",
                (name, now, move_host, move_port),
            )
            db.executemany("INSERT INTO clinic_aets(aet, clinic) VALUES (?, ?)", [(a, name) for a in aets])
            self._bump(db)
        return Clinic(name, tuple(aets), now, None, move_host, move_port)

    def remove_clinic(self, name: str) -> None:
        """Undo a half-finished enrolment (used when writing the certificate bundle failed)."""
        with self._tx() as db:
            db.execute("DELETE FROM certificates WHERE clinic = ?", (name,))
            db.execute("DELETE FROM clinic_aets WHERE clinic = ?", (name,))
            db.execute("DELETE FROM clinics WHERE name = ?", (name,))
            self._bump(db)

    def get_clinic(self, name: str) -> Clinic:
        for c in self.list_clinics():
            if c.name == name:
                return c
        raise StoreError(f"unknown clinic {name!r}")

    def list_clinics(self) -> list[Clinic]:
        with self._lock:
            rows = self._db.execute(
                "SELECT name, created_at, revoked_at, move_host, move_port FROM clinics ORDER BY name"
            ).fetchall()
            aets = self._db.execute("SELECT aet, clinic FROM clinic_aets ORDER BY aet").fetchall()
        by_clinic: dict[str, list[str]] = {}
        for aet, clinic in aets:
            by_clinic.setdefault(clinic, []).append(aet)
        return [Clinic(r[0], tuple(by_clinic.get(r[0], ())), r[1], r[2], r[3], r[4]) for r in rows]

    def clinic_for_aet(self, aet: str) -> Clinic | None:
        with self._lock:
            row = self._db.execute("SELECT clinic FROM clinic_aets WHERE aet = ?", (aet,)).fetchone()
        return self.get_clinic(row[0]) if row else None

    def revoke_clinic(self, name: str) -> list[str]:
        """Mark the clinic and all its certificates revoked; returns the revoked serials."""
        now = utcnow()
        with self._tx() as db:
            row = db.execute("SELECT revoked_at FROM clinics WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise StoreError(f"unknown clinic {name!r}")
            if row[0] is not None:
                raise StoreError(f"clinic {name!r} was already revoked at {row[0]}")
            serials = [
                r[0]
                for r in db.execute(
                    "SELECT serial FROM certificates WHERE clinic = ? AND revoked_at IS NULL", (name,)
                ).fetchall()
            ]
            db.execute("UPDATE clinics SET revoked_at = ? WHERE name = ?", (now, name))
            db.execute("UPDATE certificates SET revoked_at = ? WHERE clinic = ? AND revoked_at IS NULL", (now, name))
            self._bump(db)
        return serials

    # -- certificates ----------------------------------------------------------------------------------
    def add_certificate(self, rec: CertificateRecord) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO certificates(serial, clinic, subject, fingerprint_sha256, not_before, not_after,"
                " revoked_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (rec.serial, rec.clinic, rec.subject, rec.fingerprint_sha256, rec.not_before, rec.not_after,
                 rec.revoked_at),
            )
            self._bump(db)

    def certificates(self, clinic: str | None = None) -> list[CertificateRecord]:
        sql = ("SELECT serial, clinic, subject, fingerprint_sha256, not_before, not_after, revoked_at "
               "FROM certificates")
        args: tuple[str, ...] = ()
        if clinic is not None:
            sql += " WHERE clinic = ?"
            args = (clinic,)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY not_before", args).fetchall()
        return [CertificateRecord(*r) for r in rows]

    def revoked_serials(self) -> list[str]:
        with self._lock:
            rows = self._db.execute("SELECT serial FROM certificates WHERE revoked_at IS NOT NULL").fetchall()
        return [r[0] for r in rows]

    # -- users -----------------------------------------------------------------------------------------
    def add_user(self, username: str, password_hash: str, role: str, clinic: str | None = None) -> User:
        now = utcnow()
        with self._tx() as db:
            if db.execute("SELECT 1 FROM users WHERE username = ?", (username,)).fetchone():
                raise StoreError(f"user {username!r} already exists")
            db.execute(
                "INSERT INTO users(username, password_hash, role, clinic, disabled, created_at)"
                " VALUES (?, ?, ?, ?, 0, ?)",
                (username, password_hash, role, clinic, now),
            )
            self._bump(db)
        return User(username, password_hash, role, clinic, False, now)

    def get_user(self, username: str) -> User | None:
        with self._lock:
            row = self._db.execute(
                "SELECT username, password_hash, role, clinic, disabled, created_at FROM users WHERE username = ?",
                (username,),
            ).fetchone()
        return User(row[0], row[1], row[2], row[3], bool(row[4]), row[5]) if row else None

    def count_users(self, role: str | None = None) -> int:
        with self._lock:
            if role is None:
                return self._db.execute("SELECT COUNT(*) FROM users").fetchone()[0]
            return self._db.execute("SELECT COUNT(*) FROM users WHERE role = ?", (role,)).fetchone()[0]


def _match_owner(path: Path, like: Path) -> None:
    """When root creates the file, hand it to the owner of its directory (the Orthanc service user)."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        st = like.stat()
        if st.st_uid != 0:
            os.chown(path, st.st_uid, st.st_gid)
