"""The central controllers on a real etcd: state in (specs, heartbeats, observations) -> state out.

Node agents are stood in for by writing their keys directly (a heartbeat on a lease, an
ObservedDomain), which is exactly the contract an agent keeps.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from controllers import layout
from controllers.booking import Book, Booking
from controllers.events import read_events
from controllers.manager import Manager, ManagerSettings
from reconcile import keys
from reconcile.errors import Conflict, NotFound
from reconcile.etcd import encode
from reconcile.etcd_server import EtcdServer
from reconcile.leader import LeaderElector
from reconcile.objects import Store
from specs.domain import DomainSpec, ObservedDomain, Tombstone
from specs.kinds import VPS, IPPool, Node, NodeStatus, Subscription, SubscriptionStatus
from tests.helpers import builders as b
from tests.helpers.wait import wait_for

FAST = ManagerSettings(workers=2, pending_retry_seconds=0.5, terminating_recheck_seconds=0.5)


def heartbeat(store: Store, node: str, ttl: int = 30) -> int:
    lease = store.grant_lease(ttl)
    store.kv_put(keys.heartbeat_key(node, store.root),
                 json.dumps({"time": datetime.now(UTC).isoformat(), "capacity": {"vcpus": 8}}).encode(), lease=lease)
    return lease


def desired(store: Store, node: str, vps: str) -> DomainSpec | None:
    kv = store.kv_get(keys.desired_key(node, vps, store.root))
    return DomainSpec.model_validate_json(kv.value) if kv else None


def tombstone(store: Store, node: str, uid: str) -> Tombstone | None:
    kv = store.kv_get(keys.tombstone_key(node, uid, store.root))
    return Tombstone.model_validate_json(kv.value) if kv else None


def observe(store: Store, node: str, spec: DomainSpec, power: str | None = None, **kw: object) -> None:
    """Stand in for the agent: report the domain as the desired entry asks (or as told)."""
    obs = ObservedDomain(vps=spec.vps, uid=spec.uid, domainName=f"hp-{spec.uid}", power=power or spec.power,  # type: ignore[arg-type]
                         vcpus=spec.vcpus, memoryMiB=spec.memoryMiB, diskGiB=spec.diskGiB,
                         maxVcpus=spec.maxVcpus, maxMemoryMiB=spec.maxMemoryMiB)
    obs = obs.model_copy(update=kw)
    store.kv_put(keys.observed_key(node, spec.vps, store.root), encode(obs.model_dump(mode="json", exclude_none=True)))


def phase(store: Store, name: str) -> str | None:
    st = store.get(VPS, name).status
    return st.phase if st else None


def reasons(store: Store, name: str) -> list[str]:
    st = store.get(VPS, name).status
    return [c.reason for c in st.conditions] if st else []


def seed(store: Store, nodes: int = 1, vps: int = 1, **node_kw: object) -> None:
    for obj in (b.plan(), b.plan("s2", vcpus=2, memory=1024, disk=20), b.image(), b.customer(), b.subscription(),
                b.pool(cidr="192.0.2.0/28", gateway="192.0.2.1")):
        store.create(obj)
    for i in range(nodes):
        store.create(b.node(f"n{i + 1}", **node_kw))  # type: ignore[arg-type]
    for i in range(vps):
        store.create(b.vps(f"web-{i + 1}"))


@pytest.fixture
def manager(store: Store) -> Iterator[Manager]:
    m = Manager(store, settings=FAST)
    yield m
    m.stop()


def test_vps_is_scheduled_resolved_and_reported_running(store: Store, manager: Manager) -> None:
    """A VPS gets a finalizer, a booking with an address, a DomainSpec on its node, and Running status."""
    seed(store)
    heartbeat(store, "n1")
    manager.start()
    spec = wait_for(lambda: desired(store, "n1", "web-1"), what="desired entry")
    assert spec.vcpus == 1 and spec.power == "Running" and spec.network.ipv4 is not None
    assert spec.network.ipv4.address == "192.0.2.2"
    v = store.get(VPS, "web-1")
    assert layout.FINALIZER in v.metadata.finalizers
    booking = Booking.model_validate_json(store.kv_get(keys.booking_key("web-1", store.root)).value)  # type: ignore[union-attr]
    assert booking.node == "n1" and booking.mac == spec.network.mac
    assert store.kv_get(keys.ip_key("pool-a", "192.0.2.2", store.root)) is not None
    wait_for(lambda: phase(store, "web-1") == "Provisioning", what="Provisioning")
    observe(store, "n1", spec)
    wait_for(lambda: phase(store, "web-1") == "Running", what="Running")
    status = store.get(VPS, "web-1").status
    assert status is not None and status.node == "n1" and status.ips.ipv4 == "192.0.2.2"
    assert status.actual.vcpus == 1 and status.observedGeneration == v.metadata.generation
    wait_for(lambda: [e["reason"] for e in read_events(store, "VPS", "web-1")][:2] == ["Scheduled", "Started"],
             what="Scheduled and Started events")
    node_st = wait_for(lambda: store.get(Node, "n1").status, what="node status")
    assert isinstance(node_st, NodeStatus)
    wait_for(lambda: store.get(Node, "n1").status.allocated.get("vps") == 1, what="node allocation")  # type: ignore[union-attr]


def test_desired_written_only_when_changed(store: Store, manager: Manager) -> None:
    """Re-reconciling an unchanged VPS rewrites neither its DomainSpec nor its status."""
    seed(store)
    heartbeat(store, "n1")
    manager.start()
    spec = wait_for(lambda: desired(store, "n1", "web-1"), what="desired entry")
    observe(store, "n1", spec)
    wait_for(lambda: phase(store, "web-1") == "Running", what="Running")
    before = store.kv_get(keys.desired_key("n1", "web-1", store.root))
    status_before = store.kv_get(keys.status_key(VPS, "web-1", store.root))
    manager.reconcile_vps("web-1")
    manager.reconcile_vps("web-1")
    assert store.kv_get(keys.desired_key("n1", "web-1", store.root)).mod_revision == before.mod_revision  # type: ignore[union-attr]
    assert store.kv_get(keys.status_key(VPS, "web-1", store.root)).mod_revision == status_before.mod_revision  # type: ignore[union-attr]


def test_billing_suspension_resume_and_plan_change(store: Store, manager: Manager) -> None:
    """Suspended (unpaid) pauses the domain, paid again restores it, a plan change resizes it."""
    seed(store)
    heartbeat(store, "n1")
    manager.start()
    spec = wait_for(lambda: desired(store, "n1", "web-1"), what="desired entry")
    observe(store, "n1", spec)
    wait_for(lambda: phase(store, "web-1") == "Running", what="Running")
    store.put_status(Subscription, "sub-1", SubscriptionStatus(
        state="Suspended", suspendReason="nonpayment", suspendedAt=datetime.now(UTC)))
    paused = wait_for(lambda: (d := desired(store, "n1", "web-1")) and d.power == "Paused" and d, what="Paused")
    assert paused.powerReason == "suspended: nonpayment"
    observe(store, "n1", paused)
    wait_for(lambda: phase(store, "web-1") == "Suspended", what="Suspended")
    wait_for(lambda: any(e["reason"] == "Suspended" and e["message"] == "unpaid"
                         for e in read_events(store, "VPS", "web-1")), what="Suspended: unpaid event")
    store.put_status(Subscription, "sub-1", SubscriptionStatus(state="Active"))
    resumed = wait_for(lambda: (d := desired(store, "n1", "web-1")) and d.power == "Running" and d, what="resumed")
    observe(store, "n1", resumed)
    wait_for(lambda: phase(store, "web-1") == "Running", what="Running after payment")
    sub = store.get(Subscription, "sub-1")
    sub.spec.plan = "s2"
    store.update(sub)
    big = wait_for(lambda: (d := desired(store, "n1", "web-1")) and d.vcpus == 2 and d, what="resized spec")
    assert big.memoryMiB == 1024 and big.diskGiB == 20
    wait_for(lambda: phase(store, "web-1") == "Resizing", what="Resizing")
    observe(store, "n1", big)
    wait_for(lambda: phase(store, "web-1") == "Running", what="Running after resize")
    wait_for(lambda: any(e["reason"] == "Resized" for e in read_events(store, "VPS", "web-1")), what="Resized event")
    booking = Booking.model_validate_json(store.kv_get(keys.booking_key("web-1", store.root)).value)  # type: ignore[union-attr]
    assert booking.vcpus == 2
    wait_for(lambda: store.get(Node, "n1").status.allocated.get("vcpus") == 2, what="node allocation")  # type: ignore[union-attr]


def test_terminated_past_retention_is_deleted_and_released(store: Store, manager: Manager) -> None:
    """A subscription terminated longer ago than retention deletes the VPS, its domain and its address."""
    seed(store)
    heartbeat(store, "n1")
    manager.start()
    spec = wait_for(lambda: desired(store, "n1", "web-1"), what="desired entry")
    observe(store, "n1", spec)
    store.put_status(Subscription, "sub-1", SubscriptionStatus(
        state="Terminated", terminatedAt=datetime.now(UTC) - timedelta(days=8)))
    wait_for(lambda: desired(store, "n1", "web-1") is None, what="desired removed")
    assert tombstone(store, "n1", spec.uid) is not None
    # If the manager had not yet seen the observed entry it releases at once: the VPS may already be
    # gone when we look. Either way, what must hold is deletion plus the address released.
    wait_for(lambda: phase(store, "web-1") == "Terminating"
             or store.kv_get(keys.spec_key(VPS, "web-1", store.root)) is None, what="Terminating or already gone")
    store.kv_delete(keys.observed_key("n1", "web-1", store.root))
    wait_for(lambda: store.kv_get(keys.spec_key(VPS, "web-1", store.root)) is None, what="VPS gone")
    wait_for(lambda: store.kv_range(keys.alloc_prefix(store.root))[0] == [], what="address released")


def test_deletion_waits_for_the_node_then_releases(store: Store, manager: Manager) -> None:
    """Deleting a VPS removes the desired entry, waits for the observed one to go, then frees everything."""
    seed(store)
    heartbeat(store, "n1")
    manager.start()
    spec = wait_for(lambda: desired(store, "n1", "web-1"), what="desired entry")
    observe(store, "n1", spec)
    wait_for(lambda: phase(store, "web-1") == "Running", what="Running")
    store.delete(VPS, "web-1")
    wait_for(lambda: desired(store, "n1", "web-1") is None, what="desired removed")
    # The agent's only reason to delete a disk: a tombstone bound to the uid, written with the removal.
    tomb = tombstone(store, "n1", spec.uid)
    assert tomb is not None and tomb.vps == "web-1" and tomb.reason == "Deleted"
    wait_for(lambda: phase(store, "web-1") == "Terminating", what="Terminating")
    assert store.kv_get(keys.booking_key("web-1", store.root)) is not None
    observe(store, "n1", spec, power="Absent")
    wait_for(lambda: store.kv_get(keys.spec_key(VPS, "web-1", store.root)) is None, what="VPS gone")
    assert store.kv_range(keys.alloc_prefix(store.root))[0] == []
    wait_for(lambda: [e["reason"] for e in read_events(store, "VPS", "web-1")][-1] == "Deleted", what="Deleted event")


def test_force_orphan_releases_without_the_node(store: Store, manager: Manager) -> None:
    """With hostplane.io/force-orphan=true a VPS on a dead node is released at once, with a warning."""
    seed(store)
    lease = heartbeat(store, "n1")
    manager.start()
    spec = wait_for(lambda: desired(store, "n1", "web-1"), what="desired entry")
    observe(store, "n1", spec)
    store.revoke_lease(lease)
    wait_for(lambda: phase(store, "web-1") == "Unknown", what="Unknown")
    store.delete(VPS, "web-1")
    wait_for(lambda: phase(store, "web-1") == "Terminating", what="Terminating")
    v = store.get(VPS, "web-1")
    v.metadata.annotations[layout.FORCE_ORPHAN_ANNOTATION] = "true"
    store.update(v)
    wait_for(lambda: store.kv_get(keys.spec_key(VPS, "web-1", store.root)) is None, what="VPS gone")
    assert store.kv_range(keys.alloc_prefix(store.root))[0] == []
    wait_for(lambda: any(e["reason"] == "ForceOrphaned" and e["type"] == "Warning"
                         for e in read_events(store, "VPS", "web-1")), what="ForceOrphaned warning")


def test_node_lifecycle_notready_unknown_and_back(store: Store, manager: Manager) -> None:
    """A lost heartbeat makes the node NotReady and its VPS Unknown (kept in place); a new one restores them."""
    seed(store)
    lease = heartbeat(store, "n1")
    manager.start()
    spec = wait_for(lambda: desired(store, "n1", "web-1"), what="desired entry")
    observe(store, "n1", spec)
    wait_for(lambda: phase(store, "web-1") == "Running", what="Running")
    store.revoke_lease(lease)
    wait_for(lambda: phase(store, "web-1") == "Unknown", what="Unknown")
    wait_for(lambda: store.get(Node, "n1").status.state == "NotReady", what="NotReady")  # type: ignore[union-attr]
    assert desired(store, "n1", "web-1") is not None
    assert store.kv_get(keys.booking_key("web-1", store.root)) is not None
    heartbeat(store, "n1")
    wait_for(lambda: phase(store, "web-1") == "Running", what="Running again")
    wait_for(lambda: store.get(Node, "n1").status.state == "Ready", what="Ready")  # type: ignore[union-attr]


def test_orphans_in_the_heartbeat_become_node_status_condition_and_event(store: Store, manager: Manager) -> None:
    """An agent's orphan list reaches the Node's status and condition, with one OrphanDomain warning each."""
    seed(store)
    manager.start()
    orphan = {"domain": "hp-0a1b", "vps": "old-1", "uid": "0a1b"}
    cond = {"type": "OrphanDomains", "status": "True", "reason": "OrphanDomain", "message": "1 domain(s) ... hp-0a1b"}
    store.kv_put(keys.heartbeat_key("n1", store.root), json.dumps(
        {"time": datetime.now(UTC).isoformat(), "orphans": [orphan], "conditions": [cond]}).encode(),
        lease=store.grant_lease(30))

    def status() -> NodeStatus | None:
        st = store.get(Node, "n1").status
        return st if st is not None and st.orphans else None
    st = wait_for(status, what="orphans in the node status")
    assert [o.model_dump() for o in st.orphans] == [orphan]
    assert any(c.type == "OrphanDomains" and c.status == "True" for c in st.conditions)
    wait_for(lambda: [e for e in read_events(store, "Node", "n1") if e["reason"] == "OrphanDomain"],
             what="OrphanDomain event")


def test_purge_writes_tombstones_only_for_listed_orphans_and_only_for_staff(store: Store, manager: Manager) -> None:
    """A purge request becomes a tombstone per reported orphan; non-staff are refused; a wanted-again uid is skipped."""
    from api.auth import Principal
    from api.errors import Forbidden, Invalid
    from api.orphans import purge

    seed(store)
    heartbeat(store, "n1")
    manager.start()
    spec = wait_for(lambda: desired(store, "n1", "web-1"), what="desired entry")
    orphans = [{"domain": "hp-0a1b", "vps": "old-1", "uid": "0a1b"},
               {"domain": f"hp-{spec.uid}", "vps": "web-1", "uid": spec.uid}]  # stale report: wanted again
    store.kv_put(keys.heartbeat_key("n1", store.root), json.dumps(
        {"time": datetime.now(UTC).isoformat(), "orphans": orphans}).encode(), lease=store.grant_lease(30))
    wait_for(lambda: len((store.get(Node, "n1").status or NodeStatus()).orphans) == 2, what="orphans listed")
    for role in ("customer", "gitops", "billing-webhook"):
        with pytest.raises(Forbidden):
            purge(store, Principal("t", role, customer="acme" if role == "customer" else None), "n1", None)
    assert tombstone(store, "n1", "0a1b") is None
    admin = Principal("t", "admin")
    with pytest.raises(Invalid):
        purge(store, admin, "n1", {"uids": ["not-an-orphan"]})
    assert purge(store, admin, "n1", None) == {"node": "n1", "requested": ["0a1b", spec.uid]}
    t = wait_for(lambda: tombstone(store, "n1", "0a1b"), what="tombstone of the purged orphan")
    assert t.reason == "Purged" and t.vps == "old-1"
    wait_for(lambda: store.kv_range(keys.purge_prefix("n1", store.root))[0] == [], what="requests carried out")
    assert tombstone(store, "n1", spec.uid) is None  # desired again: never tombstoned
    assert desired(store, "n1", "web-1") is not None
    wait_for(lambda: {"OrphanPurged", "PurgeSkipped"} <= {e["reason"] for e in read_events(store, "Node", "n1")},
             what="purge events")


def test_unschedulable_then_capacity_arrives(store: Store, manager: Manager) -> None:
    """No room gives Pending with Unschedulable reasons; a new node with room takes the VPS."""
    seed(store, nodes=0)
    manager.start()
    wait_for(lambda: "NoMatchingNode" in reasons(store, "web-1"), what="NoMatchingNode")
    store.create(b.node("tiny", vcpus=1, memory=256, disk=5))
    heartbeat(store, "tiny")
    wait_for(lambda: "PlanTooLarge" in reasons(store, "web-1"), what="PlanTooLarge")
    assert phase(store, "web-1") == "Pending"
    store.create(b.node("big"))
    heartbeat(store, "big")
    wait_for(lambda: desired(store, "big", "web-1"), what="scheduled on big")
    st = store.get(VPS, "web-1").status
    assert st is not None and any(c.type == "Scheduled" and c.status == "True" for c in st.conditions)


def test_pool_exhaustion_and_unknown_refs(store: Store, manager: Manager) -> None:
    """A full pool and a missing image each give a clear condition; fixing the cause converges."""
    seed(store, vps=0)
    heartbeat(store, "n1")
    for i in range(14):
        store.create(b.vps(f"v{i}"))
    store.create(b.vps("ghost", image_name="nope"))
    manager.start()
    wait_for(lambda: sum(desired(store, "n1", f"v{i}") is not None for i in range(14)) == 13, what="13 placed")
    full = wait_for(lambda: next((f"v{i}" for i in range(14) if "IPPoolExhausted" in reasons(store, f"v{i}")), None),
                    what="IPPoolExhausted")
    wait_for(lambda: "ImageNotFound" in reasons(store, "ghost"), what="ImageNotFound")
    pool_status = wait_for(lambda: (st := store.get(IPPool, "pool-a").status) and st["free"] == 0 and st,
                           what="pool status says full")
    assert pool_status["used"] == 13
    store.delete(VPS, "v0")
    wait_for(lambda: desired(store, "n1", "v0") is None, what="v0 desired removed")
    store.kv_delete(keys.observed_key("n1", "v0", store.root))
    wait_for(lambda: desired(store, "n1", full), what="exhausted VPS placed after a release")


def test_racing_bookings_never_overbook(store: Store) -> None:
    """Two books deciding on the same state: one transaction wins, the other gets Conflict and reloads."""
    store.create(b.node("n1"))
    one, two = Book(store), Book(store)
    one.load()
    two.load()
    common = {"node": "n1", "vcpus": 1, "memoryMiB": 512, "diskGiB": 10}
    one.book(Booking(vps="a", uid="ua", mac="52:54:00:00:00:01", **common))  # type: ignore[arg-type]
    with pytest.raises(Conflict):
        two.book(Booking(vps="b", uid="ub", mac="52:54:00:00:00:02", **common))  # type: ignore[arg-type]
    two.book(Booking(vps="b", uid="ub", mac="52:54:00:00:00:02", **common))  # type: ignore[arg-type]
    with pytest.raises(Conflict):
        one.book(Booking(vps="a", uid="ua", node="n2", vcpus=1, memoryMiB=512, diskGiB=10, mac="52:54:00:00:00:03"))
    assert two.allocated("n1").vcpus == 2


def test_deposed_leader_cannot_write(store: Store) -> None:
    """A manager fenced by an elector that lost its key fails its writes instead of deciding twice."""
    seed(store)
    heartbeat(store, "n1")
    elector = LeaderElector(store, layout.ELECTION_NAME, "a", ttl=5, retry_period=0.2)
    elector.start(lambda: None, lambda: None)
    assert elector.wait_leading(10)
    fence = elector.fence()
    m = Manager(store, fence=lambda: [fence], settings=FAST)
    store.kv_delete(keys.election_key(layout.ELECTION_NAME, store.root))  # another process took over
    try:
        with pytest.raises(Conflict):
            m._txn([], [], "probe")
        m.start()
        with pytest.raises((Conflict, NotFound)):
            m.reconcile_vps("web-1")
        assert desired(store, "n1", "web-1") is None
        assert store.kv_range(keys.alloc_prefix(store.root))[0] == []
    finally:
        m.stop()
        elector.stop()


def test_events_are_bounded_and_repeats_counted(store: Store) -> None:
    """A repeated event bumps its count; an object keeps at most `limit` events, newest last."""
    from controllers.events import EventRecorder

    rec = EventRecorder(store, clock=lambda: datetime.now(UTC), limit=3)
    rec.load()
    for _ in range(3):
        rec.record("VPS", "web-1", "Warning", "FailedScheduling", "no room")
    for i in range(5):
        rec.record("VPS", "web-1", "Normal", "Step", f"step {i}")
    events = read_events(store, "VPS", "web-1")
    assert [e["message"] for e in events] == ["step 2", "step 3", "step 4"]
    rec2 = EventRecorder(store, clock=lambda: datetime.now(UTC), limit=3).start()
    rec2.load()
    rec2.record("VPS", "web-1", "Normal", "Step", "step 4")
    rec2.stop()
    events = read_events(store, "VPS", "web-1")
    assert events[-1]["count"] == 2 and len(events) == 3


def test_converges_across_an_etcd_restart(etcd: EtcdServer) -> None:
    """Controllers keep working through an etcd restart: a VPS created afterwards is scheduled and resolved."""
    store = etcd.store()
    m = Manager(store, settings=FAST)
    try:
        seed(store)
        heartbeat(store, "n1", ttl=60)
        m.start()
        wait_for(lambda: desired(store, "n1", "web-1"), what="desired entry")
        etcd.restart()
        store.create(b.vps("web-2"))
        spec = wait_for(lambda: desired(store, "n1", "web-2"), timeout=40, what="desired entry after restart")
        assert spec.network.ipv4 is not None and spec.network.ipv4.address == "192.0.2.3"
    finally:
        m.stop()
        store.close()


def test_cordon_and_drain(store: Store, manager: Manager) -> None:
    """A cordoned node takes no new VPS; a drained one also stops its domains until the drain is lifted."""
    seed(store, nodes=2)
    heartbeat(store, "n1")
    heartbeat(store, "n2")
    n2 = store.get(Node, "n2")
    n2.spec.schedulable = False
    store.update(n2)
    manager.start()
    spec = wait_for(lambda: desired(store, "n1", "web-1"), what="placed on n1")
    assert desired(store, "n2", "web-1") is None
    observe(store, "n1", spec)
    n1 = store.get(Node, "n1")
    n1.metadata.annotations[layout.DRAIN_ANNOTATION] = "true"
    store.update(n1)
    stopped = wait_for(lambda: (d := desired(store, "n1", "web-1")) and d.power == "Stopped" and d, what="drained")
    assert stopped.powerReason == "node drained"
    store.create(b.vps("web-2"))
    wait_for(lambda: "NoSchedulableNode" in reasons(store, "web-2"), what="nothing schedulable")
    n1 = store.get(Node, "n1")
    del n1.metadata.annotations[layout.DRAIN_ANNOTATION]
    store.update(n1)
    wait_for(lambda: (d := desired(store, "n1", "web-1")) and d.power == "Running", what="drain lifted")
    wait_for(lambda: desired(store, "n1", "web-2"), what="web-2 placed after the drain")


def test_two_racing_managers_never_overbook(store: Store) -> None:
    """Two unfenced managers scheduling the same VPS onto one small node never overbook it or double-book a VPS."""
    for obj in (b.plan(), b.image(), b.customer(), b.subscription(), b.pool(cidr="192.0.2.0/28", gateway="192.0.2.1"),
                b.node("n1", vcpus=4, cpu_overcommit=1.0)):
        store.create(obj)
    heartbeat(store, "n1")
    for i in range(8):
        store.create(b.vps(f"r{i}"))
    one, two = Manager(store, settings=FAST), Manager(store, settings=FAST)
    try:
        one.start()
        two.start()
        wait_for(lambda: sum("InsufficientCapacity" in reasons(store, f"r{i}") for i in range(8)) == 4,
                 what="four VPS left without room")
        kvs, _ = store.kv_range(keys.booking_prefix(store.root))
        bookings = [Booking.model_validate_json(kv.value) for kv in kvs]
        assert len(bookings) == 4 and len({bk.vps for bk in bookings}) == 4
        assert sum(bk.vcpus for bk in bookings) <= 4
        alloc = json.loads(store.kv_get(keys.node_alloc_key("n1", store.root)).value)  # type: ignore[union-attr]
        assert alloc["vcpus"] == 4 and alloc["count"] == 4
        ips, _ = store.kv_range(keys.ip_prefix(store.root))
        assert len(ips) == 4
    finally:
        one.stop()
        two.stop()


def test_a_server_bound_to_a_gone_subscription_is_not_resolved_with_its_namesake(store: Store,
                                                                                  manager: Manager) -> None:
    """A VPS bound by uid to a deleted Subscription gets SubscriptionNotFound, not the new one's plan (issue 13)."""
    seed(store, vps=0)
    heartbeat(store, "n1")
    sub = store.get(Subscription, "sub-1")
    store.create(b.vps("web-1", subscriptionUID=sub.metadata.uid))
    store.create(b.vps("orphan", subscriptionUID="uid-of-a-deleted-subscription"))
    manager.start()
    wait_for(lambda: desired(store, "n1", "web-1"), what="the bound server resolved")
    wait_for(lambda: "SubscriptionNotFound" in reasons(store, "orphan"), what="SubscriptionNotFound")
    assert desired(store, "n1", "orphan") is None
    message = next(c.message for c in store.get(VPS, "orphan").status.conditions  # type: ignore[union-attr]
                   if c.reason == "SubscriptionNotFound")
    assert "created anew" in message
