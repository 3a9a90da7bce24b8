"""Kubernetes-style events, as `hostplane describe` shows them.

    <root>/events/<Kind>/<name>/<time>   {"type", "reason", "message", "time", "count"}

`<time>` is the event's first occurrence in microseconds since the epoch, zero-padded to 17
digits, so keys sort by time. A repeat of the newest event of an object (same type, reason
and message) bumps its `count` and `time` instead of adding a key. At most `limit` events
are kept per object (the oldest are deleted), and every event is bound to a lease of a few
hours so the events of deleted objects vanish by themselves.

Recording an event is best effort and off the reconcile's path: events are queued and a
background thread writes them many per transaction; a failure is logged, never raised.
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
from reconcile.etcd import Delete, Put
from reconcile.objects import Store

log = logging.getLogger(__name__)

# etcd refuses a transaction of more than 128 operations by default.
MAX_OPS = 100
FLUSH_INTERVAL = 0.05


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
        self._loaded = False
        self._pending: list[tuple[str, str, str, str, str, datetime]] = []
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _lease_id(self) -> int:
        # A fresh lease every ttl/2: an event lives between ttl/2 and ttl, never refreshed.
        if self._lease is None or time.monotonic() - self._lease_at > self.ttl_seconds / 2:
            self._lease = self.store.grant_lease(self.ttl_seconds)
            self._lease_at = time.monotonic()
        return self._lease

    def load(self) -> None:
        """Index every recorded event at once (one read instead of one per object on first use)."""
        prefix = keys.events_prefix(self.store.root)
        kvs, _ = self.store.kv_range(prefix)
        index: dict[tuple[str, str], deque[str]] = {}
        last: dict[tuple[str, str], tuple[str, str, str, int]] = {}
        for kv in kvs:
            kind, _, rest = kv.key[len(prefix):].partition("/")
            name = rest.rsplit("/", 1)[0]
            index.setdefault((kind, name), deque()).append(kv.key)
            try:
                ev = json.loads(kv.value)
                last[(kind, name)] = (ev.get("type", ""), ev.get("reason", ""), ev.get("message", ""),
                                      int(ev.get("count", 1)))
            except ValueError:
                continue
        with self._lock:
            self._keys, self._last, self._loaded = index, last, True

    def _known(self, kind: str, name: str) -> deque[str]:
        obj = (kind, name)
        if obj not in self._keys and self._loaded:
            self._keys[obj] = deque()
        if obj not in self._keys:
            prefix = layout.event_object_prefix(keys.events_prefix(self.store.root), kind, name)
            kvs, _ = self.store.kv_range(prefix)
            self._keys[obj] = deque(kv.key for kv in kvs)
            if kvs:
                last = json.loads(kvs[-1].value)
                self._last[obj] = (last.get("type", ""), last.get("reason", ""), last.get("message", ""),
                                   int(last.get("count", 1)))
        return self._keys[obj]

    def start(self) -> EventRecorder:
        self._thread = threading.Thread(target=self._run, name="events", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Write what is pending, then stop."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        self.flush()

    def record(self, kind: str, name: str, type_: str, reason: str, message: str) -> None:
        """Queue an event; it is written within moments, off the reconcile's path."""
        with self._lock:
            self._pending.append((kind, name, type_, reason, message, self.clock()))
        if self._thread is None:
            self.flush()
        else:
            self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            self.flush()
            self._stop.wait(FLUSH_INTERVAL)

    def flush(self) -> None:
        """Write every queued event, many per transaction."""
        with self._flush_lock:
            with self._lock:
                pending, self._pending = self._pending, []
            if not pending:
                return
            ops: dict[str, Put | Delete] = {}
            try:
                for kind, name, type_, reason, message, when in pending:
                    self._plan(ops, kind, name, type_, reason, message, when)
                items = list(ops.values())
                lease = self._lease_id()
                for i in range(0, len(items), MAX_OPS):
                    chunk = [Put(o.key, o.value, lease) if isinstance(o, Put) else o for o in items[i:i + MAX_OPS]]
                    self.store.txn([], chunk)
            except StoreError as exc:
                log.warning("%d event(s) not recorded: %s", len(pending), exc)

    def _plan(self, ops: dict[str, Put | Delete], kind: str, name: str, type_: str, reason: str, message: str,
              when: datetime) -> None:
        obj = (kind, name)
        known = self._known(kind, name)
        last = self._last.get(obj)
        if known and last is not None and last[:3] == (type_, reason, message):
            count = last[3] + 1
            ops[known[-1]] = Put(known[-1], encode_event(type_, reason, message, when, count))
            self._last[obj] = (type_, reason, message, count)
            return
        key = event_key(self.store.root, kind, name, when)
        if known and key <= known[-1]:
            key = known[-1][:-17] + f"{int(known[-1][-17:]) + 1:017d}"
        ops[key] = Put(key, encode_event(type_, reason, message, when, 1))
        known.append(key)
        self._last[obj] = (type_, reason, message, 1)
        while len(known) > self.limit:
            old = known.popleft()
            ops[old] = Delete(old)

    def forget(self, kind: str, name: str) -> None:
        """Drop the in-memory index of an object (its keys stay until their lease ends)."""
        with self._lock:
            self._keys.pop((kind, name), None)
            self._last.pop((kind, name), None)


def read_events(store: Store, kind: str, name: str) -> list[dict[str, object]]:
    """The events of one object, oldest first (what `describe` prints)."""
    kvs, _ = store.kv_range(layout.event_object_prefix(keys.events_prefix(store.root), kind, name))
    return [json.loads(kv.value) for kv in kvs]
