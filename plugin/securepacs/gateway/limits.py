"""Edge limits: a per-IP connection rate (token bucket) and concurrent-association counters."""

from __future__ import annotations

import time
from collections.abc import Callable


class RateLimiter:
    """Token bucket per source IP: ``rate`` new connections per second, bursts of up to ``burst``.

    Memory is bounded: buckets that have refilled completely carry no information and are pruned, and
    past ``max_ips`` tracked addresses the oldest entry is evicted (an attacker spraying addresses gets
    no more than a fresh bucket per address, which is what an untracked address would get anyway).
    """

    def __init__(self, rate: float, burst: int, *, max_ips: int = 65536,
                 clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.burst = burst
        self.max_ips = max_ips
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # ip -> (tokens, last update)

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def allow(self, ip: str) -> bool:
        if not self.enabled:
            return True
        now = self._clock()
        tokens, last = self._buckets.pop(ip, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        if len(self._buckets) >= self.max_ips:
            del self._buckets[next(iter(self._buckets))]
        self._buckets[ip] = (tokens, now)  # re-inserted last: dict order is least recently used first
        return allowed

    def prune(self) -> None:
        if not self.enabled:
            return
        now = self._clock()
        full_after = self.burst / self.rate
        for ip in [ip for ip, (_, last) in self._buckets.items() if now - last >= full_after]:
            del self._buckets[ip]

    def __len__(self) -> int:
        return len(self._buckets)


class AssociationLimits:
    """Counts relayed associations, globally and per clinic."""

    def __init__(self, max_total: int, max_per_clinic: int):
        self.max_total = max_total
        self.max_per_clinic = max_per_clinic
        self.total = 0
        self._per_clinic: dict[str, int] = {}

    def acquire(self, clinic: str | None) -> str | None:
        """Take a slot; returns None, or the refusal code when a limit is reached (nothing is taken then)."""
        if self.total >= self.max_total:
            return "too-many-associations"
        if clinic is not None and self._per_clinic.get(clinic, 0) >= self.max_per_clinic:
            return "too-many-associations-for-clinic"
        self.total += 1
        if clinic is not None:
            self._per_clinic[clinic] = self._per_clinic.get(clinic, 0) + 1
        return None

    def release(self, clinic: str | None) -> None:
        self.total -= 1
        if clinic is not None:
            left = self._per_clinic[clinic] - 1
            if left:
                self._per_clinic[clinic] = left
            else:
                del self._per_clinic[clinic]

    def of(self, clinic: str) -> int:
        return self._per_clinic.get(clinic, 0)
