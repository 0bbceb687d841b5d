"""Account administration shared by ``securepacs user ...`` and the admin REST API.

Every account exists because an admin created it (or ``deploy.ensure_admin`` at init): there is no
self-registration. Separation of duties: admins cannot read the audit trail, so through the admin REST
API (``admin_api=True``) they also cannot create, enable, reset or unlock an *auditor* account — else
they could make themselves one. That takes ``securepacs user ...`` on the host (root, who owns the store).
Service accounts (``SERVICE_ROLES``) are managed by deploy only. Inputs are validated here once, so the
command line and the REST API refuse the same values with the same words. Errors are
:class:`AccountError` subclasses carrying the HTTP status the REST API answers with.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from securepacs.access import passwords
from securepacs.access.principal import ADMIN, AUDITOR, CLINIC_ROLES, SERVICE_ROLES, USER_ROLES
from securepacs.store.database import Store, StoreError, User

log = logging.getLogger(__name__)

# No ":" (HTTP Basic separates on it), no spaces or "/" (names appear in URIs and logs). Names differing
# only in case are refused at creation, so "Admin" and "admin" cannot be two people.
USERNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
MAX_PASSWORD_LENGTH = 256  # scrypt would take anything; a bound keeps request bodies and work small
PASSPHRASE_LENGTH = 16  # from this length on, character classes are not required
MIN_CLASSES = 3
USERNAME_IN_PASSWORD_MIN = 3  # shorter names would forbid ordinary passwords ("al" in "total")


class AccountError(ValueError):
    """An account operation was refused; the message names the value and what was expected."""

    status = 400


class UnknownUser(AccountError):
    status = 404


class UserExists(AccountError):
    status = 409


class WeakPassword(AccountError):
    status = 400


class Forbidden(AccountError):
    status = 403


AUDITOR_BY_CLI = ("auditor accounts are managed on the host only (separation of duties: admins cannot read the "
                  "audit trail, so they must not be able to make themselves an auditor): expected `securepacs user "
                  "{action} ...` run as root")


def check_manageable(user_role: str, action: str, *, admin_api: bool) -> None:
    """Refuse ``action`` on an account of ``user_role`` when the caller may not do it (see module doc)."""
    if user_role in SERVICE_ROLES:
        raise Forbidden(f"role {user_role!r} is a service account, managed by deploy only: expected to delete its "
                        "credential file and restart to replace its password")
    if admin_api and user_role == AUDITOR and action != "disable":  # disabling only takes access away
        raise Forbidden(AUDITOR_BY_CLI.format(action=action))


@dataclass(frozen=True)
class Created:
    user: User
    generated_password: str | None  # shown once to the admin; None when the admin supplied one


def validate_username(username: object) -> str:
    if not isinstance(username, str) or not USERNAME_RE.match(username):
        raise AccountError(f"user name {username!r} is invalid: expected 1-64 characters of letters, digits, "
                           "'.', '_', '@', '-', starting with a letter or digit")
    return username


def check_password_strength(password: object, username: str) -> None:
    """Refuse a weak password, naming the rule it breaks. The rules, in order:

    1. 12-256 characters, at least 5 of them distinct (``passwords.check_strength``);
    2. it does not contain the user name (case-insensitive, for names of 3 or more characters);
    3. it mixes at least 3 of: lower-case letters, upper-case letters, digits, other characters —
       unless it is 16 characters or longer (a passphrase is strong through its length).
    """
    if not isinstance(password, str):
        raise WeakPassword(f"password must be a string, not {type(password).__name__}")
    try:
        passwords.check_strength(password)
    except passwords.PasswordError as exc:
        raise WeakPassword(str(exc)) from None
    if len(password) > MAX_PASSWORD_LENGTH:
        raise WeakPassword(f"password too long: expected at most {MAX_PASSWORD_LENGTH} characters")
    if len(username) >= USERNAME_IN_PASSWORD_MIN and username.lower() in password.lower():
        raise WeakPassword(f"password contains the user name {username!r}: expected a password without it")
    if len(password) < PASSPHRASE_LENGTH:
        classes = sum((
            any(c.islower() for c in password),
            any(c.isupper() for c in password),
            any(c.isdigit() for c in password),
            any(not c.isalnum() for c in password),
        ))
        if classes < MIN_CLASSES:
            raise WeakPassword(
                f"password too simple: expected at least {MIN_CLASSES} of lower-case, upper-case, digits and "
                f"other characters, or at least {PASSPHRASE_LENGTH} characters"
            )


def generate_password(username: str) -> str:
    """A random password that passes the policy for ``username`` (≈ 128 bits)."""
    while True:  # a retry is astronomically rare (the name would have to appear in random text)
        password = passwords.generate_password()
        try:
            check_password_strength(password, username)
        except WeakPassword:
            continue
        return password


def validate_role_and_clinic(store: Store, role: object, clinic: object) -> None:
    """Clinic roles name an enrolled, unrevoked clinic; admins and auditors are not bound to one."""
    if role not in USER_ROLES:
        raise AccountError(f"role {role!r} is invalid: expected one of {list(USER_ROLES)}")
    if role not in CLINIC_ROLES:
        if clinic is not None:
            raise AccountError(f"role {role!r} acts for no clinic: expected no clinic, got {clinic!r}")
        return
    if clinic is None:
        raise AccountError(f"role {role!r} acts for one clinic: expected a clinic name")
    if not isinstance(clinic, str):
        raise AccountError(f"clinic {clinic!r} is invalid: expected a clinic name")
    problem = clinic_problem(store, clinic)
    if problem:
        raise AccountError(problem)


def clinic_problem(store: Store, clinic: str) -> str | None:
    """Why ``clinic`` cannot have users acting for it now, or None."""
    try:
        found = store.get_clinic(clinic)
    except StoreError:
        return f"clinic {clinic!r} is not enrolled: expected a clinic from `securepacs clinic list`"
    if not found.active:
        return f"clinic {clinic!r} was revoked at {found.revoked_at}: expected an active clinic"
    return None


def get_user(store: Store, username: str) -> User:
    user = store.get_user(validate_username(username))
    if user is None:
        raise UnknownUser(f"unknown user {username!r}")
    return user


def is_locked(user: User, now: float) -> bool:
    return user.locked_until is not None and user.locked_until > now


def _iso(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def status(user: User, now: float, clinic_revoked: bool = False) -> str:
    parts = []
    if user.disabled:
        parts.append("disabled")
    if is_locked(user, now):
        parts.append(f"locked until {_iso(user.locked_until)}")
    if clinic_revoked:
        parts.append("clinic revoked")
    return ", ".join(parts) or "active"


def describe(user: User, now: float, clinic_revoked: bool = False) -> dict[str, Any]:
    """The JSON view of an account: everything an admin needs, never the password hash or TOTP secret."""
    return {
        "username": user.username,
        "role": user.role,
        "clinic": user.clinic,
        "status": status(user, now, clinic_revoked),
        "disabled": user.disabled,
        "locked": is_locked(user, now),
        "locked_until": _iso(user.locked_until) if is_locked(user, now) else None,
        "failed_logins": user.failed_logins,
        "totp": user.totp_secret is not None,
        "created_at": user.created_at,
        "password_changed_at": user.password_changed_at,
    }


def revoked_clinics(store: Store) -> set[str]:
    return {c.name for c in store.list_clinics() if not c.active}


def create_user(
    store: Store, username: str, role: str, clinic: str | None = None, password: str | None = None, *, actor: str,
    admin_api: bool = False,
) -> Created:
    username = validate_username(username)
    validate_role_and_clinic(store, role, clinic)
    check_manageable(role, "add", admin_api=admin_api)
    for existing in store.list_users():
        if existing.username.lower() == username.lower():
            same = "" if existing.username == username else f" as {existing.username!r}"
            raise UserExists(f"user {username!r} already exists{same}")
    generated = None
    if password is None:
        password = generated = generate_password(username)
    else:
        check_password_strength(password, username)
    try:
        user = store.add_user(username, passwords.hash_password(password), role, clinic)
    except StoreError as exc:  # created concurrently since the check above
        raise UserExists(str(exc)) from None
    log.info("user %r created (role %r, clinic %r) by %r", username, role, clinic, actor)
    return Created(user, generated)


def reset_password(store: Store, username: str, password: str | None = None, *, actor: str,
                   admin_api: bool = False) -> str | None:
    """Set a new password (generated unless given); ends the user's sessions and clears a lockout.

    Returns the generated password, or None when ``password`` was given.
    """
    user = get_user(store, username)
    check_manageable(user.role, "reset-password", admin_api=admin_api)
    generated = None
    if password is None:
        password = generated = generate_password(user.username)
    else:
        check_password_strength(password, user.username)
    _store_call(store.set_password, user.username, passwords.hash_password(password))
    log.info("password of user %r reset by %r", user.username, actor)
    return generated


def set_disabled(store: Store, username: str, disabled: bool, *, actor: str, admin_api: bool = False) -> None:
    user = get_user(store, username)
    check_manageable(user.role, "disable" if disabled else "enable", admin_api=admin_api)
    if disabled and user.role == ADMIN and not user.disabled:
        enabled_admins = [u for u in store.list_users() if u.role == ADMIN and not u.disabled]
        if len(enabled_admins) <= 1:
            # Nobody could administer the archive any more (no accounts without an admin action).
            raise AccountError(f"user {user.username!r} is the only enabled admin: expected another enabled admin "
                               "to exist before disabling it")
    _store_call(store.set_disabled, user.username, disabled)
    log.info("user %r %s by %r", user.username, "disabled" if disabled else "enabled", actor)


def unlock(store: Store, username: str, *, actor: str, admin_api: bool = False) -> None:
    user = get_user(store, username)
    check_manageable(user.role, "unlock", admin_api=admin_api)
    store.clear_login_failures(user.username)
    log.info("user %r unlocked by %r", user.username, actor)


def reset_totp(store: Store, username: str, *, actor: str, admin_api: bool = False) -> None:
    """Remove the user's second factor (lost device); the user logs in with the password and may enrol again."""
    user = get_user(store, username)
    check_manageable(user.role, "reset-totp", admin_api=admin_api)
    if user.totp_secret is None:
        raise AccountError(f"user {user.username!r} has no second factor: expected a user with TOTP enrolled")
    _store_call(store.set_totp_secret, user.username, None)
    log.info("second factor of user %r removed by %r", user.username, actor)


def _store_call(method: Callable[..., None], username: str, *args: Any) -> None:
    try:
        method(username, *args)
    except StoreError as exc:  # deleted concurrently
        raise UnknownUser(str(exc)) from None
