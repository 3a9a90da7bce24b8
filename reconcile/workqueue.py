"""A work queue of keys, as controllers need it.

Guarantees:
* a key handed out by `get` is not handed out again until `done(key)`; adding it meanwhile
  marks it dirty, and it is queued once more after `done` — so one key is never
  reconciled by two workers at once, and no change is missed;
* duplicates collapse: a key waiting in the queue is there once;
* `add_rate_limited` delays a key by a per-key exponential backoff (base * 2^failures,
  capped), reset by `forget`;
* an overall token bucket (qps, burst) limits how fast rate-limited retries come back.

It holds keys, never objects: the reconciler always re-reads the current state.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import deque


class WorkQueue:
    def __init__(self, *, base_delay: float = 0.005, max_delay: float = 300.0,
                 qps: float = 10.0, burst: int = 100) -> None:
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.qps = qps
        self.burst = burst
        self._cond = threading.Condition()
        self._queue: deque[str] = deque()
        self._queued: set[str] = set()
        self._processing: set[str] = set()
        self._dirty: set[str] = set()
        self._failures: dict[str, int] = {}
        self._delayed: list[tuple[float, int, str]] = []
        self._delayed_at: dict[str, float] = {}
        self._seq = itertools.count()
        self._tokens = float(burst)
        self._last_refill = time.monotonic()
        self._shutting_down = False

    # ------------------------------------------------------------ adding

    def add(self, key: str) -> None:
        with self._cond:
            self._add_locked(key)

    def _add_locked(self, key: str) -> None:
        if self._shutting_down:
            return
        if key in self._processing:
            self._dirty.add(key)
            return
        if key in self._queued:
            return
        self._queued.add(key)
        self._queue.append(key)
        self._cond.notify()

    def add_after(self, key: str, seconds: float) -> None:
        if seconds <= 0:
            self.add(key)
            return
        with self._cond:
            if self._shutting_down:
                return
            when = time.monotonic() + seconds
            # Keep only the earliest pending time for a key.
            prev = self._delayed_at.get(key)
            if prev is not None and prev <= when:
                return
            self._delayed_at[key] = when
            heapq.heappush(self._delayed, (when, next(self._seq), key))
            self._cond.notify()

    def _bucket_delay(self) -> float:
        now = time.monotonic()
        self._tokens = min(float(self.burst), self._tokens + (now - self._last_refill) * self.qps)
        self._last_refill = now
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self.qps

    def add_rate_limited(self, key: str) -> None:
        with self._cond:
            n = self._failures.get(key, 0)
            self._failures[key] = n + 1
            per_key = min(self.max_delay, self.base_delay * (2**n))
            delay = max(per_key, self._bucket_delay())
        self.add_after(key, delay)

    def forget(self, key: str) -> None:
        with self._cond:
            self._failures.pop(key, None)

    def num_requeues(self, key: str) -> int:
        with self._cond:
            return self._failures.get(key, 0)

    # ------------------------------------------------------------ taking

    def _promote_due_locked(self) -> float | None:
        """Move due delayed keys into the queue; return seconds until the next one."""
        now = time.monotonic()
        while self._delayed:
            when, _, key = self._delayed[0]
            if self._delayed_at.get(key) != when:
                heapq.heappop(self._delayed)  # superseded by an earlier time
                continue
            if when > now:
                return when - now
            heapq.heappop(self._delayed)
            del self._delayed_at[key]
            self._add_locked(key)
        return None

    def get(self, timeout: float | None = None) -> str | None:
        """Block until a key is ready; None on shut-down or timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                wait = self._promote_due_locked()
                if self._queue:
                    key = self._queue.popleft()
                    self._queued.discard(key)
                    self._processing.add(key)
                    return key
                if self._shutting_down:
                    return None
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return None
                    wait = left if wait is None else min(wait, left)
                self._cond.wait(wait)

    def done(self, key: str) -> None:
        with self._cond:
            self._processing.discard(key)
            if key in self._dirty:
                self._dirty.discard(key)
                self._add_locked(key)

    # ------------------------------------------------------------ life

    def shut_down(self) -> None:
        with self._cond:
            self._shutting_down = True
            self._cond.notify_all()

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down

    def __len__(self) -> int:
        with self._cond:
            return len(self._queue)

    def pending(self) -> int:
        """Keys queued, delayed or being processed."""
        with self._cond:
            return len(self._queue) + len(self._delayed_at) + len(self._processing)
