"""In-process rate limits: a token bucket per principal, and login throttling per IP and per account.

Both are soft state of one API process (a restart forgets them): they slow an attacker down,
they are not the source of truth for anything. Every method takes `now` (monotonic seconds)
so the arithmetic is testable without a clock. This module must never do I/O.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass


class TokenBuckets:
    """`rate` requests per second per key, with bursts up to `burst`. rate <= 0 disables the limit."""

    def __init__(self, rate: float, burst: float, *, max_keys: int = 100_000) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)
        self._lock = threading.Lock()

    def take(self, key: str, now: float) -> float:
        """Spend one request; 0.0 if allowed, else the seconds to wait before the next one is."""
        if self.rate <= 0:
            return 0.0
        with self._lock:
            tokens, at = self._buckets.pop(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                wait = 0.0
            else:
                self._buckets[key] = (tokens, now)
                wait = (1.0 - tokens) / self.rate
            while len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
            return wait


@dataclass
class _Failures:
    count: int = 0
    until: float = 0.0  # no attempt is considered before this time
    last: float = 0.0


class LoginThrottle:
    """Failed logins make the next attempt wait, per IP and per account, doubling each time.

    The first `free` failures cost nothing (typos); after that the wait doubles from
    `base_seconds` up to `max_seconds`. A failure count fades after `forget_seconds`
    without failures. A success clears the account's count (not the IP's: one right
    password must not reset a spraying IP).
    """

    def __init__(self, *, free: int = 3, base_seconds: float = 1.0, max_seconds: float = 900.0,
                 forget_seconds: float = 3600.0, max_keys: int = 100_000) -> None:
        self.free = free
        self.base_seconds = base_seconds
        self.max_seconds = max_seconds
        self.forget_seconds = forget_seconds
        self._max_keys = max_keys
        self._state: OrderedDict[str, _Failures] = OrderedDict()
        self._lock = threading.Lock()

    def _get(self, key: str, now: float) -> _Failures:
        f = self._state.pop(key, None)
        if f is None or now - f.last > self.forget_seconds:
            f = _Failures()
        self._state[key] = f
        while len(self._state) > self._max_keys:
            self._state.popitem(last=False)
        return f

    def wait(self, keys: list[str], now: float) -> float:
        """Seconds until an attempt for these keys is considered; 0.0 if it may go ahead now."""
        with self._lock:
            return max([max(0.0, self._get(k, now).until - now) for k in keys] or [0.0])

    def failed(self, keys: list[str], now: float) -> None:
        with self._lock:
            for k in keys:
                f = self._get(k, now)
                f.count += 1
                f.last = now
                over = f.count - self.free
                if over > 0:
                    f.until = now + min(self.max_seconds, self.base_seconds * math.pow(2, over - 1))

    def succeeded(self, key: str) -> None:
        with self._lock:
            self._state.pop(key, None)
