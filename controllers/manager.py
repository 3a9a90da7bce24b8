"""The controller manager: informers, the VPS and node controllers, and their I/O.

One `Manager` runs while its process leads (see `main.py`). It watches specs, statuses,
the nodes' prefixes and keeps the allocation book; two controllers act on keys:

* `vps` (several workers; one key never on two): finalizer, scheduling and address booking
  (`schedule.py`, `ipam.py`, one transaction in `booking.py`), resolving the DomainSpec
  (`resolve.py`, written under the node's prefix only when it changes), the status fold
  and its events (`status.py`), retention-driven deletion and the deletion finalizer;
* `node`: readiness from the heartbeat lease, allocation sums, cordon and drain (`nodes.py`);
* `ippool`: each pool's used and free addresses.

Every write carries the leader's fence, so a deposed leader's decision fails instead of
being made twice. Reads come from the informers' caches plus a write-through cache of the
manager's own writes, so a fresh decision never waits for its own watch event.

It must never decide anything inline: the decisions are the pure functions it calls.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

from controllers import layout
from controllers.billing import Policy as BillingPolicy
from controllers.booking import Book, Booking
from controllers.events import EventRecorder
from controllers.ipam import IPAllocation, allocate, free_count4, offset_of, pick_mac
from controllers.nodes import node_status, parse_heartbeat, schedulable, warming
from controllers.schedule import NodeView, PlacementPolicy, Resources, schedule
from controllers.status import NodeState, VPSProblem, events_for, vps_status
from controllers.vps_decision import VPSDecision, VPSSnapshot, decide_vps, requirements
from reconcile import keys
from reconcile.controller import Controller, Result
from reconcile.errors import Conflict
from reconcile.etcd import Compare, Delete, ModIs, Op, Put
from reconcile.informer import Informer
from reconcile.leader import Fence, fence_compares
from reconcile.objects import Batch, Store, encode_spec, encode_status, encode_value
from specs.domain import DomainSpec, ObservedDomain, Tombstone
from specs.kinds import (
    VPS,
    Customer,
    Image,
    IPPool,
    Node,
    NodeStatus,
    Plan,
    Resource,
    Subscription,
    SubscriptionStatus,
    VPSStatus,
)

log = logging.getLogger(__name__)

R = TypeVar("R", bound=Resource)
NodeEntry = DomainSpec | ObservedDomain | dict[str, Any] | bytes
TombstoneReason = Literal["Deleted", "Moved", "Purged"]
# A burst of bookings on a node updates its status once, not once per booking.
NODE_STATUS_BATCH_SECONDS = 1.0


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class ManagerSettings:
    policy: PlacementPolicy = "spread"
    workers: int = 8
    billing: BillingPolicy = field(default_factory=BillingPolicy)
    pending_retry_seconds: float = 30.0
    terminating_recheck_seconds: float = 30.0
    resync_seconds: float = 300.0
    event_limit: int = 20


def _spec_decoder(cls: type[R]) -> Callable[[str, bytes], R]:
    def decode(name: str, raw: bytes) -> R:
        return cls.model_validate(json.loads(raw))
    return decode


def _node_entry(name: str, raw: bytes) -> NodeEntry:
    _, _, rest = name.partition("/")
    if rest.startswith("desired/"):
        return DomainSpec.model_validate_json(raw)
    if rest.startswith("observed/"):
        return ObservedDomain.model_validate_json(raw)
    if rest == "heartbeat":
        return parse_heartbeat(raw)
    return raw


def _only_finalizer_added(old: VPS, new: VPS) -> bool:
    if layout.FINALIZER in old.metadata.finalizers or layout.FINALIZER not in new.metadata.finalizers:
        return False
    strip = {"finalizers", "resourceVersion"}
    same_meta = old.metadata.model_dump(exclude=strip) == new.metadata.model_dump(exclude=strip)
    return bool(old.spec == new.spec and same_meta)


class _Batch(Batch):
    """One reconcile's writes: compares and ops for one transaction, follow-ups given its revision."""

    touches_book: bool = False


class Manager:
    def __init__(self, store: Store, *, fence: Fence = lambda: (), clock: Callable[[], datetime] = utcnow,
                 settings: ManagerSettings | None = None) -> None:
        self.store = store
        self.root = store.root
        self.fence = fence
        self.clock = clock
        self.settings = settings or ManagerSettings()
        self.book = Book(store, fence=fence)
        self.events = EventRecorder(store, clock=clock, limit=self.settings.event_limit)
        r = self.root
        self.vps_inf: Informer[VPS] = Informer(store, keys.spec_prefix(VPS, r), decode=_spec_decoder(VPS),
                                               resync_seconds=self.settings.resync_seconds)
        self.vps_status_inf: Informer[VPSStatus] = Informer(
            store, keys.status_prefix(VPS, r), decode=lambda _n, raw: VPSStatus.model_validate_json(raw))
        self.sub_inf: Informer[Subscription] = Informer(store, keys.spec_prefix(Subscription, r),
                                                        decode=_spec_decoder(Subscription))
        self.sub_status_inf: Informer[SubscriptionStatus] = Informer(
            store, keys.status_prefix(Subscription, r),
            decode=lambda _n, raw: SubscriptionStatus.model_validate_json(raw))
        self.plan_inf: Informer[Plan] = Informer(store, keys.spec_prefix(Plan, r), decode=_spec_decoder(Plan))
        self.image_inf: Informer[Image] = Informer(store, keys.spec_prefix(Image, r), decode=_spec_decoder(Image))
        self.customer_inf: Informer[Customer] = Informer(store, keys.spec_prefix(Customer, r),
                                                         decode=_spec_decoder(Customer))
        self.node_inf: Informer[Node] = Informer(store, keys.spec_prefix(Node, r), decode=_spec_decoder(Node))
        self.node_status_inf: Informer[NodeStatus] = Informer(
            store, keys.status_prefix(Node, r), decode=lambda _n, raw: NodeStatus.model_validate_json(raw))
        self.pool_inf: Informer[IPPool] = Informer(store, keys.spec_prefix(IPPool, r), decode=_spec_decoder(IPPool))
        self.nodes_inf: Informer[NodeEntry] = Informer(store, keys.nodes_prefix(r), decode=_node_entry)
        # Operators' orphan purges, "<node>/<uid>": carried out by the node controller as tombstones.
        self.purge_inf: Informer[Tombstone] = Informer(
            store, f"{r}/purges/", decode=lambda _n, raw: Tombstone.model_validate_json(raw))
        self._informers: list[Informer[Any]] = [self.purge_inf,
            self.plan_inf, self.image_inf, self.customer_inf, self.pool_inf, self.node_inf, self.node_status_inf,
            self.sub_inf, self.sub_status_inf, self.vps_status_inf, self.nodes_inf, self.vps_inf]
        self.vps_ctl = Controller("vps", self.reconcile_vps, workers=self.settings.workers)
        self.node_ctl = Controller("node", self.reconcile_node, workers=1)
        self.pool_ctl = Controller("ippool", self.reconcile_pool, workers=1)
        self._lock = threading.Lock()
        self._by_sub: dict[str, set[str]] = {}
        self._sub_of: dict[str, str] = {}
        self._desired_nodes: dict[str, set[str]] = {}
        self._pending: set[str] = set()
        # Write-through caches of this manager's own writes: key -> (value, mod_revision).
        self._desired: dict[str, tuple[DomainSpec | None, int]] = {}
        self._status: dict[str, tuple[bytes, VPSStatus]] = {}
        self._node_status: dict[str, bytes] = {}
        self._pool_status: dict[str, bytes] = {}
        self._started = False

    # ------------------------------------------------------------ life

    def start(self, timeout: float = 60.0) -> Manager:
        self.vps_inf.add_handler(self._on_vps)
        self.sub_inf.add_handler(lambda n, _o, _n: self._enqueue_sub(n))
        self.sub_status_inf.add_handler(lambda n, _o, _n: self._enqueue_sub(n))
        self.plan_inf.add_handler(self._on_plan)
        self.customer_inf.add_handler(self._on_customer)
        self.image_inf.add_handler(self._on_image)
        self.node_inf.add_handler(self._on_node)
        self.pool_inf.add_handler(self._on_pool)
        self.nodes_inf.add_handler(self._on_node_entry)
        self.purge_inf.add_handler(lambda n, _o, new: self.node_ctl.queue.add(n.partition("/")[0]) if new else None)
        self.book.load()
        self.events.load()
        self.events.start()
        for inf in self._informers:
            inf.start(timeout)
        for name in self.book.bookings():
            self.vps_ctl.queue.add(name)
        self.node_ctl.start()
        self.pool_ctl.start()
        self.vps_ctl.start()
        self._started = True
        return self

    def stop(self) -> None:
        self.vps_ctl.stop()
        self.node_ctl.stop()
        self.pool_ctl.stop()
        for inf in self._informers:
            inf.stop()
        self.events.stop()

    # ------------------------------------------------------------ handlers (never block)

    def _on_vps(self, name: str, old: VPS | None, new: VPS | None) -> None:
        if old is not None and new is not None and _only_finalizer_added(old, new):
            return  # our own finalizer write: the reconcile that made it carried on with the result
        with self._lock:
            prev = self._sub_of.pop(name, None)
            if prev is not None:
                self._by_sub.get(prev, set()).discard(name)
            if new is not None:
                self._sub_of[name] = new.spec.subscription
                self._by_sub.setdefault(new.spec.subscription, set()).add(name)
        self.vps_ctl.queue.add(name)

    def _on_pool(self, name: str, _old: IPPool | None, _new: IPPool | None) -> None:
        self.pool_ctl.queue.add(name)
        self._enqueue_pending()

    def _addresses_changed(self, pool: str | None) -> None:
        if pool is not None:
            self.pool_ctl.queue.add_after(pool, NODE_STATUS_BATCH_SECONDS)

    def _enqueue_sub(self, sub: str) -> None:
        with self._lock:
            names = list(self._by_sub.get(sub, ()))
        for n in names:
            self.vps_ctl.queue.add(n)

    def _on_plan(self, name: str, _old: Plan | None, _new: Plan | None) -> None:
        for sub_name, sub in self.sub_inf.items().items():
            if sub.spec.plan == name:
                self._enqueue_sub(sub_name)

    def _on_customer(self, name: str, _old: Customer | None, _new: Customer | None) -> None:
        for sub_name, sub in self.sub_inf.items().items():
            if sub.spec.customer == name:
                self._enqueue_sub(sub_name)

    def _on_image(self, name: str, _old: Image | None, _new: Image | None) -> None:
        for vps_name, vps in self.vps_inf.items().items():
            if vps.spec.image == name:
                self.vps_ctl.queue.add(vps_name)

    def _on_node(self, name: str, _old: Node | None, _new: Node | None) -> None:
        self.node_ctl.queue.add(name)
        self._enqueue_on_node(name)
        self._enqueue_pending()

    def _on_node_entry(self, name: str, old: NodeEntry | None, new: NodeEntry | None) -> None:
        node, _, rest = name.partition("/")
        if rest == "heartbeat":
            self.node_ctl.queue.add(node)
            was = old is not None and not (isinstance(old, dict) and warming(old))
            now_ready = new is not None and not (isinstance(new, dict) and warming(new))
            if was != now_ready:
                self._enqueue_on_node(node)
                self._enqueue_pending()
            return
        kind, _, vps = rest.partition("/")
        if not vps:
            return
        if kind == "desired":
            with self._lock:
                nodes = self._desired_nodes.setdefault(vps, set())
                if new is None:
                    nodes.discard(node)
                else:
                    nodes.add(node)
            mine = self._desired.get(keys.desired_key(node, vps, self.root))
            if mine is not None and mine[0] == new:
                return  # the echo of our own write
        if kind in ("desired", "observed"):
            self.vps_ctl.queue.add(vps)

    def _enqueue_on_node(self, node: str) -> None:
        for vps in self.book.on_node(node):
            self.vps_ctl.queue.add(vps)

    def _enqueue_pending(self) -> None:
        with self._lock:
            names = list(self._pending)
        for n in names:
            self.vps_ctl.queue.add(n)

    # ------------------------------------------------------------ reads

    def _with_rv(self, inf: Informer[R], name: str) -> R | None:
        obj = inf.get(name)
        if obj is None:
            return None
        rev = inf.mod_revision(name)
        return obj.model_copy(update={"metadata": obj.metadata.model_copy(update={"resourceVersion": str(rev)})})

    def _subscription(self, name: str) -> Subscription | None:
        sub = self.sub_inf.get(name)
        if sub is None:
            return None
        return sub.model_copy(update={"status": self.sub_status_inf.get(name)})

    def node_state(self, node: str) -> NodeState:
        if self.node_inf.get(node) is None:
            return "Missing"
        hb = self.nodes_inf.get(keys.node_entry(node, "heartbeat"))
        return "Ready" if hb is not None and not (isinstance(hb, dict) and warming(hb)) else "NotReady"

    def _observed(self, node: str, vps: str) -> ObservedDomain | None:
        entry = self.nodes_inf.get(keys.node_entry(node, "observed", vps))
        return entry if isinstance(entry, ObservedDomain) else None

    def _current_desired(self, node: str, vps: str) -> tuple[DomainSpec | None, int]:
        key = keys.desired_key(node, vps, self.root)
        entry = self.nodes_inf.get(keys.node_entry(node, "desired", vps))
        rev = self.nodes_inf.mod_revision(keys.node_entry(node, "desired", vps)) or 0
        mine = self._desired.get(key)
        if mine is not None and mine[1] > self.nodes_inf.revision:
            return mine  # the informer has not seen our own latest write yet
        return (entry if isinstance(entry, DomainSpec) else None), rev

    def _previous_status(self, name: str) -> VPSStatus | None:
        mine = self._status.get(name)
        return mine[1] if mine is not None else self.vps_status_inf.get(name)

    # ------------------------------------------------------------ writes (fenced)

    def _txn(self, compares: Sequence[Compare], ops: Sequence[Op], what: str) -> int:
        res = self.store.txn([*fence_compares(self.fence), *compares], ops)
        if not res.succeeded:
            raise Conflict(f"{what}: changed underneath or no longer leading; deciding again")
        return res.revision

    def _commit(self, batch: _Batch, what: str) -> int | None:
        """Write a reconcile's decisions in one fenced transaction; run their follow-ups on success."""
        if not batch.ops:
            for fn in batch.after:
                fn(0)
            return None
        res = batch.commit(fence_compares(self.fence))
        if not res.succeeded:
            if batch.touches_book and not self._spec_moved(batch):
                # Only the book can have been stale: re-read it (a changed spec is the usual cause
                # of a lost race, and needs no reload).
                self.book.load()
            raise Conflict(f"{what}: changed underneath or no longer leading; deciding again")
        return res.revision

    def _spec_moved(self, batch: _Batch) -> bool:
        specs = keys.specs_prefix(self.root)
        guard = next((c for c in batch.compares if isinstance(c, ModIs) and c.key.startswith(specs)), None)
        if guard is None:
            return False
        kv = self.store.kv_get(guard.key)
        return (kv.mod_revision if kv else 0) != guard.revision

    def _write_meta(self, vps: VPS, **changes: Any) -> VPS:
        new = vps.model_copy(update={"metadata": vps.metadata.model_copy(update=changes)})
        batch = _Batch(self.store).expect(vps).put_spec(new)
        rev = self._txn(batch.compares, batch.ops, f"VPS {vps.name}")
        return new.model_copy(update={"metadata": new.metadata.model_copy(update={"resourceVersion": str(rev)})})

    def _desired_ops(self, batch: _Batch, node: str, vps: str, desired: DomainSpec | None,
                     reason: TombstoneReason = "Deleted") -> None:
        """Put or delete the node's desired entry. A deletion writes, in the same transaction, the
        uid-bound tombstone that is the agent's only reason to delete a domain and its disks."""
        current, rev = self._current_desired(node, vps)
        if current == desired:
            return
        key = keys.desired_key(node, vps, self.root)
        if desired is None:
            batch.ops.append(Delete(key))
            if current is not None:
                tomb = Tombstone(vps=vps, uid=current.uid, reason=reason, at=self.clock())
                batch.put(keys.tombstone_key(node, current.uid, self.root), encode_value(tomb))
        else:
            batch.compares.append(ModIs(key, rev))
            batch.put(key, encode_value(desired))
            # Wanted here again (moved back): an older order to delete this incarnation is void.
            batch.ops.append(Delete(keys.tombstone_key(node, desired.uid, self.root)))
        batch.after.append(lambda r: self._desired.__setitem__(key, (desired, r)))

    def _write_desired(self, node: str, vps: str, desired: DomainSpec | None) -> None:
        batch = _Batch(self.store)
        self._desired_ops(batch, node, vps, desired)
        self._commit(batch, f"desired {node}/{vps}")

    def _status_ops(self, batch: _Batch, vps: VPS, status: VPSStatus) -> None:
        value = encode_status(status)
        prev = self._previous_status(vps.name)
        if prev is not None and encode_status(prev) == value:
            return
        batch.ops.append(Put(keys.status_key(VPS, vps.name, self.root), value))

        def done(_rev: int) -> None:
            self._status[vps.name] = (value, status)
            for ev in events_for(prev, status):
                self.events.record("VPS", vps.name, ev.type, ev.reason, ev.message)
        batch.after.append(done)

    def _write_status(self, vps: VPS, status: VPSStatus) -> None:
        batch = _Batch(self.store).expect(vps)
        self._status_ops(batch, vps, status)
        self._commit(batch, f"VPS {vps.name} status")

    # ------------------------------------------------------------ VPS

    def reconcile_vps(self, name: str) -> Result | None:
        """Read a snapshot, decide purely (`controllers.vps_decision.decide_vps`), commit once."""
        now = self.clock()
        vps = self._with_rv(self.vps_inf, name)
        if vps is None:
            return self._orphan(name)
        if vps.metadata.deletionTimestamp is not None:
            return self._finalize(vps, now)
        # Everything this reconcile decides is written in one transaction, guarded by the
        # spec's resourceVersion: a VPS changed meanwhile is decided again, never half-written.
        batch = _Batch(self.store).expect(vps)
        add_finalizer = layout.FINALIZER not in vps.metadata.finalizers
        if add_finalizer:
            vps = vps.model_copy(update={"metadata": vps.metadata.model_copy(
                update={"finalizers": [*vps.metadata.finalizers, layout.FINALIZER]})})
        sub = self._subscription(vps.spec.subscription)
        reused = False
        if sub is not None and not vps.bound_to(sub):
            # The Subscription this server was created under is gone; one of the same name now is
            # someone else's: never resolve the server with its plan, billing or customer.
            sub, reused = None, True
        elif sub is None:
            reused = self.sub_inf.get(vps.spec.subscription) is not None
        plan = self.plan_inf.get(sub.spec.plan) if sub is not None else None
        image = self.image_inf.get(vps.spec.image)
        customer = self.customer_inf.get(sub.spec.customer) if sub is not None else None
        _, size = requirements(vps, sub, plan, image, reused)
        booking = self.book.get(name)
        placing = size is not None and (booking is None or booking.resources != size)
        with self.book.lock if placing else contextlib.nullcontext():
            placement_problem: VPSProblem | None = None
            if size is not None and booking is None:
                # Placement is the pure scheduler and IPAM on the book's state, under its lock.
                booking, placement_problem = self._place(vps, size, batch)
            node_name = booking.node if booking is not None else None
            snap = VPSSnapshot(
                vps=vps, subscription=sub, plan=plan, image=image, customer=customer, booking=booking,
                placement_problem=placement_problem, sub_name_reused=reused, add_finalizer=add_finalizer,
                node=self.node_inf.get(node_name) if node_name else None,
                desired=self._current_desired(node_name, name)[0] if node_name else None,
                other_desired_nodes=frozenset(self._desired_nodes.get(name, set())),
                observed=self._observed(node_name, name) if node_name else None,
                node_state=self.node_state(node_name) if node_name else None,
                previous_status=self._previous_status(name), billing=self.settings.billing,
                pending_retry_seconds=self.settings.pending_retry_seconds)
            decision = decide_vps(snap, now)
            return self._commit_vps(vps, snap.booking, decision, batch, now)

    def _commit_vps(self, vps: VPS, booking: Booking | None, d: VPSDecision, batch: _Batch,
                    now: datetime) -> Result | None:
        """Apply one VPS decision: every write in `batch`'s one fenced transaction, then the follow-ups."""
        name = vps.name
        if d.resize is not None:
            nb, compares, ops = self.book.resize_ops(name, d.resize)
            batch.compares.extend(compares)
            batch.ops.extend(ops)
            batch.touches_book = True

            def resized(rev: int, nb: Booking = nb) -> None:
                self.book.resized(nb, rev)
                self.node_ctl.queue.add_after(nb.node, NODE_STATUS_BATCH_SECONDS)
            batch.after.append(resized)
        with self._lock:
            if d.pending:
                self._pending.add(name)
            else:
                self._pending.discard(name)
        for other in d.remove_from:
            self._desired_ops(batch, other, name, None, reason="Moved")
        for type_, reason, message in d.events:
            def record(_rev: int, t: str = type_, r: str = reason, m: str = message) -> None:
                self.events.record("VPS", name, t, r, m)
            batch.after.append(record)
        if d.delete:
            batch.put_spec(vps.model_copy(update={"metadata": vps.metadata.model_copy(
                update={"deletionTimestamp": now})}))
            self._commit(batch, f"VPS {name}")
            return None
        if d.write_desired:
            assert booking is not None
            self._desired_ops(batch, booking.node, name, d.desired)
        if d.add_finalizer:
            batch.put_spec(vps)
        if d.status is not None:
            self._status_ops(batch, vps, d.status)
        self._commit(batch, f"VPS {name}")
        return Result(requeue_after=d.requeue_after) if d.requeue_after is not None else None

    def _node_views(self) -> list[NodeView]:
        views = []
        for name, node in self.node_inf.items().items():
            c, o = node.spec.capacity, node.spec.overcommit
            views.append(NodeView(
                name=name, capacity=Resources(c.vcpus, c.memoryMiB, c.diskGiB), cpu_overcommit=o.cpu,
                memory_overcommit=o.memory, allocated=self.book.allocated(name), labels=node.metadata.labels,
                ready=self.node_state(name) == "Ready", schedulable=schedulable(node)))
        return views

    def _place(self, vps: VPS, size: Resources, batch: _Batch) -> tuple[Booking | None, VPSProblem | None]:
        """Decide a node, addresses and a MAC (book lock held); add the booking to the batch."""
        uid = vps.metadata.uid or vps.name
        pools = list(self.pool_inf.items().values())
        views = self._node_views()
        excluded: list[str] = []
        last: VPSProblem | None = None
        while True:
            decision = schedule(size, [v for v in views if v.name not in excluded],
                                node_selector=vps.spec.nodeSelector, pinned=vps.spec.node,
                                policy=self.settings.policy)
            if decision.node is None:
                if last is not None and decision.reason in ("NoMatchingNode", "NodeNotFound"):
                    return None, last  # every placeable node lacked addresses
                return None, VPSProblem("Scheduled", decision.reason or "Unschedulable", decision.message)
            node = self.node_inf.get(decision.node)
            assert node is not None
            ips: IPAllocation | None = None
            if pools:
                addr = allocate(pools, node.metadata.labels, self.book.used_addresses(),
                                cursors=self.book.cursors)
                if addr.allocation is None:
                    last = VPSProblem("Scheduled", addr.reason, addr.message)
                    excluded.append(decision.node)
                    continue
                ips = addr.allocation
            booking = Booking(vps=vps.name, uid=uid, node=decision.node, vcpus=size.vcpus,
                              memoryMiB=size.memoryMiB, diskGiB=size.diskGiB,
                              mac=pick_mac(uid, self.book.used_macs()), ips=ips)
            compares, ops = self.book.book_ops(booking)
            batch.compares.extend(compares)
            batch.ops.extend(ops)
            batch.touches_book = True

            def booked(rev: int, booking: Booking = booking, ips: IPAllocation | None = ips) -> None:
                self.book.booked(booking, rev)
                if ips is not None:
                    pool = next(p for p in pools if p.name == ips.pool)
                    self.book.cursors[ips.pool] = offset_of(pool, ips.ipv4) + 1
                    self._addresses_changed(ips.pool)
                self.node_ctl.queue.add_after(booking.node, NODE_STATUS_BATCH_SECONDS)
            batch.after.append(booked)
            return booking, None

    # ------------------------------------------------------------ deletion

    def _release_ops(self, vps: VPS | None) -> tuple[list[Compare], list[Op]]:
        """The compares and ops that drop our finalizer (deleting the object if it was the last)."""
        if vps is None:
            return [], []
        skey, tkey = keys.spec_key(VPS, vps.name, self.root), keys.status_key(VPS, vps.name, self.root)
        compares: list[Compare] = [ModIs(skey, int(vps.metadata.resourceVersion or 0))]
        remaining = [f for f in vps.metadata.finalizers if f != layout.FINALIZER]
        if not remaining:
            return compares, [Delete(skey), Delete(tkey)]
        kept = vps.model_copy(update={"metadata": vps.metadata.model_copy(update={"finalizers": remaining})})
        return compares, [Put(skey, encode_spec(kept))]

    def _finalize(self, vps: VPS, now: datetime) -> Result | None:
        if layout.FINALIZER not in vps.metadata.finalizers:
            return None
        return self._teardown(vps.name, vps, now)

    def _orphan(self, name: str) -> Result | None:
        with self._lock:
            nodes = set(self._desired_nodes.get(name, ()))
        if self.book.get(name) is None and not nodes:
            self._status.pop(name, None)
            return None
        return self._teardown(name, None, self.clock())

    def _teardown(self, name: str, vps: VPS | None, now: datetime) -> Result | None:
        booking = self.book.get(name)
        with self._lock:
            nodes = set(self._desired_nodes.get(name, ()))
        if booking is not None:
            nodes.add(booking.node)
        for node in nodes:
            self._write_desired(node, name, None)
        force = vps is not None and vps.metadata.annotations.get(layout.FORCE_ORPHAN_ANNOTATION) == "true"
        # An entry reporting "Absent" means the agent has removed the domain and its volumes.
        remaining = [n for n in sorted(nodes)
                     if (o := self._observed(n, name)) is not None and o.power != "Absent"]
        if remaining and not force:
            if vps is not None:
                status = vps_status(vps, previous=self._previous_status(name), node=booking.node if booking else None,
                                    ips=booking.ips if booking else None, desired=None,
                                    observed=self._observed(remaining[0], name),
                                    node_state=self.node_state(remaining[0]), problem=None,
                                    observed_generation=(self._previous_status(name) or VPSStatus()).observedGeneration,
                                    now=now)
                status.message = f"waiting for node {', '.join(remaining)} to remove the domain and its volumes"
                self._write_status(vps, status)
            return Result(requeue_after=self.settings.terminating_recheck_seconds)
        if remaining:
            self.events.record("VPS", name, "Warning", "ForceOrphaned",
                               f"released without confirmation from node {', '.join(remaining)}: its domain, "
                               "volumes and seed may remain there until the node's agent cleans them up")
        compares, ops = self._release_ops(vps)
        released = self.book.release(name, compares=compares, ops=ops)
        if released is not None:
            self.node_ctl.queue.add_after(released.node, NODE_STATUS_BATCH_SECONDS)
            self._addresses_changed(released.ips.pool if released.ips else None)
            self._enqueue_pending()
        self.events.record("VPS", name, "Normal", "Deleted",
                           "domain gone; addresses and booking released" if not remaining
                           else "force-orphaned; addresses and booking released")
        self._status.pop(name, None)
        with self._lock:
            self._pending.discard(name)
        return None

    # ------------------------------------------------------------ nodes

    def _carry_out_purges(self, node: str) -> None:
        """Each purge request of `node` becomes its tombstone, unless that uid is desired there again."""
        for key, req in self.purge_inf.items().items():
            if key.partition("/")[0] != node:
                continue
            pkey = keys.purge_key(node, req.uid, self.root)
            current, rev = self._current_desired(node, req.vps)
            if current is not None and current.uid == req.uid:
                self._txn([], [Delete(pkey)], f"purge {key}")
                self.events.record("Node", node, "Normal", "PurgeSkipped",
                                   f"domain of VPS {req.vps} (uid {req.uid}) is desired here again: not purged")
                continue
            tomb = req.model_copy(update={"reason": "Purged"})
            self._txn([ModIs(keys.desired_key(node, req.vps, self.root), rev)],
                      [Put(keys.tombstone_key(node, req.uid, self.root), encode_value(tomb)), Delete(pkey)],
                      f"purge {key}")
            self.events.record("Node", node, "Warning", "OrphanPurged",
                               f"orphan domain of VPS {req.vps} (uid {req.uid}): deletion ordered by an operator")

    def reconcile_node(self, name: str) -> Result | None:
        self._carry_out_purges(name)
        node = self._with_rv(self.node_inf, name)
        if node is None:
            self._enqueue_on_node(name)
            return None
        hb = self.nodes_inf.get(keys.node_entry(name, "heartbeat"))
        prev = self.node_status_inf.get(name)
        st = node_status(node, previous=prev, heartbeat=hb if isinstance(hb, dict) else None,
                         allocation=self.book.node_allocation(name), now=self.clock())
        value = encode_status(st)
        if self._node_status.get(name) == value or (prev is not None and encode_status(prev) == value):
            return None
        batch = _Batch(self.store).expect(node).put_status(Node, name, st)
        self._txn(batch.compares, batch.ops, f"Node {name} status")
        self._node_status[name] = value
        if prev is None or prev.state != st.state:
            self.events.record("Node", name, "Normal" if st.state == "Ready" else "Warning",
                               "NodeReady" if st.state == "Ready" else "NodeNotReady",
                               f"node is {st.state}")
        known = {o.uid for o in prev.orphans} if prev is not None else set()
        for o in st.orphans:
            if o.uid not in known:
                self.events.record("Node", name, "Warning", "OrphanDomain",
                                   f"orphan domain {o.domain} (VPS {o.vps}, uid {o.uid}): no desired entry and no "
                                   "tombstone; left as it is until `hostplane node orphans --purge`")
        return None

    # ------------------------------------------------------------ pools

    def reconcile_pool(self, name: str) -> Result | None:
        pool = self._with_rv(self.pool_inf, name)
        if pool is None:
            return None
        with self.book.lock:
            used = set(self.book.used_addresses().get(name, set()))
        v4 = {a for a in used if ":" not in a}
        free = free_count4(pool, v4)
        status = {"used": len(v4), "free": free, "usedIPv6": len(used) - len(v4),
                  "conditions": [{"type": "Exhausted", "status": "True" if free == 0 else "False",
                                  "reason": "PoolFull" if free == 0 else "AddressesFree",
                                  "message": f"{free} IPv4 address(es) free"}]}
        value = encode_status(status)
        if self._pool_status.get(name) == value:
            return None
        batch = _Batch(self.store).expect(pool).put_status(IPPool, name, status)
        self._txn(batch.compares, batch.ops, f"IPPool {name} status")
        self._pool_status[name] = value
        return None
