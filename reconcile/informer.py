"""An informer: list a prefix, then watch it, into a local cache; tell handlers what changed.

Controllers read from the cache and enqueue keys from handlers; they never act on the
event itself (level-triggered). After a dropped connection the store's watch resumes from
the last revision; after a compaction the informer re-lists and reports every difference,
so handlers see a consistent sequence of (old, new) pairs either way. An optional resync
re-sends every cached item to the handlers so periodic checks happen without a trigger.

It must never block in a handler call: handlers run on the watch thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from reconcile.etcd import Watch, WatchEvent
from reconcile.objects import Store

log = logging.getLogger(__name__)

T = TypeVar("T")
Handler = Callable[[str, "T | None", "T | None"], None]


class Informer(Generic[T]):
    def __init__(self, store: Store, prefix: str, *, decode: Callable[[str, bytes], T],
                 resync_seconds: float = 0.0, name: str | None = None) -> None:
        self.store = store
        self.prefix = prefix
        self.decode = decode
        self.resync_seconds = resync_seconds
        self.name = name or prefix
        self._cache: dict[str, T] = {}
        self._revs: dict[str, int] = {}
        self._handlers: list[Callable[[str, T | None, T | None], None]] = []
        self._lock = threading.RLock()
        self._watch: Watch | None = None
        self._stop = threading.Event()
        self._synced = threading.Event()
        self._resync_thread: threading.Thread | None = None
        self.revision = 0
        self.relists = 0

    def add_handler(self, fn: Callable[[str, T | None, T | None], None]) -> None:
        self._handlers.append(fn)

    # ------------------------------------------------------------ reading

    def get(self, name: str) -> T | None:
        with self._lock:
            return self._cache.get(name)

    def items(self) -> dict[str, T]:
        with self._lock:
            return dict(self._cache)

    def mod_revision(self, name: str) -> int | None:
        with self._lock:
            return self._revs.get(name)

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    def wait_synced(self, timeout: float | None = None) -> bool:
        return self._synced.wait(timeout)

    def wait_for_revision(self, revision: int, timeout: float = 10.0) -> bool:
        """Wait until the cache reflects everything up to `revision` (for read-your-writes)."""
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self.revision >= revision:
                    return True
            time.sleep(0.005)
        return False

    # ------------------------------------------------------------ life

    def start(self, timeout: float = 30.0) -> Informer[T]:
        self._relist()
        if self.resync_seconds > 0:
            self._resync_thread = threading.Thread(target=self._resync_loop,
                                                   name=f"resync {self.name}", daemon=True)
            self._resync_thread.start()
        if not self._synced.wait(timeout):
            raise TimeoutError(f"informer {self.name} did not sync")
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            w, self._watch = self._watch, None
        if w is not None:
            w.stop()

    # ------------------------------------------------------------ internals

    def _decode(self, kv_key: str, value: bytes) -> T | None:
        try:
            return self.decode(kv_key[len(self.prefix):], value)
        except Exception:
            log.exception("informer %s: cannot decode %s; ignored", self.name, kv_key)
            return None

    def _notify(self, name: str, old: T | None, new: T | None) -> None:
        for h in self._handlers:
            try:
                h(name, old, new)
            except Exception:
                log.exception("informer %s: handler failed for %s", self.name, name)

    def _relist(self) -> None:
        if self._stop.is_set():
            return
        kvs, rev = self.store.kv_range(self.prefix)
        fresh: dict[str, tuple[T, int]] = {}
        for kv in kvs:
            obj = self._decode(kv.key, kv.value)
            if obj is not None:
                fresh[kv.key[len(self.prefix):]] = (obj, kv.mod_revision)
        changes: list[tuple[str, T | None, T | None]] = []
        with self._lock:
            for name, (obj, mrev) in fresh.items():
                if self._revs.get(name) != mrev:
                    changes.append((name, self._cache.get(name), obj))
                    self._cache[name] = obj
                    self._revs[name] = mrev
            for name in [n for n in self._cache if n not in fresh]:
                changes.append((name, self._cache.pop(name), None))
                self._revs.pop(name, None)
            self.revision = rev
        for name, old, new in changes:
            self._notify(name, old, new)
        self._synced.set()
        watch = self.store.watch(self.prefix, start_revision=rev + 1,
                                 on_events=self._on_events, on_compacted=self._on_compacted)
        with self._lock:
            if self._stop.is_set():
                watch.stop()
                return
            self._watch = watch

    def _on_events(self, events: list[WatchEvent], revision: int) -> None:
        for ev in events:
            name = ev.key[len(self.prefix):]
            if ev.type == "DELETE":
                with self._lock:
                    old = self._cache.pop(name, None)
                    self._revs.pop(name, None)
                    self.revision = ev.mod_revision
                if old is not None:
                    self._notify(name, old, None)
                continue
            new = self._decode(ev.key, ev.value)
            with self._lock:
                old = self._cache.get(name)
                if new is not None:
                    self._cache[name] = new
                    self._revs[name] = ev.mod_revision
                self.revision = ev.mod_revision
            if new is not None:
                self._notify(name, old, new)
        with self._lock:
            self.revision = max(self.revision, revision if not events else events[-1].mod_revision)

    def _on_compacted(self, compact_revision: int) -> None:
        log.info("informer %s: watch compacted at %d; re-listing", self.name, compact_revision)
        self.relists += 1
        # Re-list from a fresh thread: this callback runs on the dying watch's thread.
        threading.Thread(target=self._relist_retrying, name=f"relist {self.name}", daemon=True).start()

    def _relist_retrying(self) -> None:
        while not self._stop.is_set():
            try:
                self._relist()
                return
            except Exception:
                log.exception("informer %s: re-list failed; retrying", self.name)
                self._stop.wait(1.0)

    def _resync_loop(self) -> None:
        while not self._stop.wait(self.resync_seconds):
            for name, obj in self.items().items():
                self._notify(name, obj, obj)


