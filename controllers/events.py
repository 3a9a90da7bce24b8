"""Kubernetes-style events, as `hostplane describe` shows them.

    <root>/events/<Kind>/<name>/<time>   {"type", "reason", "message", "time", "count"}

`<time>` is the event's first occurrence in microseconds since the epoch, zero-padded to 17
digits, so keys sort by time. A repeat of the newest event of an object (same type, reason
and message) bumps its `count` and `time` instead of adding a key. At most `limit` events
are kept per object (the oldest are deleted), and every event is bound to a lease of a few
hours so the events of deleted objects vanish by themselves.

Recording an event is best effort: a failure is logged, never raised into a reconcile.
It must never be read back to make a decision.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime

from controllers import layout
from reconcile import keys
from reconcile.errors import StoreError
from reconcile.store import Put, Store

log = logging.getLogger(__name__)


def event_key(root: str, kind: str, name: str, when: datetime) -> str:
    return f"{layout.event_object_prefix(keys.events_prefix(root), kind, name)}{int(when.timestamp() * 1e6):017d}"


def encode_event(type_: str, reason: str, message: str, when: datetime, count: int) -> bytes:
    return json.dumps({"type": type_, "reason": reason, "message": message,
                       "time": when.isoformat(), "count": count}, sort_keys=True).encode()


class EventRecorder:
    def __init__(self, store: Store, *, clock: Callable[[], datetime], limit: int = 20,
                 ttl_seconds: int = 6 * 3600) -> None:
        self.store = store
        self.clock = clock
        self.limit = limit
        self.ttl_seconds = ttl_seconds
        self._lock = threading.Lock()
        self._keys: dict[tuple[str, str], deque[str]] = {}
        self._last: dict[tuple[str, str], tuple[str, str, str, int]] = {}
        self._lease: int | None = None
        self._lease_at = 0.0

    def _lease_id(self) -> int:
        # A fresh lease every ttl/2: an event lives between ttl/2 and ttl, never refreshed.
        if self._lease is None or time.monotonic() - self._lease_at > self.ttl_seconds / 2:
            self._lease = self.store.grant_lease(self.ttl_seconds)
            self._lease_at = time.monotonic()
        return self._lease

    def _known(self, kind: str, name: str) -> deque[str]:
        obj = (kind, name)
        if obj not in self._keys:
            prefix = layout.event_object_prefix(keys.events_prefix(self.store.root), kind, name)
            kvs, _ = self.store.kv_range(prefix)
            self._keys[obj] = deque(kv.key for kv in kvs)
            if kvs:
                last = json.loads(kvs[-1].value)
                self._last[obj] = (last.get("type", ""), last.get("reason", ""), last.get("message", ""),
                                   int(last.get("count", 1)))
        return self._keys[obj]

    def record(self, kind: str, name: str, type_: str, reason: str, message: str) -> None:
        try:
            with self._lock:
                self._record(kind, name, type_, reason, message)
        except StoreError as exc:
            log.warning("event %s/%s %s not recorded: %s", kind, name, reason, exc)

    def _record(self, kind: str, name: str, type_: str, reason: str, message: str) -> None:
        now = self.clock()
        obj = (kind, name)
        known = self._known(kind, name)
        last = self._last.get(obj)
        if known and last is not None and last[:3] == (type_, reason, message):
            count = last[3] + 1
            self.store.txn([], [Put(known[-1], encode_event(type_, reason, message, now, count), self._lease_id())])
            self._last[obj] = (type_, reason, message, count)
            return
        key = event_key(self.store.root, kind, name, now)
        if known and key <= known[-1]:
            key = known[-1][:-17] + f"{int(known[-1][-17:]) + 1:017d}"
        self.store.txn([], [Put(key, encode_event(type_, reason, message, now, 1), self._lease_id())])
        known.append(key)
        self._last[obj] = (type_, reason, message, 1)
        while len(known) > self.limit:
            self.store.kv_delete(known.popleft())

    def forget(self, kind: str, name: str) -> None:
        """Drop the in-memory index of an object (its keys stay until their lease ends)."""
        with self._lock:
            self._keys.pop((kind, name), None)
            self._last.pop((kind, name), None)


def read_events(store: Store, kind: str, name: str) -> list[dict[str, object]]:
    """The events of one object, oldest first (what `describe` prints)."""
    kvs, _ = store.kv_range(layout.event_object_prefix(keys.events_prefix(store.root), kind, name))
    return [json.loads(kv.value) for kv in kvs]
