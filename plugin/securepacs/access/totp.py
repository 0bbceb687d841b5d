"""Time-based one-time passwords (RFC 6238) for the optional second factor, using ``cryptography``'s TOTP.

Parameters are the ones every authenticator app understands: SHA-1, 6 digits, 30-second steps. Codes of
the neighbouring steps are accepted too, so a phone clock that is a few seconds off still works.
"""

from __future__ import annotations

import base64
import hmac
import re
import secrets

from cryptography.hazmat.primitives.hashes import SHA1
from cryptography.hazmat.primitives.twofactor.totp import TOTP

DIGITS = 6
STEP_SECONDS = 30
WINDOW_STEPS = 1  # accept one step either side: clock skew and typing time
SECRET_BYTES = 20  # 160 bits, as RFC 4226 recommends
_CODE_RE = re.compile(rf"^\d{{{DIGITS}}}$")


def new_secret() -> str:
    """A random secret, base32 without padding (the form authenticator apps accept)."""
    return base64.b32encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii").rstrip("=")


def _totp(secret: str) -> TOTP:
    key = base64.b32decode(secret + "=" * (-len(secret) % 8))
    return TOTP(key, DIGITS, SHA1(), STEP_SECONDS)  # noqa: S303 (SHA-1 HMAC is what RFC 6238 apps implement)


def provisioning_uri(secret: str, account: str, issuer: str) -> str:
    """The ``otpauth://`` URI an authenticator app imports (usually shown as a QR code)."""
    return _totp(secret).get_provisioning_uri(account, issuer)


def code_at(secret: str, when: float) -> str:
    return _totp(secret).generate(when).decode("ascii")


def matching_step(secret: str, code: str, now: float) -> int | None:
    """The time step whose code ``code`` is (within the window), or None. Spaces in the code are ignored."""
    code = code.replace(" ", "") if isinstance(code, str) else ""
    if not _CODE_RE.match(code):
        return None
    totp = _totp(secret)
    step = int(now // STEP_SECONDS)
    found = None
    # Check every candidate (no early exit) so timing does not tell which step matched.
    for candidate in range(step - WINDOW_STEPS, step + WINDOW_STEPS + 1):
        expected = totp.generate(candidate * STEP_SECONDS).decode("ascii")
        if hmac.compare_digest(expected, code) and found is None:
            found = candidate
    return found
