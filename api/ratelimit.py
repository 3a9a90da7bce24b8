"""In-process rate limits: a token bucket per principal, and login throttling per account and source.

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

    def peek(self, key: str, now: float) -> float:
        """The requests `key` may still make at once (without spending one); `burst` for an unseen key."""
        with self._lock:
            tokens, at = self._buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + (now - at) * max(self.rate, 0.0))


@dataclass
class _Failures:
    count: int = 0
    until: float = 0.0  # no attempt is considered before this time
    last: float = 0.0


class LoginThrottle:
    """Login attempts, counted before the password is checked, per (account, source), per source, per account.

        (account, source)  the first `free` attempts cost nothing (typos); then each waits twice as long
                           as the one before, from `base_seconds` up to `max_seconds`. This is what
                           stops one source guessing one account.
        source             the same over every account a source tries (a source spraying many accounts).
        account            past `account_free` failed attempts from all sources together, the account
                           admits one attempt per `account_interval` from sources that already failed on
                           it, and, separately, one per interval from fresh sources: many sources together
                           are slowed, and the owner, from a source with no failures of its own, waits at
                           most one interval, never the doubling waits the guessing sources earned.

    `attempt` records the attempt as a failure at once, so parallel requests cannot all pass
    before the first answer is known; `succeeded` takes it back and clears the account. Counts
    fade after `forget_seconds` without attempts.
    """

    def __init__(self, *, free: int = 3, base_seconds: float = 1.0, max_seconds: float = 900.0,
                 forget_seconds: float = 3600.0, account_free: int = 20, account_interval: float = 1.0,
                 max_keys: int = 100_000) -> None:
        self.free = free
        self.base_seconds = base_seconds
        self.max_seconds = max_seconds
        self.forget_seconds = forget_seconds
        self.account_free = account_free
        self.account_interval = account_interval
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

    def attempt(self, account: str, source: str, now: float) -> float:
        """0.0 if the attempt may go ahead (it is recorded as a failure now), else the seconds to wait."""
        with self._lock:
            pair = self._get(f"pair:{account}|{source}", now)
            src = self._get(f"source:{source}", now)
            acct = self._get(f"account:{account}", now)
            lane = None
            if acct.count >= self.account_free:
                lane = self._get(f"lane:{'known' if pair.count else 'fresh'}:{account}", now)
            wait = max(pair.until, src.until, lane.until if lane is not None else 0.0) - now
            if wait > 0:
                return wait
            for f in (pair, src):
                f.count += 1
                f.last = now
                over = f.count - self.free
                if over > 0:
                    f.until = now + min(self.max_seconds, self.base_seconds * math.pow(2, over - 1))
            acct.count += 1
            acct.last = now
            if lane is not None:
                lane.until = now + self.account_interval
                lane.last = now
            return 0.0

    def succeeded(self, account: str, source: str, now: float) -> None:
        """The attempt was right: the account and this (account, source) start afresh; the source's
        count loses this attempt but keeps its wait (one right password does not reset a sprayer)."""
        with self._lock:
            self._state.pop(f"pair:{account}|{source}", None)
            self._state.pop(f"account:{account}", None)
            src = self._get(f"source:{source}", now)
            src.count = max(0, src.count - 1)


class StreamSlots:
    """At most `per_key` open streams per key (a principal); `per_key` <= 0 disables the cap.

    `acquire` gives a `Slot` whose `release` is idempotent, so the stream's own cleanup and a
    finalizer (for a stream that never started) may both call it.
    """

    def __init__(self, per_key: int) -> None:
        self.per_key = per_key
        self._open: dict[str, int] = {}
        self._lock = threading.Lock()

    def acquire(self, key: str) -> Slot | None:
        """A slot for one more stream of `key`, or None when it has `per_key` open already."""
        with self._lock:
            held = self._open.get(key, 0)
            if 0 < self.per_key <= held:
                return None
            self._open[key] = held + 1
        return Slot(self, key)

    def _release(self, key: str) -> None:
        with self._lock:
            held = self._open.get(key, 0) - 1
            if held > 0:
                self._open[key] = held
            else:
                self._open.pop(key, None)

    def open(self, key: str) -> int:
        with self._lock:
            return self._open.get(key, 0)


class Slot:
    def __init__(self, slots: StreamSlots, key: str) -> None:
        self._slots: StreamSlots | None = slots
        self._key = key
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            slots, self._slots = self._slots, None
        if slots is not None:
            slots._release(self._key)
