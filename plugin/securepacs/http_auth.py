"""Authentication of HTTP requests reaching Orthanc through nginx.

Every request is authenticated against the plugin's user store except the anonymous allow-list
(health). Basic auth for API clients; the login page and sessions come with the viewer. The role
matrix here is deliberately minimal (admins only): tenant-aware roles arrive with the access-policy
issue, and until then anything that is not explicitly allowed is denied.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from securepacs.passwords import verify_password
from securepacs.store import Store, User

log = logging.getLogger(__name__)

ANONYMOUS_PATHS = frozenset({"/securepacs/health"})
ROLES = ("admin", "physician", "clinic-device", "auditor")

# OrthancPluginHttpMethod values as passed by the Python plugin's request filter.
HTTP_METHODS = {1: "GET", 2: "POST", 3: "PUT", 4: "DELETE"}


@dataclass(frozen=True)
class Decision:
    allowed: bool
    user: str | None
    client_ip: str
    reason: str


class HttpAuthenticator:
    def __init__(
        self,
        store: Store,
        *,
        trusted_proxies: tuple[str, ...],
        client_ip_header: str,
        cache_seconds: int = 60,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._store = store
        self._proxies = frozenset(trusted_proxies)
        self._ip_header = client_ip_header.lower()
        self._cache_seconds = cache_seconds
        self._clock = clock
        # scrypt costs ~0.1 s: remember successful checks briefly, keyed by an HMAC of the credential
        # under a per-process random key so the cache never holds a reusable password digest.
        self._cache_key = secrets.token_bytes(32)
        self._cache: dict[bytes, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def client_ip(self, peer_ip: str, headers: Mapping[str, str]) -> str:
        """The real client address: from the proxy's header only when the peer is a trusted proxy."""
        if peer_ip in self._proxies:
            forwarded = headers.get(self._ip_header)
            if forwarded:
                return forwarded.strip()
        return peer_ip

    def authorize(self, uri: str, method: str, peer_ip: str, headers: Mapping[str, str]) -> Decision:
        ip = self.client_ip(peer_ip, headers)
        if uri in ANONYMOUS_PATHS and method == "GET":
            return Decision(True, None, ip, "anonymous endpoint")
        user = self._authenticate(headers.get("authorization", ""))
        if user is None:
            return Decision(False, None, ip, "no valid credentials")
        if user.disabled:
            return Decision(False, user.username, ip, "account disabled")
        if user.role == "admin":
            return Decision(True, user.username, ip, "admin")
        return Decision(False, user.username, ip, f"role {user.role!r} has no access to {method} {uri!r} yet")

    def _authenticate(self, header: str) -> User | None:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic" or not value:
            return None
        try:
            username, sep, password = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        if not sep or not username:
            return None
        user = self._store.get_user(username)
        digest = hmac.new(self._cache_key, f"{username}\0{password}".encode(), hashlib.sha256).digest()
        now = self._clock()
        with self._lock:
            hit = self._cache.get(digest)
        # A cache hit counts only while the stored hash is unchanged: a password reset takes effect at once.
        if user is not None and hit and hit[1] > now and hit[0] == user.password_hash:
            return user
        # Verify against a dummy hash for unknown users too, so timing does not reveal which names exist.
        ok = verify_password(password, user.password_hash if user else _DUMMY_HASH) and user is not None
        if not ok or user is None:
            log.warning("HTTP authentication failed for user %r", username)
            return None
        if self._cache_seconds:
            with self._lock:
                if len(self._cache) > 10_000:
                    self._cache.clear()
                self._cache[digest] = (user.password_hash, now + self._cache_seconds)
        return user


# A valid scrypt hash of a random string (same parameters as real hashes), for constant-ish timing.
_DUMMY_HASH = (
    "scrypt$32768$8$1$AAAAAAAAAAAAAAAAAAAAAA==$"
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
)
