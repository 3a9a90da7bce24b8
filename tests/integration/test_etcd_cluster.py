"""A real 3-member etcd cluster on loopback (TLS peers, RBAC): kill -9 a follower, then the leader,
during continuous writes and a payment burst; nothing acknowledged is lost, nothing applied twice."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from controllers import ledger
from reconcile.errors import StoreError
from reconcile.etcd_cluster import EtcdCluster
from reconcile.store import Store
from tests.integration.test_billing_ledger import make_customer

ROOT = "/hostplane/v1"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[EtcdCluster]:
    c = EtcdCluster(tmp_path / "cluster", 3).start()
    yield c
    c.stop()


class Writer:
    """Writes key after key as the controllers identity; remembers every write etcd acknowledged."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.acked: list[str] = []
        self.failed = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            key = f"{ROOT}/alloc/t/{n:06d}"
            try:
                self.store.kv_put(key, str(n).encode(), expect=0)
                self.acked.append(key)
            except StoreError:
                self.failed += 1  # not acknowledged: may or may not be there; never counted as written
            n += 1

    def __enter__(self) -> Writer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(60)


def _wait_writes(w: Writer, more: int, timeout: float = 60.0) -> None:
    goal = len(w.acked) + more
    deadline = time.monotonic() + timeout
    while len(w.acked) < goal:
        assert time.monotonic() < deadline, f"writes stalled at {len(w.acked)}"
        time.sleep(0.05)


def test_kill_follower_then_leader_during_writes_loses_no_acknowledged_write(cluster: EtcdCluster) -> None:
    """SIGKILL a follower, then the leader, under continuous writes: writes go on; every acknowledged one is there."""
    store = cluster.store("controllers", retry_seconds=30.0, timeout=2.0)
    try:
        with Writer(store) as w:
            _wait_writes(w, 50)
            leader = cluster.leader()
            follower = (leader + 1) % 3
            cluster.kill(follower)
            _wait_writes(w, 50)
            cluster.restart(follower)
            _wait_writes(w, 20)
            leader = cluster.leader()
            cluster.kill(leader)
            _wait_writes(w, 50)
            assert cluster.leader() != leader
            cluster.restart(leader)
            _wait_writes(w, 20)
        admin = cluster.admin()
        stored = {kv.key for kv in admin.kv_range(f"{ROOT}/alloc/t/")[0]}
        missing = [k for k in w.acked if k not in stored]
        assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {missing[:3]}"
        assert len(w.acked) >= 190
    finally:
        store.close()


def test_payment_burst_through_a_leader_kill_is_applied_once(cluster: EtcdCluster) -> None:
    """Keyed payments retried through a leader's SIGKILL: each key lands once, the balance is the sum of the ledger."""
    api = cluster.store("api", retry_seconds=30.0, timeout=2.0)
    try:
        make_customer(api, "acme")
        now = datetime(2026, 12, 1, tzinfo=UTC)
        paid: set[str] = set()
        errors: list[Exception] = []

        def pay(i: int) -> None:
            entry = ledger.NewEntry("payment", 100 + i, "EUR", "payment-manual", f"k{i}", fingerprint=f"acme/{100 + i}")
            for _ in range(3):  # a client retrying the same keyed payment
                try:
                    ledger.append(api, "acme", [entry], now=now)
                    paid.add(f"{entry.scope}/{entry.key}")
                except StoreError as exc:
                    errors.append(exc)

        threads = [threading.Thread(target=pay, args=(i,)) for i in range(40)]
        for t in threads[:20]:
            t.start()
        cluster.kill(cluster.leader())
        for t in threads[20:]:
            t.start()
        for t in threads:
            t.join(120)
        entries = ledger.entries(api, "acme")
        keys = [e.key for e in entries]
        assert len(keys) == len(set(keys)), "a payment key applied twice"
        assert set(keys) >= paid
        assert len(paid) == 40, f"payments not acknowledged within the retry budget: {errors[:3]}"
        assert ledger.balance(api, "acme") == sum(e.amountMinor for e in entries)
    finally:
        api.close()


def test_leader_election_holds_through_member_kills(cluster: EtcdCluster) -> None:
    """Two electors writing fenced decisions while etcd members die: every decision that landed was its leader's."""
    from reconcile.leader import LeaderElector, NotLeader
    from reconcile.store import Put

    stores = [cluster.store("controllers", retry_seconds=15.0, timeout=2.0) for _ in range(2)]
    electors = [LeaderElector(s, "controllers", f"mgr-{i}", ttl=3, retry_period=0.2)
                for i, s in enumerate(stores)]
    landed: list[tuple[int, str]] = []
    stop = threading.Event()

    def decide(e: LeaderElector, s: Store) -> None:
        n = 0
        while not stop.is_set():
            try:
                res = s.txn([e.fence()], [Put(f"{ROOT}/alloc/decision", f"{e.identity}:{n}".encode())])
                if res.succeeded:
                    landed.append((res.revision, e.identity))
            except (NotLeader, StoreError):
                time.sleep(0.02)
            n += 1

    for e in electors:
        e.start(lambda: None, lambda: None)
    threads = [threading.Thread(target=decide, args=(e, s), daemon=True) for e, s in zip(electors, stores, strict=True)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 20
        while len(landed) < 30:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        for _ in range(2):  # the etcd leader twice: elections and fences ride through raft elections
            victim = cluster.leader()
            cluster.kill(victim)
            before = len(landed)
            deadline = time.monotonic() + 30
            while len(landed) < before + 30:
                assert time.monotonic() < deadline, "no decisions after an etcd member died"
                time.sleep(0.05)
            cluster.restart(victim)
    finally:
        stop.set()
        for t in threads:
            t.join(20)
        for e in electors:
            e.stop()
    admin = cluster.admin()
    key = f"{ROOT}/election/controllers"
    wrong = []
    for rev, who in landed:
        kvs, _ = admin._range(key, prefix=False, revision=rev)
        holder = kvs[0].value.decode() if kvs else None
        if holder != who:
            wrong.append((rev, who, holder))
    assert not wrong, f"decisions by a process not holding the election key: {wrong[:5]}"
    for s in stores:
        s.close()


@pytest.mark.timeout(300)
def test_fleet_converges_with_least_privilege_identities_through_an_etcd_leader_kill(
        cluster: EtcdCluster, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Controllers and two agents, each its own etcd identity, converge VPS churn across a kill -9 of etcd's leader."""
    import hashlib

    import nodeagent.agent as agent_mod
    from controllers.main import ControllerProcess
    from nodeagent.images import ImagePolicy
    from reconcile.cluster import ensure_cluster_id
    from specs.kinds import VPS, Image, ImageSource, ImageSpec
    from specs.meta import ObjectMeta
    from tests.helpers import builders as b
    from tests.helpers.converge import assert_converged, convergence_problems
    from tests.helpers.wait import wait_for
    from tests.integration.test_fleet import NODE_XML

    api = cluster.store("api", retry_seconds=30.0, timeout=2.0)
    ctl = cluster.store("controllers", retry_seconds=30.0, timeout=2.0)
    disk = tmp_path / "images" / "base.raw"  # the agents' image directory
    disk.parent.mkdir()
    disk.write_bytes(b"\0" * 4096)
    for obj in (b.plan("s1", vcpus=1, memory=128, disk=1), b.customer(),
                b.pool(cidr="10.30.0.0/24", gateway="10.30.0.1")):
        api.create(obj)
    api.create(Image(metadata=ObjectMeta(name="tiny"), spec=ImageSpec(
        os="busybox", version="1", minDiskGiB=1, source=ImageSource(
            path=str(disk), format="raw", sha256=hashlib.sha256(disk.read_bytes()).hexdigest()))))
    ensure_cluster_id(ctl)  # as the controllers do on start; agents wait for it
    agents: dict[str, object] = {}
    node_stores: list[Store] = []
    for n in ("c1", "c2"):
        api.create(b.node(n, vcpus=16, memory=32768, disk=500))
        xml = tmp_path / f"{n}.xml"
        xml.write_text(NODE_XML)
        s = cluster.store(f"node-{n}", retry_seconds=30.0, timeout=2.0)
        node_stores.append(s)
        agent = agent_mod.Agent(s, n, f"test://{xml}", tmp_path / n, resync=5.0, heartbeat_ttl=5,
                                debounce_seconds=0.2,
                                image_policy=ImagePolicy.for_data_dir(tmp_path / n, extra_dirs=(disk.parent,)))
        agent.start()
        agents[n] = agent
    for k in range(3):
        api.create(b.subscription(f"sub-{k}", plan_name="s1"))
    proc = ControllerProcess(ctl, identity="mgr", ttl=5, retry_period=0.5).start()

    def conns() -> dict[str, object]:
        return {n: a.hv.conn for n, a in agents.items()}  # type: ignore[attr-defined]

    # The checks read everything (bookings too); the processes do not. A store of the test's own:
    # a member's admin store closes with its member.
    admin = cluster.store("root", retry_seconds=30.0, timeout=2.0)

    def running() -> bool:
        phases = [v.status.phase if v.status else "" for v in admin.list(VPS).items]
        return not convergence_problems(admin, conns()) and all(p == "Running" for p in phases)

    try:
        for i in range(8):
            api.create(b.vps(f"vm-{i}", sub=f"sub-{i % 3}", image_name="tiny", uid=None))
        wait_for(running, timeout=90, what="8 VPS running")
        cluster.kill(cluster.leader())
        for i in range(3):
            api.delete(VPS, f"vm-{i}")
        for i in range(8, 11):
            api.create(b.vps(f"vm-{i}", sub=f"sub-{i % 3}", image_name="tiny", uid=None))
        wait_for(lambda: len(admin.list(VPS).items) == 8 and running(), timeout=120,
                 what="converged after churn through the etcd leader's death")
        assert_converged(admin, conns())
        texts = [r.getMessage() + (f" {r.exc_info[1]!r}" if r.exc_info else "") for r in caplog.records]
        denied = [t for t in texts if "permission denied" in t.lower()]
        assert not denied, f"a process was refused by its role: {denied[:3]}"
    finally:
        proc.stop()
        for a in agents.values():
            a.stop()  # type: ignore[attr-defined]
        for s in (api, ctl, admin, *node_stores):
            s.close()


def test_cluster_restart_on_its_ports_keeps_data_and_pki(tmp_path: Path) -> None:
    """A stopped cluster started again on the same ports and data (as `up` does) has its data and the same CA."""
    first = EtcdCluster(tmp_path / "c", 3).start()
    try:
        ports = [(m.client_port, m.peer_port) for m in first.members]
        first.admin().kv_put(f"{ROOT}/alloc/kept", b"1")
        ca = first.pki.ca_cert.read_bytes()
    finally:
        first.stop()
    again = EtcdCluster(tmp_path / "c", 3, ports=ports).start()
    try:
        kv = again.admin().kv_get(f"{ROOT}/alloc/kept")
        assert kv is not None and kv.value == b"1"
        assert again.pki.ca_cert.read_bytes() == ca
    finally:
        again.stop()
