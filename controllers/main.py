"""The `hostplane controllers` process: leader election around one controller manager.

Any number of these processes may run against one etcd; the one holding the election key
(`<root>/election/controllers`, a 15 s lease) runs a `Manager`, the others wait and take
over when the lease lapses. Every write the manager makes carries the elector's fence, so
a leader that lost its key cannot make a decision twice. It must never hold state that is
not in etcd: a new leader rebuilds everything from there.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Protocol

from controllers import layout
from controllers.manager import Manager, ManagerSettings, utcnow
from reconcile.cluster import ensure_cluster_id
from reconcile.connection import EtcdConnection
from reconcile.etcd import Compare
from reconcile.leader import Fence, LeaderElector
from reconcile.objects import Store

log = logging.getLogger(__name__)



class Addon(Protocol):
    """Another leader-only loop (billing, for one): started after the manager, stopped before it."""

    def start(self) -> object: ...

    def stop(self) -> object: ...


# Factories of the leader-only loops every `hostplane controllers` runs beside the manager;
# each gets the store and the fence its writes must carry.
AddonFactory = Callable[[Store, Fence], Addon]
def _billing(store: Store, fence: Fence) -> Addon:
    from controllers.billing import BillingController

    return BillingController(store, clock=utcnow, fence=fence)


DEFAULT_ADDONS: list[AddonFactory] = [_billing]


class ControllerProcess:
    """A leader-elected manager on a store; `start()`, then `stop()`. Used by run_controllers and tests."""

    def __init__(self, store: Store, *, identity: str, ttl: int = 15, retry_period: float = 2.0,
                 settings: ManagerSettings | None = None, clock: Callable[[], datetime] = utcnow,
                 addons: Sequence[AddonFactory] = ()) -> None:
        self.store = store
        self.addon_factories = list(addons)
        self.addons: list[Addon] = []
        self.identity = identity
        self.settings = settings
        self.clock = clock
        self.elector = LeaderElector(store, layout.ELECTION_NAME, identity, ttl=ttl, retry_period=retry_period)
        self.manager: Manager | None = None
        self._lock = threading.Lock()

    def _fence(self) -> list[Compare]:
        return [self.elector.fence()]

    def _started(self) -> None:
        log.info("controllers %s: leading; starting the manager", self.identity)
        ensure_cluster_id(self.store)
        manager = Manager(self.store, fence=self._fence, clock=self.clock, settings=self.settings)
        with self._lock:
            self.manager = manager
        manager.start()
        for factory in self.addon_factories:
            addon = factory(self.store, self._fence)
            addon.start()
            self.addons.append(addon)

    def _stopped(self) -> None:
        addons, self.addons = self.addons, []
        for addon in reversed(addons):
            try:
                addon.stop()
            except Exception:
                log.exception("controllers %s: stopping %r failed", self.identity, addon)
        with self._lock:
            manager, self.manager = self.manager, None
        if manager is not None:
            log.info("controllers %s: no longer leading; stopping the manager", self.identity)
            manager.stop()

    def start(self) -> ControllerProcess:
        self.elector.start(self._started, self._stopped)
        return self

    @property
    def is_leader(self) -> bool:
        return self.elector.is_leader

    def stop(self) -> None:
        self.elector.stop()
        self._stopped()


def run_controllers(*, etcd: EtcdConnection, identity: str, stop: threading.Event) -> None:
    """Run leader-elected controllers against `etcd` until `stop` is set."""
    store = Store(etcd)
    proc = ControllerProcess(store, identity=identity, addons=DEFAULT_ADDONS).start()
    try:
        stop.wait()
    finally:
        proc.stop()
        store.close()
