"""The store's SQL schema and its migrations, applied when the read-write store opens.

Split from the ``Store`` class so the tables and their upgrades can be read (and changed) in one place,
apart from the queries. The SQL sticks to what PostgreSQL also accepts. Only a read-write open runs it:
the gateway's read-only view never does.
"""

from __future__ import annotations

import sqlite3

SCHEMA_VERSION = 2

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
CREATE TABLE IF NOT EXISTS sessions (
    token_hash TEXT PRIMARY KEY,
    username TEXT NOT NULL REFERENCES users(username),
    created_at REAL NOT NULL,
    last_seen REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY,
    clinic TEXT NOT NULL REFERENCES clinics(name),
    orthanc_id TEXT NOT NULL,
    source TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS studies_by_clinic ON studies(clinic);
CREATE INDEX IF NOT EXISTS studies_by_orthanc_id ON studies(orthanc_id);
CREATE TABLE IF NOT EXISTS series (
    series_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL REFERENCES studies(study_uid)
);
"""

# Columns added after schema 1 (ALTER TABLE ... ADD COLUMN works on SQLite and PostgreSQL alike).
_USER_COLUMNS_V2 = {
    "failed_logins": "INTEGER NOT NULL DEFAULT 0",
    "locked_until": "REAL",
    "totp_secret": "TEXT",
    "password_changed_at": "TEXT",
}


def apply_schema(db: sqlite3.Connection) -> None:
    """Create missing tables, add columns of later schema versions, record the version (inside a transaction)."""
    # executescript() would commit our transaction first; run the statements one by one instead.
    for statement in _SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)
    existing = {row[1] for row in db.execute("PRAGMA table_info(users)").fetchall()}
    for column, spec in _USER_COLUMNS_V2.items():
        if column not in existing:
            db.execute(f"ALTER TABLE users ADD COLUMN {column} {spec}")
    db.execute(
        "INSERT INTO meta(key, value) VALUES ('schema_version', ?) ON CONFLICT(key) DO UPDATE SET value = ?",
        (str(SCHEMA_VERSION), str(SCHEMA_VERSION)),
    )
    db.execute("INSERT INTO meta(key, value) VALUES ('generation', '0') ON CONFLICT(key) DO NOTHING")
