"""The second factor's in-memory state: pending enrolments and the replay guard of accepted codes.

Both live in memory: only the plugin process checks codes, a pending enrolment is worth nothing after
a restart (the user starts again), and after a restart the window of a captured code has long passed.
"""

from __future__ import annotations

import logging
import threading

from securepacs.access import totp
from securepacs.access.credentials import PENDING_TOTP_SECONDS

log = logging.getLogger(__name__)


class SecondFactor:
    """TOTP codes accepted at most once per user and step; enrolments pending until confirmed."""

    def __init__(self) -> None:
        self._pending: dict[str, tuple[str, float]] = {}
        self._last_step: dict[str, int] = {}
        self._lock = threading.Lock()

    def begin(self, username: str, now: float) -> tuple[str, float]:
        """A fresh secret for ``username`` and when its enrolment expires unconfirmed."""
        secret, expires = totp.new_secret(), now + PENDING_TOTP_SECONDS
        with self._lock:
            self._pending[username] = (secret, expires)
        return secret, expires

    def confirm(self, username: str, code: object, now: float) -> tuple[str, int] | None:
        """(secret, step) if ``code`` matches the pending enrolment; raises LookupError if none is pending.

        The enrolment stays pending until :meth:`finish`, so a store failure in between loses nothing.
        """
        with self._lock:
            pending = self._pending.get(username)
        if pending is None or pending[1] <= now:
            raise LookupError(username)
        step = totp.matching_step(pending[0], code, now) if isinstance(code, str) else None
        return None if step is None else (pending[0], step)

    def finish(self, username: str, step: int) -> None:
        with self._lock:
            self._pending.pop(username, None)
            self._last_step[username] = step  # the confirming code cannot also serve to log in

    def accept(self, username: str, secret: str, code: object, now: float) -> bool:
        """True if ``code`` is current for ``secret`` and its step was not accepted before for the user."""
        step = totp.matching_step(secret, code, now) if isinstance(code, str) else None
        if step is None:
            return False
        with self._lock:
            if step <= self._last_step.get(username, -1):
                log.warning("TOTP code of user %r replayed", username)
                return False
            self._last_step[username] = step
        return True
