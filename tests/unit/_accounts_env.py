"""Shared set-up for the account tests: a store with one clinic, an admin and a physician, a fake clock,
and scrypt at a small cost (the real cost is tested in test_passwords)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from securepacs.access import passwords
from securepacs.access.accounts import Accounts, AccountSettings
from securepacs.store.database import Store

ADMIN_PW = "Admin-password-1234"
PW = "Doctor-password-5678"


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def fast_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    real = passwords.hash_password
    monkeypatch.setattr(passwords, "hash_password", lambda password: real(password, n=2**10))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "securepacs.db")
    s.add_clinic("north", ["NORTH_CT"])
    s.add_user("alice", passwords.hash_password(ADMIN_PW), "admin")
    s.add_user("bob", passwords.hash_password(PW), "physician", "north")
    yield s
    s.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def accounts(store: Store, clock: Clock) -> Accounts:
    return Accounts(store, AccountSettings(), clock=clock)
