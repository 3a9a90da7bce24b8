"""The allocation book: which node and which addresses each VPS holds, kept in etcd.

Layout in `controllers.layout`. The book is loaded from etcd when a leader starts and kept
current by its own writes (only the leader writes here, and every write carries the leader's
fence). Every change is one transaction comparing the node's allocation sum and the VPS's
booking by mod_revision and creating address keys only if absent: two schedulers racing can
never overbook a node, hand an address out twice or put a VPS on two nodes. A lost race
reloads the book and raises Conflict; the caller decides again.

It must never decide where a VPS goes: `schedule.py` and `ipam.py` do.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict

from controllers.ipam import IPAllocation
from controllers.schedule import Resources
from reconcile import keys
from reconcile.errors import Conflict
from reconcile.etcd import Compare, Delete, ModIs, Op, Put, TxnResult
from reconcile.leader import Fence, fence_compares
from reconcile.objects import Store, encode_value


class Booking(BaseModel):
    """One VPS's place: its node, the size booked there, its MAC and its addresses."""

    model_config = ConfigDict(extra="forbid")

    vps: str
    uid: str
    node: str
    vcpus: int
    memoryMiB: int
    diskGiB: int
    mac: str
    ips: IPAllocation | None = None

    @property
    def resources(self) -> Resources:
        return Resources(self.vcpus, self.memoryMiB, self.diskGiB)


class NodeAllocation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    vcpus: int = 0
    memoryMiB: int = 0
    diskGiB: int = 0
    count: int = 0

    @property
    def resources(self) -> Resources:
        return Resources(self.vcpus, self.memoryMiB, self.diskGiB)

    def plus(self, r: Resources, n: int) -> NodeAllocation:
        return NodeAllocation(vcpus=self.vcpus + r.vcpus, memoryMiB=self.memoryMiB + r.memoryMiB,
                              diskGiB=self.diskGiB + r.diskGiB, count=self.count + n)


def _enc(model: BaseModel) -> bytes:
    return encode_value(model)


def _addresses(b: Booking) -> list[tuple[str, str]]:
    if b.ips is None:
        return []
    out = [(b.ips.pool, b.ips.ipv4)]
    if b.ips.ipv6:
        out.append((b.ips.pool, b.ips.ipv6))
    return out


class Book:
    """The leader's view of the allocation keys, written through on every change."""

    def __init__(self, store: Store, *, fence: Fence = lambda: ()) -> None:
        self.store = store
        self.fence = fence
        self.root = store.root
        self.lock = threading.RLock()
        self._bookings: dict[str, tuple[Booking, int]] = {}
        self._nodes: dict[str, tuple[NodeAllocation, int]] = {}
        self._ips: dict[str, set[str]] = {}
        self._macs: set[str] = set()
        self._by_node: dict[str, set[str]] = {}
        self.cursors: dict[str, int] = {}

    def load(self) -> None:
        """Read every allocation key from etcd (on start and after a lost race)."""
        kvs, _ = self.store.kv_range(keys.alloc_prefix(self.root))
        bookings: dict[str, tuple[Booking, int]] = {}
        nodes: dict[str, tuple[NodeAllocation, int]] = {}
        ips: dict[str, set[str]] = {}
        macs: set[str] = set()
        bp, np_, ip, mp = (keys.booking_prefix(self.root), keys.node_alloc_prefix(self.root),
                           keys.ip_prefix(self.root), keys.mac_prefix(self.root))
        for kv in kvs:
            if kv.key.startswith(bp):
                bookings[kv.key[len(bp):]] = (Booking.model_validate_json(kv.value), kv.mod_revision)
            elif kv.key.startswith(np_):
                nodes[kv.key[len(np_):]] = (NodeAllocation.model_validate_json(kv.value), kv.mod_revision)
            elif kv.key.startswith(ip):
                pool, _, addr = kv.key[len(ip):].partition("/")
                ips.setdefault(pool, set()).add(addr)
            elif kv.key.startswith(mp):
                macs.add(kv.key[len(mp):])
        by_node: dict[str, set[str]] = {}
        for name, (b, _) in bookings.items():
            by_node.setdefault(b.node, set()).add(name)
        with self.lock:
            self._bookings, self._nodes, self._ips, self._macs = bookings, nodes, ips, macs
            self._by_node = by_node

    # ------------------------------------------------------------ reading

    def get(self, vps: str) -> Booking | None:
        with self.lock:
            entry = self._bookings.get(vps)
            return entry[0] if entry else None

    def bookings(self) -> dict[str, Booking]:
        with self.lock:
            return {k: b for k, (b, _) in self._bookings.items()}

    def on_node(self, node: str) -> list[str]:
        with self.lock:
            return sorted(self._by_node.get(node, ()))

    def allocated(self, node: str) -> Resources:
        with self.lock:
            entry = self._nodes.get(node)
            return entry[0].resources if entry else Resources()

    def node_allocation(self, node: str) -> NodeAllocation:
        with self.lock:
            entry = self._nodes.get(node)
            return entry[0] if entry else NodeAllocation()

    def used_addresses(self) -> dict[str, set[str]]:
        with self.lock:
            return self._ips

    def used_macs(self) -> set[str]:
        with self.lock:
            return self._macs

    # ------------------------------------------------------------ writing

    def _commit(self, compares: list[Compare], ops: list[Op]) -> TxnResult:
        res = self.store.txn([*fence_compares(self.fence), *compares], ops)
        if not res.succeeded:
            self.load()
            raise Conflict("the allocation book changed underneath; decide again")
        return res

    def book_ops(self, b: Booking) -> tuple[list[Compare], list[Op]]:
        """The compares and ops that book `b` (call with `lock` held; then `booked` after commit)."""
        cur = self._nodes.get(b.node)
        alloc, nrev = cur if cur else (NodeAllocation(), 0)
        bkey = keys.booking_key(b.vps, self.root)
        nkey = keys.node_alloc_key(b.node, self.root)
        mkey = keys.mac_key(b.mac, self.root)
        owner = json.dumps({"vps": b.vps, "uid": b.uid, "node": b.node}, sort_keys=True).encode()
        compares: list[Compare] = [ModIs(bkey, 0), ModIs(nkey, nrev), ModIs(mkey, 0)]
        ops: list[Op] = [Put(bkey, _enc(b)), Put(nkey, _enc(alloc.plus(b.resources, 1))), Put(mkey, owner)]
        for pool, addr in _addresses(b):
            k = keys.ip_key(pool, addr, self.root)
            compares.append(ModIs(k, 0))
            ops.append(Put(k, owner))
        return compares, ops

    def booked(self, b: Booking, revision: int) -> None:
        """Record a committed booking (made with `book_ops`) in the in-memory view."""
        with self.lock:
            alloc = self._nodes.get(b.node, (NodeAllocation(), 0))[0]
            self._bookings[b.vps] = (b, revision)
            self._by_node.setdefault(b.node, set()).add(b.vps)
            self._nodes[b.node] = (alloc.plus(b.resources, 1), revision)
            self._macs.add(b.mac)
            for pool, addr in _addresses(b):
                self._ips.setdefault(pool, set()).add(addr)

    def book(self, b: Booking) -> None:
        """Book a VPS on its node with its MAC and addresses, all or nothing."""
        with self.lock:
            compares, ops = self.book_ops(b)
            res = self._commit(compares, ops)
            self.booked(b, res.revision)

    def resize_ops(self, vps: str, size: Resources) -> tuple[Booking, list[Compare], list[Op]]:
        """The resized booking and the compares and ops that make it so (then `resized` after commit)."""
        b, brev = self._bookings[vps]
        alloc, nrev = self._nodes.get(b.node, (NodeAllocation(), 0))
        nb = b.model_copy(update={"vcpus": size.vcpus, "memoryMiB": size.memoryMiB, "diskGiB": size.diskGiB})
        bkey, nkey = keys.booking_key(vps, self.root), keys.node_alloc_key(b.node, self.root)
        return nb, [ModIs(bkey, brev), ModIs(nkey, nrev)], [
            Put(bkey, _enc(nb)), Put(nkey, _enc(alloc.plus(size - b.resources, 0)))]

    def resized(self, nb: Booking, revision: int) -> None:
        with self.lock:
            b, _ = self._bookings[nb.vps]
            alloc = self._nodes.get(b.node, (NodeAllocation(), 0))[0]
            self._bookings[nb.vps] = (nb, revision)
            self._nodes[b.node] = (alloc.plus(nb.resources - b.resources, 0), revision)

    def resize(self, vps: str, size: Resources) -> Booking:
        """Change a booked VPS's size in place (its disk is local: it never moves)."""
        with self.lock:
            nb, compares, ops = self.resize_ops(vps, size)
            res = self._commit(compares, ops)
            self.resized(nb, res.revision)
            return nb

    def release(self, vps: str, *, compares: Sequence[Compare] = (), ops: Sequence[Op] = ()) -> Booking | None:
        """Free a VPS's booking, MAC and addresses, with the caller's extra compares and ops in the same txn."""
        with self.lock:
            entry = self._bookings.get(vps)
            if entry is None:
                if compares or ops:
                    self._commit(list(compares), list(ops))
                return None
            b, brev = entry
            alloc, nrev = self._nodes.get(b.node, (NodeAllocation(), 0))
            new_alloc = alloc.plus(Resources() - b.resources, -1)
            bkey, nkey = keys.booking_key(vps, self.root), keys.node_alloc_key(b.node, self.root)
            all_ops: list[Op] = [Delete(bkey), Delete(keys.mac_key(b.mac, self.root))]
            all_ops.append(Delete(nkey) if new_alloc.count <= 0 else Put(nkey, _enc(new_alloc)))
            for pool, addr in _addresses(b):
                all_ops.append(Delete(keys.ip_key(pool, addr, self.root)))
            res = self._commit([ModIs(bkey, brev), ModIs(nkey, nrev), *compares], [*all_ops, *ops])
            del self._bookings[vps]
            self._by_node.get(b.node, set()).discard(vps)
            if new_alloc.count <= 0:
                self._nodes.pop(b.node, None)
            else:
                self._nodes[b.node] = (new_alloc, res.revision)
            self._macs.discard(b.mac)
            for pool, addr in _addresses(b):
                self._ips.get(pool, set()).discard(addr)
            return b
