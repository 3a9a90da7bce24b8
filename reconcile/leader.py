"""Leader election on an etcd lease: one leader at a time, a standby takes over on death.

The leader key `<root>/election/<name>` is created only if absent, bound to a lease of
`ttl` seconds that the leader refreshes every ttl/3. If the leader dies, etcd deletes the
key when the lease expires; standbys watch the key and campaign at once. A leader that
cannot refresh for `renew_deadline` seconds steps down on its own, before its lease can
have been taken over. `fence()` gives a compare that holds only while this process still
holds the key it created, so a deposed leader's transactions fail instead of acting twice.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence

from reconcile import keys
from reconcile.errors import StoreError
from reconcile.etcd import Compare, Delete, Get, ModIs, Put, Watch, WatchEvent
from reconcile.objects import Store

log = logging.getLogger(__name__)


# The one shape of a leader fence: called before a write, it returns the compare(s) that hold only
# while this process leads (`LeaderElector.fence`), or raises NotLeader. Every fenced writer takes it.
Fence = Callable[[], "Compare | Sequence[Compare]"]


def fence_compares(fence: Fence | None) -> list[Compare]:
    """The compares a fenced write carries (none without a fence); NotLeader when no longer leading."""
    if fence is None:
        return []
    got = fence()
    return list(got) if isinstance(got, list | tuple) else [got]  # type: ignore[list-item]


class NotLeader(StoreError):
    pass


class LeaderElector:
    def __init__(self, store: Store, name: str, identity: str, *, ttl: int = 15,
                 retry_period: float = 2.0, renew_deadline: float | None = None) -> None:
        self.store = store
        self.key = keys.election_key(name, store.root)
        self.identity = identity
        self.ttl = ttl
        self.retry_period = retry_period
        self.renew_deadline = renew_deadline if renew_deadline is not None else ttl * 2 / 3
        self._lease: int | None = None
        self._leader_rev = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._watch: Watch | None = None
        self._leading = threading.Event()
        self.terms = 0

    @property
    def is_leader(self) -> bool:
        return self._leading.is_set()

    def wait_leading(self, timeout: float | None = None) -> bool:
        return self._leading.wait(timeout)

    def fence(self) -> ModIs:
        if not self.is_leader:
            raise NotLeader(f"{self.identity} does not lead {self.key}")
        return ModIs(self.key, self._leader_rev)

    def current_leader(self) -> str | None:
        kv = self.store.kv_get(self.key)
        if kv is None:
            return None
        value: str = kv.value.decode()
        return value

    def start(self, on_started_leading: Callable[[], None],
              on_stopped_leading: Callable[[], None]) -> LeaderElector:
        self._thread = threading.Thread(
            target=self._run, args=(on_started_leading, on_stopped_leading),
            name=f"leader {self.key}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop campaigning; a leader resigns (deletes its key) so a standby leads at once."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    # ------------------------------------------------------------ internals

    def _on_key_events(self, events: list[WatchEvent], revision: int) -> None:
        if any(e.type == "DELETE" and e.key == self.key for e in events):
            self._wake.set()

    def _campaign(self) -> bool:
        lease = self.store.grant_lease(self.ttl)
        res = self.store.txn([ModIs(self.key, 0)],
                             [Put(self.key, self.identity.encode(), lease)], [Get(self.key)])
        if res.succeeded:
            self._lease = lease
            self._leader_rev = res.revision
            return True
        with contextlib.suppress(StoreError):
            self.store.revoke_lease(lease)
        return False

    def _run(self, started: Callable[[], None], stopped: Callable[[], None]) -> None:
        try:
            self._watch = self.store.watch(self.key, start_revision=self.store.revision() + 1,
                                           on_events=self._on_key_events)
        except StoreError:
            log.warning("leader %s: cannot watch the election key; polling", self.identity)
        try:
            while not self._stop.is_set():
                try:
                    won = self._campaign()
                except StoreError as exc:
                    log.warning("leader %s: campaign failed: %s", self.identity, exc)
                    won = False
                if not won:
                    self._wake.wait(self.retry_period)
                    self._wake.clear()
                    continue
                self.terms += 1
                log.info("leader %s: leading %s", self.identity, self.key)
                self._leading.set()
                try:
                    started()
                    self._hold()
                finally:
                    self._leading.clear()
                    with contextlib.suppress(Exception):
                        stopped()
                    self._resign()
        finally:
            if self._watch is not None:
                self._watch.stop()

    def _hold(self) -> None:
        """Refresh the lease until stopped or until it can no longer be refreshed in time."""
        last_ok = time.monotonic()
        interval = max(self.ttl / 3.0, 0.2)
        while not self._stop.wait(interval):
            try:
                assert self._lease is not None
                self.store.refresh_lease(self._lease)
                kv = self.store.kv_get(self.key)
                if kv is None or kv.mod_revision != self._leader_rev:
                    log.warning("leader %s: lost the election key", self.identity)
                    return
                last_ok = time.monotonic()
            except StoreError as exc:
                if time.monotonic() - last_ok > self.renew_deadline:
                    log.warning("leader %s: could not renew for %.1fs (%s); stepping down",
                                self.identity, time.monotonic() - last_ok, exc)
                    return

    def _resign(self) -> None:
        lease, self._lease = self._lease, None
        with contextlib.suppress(StoreError):
            self.store.txn([ModIs(self.key, self._leader_rev)], [Delete(self.key)])
        if lease is not None:
            with contextlib.suppress(StoreError):
                self.store.revoke_lease(lease)


__all__ = ["LeaderElector", "NotLeader"]
