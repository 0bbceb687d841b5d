"""Per-address backoff for password attempts: one address cannot lock anybody's account.

The account lockout (``MaxLoginFailures`` wrong passwords lock the account) stops a guesser, but it also
lets anyone who knows a user name lock that user out. So failures are also counted per client address
(the address nginx forwards; IPv6 per /64, which one subscriber usually holds whole) and user name. An
address with ``max_failures`` failures for one name within ``seconds`` is refused for that name for
``seconds`` — doubled for every further block in a row, up to ``max_seconds`` — *before* any password is
checked, and those refused attempts count against no account. With ``max_failures`` below the account
threshold, one address is throttled before it can lock an account, and the real user from another
address still logs in. A success for the name from the address forgives that pair (whoever succeeds
knows the password). Spraying many names from one address is bounded too: ``SPRAY_FACTOR`` times
``max_failures`` failures for any names throttle the address for every name, and successes do not
forgive those (a valid low-privilege account must not reset the count for the admin's name).

In memory, per process, bounded to ``capacity`` addresses (oldest forgotten first): a restart or a flood
of distinct addresses only forgets backoffs, it never blocks anybody.
"""

from __future__ import annotations

import ipaddress
import threading
from collections import OrderedDict
from dataclasses import dataclass

DEFAULT_CAPACITY = 50_000  # ~100 bytes each: a few MB at most
SPRAY_FACTOR = 5
_ANY_NAME = "\0"  # the per-address counter (no user name contains NUL)


@dataclass
class _Entry:
    failures: int  # within the current window
    window_start: float
    blocked_until: float = 0.0
    blocks: int = 0  # consecutive blocks: each one lasts twice as long as the last


def address_key(client_ip: str) -> str:
    """The throttled unit: the address itself, or its /64 for IPv6 (unparseable values stay as they are)."""
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return client_ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class AddressThrottle:
    def __init__(self, max_failures: int, seconds: float, max_seconds: float, capacity: int = DEFAULT_CAPACITY):
        self.max_failures = max_failures  # 0: off
        self.seconds = seconds
        self.max_seconds = max(max_seconds, seconds)
        self._capacity = capacity
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def blocked_for(self, client_ip: str, username: str, now: float) -> float:
        """Seconds before a password is checked again for ``username`` from this address (0: now)."""
        if not self.max_failures:
            return 0.0
        address = address_key(client_ip)
        with self._lock:
            waits = [entry.blocked_until - now for key in ((address, username.lower()), (address, _ANY_NAME))
                     if (entry := self._entries.get(key)) is not None]
        return max([0.0, *waits])

    def failure(self, client_ip: str, username: str, now: float) -> float:
        """Count one failed attempt; returns the block it starts (seconds), or 0 when it starts none."""
        if not self.max_failures:
            return 0.0
        address = address_key(client_ip)
        with self._lock:
            block = self._count((address, username.lower()), self.max_failures, now)
            return max(block, self._count((address, _ANY_NAME), self.max_failures * SPRAY_FACTOR, now))

    def success(self, client_ip: str, username: str) -> None:
        with self._lock:
            self._entries.pop((address_key(client_ip), username.lower()), None)

    def _count(self, key: tuple[str, str], limit: int, now: float) -> float:
        entry = self._entries.pop(key, None)
        if entry is None or now - entry.window_start > self.seconds:
            # A block that ended long ago is forgiven; one that just ended still doubles the next.
            blocks = entry.blocks if entry and now - entry.blocked_until <= self.seconds else 0
            entry = _Entry(0, now, entry.blocked_until if entry else 0.0, blocks)
        entry.failures += 1
        block = 0.0
        if entry.failures >= limit and entry.blocked_until <= now:
            block = min(self.seconds * 2 ** entry.blocks, self.max_seconds)
            entry.blocked_until = now + block
            entry.blocks += 1
            entry.failures = 0
            entry.window_start = now
        self._entries[key] = entry  # most recently used last
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)
        return block
