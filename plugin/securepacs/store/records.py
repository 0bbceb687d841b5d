"""The values the store hands out (clinics, certificates, users, sessions, study owners) and its error.

Split from the ``Store`` class: callers that only pass these records around need not know how they are
stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime


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
    failed_logins: int = 0
    locked_until: float | None = None  # epoch seconds
    totp_secret: str | None = None
    password_changed_at: str | None = None


@dataclass(frozen=True)
class Session:
    token_hash: str
    username: str
    created_at: float  # epoch seconds
    last_seen: float
    expires_at: float  # absolute expiry


@dataclass(frozen=True)
class StudyOwner:
    study_uid: str
    clinic: str
    orthanc_id: str
    source: str
    created_at: str


USER_FIELDS = ("username, password_hash, role, clinic, disabled, created_at, failed_logins, locked_until, "
               "totp_secret, password_changed_at")


def user_from_row(row: tuple) -> User:
    """A ``User`` from a row selected with ``USER_FIELDS``."""
    return User(row[0], row[1], row[2], row[3], bool(row[4]), row[5], row[6], row[7], row[8], row[9])


def utcnow() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")

