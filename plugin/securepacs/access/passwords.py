"""Password hashing with scrypt (memory-hard) from ``cryptography``.

The hash string carries its parameters (``scrypt$n$r$p$salt$hash``) so they can be raised later
without invalidating stored hashes.
"""

from __future__ import annotations

import base64
import hmac
import secrets

from cryptography.exceptions import InvalidKey
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

# n=2^15, r=8: 32 MiB and ~0.1 s per hash on this class of machine; verification results are cached
# briefly by the HTTP authenticator so API clients do not pay this on every request.
SCRYPT_N = 2**15
SCRYPT_R = 8
SCRYPT_P = 1
_LEN = 32
MIN_LENGTH = 12


class PasswordError(ValueError):
    """The password does not meet the policy."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    salt = secrets.token_bytes(16)
    key = Scrypt(salt=salt, length=_LEN, n=n, r=r, p=p).derive(password.encode("utf-8"))
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(key)}"


def verify_password(password: str, encoded: str) -> bool:
    try:
        scheme, n, r, p, salt, key = encoded.split("$")
        if scheme != "scrypt":
            return False
        kdf = Scrypt(salt=base64.b64decode(salt), length=_LEN, n=int(n), r=int(r), p=int(p))
        kdf.verify(password.encode("utf-8"), base64.b64decode(key))
        return True
    except (ValueError, TypeError, OverflowError, InvalidKey):  # a corrupt stored hash never matches
        return False


def check_strength(password: str) -> None:
    """Minimum policy: length, and not a single repeated character class of trivial form."""
    if len(password) < MIN_LENGTH:
        raise PasswordError(f"password too short: expected at least {MIN_LENGTH} characters")
    if len(set(password)) < 5:
        raise PasswordError("password too simple: expected at least 5 distinct characters")


def generate_password() -> str:
    """A random password for generated accounts (≈ 128 bits, URL-safe, easy to paste)."""
    return secrets.token_urlsafe(16)


def constant_time_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
