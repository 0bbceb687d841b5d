"""The plugin's own state: clinics, their AE titles and certificates, users, sessions, study ownership.

One narrow interface over SQLite in the data dir. The SQL sticks to what PostgreSQL also accepts
(``ON CONFLICT``, no SQLite-only types) so a second backend is a new class, not a rewrite. The command
line and the Orthanc plugin open the same file: every mutation bumps ``generation`` so the plugin can
notice changes made by ``securepacs clinic ...`` without a restart.

The tables and their migrations live in ``sql_schema``, the records handed out in ``records``; this
module opens the file and runs the queries.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

# The records stay importable from here too (importers not yet moved to ``records``).
from securepacs.store.records import (
    USER_FIELDS,
    CertificateRecord,
    Clinic,
    Session,
    StoreError,
    StudyOwner,
    User,
    user_from_row,
    utcnow,
)
from securepacs.store.sql_schema import apply_schema


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
            apply_schema(db)

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

    # The plugin's modality sync says which generation Orthanc's modalities reflect, when it last looked and
    # how often it looks ("GENERATION EPOCH_SECONDS INTERVAL" in meta; no bump: it is not a change of state).
    def modalities_applied(self) -> tuple[int, float, float] | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'modalities_applied'").fetchone()
        generation, at, interval = row[0].split() if row else ("0", "0", "0")
        return (int(generation), float(at), float(interval)) if row else None

    def mark_modalities_applied(self, generation: int, at: float, interval: float) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO meta(key, value) VALUES ('modalities_applied', ?) ON CONFLICT(key) DO UPDATE "
                       "SET value = excluded.value", (f"{generation} {at:.3f} {interval:g}",))

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
        # One clinic's rows only: this runs for every C-STORE (calling AE -> clinic), not just in admin tools.
        with self._lock:
            row = self._db.execute(
                "SELECT name, created_at, revoked_at, move_host, move_port FROM clinics WHERE name = ?", (name,)
            ).fetchone()
            aets = self._db.execute("SELECT aet FROM clinic_aets WHERE clinic = ? ORDER BY aet", (name,)).fetchall()
        if row is None:
            raise StoreError(f"unknown clinic {name!r}")
        return Clinic(row[0], tuple(a[0] for a in aets), row[1], row[2], row[3], row[4])

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
            row = self._db.execute(f"SELECT {USER_FIELDS} FROM users WHERE username = ?",  # noqa: S608 (constant column list)
                                   (username,)).fetchone()
        return user_from_row(row) if row else None

    def list_users(self, clinic: str | None = None) -> list[User]:
        sql, args = f"SELECT {USER_FIELDS} FROM users", ()  # noqa: S608 (constant column list)
        if clinic is not None:
            sql, args = sql + " WHERE clinic = ?", (clinic,)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY username", args).fetchall()
        return [user_from_row(r) for r in rows]

    def count_users(self, role: str | None = None) -> int:
        with self._lock:
            if role is None:
                return self._db.execute("SELECT COUNT(*) FROM users").fetchone()[0]
            return self._db.execute("SELECT COUNT(*) FROM users WHERE role = ?", (role,)).fetchone()[0]

    def _update_user(self, username: str, assignments: str, args: tuple, *, end_sessions: bool = False) -> None:
        with self._tx() as db:
            # ``assignments`` is always a literal from this class; values are bound parameters.
            cur = db.execute(f"UPDATE users SET {assignments} WHERE username = ?", (*args, username))  # noqa: S608
            if cur.rowcount == 0:
                raise StoreError(f"unknown user {username!r}")
            if end_sessions:
                db.execute("DELETE FROM sessions WHERE username = ?", (username,))
            self._bump(db)

    def set_password(self, username: str, password_hash: str) -> None:
        """New password: clears lockout and ends every session of the user."""
        self._update_user(
            username, "password_hash = ?, password_changed_at = ?, failed_logins = 0, locked_until = NULL",
            (password_hash, utcnow()), end_sessions=True,
        )

    def set_disabled(self, username: str, disabled: bool) -> None:
        self._update_user(username, "disabled = ?", (1 if disabled else 0,), end_sessions=disabled)

    def set_totp_secret(self, username: str, secret: str | None) -> None:
        self._update_user(username, "totp_secret = ?", (secret,), end_sessions=True)

    def record_login_failure(self, username: str, now: float, max_failures: int, lock_seconds: float) -> int:
        """Count a failed login; at ``max_failures`` lock the account. Returns the new failure count."""
        with self._tx() as db:
            row = db.execute("SELECT failed_logins FROM users WHERE username = ?", (username,)).fetchone()
            if row is None:
                return 0
            failures = row[0] + 1
            locked = now + lock_seconds if failures >= max_failures else None
            db.execute(
                "UPDATE users SET failed_logins = ?, locked_until = COALESCE(?, locked_until) WHERE username = ?",
                (0 if locked else failures, locked, username),
            )
        return failures

    def clear_login_failures(self, username: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE users SET failed_logins = 0, locked_until = NULL WHERE username = ?", (username,))

    # -- sessions --------------------------------------------------------------------------------------
    def create_session(self, token_hash: str, username: str, now: float, expires_at: float) -> Session:
        with self._tx() as db:
            db.execute("DELETE FROM sessions WHERE expires_at < ?", (now,))
            db.execute(
                "INSERT INTO sessions(token_hash, username, created_at, last_seen, expires_at) VALUES (?, ?, ?, ?, ?)",
                (token_hash, username, now, now, expires_at),
            )
        return Session(token_hash, username, now, now, expires_at)

    def get_session(self, token_hash: str) -> Session | None:
        with self._lock:
            row = self._db.execute(
                "SELECT token_hash, username, created_at, last_seen, expires_at FROM sessions WHERE token_hash = ?",
                (token_hash,),
            ).fetchone()
        return Session(*row) if row else None

    def touch_session(self, token_hash: str, now: float) -> None:
        with self._tx() as db:
            db.execute("UPDATE sessions SET last_seen = ? WHERE token_hash = ?", (now, token_hash))

    def delete_session(self, token_hash: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM sessions WHERE token_hash = ?", (token_hash,))

    # -- study ownership -------------------------------------------------------------------------------
    def claim_study(self, study_uid: str, clinic: str, orthanc_id: str, source: str) -> StudyOwner:
        """Attribute a study to ``clinic`` unless another clinic owns it; returns the (possibly other) owner.

        Atomic, so two clinics racing to create the same Study Instance UID cannot both win.
        """
        with self._tx() as db:
            db.execute(
                "INSERT INTO studies(study_uid, clinic, orthanc_id, source, created_at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT(study_uid) DO NOTHING",
                (study_uid, clinic, orthanc_id, source, utcnow()),
            )
            row = db.execute(
                "SELECT study_uid, clinic, orthanc_id, source, created_at FROM studies WHERE study_uid = ?",
                (study_uid,),
            ).fetchone()
        return StudyOwner(*row)

    def study_owner(self, study_uid: str) -> StudyOwner | None:
        with self._lock:
            row = self._db.execute(
                "SELECT study_uid, clinic, orthanc_id, source, created_at FROM studies WHERE study_uid = ?",
                (study_uid,),
            ).fetchone()
        return StudyOwner(*row) if row else None

    def owner_of_orthanc_study(self, orthanc_id: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT clinic FROM studies WHERE orthanc_id = ?", (orthanc_id,)).fetchone()
        return row[0] if row else None

    def clinic_orthanc_studies(self, clinic: str) -> set[str]:
        with self._lock:
            rows = self._db.execute("SELECT orthanc_id FROM studies WHERE clinic = ?", (clinic,)).fetchall()
        return {r[0] for r in rows}

    def study_uids_of(self, orthanc_ids: Iterable[str]) -> dict[str, str]:
        """Orthanc study ID -> Study Instance UID for the owned studies among ``orthanc_ids``."""
        ids = list(orthanc_ids)
        found: dict[str, str] = {}
        with self._lock:
            for start in range(0, len(ids), 500):  # stay below SQLite's bound-parameter limit
                chunk = ids[start : start + 500]
                marks = ", ".join("?" * len(chunk))
                rows = self._db.execute(
                    f"SELECT orthanc_id, study_uid FROM studies WHERE orthanc_id IN ({marks})",  # noqa: S608
                    chunk,
                ).fetchall()
                found.update(dict(rows))
        return found

    def claim_series(self, series_uid: str, study_uid: str) -> str:
        """Record which study a Series Instance UID belongs to; returns the study it already belonged to."""
        with self._tx() as db:
            db.execute("INSERT INTO series(series_uid, study_uid) VALUES (?, ?) ON CONFLICT(series_uid) DO NOTHING",
                       (series_uid, study_uid))
            return db.execute("SELECT study_uid FROM series WHERE series_uid = ?", (series_uid,)).fetchone()[0]

    def study_of_series(self, series_uid: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT study_uid FROM series WHERE series_uid = ?", (series_uid,)).fetchone()
        return row[0] if row else None


def _match_owner(path: Path, like: Path) -> None:
    """When root creates the file, hand it to the owner of its directory (the Orthanc service user)."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        st = like.stat()
        if st.st_uid != 0:
            os.chown(path, st.st_uid, st.st_gid)
