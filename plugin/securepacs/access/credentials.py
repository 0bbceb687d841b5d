"""What a request presents and what authentication answers: session tokens, cookies, results, refusals.

Split from :mod:`securepacs.access.accounts` (which re-exports all of it) so that the account logic stays one
readable module; nothing here touches the store.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from securepacs.access.principal import Principal
from securepacs.access.user_admin import AccountError

SESSION_COOKIE = "securepacs_session"
CSRF_HEADER = "x-requested-with"
CSRF_VALUE = "SecurePACS"
SAFE_METHODS = frozenset({"GET"})  # the only safe method Orthanc's filter reports (HEAD arrives as GET)
TOUCH_SECONDS = 30.0  # write last_seen at most this often: one DB write per half minute, not per request
PENDING_TOTP_SECONDS = 600
NO_CREDENTIALS = "no valid credentials"
THROTTLED = "too many failed attempts from this address (no password was checked)"
LOGIN_FAILED = "login failed: wrong user name, password or code, or the account is locked or disabled"
TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{32,128}$")
AuthEvent = Callable[[str, str, str, bool, str], None]

# A valid scrypt hash of a random string (same parameters as real hashes): unknown users cost the same
# verification as real ones, so response timing does not reveal which user names exist.
DUMMY_HASH = (
    "scrypt$32768$8$1$AAAAAAAAAAAAAAAAAAAAAA==$"
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
)


class LoginFailed(AccountError):
    """Credentials refused. The message is deliberately the same for every cause (no user enumeration)."""

    status = 403  # not 401: Orthanc can only send 401 with a Basic challenge, which makes browsers prompt


class TotpRequired(LoginFailed):
    """The password was right, the account has a second factor, and no code was sent."""


class Throttled(LoginFailed):
    """Too many failed attempts from this client address (for this user name): no password was checked.

    Says nothing about the account (unknown names are throttled alike), so it may differ from
    :data:`LOGIN_FAILED`; the client learns when to try again."""

    # 403, not 429: Orthanc 1.10's plugin API refuses to send 429 ("Parameter out of range"). nginx's own
    # request-rate limit in front answers 429; this one names the wait in the body and in Retry-After.
    status = 403

    def __init__(self, retry_after: float):
        self.retry_after = max(1, int(retry_after + 0.999))
        super().__init__(f"too many failed attempts from this address: try again in {self.retry_after} s")


@dataclass(frozen=True)
class AuthResult:
    """``principal`` is None when refused. ``username`` is set only once credentials were verified (a correct
    password or a live session), so a refusal's user name is never just what the client claimed."""

    principal: Principal | None
    reason: str
    username: str | None = None
    scheme: str | None = None  # basic | bearer | cookie


@dataclass(frozen=True)
class LoginResult:
    token: str
    username: str
    expires_at: float  # absolute expiry, epoch seconds
    idle_seconds: int


@dataclass(frozen=True)
class TotpEnrolment:
    secret: str  # base32, for manual entry
    uri: str  # otpauth:// URI, for a QR code
    expires_at: float  # confirm before this, or begin again


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def cookie_value(header: str, name: str) -> str | None:
    """The first cookie called ``name`` in a ``Cookie`` header (tokens need no unquoting)."""
    for part in header.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name:
            return value.strip()
    return None


def session_token(headers: Mapping[str, str]) -> tuple[str | None, str | None]:
    """(token, scheme) of the session a request presents, from ``Authorization: Bearer`` or the cookie."""
    authorization = headers.get("authorization", "")
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        return (value.strip() or None, "bearer") if scheme.lower() == "bearer" else (None, None)
    token = cookie_value(headers.get("cookie", ""), SESSION_COOKIE)
    return (token, "cookie") if token else (None, None)


class CredentialCache:
    """HTTP Basic credentials verified in the last ``seconds``: scrypt costs ~0.1 s, and API clients send
    the password on every request. Keyed by an HMAC of name and password under a per-process random key
    (the cache never holds a reusable password digest); an entry counts only while the stored hash is
    unchanged, so a password change takes effect at once."""

    MAX_ENTRIES = 10_000  # bound memory; past it, the next requests just pay scrypt again

    def __init__(self, seconds: int):
        self.seconds = seconds
        self._key = secrets.token_bytes(32)
        self.entries: dict[bytes, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def verified(self, username: str, password: str, password_hash: str, now: float,
                 check: Callable[[], bool]) -> bool:
        """True if this credential was verified recently, else whatever ``check()`` (scrypt) says."""
        digest = hmac.new(self._key, f"{username}\0{password}".encode(), hashlib.sha256).digest()
        with self._lock:
            hit = self.entries.get(digest)
        if hit is not None and hit[1] > now and hit[0] == password_hash:
            return True
        if not check():
            return False
        if self.seconds:
            with self._lock:
                if len(self.entries) > self.MAX_ENTRIES:
                    self.entries.clear()
                self.entries[digest] = (password_hash, now + self.seconds)
        return True
