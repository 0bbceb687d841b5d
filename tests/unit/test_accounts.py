# ruff: noqa: F811  (pytest fixtures imported from _accounts_env are parameters here)
"""Accounts: password policy, lockout, sessions (idle and absolute expiry, CSRF rule), login, password
change and the TOTP second factor. Time is a fake clock; scrypt runs with a small cost."""

from __future__ import annotations

import base64
import logging
import sqlite3
from pathlib import Path

import pytest

# The shared fixtures are imported by name; tests receive them as parameters of the same names.
from _accounts_env import ADMIN_PW, PW, Clock, accounts, clock, fast_hash, store  # noqa: F401

from securepacs.access import accounts as accounts_mod
from securepacs.access import passwords, totp
from securepacs.access.accounts import (
    LOGIN_FAILED,
    SESSION_COOKIE,
    THROTTLED,
    AccountError,
    Accounts,
    AccountSettings,
    AuthResult,
    LoginFailed,
    LoginResult,
    Throttled,
    TotpRequired,
    check_password_strength,
    cookie_value,
    session_token,
    token_hash,
)
from securepacs.access.principal import Principal
from securepacs.access.user_admin import WeakPassword
from securepacs.config.plugin_settings import PluginConfig
from securepacs.ops import deploy
from securepacs.store.database import Store

IP = "203.0.113.9"


def basic(username: str, password: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()}


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def cookie(token: str, **extra: str) -> dict[str, str]:
    return {"cookie": f"theme=dark; {SESSION_COOKIE}={token}; other=1", **extra}


def enrol_totp(accounts: Accounts, clock: Clock, username: str = "bob", password: str = PW) -> str:
    secret = accounts.begin_totp(username, password).secret
    accounts.confirm_totp(username, totp.code_at(secret, clock.now))
    clock.now += totp.STEP_SECONDS  # the confirming code is spent; the next login needs the next one
    return secret


# -- password policy ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("password", [
    "Correct-Horse7",  # 14 characters, 4 classes
    "correct7horse!",  # 3 classes
    "correcthorsebatterystaple",  # a passphrase: long enough without classes
    "ab" * 3 + "cdefghijkl",  # 16 characters exactly, one class
    "x" * 200 + "Abc1!",
])
def test_strong_passwords_are_accepted(password: str) -> None:
    check_password_strength(password, "bob")


@pytest.mark.parametrize(("password", "rule"), [
    ("Short-pw-1", "password too short: expected at least 12 characters"),
    ("Aa1!Aa1!Aa1!Aa1!", "password too simple: expected at least 5 distinct characters"),
    ("correcthorse1", "password too simple: expected at least 3 of lower-case, upper-case, digits and other"),
    ("CORRECT-HORSE", "password too simple: expected at least 3 of"),
    ("Xy1!z" * 52, "password too long: expected at most 256 characters"),
    ("My-Bob-Password-9", "password contains the user name 'bob'"),
    ("my-BOB-password-9", "password contains the user name 'bob'"),
])
def test_weak_passwords_are_refused_naming_the_rule(password: str, rule: str) -> None:
    with pytest.raises(WeakPassword) as info:
        check_password_strength(password, "bob")
    assert rule in str(info.value)
    assert isinstance(info.value, AccountError)


def test_short_user_names_are_not_searched_for() -> None:
    check_password_strength("Alpha-bravo-7", "al")  # "al" is a substring of ordinary words


def test_non_string_password_is_refused() -> None:
    with pytest.raises(WeakPassword, match="password must be a string, not int"):
        check_password_strength(12345678901234, "bob")  # type: ignore[arg-type]


def test_first_admin_password_passes_the_policy(tmp_path: Path) -> None:
    fresh = Store(tmp_path / "fresh.db")
    try:
        assert deploy.ensure_admin(fresh, tmp_path / "secrets" / "admin-credential.txt")
    finally:
        fresh.close()
    lines = (tmp_path / "secrets" / "admin-credential.txt").read_text().splitlines()
    password = lines[1].removeprefix("password: ")
    check_password_strength(password, deploy.ADMIN_USER)


def test_generated_passwords_pass_the_policy_for_the_admin_name() -> None:
    # passwords.generate_password is what deploy.ensure_admin uses: 22 URL-safe characters, so the
    # length rule waives character classes and 5 distinct characters are all but certain.
    for _ in range(200):
        check_password_strength(passwords.generate_password(), deploy.ADMIN_USER)


# -- settings ------------------------------------------------------------------------------------------
def test_settings_from_the_plugin_configuration(tmp_path: Path) -> None:
    config = PluginConfig(store_path=tmp_path / "s.db", auth_cache_seconds=7, session_idle_seconds=300,
                          session_max_seconds=3600, max_login_failures=3, lockout_seconds=60)
    assert AccountSettings.from_config(config) == AccountSettings(
        session_idle_seconds=300, session_max_seconds=3600, max_login_failures=3, lockout_seconds=60,
        auth_cache_seconds=7)


def test_default_settings_are_hipaa_automatic_logoff() -> None:
    s = AccountSettings()
    assert (s.session_idle_seconds, s.session_max_seconds) == (900, 43200)
    assert (s.max_login_failures, s.lockout_seconds) == (5, 900)


# -- Basic: lockout --------------------------------------------------------------------------------------
def test_basic_success(accounts: Accounts) -> None:
    result = accounts.authenticate("GET", basic("bob", PW))
    assert result == AuthResult(Principal("bob", "physician", "north"), "basic", "bob", "basic")


def test_repeated_wrong_passwords_lock_the_account(accounts: Accounts, store: Store, clock: Clock,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    for attempt in range(1, 5):  # from four addresses: one address alone is throttled before it can lock
        assert accounts.authenticate("GET", basic("bob", "wrong"), f"198.51.100.{attempt}").principal is None
        user = store.get_user("bob")
        assert user is not None and user.failed_logins == attempt and user.locked_until is None
    assert accounts.authenticate("GET", basic("bob", "wrong"), IP).principal is None
    user = store.get_user("bob")
    assert user is not None and user.locked_until == clock.now + 900
    assert "user 'bob' locked for 900 s after 5 failed attempts (last via HTTP Basic from '203.0.113.9')" in caplog.text

    # Locked: even the right password is refused, without checking it.
    result = accounts.authenticate("GET", basic("bob", PW), IP)
    assert result.principal is None and result.username is None
    assert result.reason == "user 'bob' is locked after repeated failed logins"
    with pytest.raises(LoginFailed, match=LOGIN_FAILED):
        accounts.login("bob", PW, None, IP)

    clock.now += 901  # the lock runs out by itself
    assert accounts.authenticate("GET", basic("bob", PW), IP).principal is not None


def test_no_password_is_checked_while_locked(accounts: Accounts, store: Store, clock: Clock,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    store.record_login_failure("bob", clock.now, 1, 900)
    checked: list[str] = []
    monkeypatch.setattr(passwords, "verify_password", lambda pw, encoded: checked.append(encoded) or True)
    assert accounts.authenticate("GET", basic("bob", PW)).principal is None
    with pytest.raises(LoginFailed, match=LOGIN_FAILED):
        accounts.login("bob", PW, None, IP)
    # Nothing to learn about the password while locked; only the dummy hash is verified, so a locked
    # account answers as slowly as a wrong password (timing does not reveal the lock).
    assert checked == [accounts_mod.DUMMY_HASH, accounts_mod.DUMMY_HASH]


def test_cached_credential_is_refused_while_locked(accounts: Accounts, store: Store, clock: Clock) -> None:
    assert accounts.authenticate("GET", basic("bob", PW)).principal is not None
    store.record_login_failure("bob", clock.now, 1, 900)
    assert accounts.authenticate("GET", basic("bob", PW)).principal is None


def test_success_clears_the_failure_count(accounts: Accounts, store: Store) -> None:
    for i in range(4):
        accounts.authenticate("GET", basic("bob", "wrong"), f"198.51.100.{i}")
    assert accounts.authenticate("GET", basic("bob", PW), IP).principal is not None
    user = store.get_user("bob")
    assert user is not None and user.failed_logins == 0
    for i in range(4):  # four more do not lock: the count started again
        accounts.authenticate("GET", basic("bob", "wrong"), f"198.51.100.{10 + i}")
    assert accounts.authenticate("GET", basic("bob", PW), IP).principal is not None


def test_lockout_settings_apply(store: Store, clock: Clock) -> None:
    accounts = Accounts(store, AccountSettings(max_login_failures=2, lockout_seconds=30), clock=clock)
    for _ in range(2):
        accounts.authenticate("GET", basic("bob", "wrong"))
    assert accounts.authenticate("GET", basic("bob", PW)).principal is None
    clock.now += 31
    assert accounts.authenticate("GET", basic("bob", PW)).principal is not None


def test_basic_is_refused_for_an_account_with_a_second_factor(accounts: Accounts, clock: Clock,
                                                              store: Store) -> None:
    enrol_totp(accounts, clock)
    result = accounts.authenticate("GET", basic("bob", PW))
    assert result.principal is None
    assert result.reason == "user 'bob' has a second factor: HTTP Basic is not accepted, log in at /securepacs/login"
    for _ in range(10):  # no password oracle, so nothing to count either
        accounts.authenticate("GET", basic("bob", "wrong"))
    user = store.get_user("bob")
    assert user is not None and user.failed_logins == 0 and user.locked_until is None


# -- sessions ---------------------------------------------------------------------------------------------
def test_login_opens_a_session_usable_as_bearer_and_cookie(accounts: Accounts, clock: Clock) -> None:
    result = accounts.login("bob", PW, None, IP)
    assert isinstance(result, LoginResult)
    assert (result.username, result.expires_at, result.idle_seconds) == ("bob", clock.now + 43200, 900)
    bob = Principal("bob", "physician", "north")
    assert accounts.authenticate("GET", bearer(result.token)) == AuthResult(bob, "bearer", "bob", "bearer")
    assert accounts.authenticate("GET", cookie(result.token)) == AuthResult(bob, "cookie", "bob", "cookie")


def test_only_the_token_hash_is_stored(accounts: Accounts, store: Store) -> None:
    token = accounts.login("bob", PW, None, IP).token
    assert store.get_session(token) is None
    session = store.get_session(token_hash(token))
    assert session is not None and session.username == "bob"
    with sqlite3.connect(store.path) as db:
        rows = db.execute("SELECT * FROM sessions").fetchall()
    db.close()
    assert token not in repr(rows)


def test_tokens_are_unique_and_long(accounts: Accounts) -> None:
    tokens = {accounts.login("bob", PW, None, IP).token for _ in range(5)}
    assert len(tokens) == 5
    assert all(len(t) >= 43 for t in tokens)  # 32 random bytes


def test_idle_session_expires_and_is_deleted(accounts: Accounts, store: Store, clock: Clock) -> None:
    token = accounts.login("bob", PW, None, IP).token
    clock.now += 900  # exactly the limit: still fine
    assert accounts.authenticate("GET", bearer(token)).principal is not None
    clock.now += 901
    result = accounts.authenticate("GET", bearer(token))
    assert result.principal is None
    assert result.reason == "session expired after 900 s without activity"
    assert store.get_session(token_hash(token)) is None
    assert accounts.authenticate("GET", bearer(token)).reason == "unknown or ended session"


def test_activity_keeps_a_session_alive_until_the_absolute_limit(accounts: Accounts, clock: Clock) -> None:
    token = accounts.login("bob", PW, None, IP).token
    start = clock.now
    while clock.now + 600 < start + 43200:
        clock.now += 600
        assert accounts.authenticate("GET", bearer(token)).principal is not None, clock.now - start
    clock.now = start + 43200
    result = accounts.authenticate("GET", bearer(token))
    assert result.principal is None and result.reason == "session expired (absolute limit)"


def test_last_seen_is_written_at_most_every_30_seconds(accounts: Accounts, store: Store, clock: Clock) -> None:
    token = accounts.login("bob", PW, None, IP).token
    created = clock.now
    clock.now += 10
    accounts.authenticate("GET", bearer(token))
    session = store.get_session(token_hash(token))
    assert session is not None and session.last_seen == created  # no write for a request 10 s later
    clock.now += 25
    accounts.authenticate("GET", bearer(token))
    session = store.get_session(token_hash(token))
    assert session is not None and session.last_seen == clock.now


def test_short_idle_limits_are_touched_more_often(store: Store, clock: Clock) -> None:
    accounts = Accounts(store, AccountSettings(session_idle_seconds=5), clock=clock)
    token = accounts.login("bob", PW, None, IP).token
    for _ in range(10):  # a request every 2 s keeps a 5 s session alive
        clock.now += 2
        assert accounts.authenticate("GET", bearer(token)).principal is not None
    clock.now += 6
    assert accounts.authenticate("GET", bearer(token)).principal is None


def test_logout_ends_the_session(accounts: Accounts, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="securepacs")
    token = accounts.login("bob", PW, None, IP).token
    other = accounts.login("bob", PW, None, IP).token
    accounts.logout(token)
    assert accounts.authenticate("GET", bearer(token)).principal is None
    assert accounts.authenticate("GET", bearer(other)).principal is not None  # only this session
    assert "user 'bob' logged out" in caplog.text
    assert token not in caplog.text and other not in caplog.text


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OTHER"])
def test_cookie_needs_the_csrf_header_for_unsafe_methods(accounts: Accounts, method: str) -> None:
    token = accounts.login("bob", PW, None, IP).token
    refused = accounts.authenticate(method, cookie(token))
    assert refused.principal is None
    assert refused.reason == (f"cookie-authenticated {method} without header X-Requested-With: SecurePACS "
                              "(cross-site request defence)")
    assert accounts.authenticate(method, cookie(token, **{"x-requested-with": "XMLHttpRequest"})).principal is None
    assert accounts.authenticate(method, cookie(token, **{"x-requested-with": "SecurePACS"})).principal is not None
    # Bearer tokens are not sent by browsers on their own: no CSRF header needed.
    assert accounts.authenticate(method, bearer(token)).principal is not None


def test_a_bad_authorization_header_does_not_fall_back_to_the_cookie(accounts: Accounts) -> None:
    token = accounts.login("bob", PW, None, IP).token
    assert accounts.authenticate("GET", {**cookie(token), **basic("bob", "wrong")}).principal is None
    assert accounts.authenticate("GET", {**cookie(token), "authorization": "Bearer " + "x" * 43}).principal is None


@pytest.mark.parametrize("token", ["", "short", "a" * 31, "a" * 129, "bad token with spaces" * 3, "é" * 43])
def test_malformed_tokens_are_refused_without_a_lookup(accounts: Accounts, token: str) -> None:
    assert accounts.authenticate("GET", bearer(token)).principal is None
    assert accounts.session(token) is None


def test_disabling_ends_sessions(accounts: Accounts, store: Store) -> None:
    token = accounts.login("bob", PW, None, IP).token
    store.set_disabled("bob", True)
    assert accounts.authenticate("GET", bearer(token)).principal is None


def test_disabled_behind_the_stores_back_is_refused(accounts: Accounts, store: Store) -> None:
    token = accounts.login("bob", PW, None, IP).token
    with sqlite3.connect(store.path) as db:
        db.execute("UPDATE users SET disabled = 1 WHERE username = 'bob'")
    db.close()
    result = accounts.authenticate("GET", bearer(token))
    assert (result.principal, result.reason, result.username) == (None, "account disabled", "bob")


def test_revoked_clinic_ends_access_of_its_sessions(accounts: Accounts, store: Store) -> None:
    token = accounts.login("bob", PW, None, IP).token
    store.revoke_clinic("north")
    result = accounts.authenticate("GET", bearer(token))
    assert result.principal is None and result.reason.startswith("clinic 'north' was revoked at ")


@pytest.mark.parametrize(("role", "clinic", "reason"), [
    ("physician", None, "account with role 'physician' has no clinic"),
    ("clinic-device", "south", "clinic 'south' is not enrolled"),
    ("admin", "north", "account with role 'admin' must not have a clinic (has 'north')"),
    ("auditor", "north", "account with role 'auditor' must not have a clinic (has 'north')"),
])
def test_inconsistent_accounts_are_refused(store: Store, accounts: Accounts, role: str, clinic: str | None,
                                           reason: str) -> None:
    # Written behind the validation (as an old or hand-edited store could be): refused, never guessed at.
    with sqlite3.connect(store.path) as db:
        db.execute("PRAGMA foreign_keys = OFF")
        db.execute("INSERT INTO users(username, password_hash, role, clinic, disabled, created_at)"
                   " VALUES ('odd', ?, ?, ?, 0, '2024-01-01')", (passwords.hash_password(PW), role, clinic))
    db.close()
    result = accounts.authenticate("GET", basic("odd", PW))
    assert result.principal is None and result.reason.startswith(reason)


def test_session_cookie_helpers() -> None:
    assert cookie_value("a=1; securepacs_session=tok; b=2", SESSION_COOKIE) == "tok"
    assert cookie_value("securepacs_session_x=tok", SESSION_COOKIE) is None
    assert cookie_value("", SESSION_COOKIE) is None
    assert session_token({"authorization": "Bearer abc"}) == ("abc", "bearer")
    assert session_token({"authorization": "Basic abc", "cookie": "securepacs_session=t"}) == (None, None)
    assert session_token({"cookie": "securepacs_session=t"}) == ("t", "cookie")
    assert session_token({}) == (None, None)


# -- login ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("username", "password"), [("bob", "wrong"), ("nobody", PW), ("BOB", PW)])
def test_login_failures_look_the_same(accounts: Accounts, username: str, password: str) -> None:
    with pytest.raises(LoginFailed) as info:
        accounts.login(username, password, None, IP)
    assert str(info.value) == LOGIN_FAILED
    assert info.value.status == 403


def test_login_counts_failures_and_locks(accounts: Accounts, store: Store) -> None:
    for i in range(5):
        with pytest.raises(LoginFailed):
            accounts.login("bob", "wrong", None, f"198.51.100.{i // 2}")  # two per address: none throttled
    with pytest.raises(LoginFailed):
        accounts.login("bob", PW, None, IP)
    store.clear_login_failures("bob")  # what `securepacs user unlock` does
    assert accounts.login("bob", PW, None, IP).token


def test_disabled_user_cannot_log_in(accounts: Accounts, store: Store) -> None:
    store.set_disabled("bob", True)
    with pytest.raises(LoginFailed, match=LOGIN_FAILED):
        accounts.login("bob", PW, None, IP)


def test_login_logs_without_secrets(accounts: Accounts, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="securepacs")
    token = accounts.login("bob", PW, None, IP).token
    with pytest.raises(LoginFailed):
        accounts.login("bob", "Wrong-secret-99", None, IP)
    assert "user 'bob' logged in from '203.0.113.9'" in caplog.text
    assert "authentication failed for user 'bob' via login from '203.0.113.9' (failure 1 of 5)" in caplog.text
    for secret in (PW, "Wrong-secret-99", token, token_hash(token)):
        assert secret not in caplog.text


def test_login_requires_strings(accounts: Accounts) -> None:
    with pytest.raises(AccountError, match="must be strings"):
        accounts.login("bob", None, None, IP)  # type: ignore[arg-type]


# -- TOTP ------------------------------------------------------------------------------------------------
def test_totp_login_needs_a_fresh_code(accounts: Accounts, clock: Clock, store: Store) -> None:
    secret = enrol_totp(accounts, clock)
    with pytest.raises(TotpRequired) as info:
        accounts.login("bob", PW, None, IP)
    assert "second factor required" in str(info.value)
    with pytest.raises(LoginFailed, match=LOGIN_FAILED):
        accounts.login("bob", PW, "000000" if totp.code_at(secret, clock.now) != "000000" else "111111", IP)
    user = store.get_user("bob")
    assert user is not None and user.failed_logins == 1  # a wrong code counts like a wrong password

    code = totp.code_at(secret, clock.now)
    result = accounts.login("bob", PW, code, IP)
    assert accounts.authenticate("GET", bearer(result.token)).principal is not None
    user = store.get_user("bob")
    assert user is not None and user.failed_logins == 0

    with pytest.raises(LoginFailed):  # the same code again: a replay, even within its 30 s
        accounts.login("bob", PW, code, IP)
    clock.now += totp.STEP_SECONDS
    assert accounts.login("bob", PW, totp.code_at(secret, clock.now), IP).token


def test_totp_code_of_a_neighbouring_step_is_accepted(accounts: Accounts, clock: Clock) -> None:
    secret = enrol_totp(accounts, clock)
    clock.now += 10 * totp.STEP_SECONDS
    late_phone = totp.code_at(secret, clock.now - totp.STEP_SECONDS)
    assert accounts.login("bob", PW, late_phone, IP).token


def test_totp_wrong_password_is_refused_before_the_code(accounts: Accounts, clock: Clock) -> None:
    secret = enrol_totp(accounts, clock)
    with pytest.raises(LoginFailed, match=LOGIN_FAILED):
        accounts.login("bob", "wrong", totp.code_at(secret, clock.now), IP)


def test_totp_enrolment(accounts: Accounts, clock: Clock, store: Store) -> None:
    session = accounts.login("bob", PW, None, IP).token
    enrolment = accounts.begin_totp("bob", PW)
    assert enrolment.uri.startswith("otpauth://totp/")
    assert f"secret={enrolment.secret}" in enrolment.uri and "issuer=SecurePACS" in enrolment.uri
    assert enrolment.expires_at == clock.now + 600
    user = store.get_user("bob")
    assert user is not None and user.totp_secret is None  # nothing active before the confirmation

    with pytest.raises(AccountError, match="code does not match"):
        accounts.confirm_totp("bob", "12345")
    accounts.confirm_totp("bob", totp.code_at(enrolment.secret, clock.now))
    user = store.get_user("bob")
    assert user is not None and user.totp_secret == enrolment.secret
    assert accounts.authenticate("GET", bearer(session)).principal is None  # sessions ended

    with pytest.raises(AccountError, match="no second-factor enrolment in progress"):
        accounts.confirm_totp("bob", totp.code_at(enrolment.secret, clock.now))
    with pytest.raises(AccountError, match="already has a second factor"):
        accounts.begin_totp("bob", PW)


def test_totp_enrolment_needs_the_password(accounts: Accounts, store: Store) -> None:
    with pytest.raises(LoginFailed):
        accounts.begin_totp("bob", "wrong")
    user = store.get_user("bob")
    assert user is not None and user.failed_logins == 1


def test_totp_enrolment_expires(accounts: Accounts, clock: Clock) -> None:
    enrolment = accounts.begin_totp("bob", PW)
    clock.now += 601
    with pytest.raises(AccountError, match="no second-factor enrolment in progress"):
        accounts.confirm_totp("bob", totp.code_at(enrolment.secret, clock.now))


def test_confirming_code_cannot_log_in(accounts: Accounts, clock: Clock) -> None:
    enrolment = accounts.begin_totp("bob", PW)
    code = totp.code_at(enrolment.secret, clock.now)
    accounts.confirm_totp("bob", code)
    with pytest.raises(LoginFailed):
        accounts.login("bob", PW, code, IP)


def test_disable_totp(accounts: Accounts, clock: Clock) -> None:
    secret = enrol_totp(accounts, clock)
    token = accounts.login("bob", PW, totp.code_at(secret, clock.now), IP).token
    clock.now += 30
    accounts.disable_totp("bob", PW, totp.code_at(secret, clock.now), IP)
    assert accounts.authenticate("GET", bearer(token)).principal is None  # sessions ended
    assert accounts.authenticate("GET", basic("bob", PW)).principal is not None  # Basic works again
    with pytest.raises(AccountError, match="has no second factor"):
        accounts.disable_totp("bob", PW, "123456", IP)


def test_removing_totp_needs_the_password_and_a_current_code(accounts: Accounts, store: Store,
                                                              clock: Clock) -> None:
    """A stolen session alone must not downgrade the account to password only."""
    secret = enrol_totp(accounts, clock)
    clock.now += 30
    code = totp.code_at(secret, clock.now)
    with pytest.raises(LoginFailed, match=LOGIN_FAILED):
        accounts.disable_totp("bob", "Wrong-password-1", code, IP)
    wrong_code = f"{(int(code) + 1) % 1_000_000:06d}"
    with pytest.raises(LoginFailed, match=LOGIN_FAILED):
        accounts.disable_totp("bob", PW, wrong_code, IP)
    with pytest.raises(AccountError, match="'password' and 'code' must be strings"):
        accounts.disable_totp("bob", PW, None, IP)  # type: ignore[arg-type]
    user = store.get_user("bob")
    assert user is not None and user.totp_secret == secret and user.failed_logins == 2  # both counted


# -- per-address throttle ----------------------------------------------------------------------------------
ATTACKER = "198.51.100.66"


def test_one_address_is_throttled_before_it_can_lock_an_account(accounts: Accounts, store: Store,
                                                                 clock: Clock) -> None:
    """The lockout-as-a-weapon case: an attacker guessing the admin's password from one address is
    throttled after 4 failures (below the lockout's 5); the real admin from elsewhere still gets in."""
    for _ in range(4):
        with pytest.raises(LoginFailed, match=LOGIN_FAILED):
            accounts.login("alice", "Wrong-password-1", None, ATTACKER)
    for _ in range(50):
        with pytest.raises(Throttled) as info:
            accounts.login("alice", "Wrong-password-1", None, ATTACKER)
        assert info.value.status == 403 and info.value.retry_after == 60
        assert accounts.authenticate("GET", basic("alice", "Wrong-password-1"), ATTACKER).reason.startswith(
            THROTTLED)
    user = store.get_user("alice")
    assert user is not None and (user.failed_logins, user.locked_until) == (4, None)
    assert accounts.login("alice", ADMIN_PW, None, IP).token  # the real admin, another address
    # Even the right password is not checked from the throttled address (no oracle while throttled).
    with pytest.raises(Throttled):
        accounts.login("alice", ADMIN_PW, None, ATTACKER)
    clock.now += 61
    assert accounts.login("alice", ADMIN_PW, None, ATTACKER).token


def test_throttled_attempts_check_no_password(accounts: Accounts, monkeypatch: pytest.MonkeyPatch) -> None:
    for _ in range(4):
        accounts.authenticate("GET", basic("nobody", "x"), ATTACKER)
    checked: list[str] = []
    monkeypatch.setattr(passwords, "verify_password", lambda pw, encoded: checked.append(encoded) or True)
    assert accounts.authenticate("GET", basic("nobody", "x"), ATTACKER).principal is None
    with pytest.raises(Throttled):
        accounts.login("nobody", "x", None, ATTACKER)
    assert checked == []


def test_the_throttle_doubles_while_the_attack_goes_on(accounts: Accounts, clock: Clock) -> None:
    blocks = []
    for _ in range(3):
        for _ in range(4):
            with pytest.raises(LoginFailed):
                accounts.login("alice", "Wrong-password-1", None, ATTACKER)
        with pytest.raises(Throttled) as info:
            accounts.login("alice", "Wrong-password-1", None, ATTACKER)
        blocks.append(info.value.retry_after)
        clock.now += info.value.retry_after + 1
        accounts.login("alice", ADMIN_PW, None, IP)  # the admin's success does not forgive the attacker
    assert blocks == [60, 120, 240]


def test_spraying_names_from_one_address_is_throttled(accounts: Accounts) -> None:
    for i in range(19):
        with pytest.raises(LoginFailed):
            accounts.login(f"user{i // 3}", "Wrong-password-1", None, ATTACKER)
    with pytest.raises(LoginFailed):
        accounts.login("bob", "Wrong-password-1", None, ATTACKER)  # the 20th failure for any name
    with pytest.raises(Throttled):
        accounts.login("carol", "Wrong-password-1", None, ATTACKER)


def test_ipv6_addresses_are_throttled_per_64(accounts: Accounts) -> None:
    for i in range(4):
        with pytest.raises(LoginFailed):
            accounts.login("alice", "Wrong-password-1", None, f"2001:db8:1:2::{i + 1}")
    with pytest.raises(Throttled):
        accounts.login("alice", ADMIN_PW, None, "2001:db8:1:2:ffff::9")
    assert accounts.login("alice", ADMIN_PW, None, "2001:db8:1:3::1").token


def test_unknown_and_service_names_cost_a_dummy_verification_at_login(accounts: Accounts, store: Store,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    store.add_user("svc-gateway-0123456789ab", passwords.hash_password("Gateway-password-0123"), "gateway")
    checked: list[str] = []
    monkeypatch.setattr(passwords, "verify_password", lambda pw, encoded: checked.append(encoded) or True)
    for name in ("nobody", "svc-gateway-0123456789ab"):  # service accounts never log in: an unknown name
        with pytest.raises(LoginFailed, match=LOGIN_FAILED):
            accounts.login(name, "Gateway-password-0123", None, IP)
    assert checked == [accounts_mod.DUMMY_HASH, accounts_mod.DUMMY_HASH]


def test_every_login_gets_a_new_token(accounts: Accounts) -> None:
    tokens = {accounts.login("bob", PW, None, IP).token for _ in range(3)}
    assert len(tokens) == 3


# -- password change -----------------------------------------------------------------------------------
def test_change_password(accounts: Accounts, store: Store) -> None:
    token = accounts.login("bob", PW, None, IP).token
    assert accounts.authenticate("GET", basic("bob", PW)).principal is not None  # cached now
    accounts.change_password("bob", PW, "New-password-4321")
    assert accounts.authenticate("GET", bearer(token)).principal is None
    assert accounts.authenticate("GET", basic("bob", PW)).principal is None  # the cache did not keep it
    assert accounts.authenticate("GET", basic("bob", "New-password-4321")).principal is not None
    user = store.get_user("bob")
    assert user is not None and user.password_changed_at is not None


def test_change_password_checks_the_current_one(accounts: Accounts, store: Store) -> None:
    with pytest.raises(LoginFailed):
        accounts.change_password("bob", "wrong", "New-password-4321")
    user = store.get_user("bob")
    assert user is not None and user.failed_logins == 1
    assert accounts.authenticate("GET", basic("bob", PW)).principal is not None


@pytest.mark.parametrize(("new", "message"), [
    (PW, "new password equals the current one"),
    ("short", "password too short"),
    ("Bob-password-1234", "password contains the user name 'bob'"),
])
def test_change_password_refuses_weak_ones(accounts: Accounts, new: str, message: str) -> None:
    with pytest.raises(WeakPassword, match=message):
        accounts.change_password("bob", PW, new)
    assert accounts.authenticate("GET", basic("bob", PW)).principal is not None
