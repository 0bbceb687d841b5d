"""Authentication: passwords, lockout, sessions with idle and absolute expiry, and the optional TOTP factor.

Three ways to present credentials on a request:

- HTTP Basic (API clients, devices). scrypt costs ~0.1 s, so successful checks are remembered briefly,
  keyed by an HMAC of the credential under a per-process random key (the cache never holds a reusable
  password digest) and valid only while the stored hash is unchanged. Accounts with a second factor
  cannot use Basic: the password alone must not be enough for them.
- ``Authorization: Bearer <token>`` and the ``securepacs_session`` cookie: a session from
  ``POST /securepacs/login``. Only the SHA-256 of the token is stored. A session ends after
  ``session_idle_seconds`` without a request (HIPAA automatic logoff) and after ``session_max_seconds``
  in any case. Cookie-authenticated unsafe requests must carry ``X-Requested-With: SecurePACS``: with
  ``SameSite=Strict`` and no CORS, another site can neither send the cookie nor set that header.

Wrong passwords (and wrong TOTP codes) count towards a lockout of ``max_login_failures`` attempts for
``lockout_seconds``; while locked, no password is checked at all. Before that, the client address is
throttled (:mod:`securepacs.access.throttle`): attempts it sends while throttled are refused unchecked and count
against no account, so one address cannot lock anybody out. Unknown, locked and throttled-free refusals
all pay one scrypt verification, so timing does not tell them from a wrong password.

Service accounts (role ``gateway``) exist only for internal callers: they are accepted only on a request
the HTTP layer marks ``internal`` (loopback, not through nginx), never lock, never log in to a session,
and to anybody else they look exactly like an unknown user name.
"""

from __future__ import annotations

import base64
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from securepacs.access import passwords, totp
from securepacs.access.credentials import (
    CSRF_HEADER,
    CSRF_VALUE,
    DUMMY_HASH,
    LOGIN_FAILED,
    NO_CREDENTIALS,
    PENDING_TOTP_SECONDS,
    SAFE_METHODS,
    SESSION_COOKIE,
    THROTTLED,
    TOKEN_RE,
    TOUCH_SECONDS,
    AuthEvent,
    AuthResult,
    CredentialCache,
    LoginFailed,
    LoginResult,
    Throttled,
    TotpEnrolment,
    TotpRequired,
    cookie_value,
    session_token,
    token_hash,
)
from securepacs.access.principal import CLINIC_ROLES, ROLES, SERVICE_ROLES, Principal
from securepacs.access.second_factor import SecondFactor
from securepacs.access.throttle import AddressThrottle
from securepacs.access.user_admin import (
    AccountError,
    UnknownUser,
    WeakPassword,
    check_password_strength,
    clinic_problem,
    is_locked,
)
from securepacs.config.plugin_settings import PluginConfig
from securepacs.store.database import Session, Store, User

__all__ = [
    "CSRF_HEADER", "CSRF_VALUE", "LOGIN_FAILED", "NO_CREDENTIALS", "SESSION_COOKIE", "THROTTLED",
    "AccountError", "AccountSettings", "Accounts", "AuthResult", "LoginFailed", "LoginResult", "Throttled",
    "TotpEnrolment", "TotpRequired", "check_password_strength", "cookie_value", "session_token", "token_hash",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AccountSettings:
    session_idle_seconds: int = 900
    session_max_seconds: int = 43200
    max_login_failures: int = 5
    lockout_seconds: int = 900
    auth_cache_seconds: int = 60
    totp_issuer: str = "SecurePACS"
    # Per client address and user name: this many failures throttle that address (below
    # max_login_failures, so one address cannot lock an account); 0 turns the throttle off.
    address_max_failures: int = 4
    address_backoff_seconds: int = 60

    @classmethod
    def from_config(cls, config: PluginConfig) -> AccountSettings:
        return cls(
            session_idle_seconds=config.session_idle_seconds,
            session_max_seconds=config.session_max_seconds,
            max_login_failures=config.max_login_failures,
            lockout_seconds=config.lockout_seconds,
            auth_cache_seconds=config.auth_cache_seconds,
            address_max_failures=config.address_max_failures,
            address_backoff_seconds=config.address_backoff_seconds,
        )


class Accounts:
    def __init__(self, store: Store, settings: AccountSettings | None = None,
                 clock: Callable[[], float] = time.time, on_event: AuthEvent | None = None):
        self._store = store
        # (kind, username, client IP, success, reason) for the audit trail: kind is login, logout,
        # lockout or basic (a failed HTTP Basic attempt).
        self._on_event: AuthEvent = on_event or (lambda *_args: None)
        self.settings = settings or AccountSettings()
        self._clock = clock
        self._cache = CredentialCache(self.settings.auth_cache_seconds)
        self._second_factor = SecondFactor()
        self._throttle = AddressThrottle(self.settings.address_max_failures, self.settings.address_backoff_seconds,
                                         self.settings.lockout_seconds)
        # Idle time counts from the last *written* last_seen, which lags the last request by less than
        # this interval: a session may end up to that much early, never late. Touch often enough that a
        # short idle limit (tests, strict sites) still sees the activity.
        self._touch_seconds = min(TOUCH_SECONDS, self.settings.session_idle_seconds / 5)

    def now(self) -> float:
        return self._clock()

    # -- per-request authentication --------------------------------------------------------------------
    def authenticate(self, method: str, headers: Mapping[str, str], client_ip: str = "", *,
                     internal: bool = False) -> AuthResult:
        """Who sent this request (``headers`` with lower-case names), or why nobody acceptable did.

        ``internal``: the request came from a local process, not through nginx (decided by the HTTP layer);
        only then are service accounts accepted."""
        authorization = headers.get("authorization", "")
        if authorization:
            # An explicit Authorization header wins; a bad one never falls back to the cookie.
            scheme, _, value = authorization.strip().partition(" ")
            if scheme.lower() == "basic":
                return self._basic(value.strip(), client_ip, internal)
            if scheme.lower() == "bearer":
                return self._session(value.strip(), "bearer", method, headers)
            return AuthResult(None, NO_CREDENTIALS)
        token = cookie_value(headers.get("cookie", ""), SESSION_COOKIE)
        if token:
            return self._session(token, "cookie", method, headers)
        return AuthResult(None, NO_CREDENTIALS)

    def _basic(self, value: str, client_ip: str, internal: bool) -> AuthResult:
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return AuthResult(None, NO_CREDENTIALS)
        username, sep, password = decoded.partition(":")
        if not value or not sep or not username:
            return AuthResult(None, NO_CREDENTIALS)
        user = self._store.get_user(username)
        now = self._clock()
        if user is not None and user.role in SERVICE_ROLES:
            if internal:
                return self._service_basic(user, password, client_ip, now)
            user = None  # from outside, a service account is indistinguishable from an unknown name
        wait = self._throttle.blocked_for(client_ip, username, now)
        if wait:
            self._on_event("basic", username, client_ip, False, THROTTLED)
            return AuthResult(None, f"{THROTTLED}: {wait:.0f} s left")
        if user is None:
            passwords.verify_password(password, DUMMY_HASH)
            self._address_failure(username, client_ip, now)
            log.warning("authentication failed for user %r from %r: no such user", username, client_ip)
            self._on_event("basic", username, client_ip, False, "no such user")
            return AuthResult(None, NO_CREDENTIALS)
        if user.totp_secret is not None:
            passwords.verify_password(password, DUMMY_HASH)  # same cost, and no password oracle for this user
            return AuthResult(None, f"user {username!r} has a second factor: HTTP Basic is not accepted, "
                                    "log in at /securepacs/login")
        if is_locked(user, now):
            passwords.verify_password(password, DUMMY_HASH)  # a locked account answers as slowly as any other
            self._address_failure(username, client_ip, now)
            self._on_event("basic", username, client_ip, False, "account locked")
            return AuthResult(None, f"user {username!r} is locked after repeated failed logins")
        if not self._cache.verified(username, password, user.password_hash, now,
                                    lambda: passwords.verify_password(password, user.password_hash)):
            self._failure(user, client_ip, "HTTP Basic")
            return AuthResult(None, NO_CREDENTIALS)
        if user.failed_logins:
            self._store.clear_login_failures(user.username)
        self._throttle.success(client_ip, username)
        return self._accept(user, "basic")

    def _service_basic(self, user: User, password: str, client_ip: str, now: float) -> AuthResult:
        """A service account on an internal request: checked, cached, audited when wrong — never locked or
        throttled (its password is 128 random bits; a lockout would only let others switch it off)."""
        if not self._cache.verified(user.username, password, user.password_hash, now,
                                    lambda: passwords.verify_password(password, user.password_hash)):
            log.warning("authentication of service account %r from %r failed: wrong password (service "
                        "accounts do not lock)", user.username, client_ip)
            self._on_event("basic", user.username, client_ip, False,
                           "wrong password for a service account (not counted towards a lockout)")
            return AuthResult(None, NO_CREDENTIALS)
        return self._accept(user, "basic")

    def _session(self, token: str, scheme: str, method: str, headers: Mapping[str, str]) -> AuthResult:
        if not TOKEN_RE.match(token):
            return AuthResult(None, NO_CREDENTIALS)
        if scheme == "cookie" and method not in SAFE_METHODS and headers.get(CSRF_HEADER) != CSRF_VALUE:
            return AuthResult(None, f"cookie-authenticated {method} without header X-Requested-With: {CSRF_VALUE} "
                                    "(cross-site request defence)")
        digest = token_hash(token)
        session = self._store.get_session(digest)
        if session is None:
            return AuthResult(None, "unknown or ended session")
        now = self._clock()
        if now >= session.expires_at:
            self._store.delete_session(digest)
            log.info("session of user %r expired (absolute limit)", session.username)
            return AuthResult(None, "session expired (absolute limit)")
        idle = self.settings.session_idle_seconds
        if now - session.last_seen > idle:
            self._store.delete_session(digest)
            log.info("session of user %r ended after %d s without activity", session.username, idle)
            return AuthResult(None, f"session expired after {idle} s without activity")
        user = self._store.get_user(session.username)
        if user is None or user.role in SERVICE_ROLES:
            self._store.delete_session(digest)
            return AuthResult(None, "unknown or ended session")
        if now - session.last_seen >= self._touch_seconds:
            self._store.touch_session(digest, now)
        return self._accept(user, scheme)

    def _accept(self, user: User, scheme: str) -> AuthResult:
        problem = self._account_problem(user)
        if problem:
            return AuthResult(None, problem, user.username, scheme)
        return AuthResult(Principal(user.username, user.role, user.clinic), scheme, user.username, scheme)

    def _account_problem(self, user: User) -> str | None:
        """Why a correctly authenticated account must still be refused (checked on every request)."""
        if user.disabled:
            return "account disabled"
        if user.role not in ROLES:
            return f"account has unknown role {user.role!r}"
        if user.role in CLINIC_ROLES:
            if not user.clinic:
                return f"account with role {user.role!r} has no clinic"
            return clinic_problem(self._store, user.clinic)
        if user.clinic is not None:
            return f"account with role {user.role!r} must not have a clinic (has {user.clinic!r})"
        return None

    def _failure(self, user: User, client_ip: str, via: str) -> None:
        s = self.settings
        now = self._clock()
        self._address_failure(user.username, client_ip, now)
        count = self._store.record_login_failure(user.username, now, s.max_login_failures, s.lockout_seconds)
        kind = "basic" if via == "HTTP Basic" else "login"
        self._on_event(kind, user.username, client_ip, False, f"wrong credentials via {via} ({count} in a row)")
        if count >= s.max_login_failures:
            log.warning("user %r locked for %d s after %d failed attempts (last via %s from %r)",
                        user.username, s.lockout_seconds, count, via, client_ip)
            self._on_event("lockout", user.username, client_ip, False,
                           f"locked for {s.lockout_seconds} s after {count} failed attempts")
        else:
            log.warning("authentication failed for user %r via %s from %r (failure %d of %d)",
                        user.username, via, client_ip, count, s.max_login_failures)

    def _address_failure(self, username: str, client_ip: str, now: float) -> None:
        block = self._throttle.failure(client_ip, username, now)
        if block:
            log.warning("client address %r throttled for %.0f s after repeated failed attempts (last for user "
                        "%r): its attempts are refused unchecked and count against no account",
                        client_ip, block, username)

    # -- sessions ------------------------------------------------------------------------------------------
    def login(self, username: str, password: str, totp_code: str | None, client_ip: str) -> LoginResult:
        """Check the credentials and open a session; raises :class:`LoginFailed` (or ``TotpRequired``)."""
        if not isinstance(username, str) or not isinstance(password, str):
            raise AccountError("'username' and 'password' must be strings")
        user = self._verified(username, password, client_ip, "login")
        problem = self._account_problem(user)
        if problem:
            log.warning("login of user %r from %r refused: %s", user.username, client_ip, problem)
            self._on_event("login", user.username, client_ip, False, problem)
            raise LoginFailed(LOGIN_FAILED)
        now = self._clock()
        if user.totp_secret is not None:
            if not totp_code:
                raise TotpRequired("second factor required: send the 6-digit code of your authenticator app "
                                   "as 'totp'")
            if not self._second_factor.accept(user.username, user.totp_secret, totp_code, now):
                self._failure(user, client_ip, "login (TOTP code)")
                raise LoginFailed(LOGIN_FAILED)
        if user.failed_logins:
            self._store.clear_login_failures(user.username)
        self._throttle.success(client_ip, user.username)
        token = secrets.token_urlsafe(32)
        expires = now + self.settings.session_max_seconds
        self._store.create_session(token_hash(token), user.username, now, expires)
        log.info("user %r logged in from %r", user.username, client_ip)
        self._on_event("login", user.username, client_ip, True, "")
        return LoginResult(token, user.username, expires, self.settings.session_idle_seconds)

    def _verified(self, username: str, password: str, client_ip: str, via: str) -> User:
        """The user if ``password`` is theirs and they are not locked; counts a wrong password.

        Every refusal but a throttled address costs one scrypt verification (unknown and locked users
        against a dummy hash), so the time taken does not tell them apart. Service accounts never log
        in: here they are unknown names."""
        now = self._clock()
        wait = self._throttle.blocked_for(client_ip, username, now)
        if wait:
            log.info("%s for user %r from %r refused: address throttled", via, username, client_ip)
            self._on_event("login", username, client_ip, False, THROTTLED)
            raise Throttled(wait)
        user = self._store.get_user(username)
        if user is None or user.role in SERVICE_ROLES:
            passwords.verify_password(password, DUMMY_HASH)
            self._address_failure(username, client_ip, now)
            log.warning("%s failed for user %r from %r: no such user", via, username, client_ip)
            self._on_event("login", username, client_ip, False, "no such user")
            raise LoginFailed(LOGIN_FAILED)
        if is_locked(user, now):
            passwords.verify_password(password, DUMMY_HASH)
            self._address_failure(username, client_ip, now)
            log.warning("%s of user %r from %r refused: account locked", via, username, client_ip)
            self._on_event("login", username, client_ip, False, "account locked")
            raise LoginFailed(LOGIN_FAILED)
        if not passwords.verify_password(password, user.password_hash):
            self._failure(user, client_ip, via)
            raise LoginFailed(LOGIN_FAILED)
        return user

    def logout(self, token: str, client_ip: str = "") -> None:
        digest = token_hash(token)
        session = self._store.get_session(digest)
        self._store.delete_session(digest)
        if session is not None:
            log.info("user %r logged out", session.username)
            self._on_event("logout", session.username, client_ip, True, "")

    def session(self, token: str) -> Session | None:
        """The stored session for ``token`` (read only: no touch, no expiry handling)."""
        return self._store.get_session(token_hash(token)) if TOKEN_RE.match(token) else None

    # -- self-service ----------------------------------------------------------------------------------
    def change_password(self, username: str, old: str, new: str, client_ip: str = "") -> None:
        """Replace the password after checking the current one; every session of the user ends."""
        if not isinstance(old, str) or not isinstance(new, str):
            raise AccountError("'current' and 'new' passwords must be strings")
        user = self._verified(username, old, client_ip, "password change")
        if new == old:
            raise WeakPassword("new password equals the current one: expected a different password")
        check_password_strength(new, user.username)
        self._store.set_password(user.username, passwords.hash_password(new))
        log.info("user %r changed their password", user.username)

    def begin_totp(self, username: str, password: str, client_ip: str = "") -> TotpEnrolment:
        """Start enrolling a second factor (re-checks the password: a stolen session must not take it over)."""
        if not isinstance(password, str):
            raise AccountError("'password' must be a string")
        user = self._verified(username, password, client_ip, "TOTP enrolment")
        if user.totp_secret is not None:
            raise AccountError(f"user {user.username!r} already has a second factor: expected none (remove it "
                               "first with POST /securepacs/api/me/totp/remove)")
        secret, expires = self._second_factor.begin(user.username, self._clock())
        return TotpEnrolment(secret, totp.provisioning_uri(secret, user.username, self.settings.totp_issuer),
                             expires)

    def confirm_totp(self, username: str, code: str) -> None:
        """Activate the pending second factor once the app shows a matching code; ends the user's sessions."""
        try:
            matched = self._second_factor.confirm(username, code, self._clock())
        except LookupError:
            raise AccountError("no second-factor enrolment in progress: expected POST /securepacs/api/me/totp "
                               f"first (an enrolment must be confirmed within {PENDING_TOTP_SECONDS} s)") from None
        if matched is None:
            raise AccountError("code does not match: expected the current 6-digit code of the authenticator app")
        if self._store.get_user(username) is None:
            raise UnknownUser(f"unknown user {username!r}")
        self._store.set_totp_secret(username, matched[0])
        self._second_factor.finish(username, matched[1])
        log.info("user %r enrolled a second factor", username)

    def disable_totp(self, username: str, password: str, code: str, client_ip: str = "") -> None:
        """Remove the user's own second factor; every session of the user ends (including this one).

        Needs the password and a current code, like a login: a stolen session (or an unattended browser)
        must not be able to downgrade the account to password only."""
        if not isinstance(password, str) or not isinstance(code, str):
            raise AccountError("'password' and 'code' must be strings")
        user = self._verified(username, password, client_ip, "TOTP removal")
        if user.totp_secret is None:
            raise AccountError(f"user {user.username!r} has no second factor: expected one to remove")
        if not self._second_factor.accept(user.username, user.totp_secret, code, self._clock()):
            self._failure(user, client_ip, "TOTP removal (code)")
            raise LoginFailed(LOGIN_FAILED)
        self._store.set_totp_secret(user.username, None)
        log.info("user %r removed their second factor", user.username)
