"""Account administration (shared by the CLI and the admin REST API): validation and each operation."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from _accounts_env import fast_hash  # noqa: F401 (autouse fixture: scrypt at a small cost)

from securepacs.access import passwords, user_admin
from securepacs.access.user_admin import AccountError, UnknownUser, UserExists, WeakPassword
from securepacs.store.database import Store

PW = "Doctor-password-5678"
NOW = 1_700_000_000.0


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "securepacs.db")
    s.add_clinic("north", ["NORTH_CT"])
    s.add_clinic("gone", ["GONE_CT"])
    s.revoke_clinic("gone")
    s.add_user("alice", passwords.hash_password("Admin-password-1234"), "admin")
    yield s
    s.close()


@pytest.mark.parametrize("name", ["bob", "b", "dr.smith", "ct_01", "x-ray", "bob@north", "a" * 64, "0bob",
                                  "dr-clinicA"])
def test_valid_user_names(name: str) -> None:
    assert user_admin.validate_username(name) == name


@pytest.mark.parametrize("name", ["", "bob:x", "bob smith", ".bob", "-bob", "a" * 65, "bob/x", "bøb", None, 7])
def test_invalid_user_names_are_named(name: object) -> None:
    with pytest.raises(AccountError) as info:
        user_admin.validate_username(name)
    assert f"user name {name!r} is invalid: expected 1-64 characters" in str(info.value)


def test_create_with_a_generated_password(store: Store) -> None:
    created = user_admin.create_user(store, "bob", "physician", "north", actor="alice")
    assert created.generated_password is not None
    user_admin.check_password_strength(created.generated_password, "bob")
    stored = store.get_user("bob")
    assert stored is not None and (stored.role, stored.clinic, stored.disabled) == ("physician", "north", False)
    assert passwords.verify_password(created.generated_password, stored.password_hash)


def test_create_with_a_given_password(store: Store) -> None:
    created = user_admin.create_user(store, "audrey", "auditor", None, PW, actor="alice")
    assert created.generated_password is None
    stored = store.get_user("audrey")
    assert stored is not None and passwords.verify_password(PW, stored.password_hash)


def test_create_logs_the_actor_but_no_password(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="securepacs")
    created = user_admin.create_user(store, "bob", "clinic-device", "north", actor="alice")
    assert "user 'bob' created (role 'clinic-device', clinic 'north') by 'alice'" in caplog.text
    assert created.generated_password is not None and created.generated_password not in caplog.text


@pytest.mark.parametrize(("role", "clinic", "message"), [
    ("superuser", None, "role 'superuser' is invalid: expected one of ['admin', 'physician', 'clinic-device', "
                        "'auditor']"),
    ("physician", None, "role 'physician' acts for one clinic: expected a clinic name"),
    ("clinic-device", None, "role 'clinic-device' acts for one clinic: expected a clinic name"),
    ("physician", "south", "clinic 'south' is not enrolled: expected a clinic from `securepacs clinic list`"),
    ("physician", "gone", "clinic 'gone' was revoked at "),
    ("physician", 7, "clinic 7 is invalid: expected a clinic name"),
    ("admin", "north", "role 'admin' acts for no clinic: expected no clinic, got 'north'"),
    ("auditor", "north", "role 'auditor' acts for no clinic: expected no clinic, got 'north'"),
])
def test_role_and_clinic_rules(store: Store, role: str, clinic: object, message: str) -> None:
    with pytest.raises(AccountError) as info:
        user_admin.create_user(store, "bob", role, clinic, PW, actor="alice")  # type: ignore[arg-type]
    assert message in str(info.value)
    assert store.get_user("bob") is None


def test_create_refuses_duplicates_and_weak_passwords(store: Store) -> None:
    with pytest.raises(UserExists, match="user 'alice' already exists") as info:
        user_admin.create_user(store, "alice", "admin", actor="alice")
    assert info.value.status == 409
    # Names differing only in case would be two people nobody can tell apart in a log.
    with pytest.raises(UserExists, match="user 'Alice' already exists as 'alice'"):
        user_admin.create_user(store, "Alice", "auditor", actor="alice")
    with pytest.raises(WeakPassword, match="password too short"):
        user_admin.create_user(store, "bob", "auditor", None, "short", actor="alice")
    assert store.get_user("bob") is None


def test_reset_password(store: Store) -> None:
    user_admin.create_user(store, "bob", "physician", "north", PW, actor="alice")
    store.record_login_failure("bob", NOW, 1, 900)
    store.create_session("h" * 64, "bob", NOW, NOW + 100)
    generated = user_admin.reset_password(store, "bob", actor="alice")
    assert generated is not None
    user = store.get_user("bob")
    assert user is not None and passwords.verify_password(generated, user.password_hash)
    assert user.locked_until is None and store.get_session("h" * 64) is None

    assert user_admin.reset_password(store, "bob", "Chosen-password-77", actor="alice") is None
    with pytest.raises(WeakPassword):
        user_admin.reset_password(store, "bob", "bob-is-my-name-1", actor="alice")


def test_unknown_users_are_404(store: Store) -> None:
    for call in (lambda: user_admin.reset_password(store, "nobody", actor="a"),
                 lambda: user_admin.set_disabled(store, "nobody", True, actor="a"),
                 lambda: user_admin.unlock(store, "nobody", actor="a"),
                 lambda: user_admin.reset_totp(store, "nobody", actor="a"),
                 lambda: user_admin.get_user(store, "nobody")):
        with pytest.raises(UnknownUser, match="unknown user 'nobody'") as info:
            call()
        assert info.value.status == 404


def test_disable_and_enable(store: Store) -> None:
    user_admin.create_user(store, "bob", "physician", "north", PW, actor="alice")
    store.create_session("h" * 64, "bob", NOW, NOW + 100)
    user_admin.set_disabled(store, "bob", True, actor="alice")
    user = store.get_user("bob")
    assert user is not None and user.disabled and store.get_session("h" * 64) is None
    user_admin.set_disabled(store, "bob", False, actor="alice")
    user = store.get_user("bob")
    assert user is not None and not user.disabled


def test_the_last_enabled_admin_cannot_be_disabled(store: Store) -> None:
    with pytest.raises(AccountError, match="user 'alice' is the only enabled admin"):
        user_admin.set_disabled(store, "alice", True, actor="alice")
    user_admin.create_user(store, "root2", "admin", actor="alice")
    user_admin.set_disabled(store, "alice", True, actor="root2")  # another admin exists now
    with pytest.raises(AccountError, match="user 'root2' is the only enabled admin"):
        user_admin.set_disabled(store, "root2", True, actor="root2")
    user_admin.set_disabled(store, "alice", True, actor="root2")  # already disabled: no-op, allowed


def test_unlock(store: Store) -> None:
    user_admin.create_user(store, "bob", "auditor", None, PW, actor="alice")
    store.record_login_failure("bob", NOW, 1, 900)
    assert user_admin.is_locked(store.get_user("bob"), NOW)  # type: ignore[arg-type]
    user_admin.unlock(store, "bob", actor="alice")
    user = store.get_user("bob")
    assert user is not None and not user_admin.is_locked(user, NOW) and user.failed_logins == 0


def test_reset_totp(store: Store) -> None:
    user_admin.create_user(store, "bob", "auditor", None, PW, actor="alice")
    with pytest.raises(AccountError, match="user 'bob' has no second factor"):
        user_admin.reset_totp(store, "bob", actor="alice")
    store.set_totp_secret("bob", "JBSWY3DPEHPK3PXP")
    user_admin.reset_totp(store, "bob", actor="alice")
    user = store.get_user("bob")
    assert user is not None and user.totp_secret is None


def test_status_and_description(store: Store) -> None:
    user_admin.create_user(store, "bob", "physician", "north", PW, actor="alice")
    user = store.get_user("bob")
    assert user is not None
    assert user_admin.status(user, NOW) == "active"
    store.record_login_failure("bob", NOW, 1, 900)
    store.set_disabled("bob", True)
    store.set_totp_secret("bob", "JBSWY3DPEHPK3PXP")
    user = store.get_user("bob")
    assert user is not None
    assert user_admin.status(user, NOW, clinic_revoked=True) == (
        "disabled, locked until 2023-11-14T22:28:20+00:00, clinic revoked")
    view = user_admin.describe(user, NOW)
    assert view["locked"] is True and view["locked_until"] == "2023-11-14T22:28:20+00:00"
    assert view["totp"] is True and view["disabled"] is True
    assert "JBSWY3DPEHPK3PXP" not in repr(view) and user.password_hash not in repr(view)
    assert user_admin.describe(user, NOW + 901)["locked"] is False  # an expired lock is not shown as locked


# -- separation of duties and service accounts ------------------------------------------------------------
def test_the_admin_api_cannot_create_an_auditor_but_the_cli_can(store: Store) -> None:
    with pytest.raises(user_admin.Forbidden, match="auditor accounts are managed on the host only") as info:
        user_admin.create_user(store, "audrey", "auditor", actor="alice", admin_api=True)
    assert info.value.status == 403 and store.get_user("audrey") is None
    assert user_admin.create_user(store, "audrey", "auditor", actor="root").user.role == "auditor"


@pytest.mark.parametrize("action", ["enable", "reset-password", "unlock", "reset-totp"])
def test_the_admin_api_cannot_take_over_an_auditor(store: Store, action: str) -> None:
    store.add_user("audrey", passwords.hash_password(PW), "auditor")
    store.set_totp_secret("audrey", "JBSWY3DPEHPK3PXP")
    calls = {
        "enable": lambda **kw: user_admin.set_disabled(store, "audrey", False, **kw),
        "reset-password": lambda **kw: user_admin.reset_password(store, "audrey", **kw),
        "unlock": lambda **kw: user_admin.unlock(store, "audrey", **kw),
        "reset-totp": lambda **kw: user_admin.reset_totp(store, "audrey", **kw),
    }
    before = store.get_user("audrey")
    with pytest.raises(user_admin.Forbidden, match=rf"`securepacs user {action} \.\.\.` run as root"):
        calls[action](actor="alice", admin_api=True)
    assert store.get_user("audrey") == before
    calls[action](actor="root")  # the command line (root on the host) may


def test_the_admin_api_may_disable_an_auditor(store: Store) -> None:
    store.add_user("audrey", passwords.hash_password(PW), "auditor")
    user_admin.set_disabled(store, "audrey", True, actor="alice", admin_api=True)
    assert store.get_user("audrey").disabled


@pytest.mark.parametrize("admin_api", [True, False])
def test_service_accounts_are_managed_by_deploy_only(store: Store, admin_api: bool) -> None:
    store.add_user("svc-gateway-0123456789ab", passwords.hash_password(PW), "gateway")
    for call in (lambda: user_admin.reset_password(store, "svc-gateway-0123456789ab", actor="x", admin_api=admin_api),
                 lambda: user_admin.set_disabled(store, "svc-gateway-0123456789ab", True, actor="x",
                                                 admin_api=admin_api)):
        with pytest.raises(user_admin.Forbidden, match="service account, managed by deploy only"):
            call()
