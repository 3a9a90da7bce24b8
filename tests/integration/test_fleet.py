"""The whole reconciler on a real etcd and real node agents (libvirt test driver, one private instance per node).

3 nodes, 30 VPS: created, resized by a plan change, suspended by billing, deleted; the leading
controller process is killed (SIGKILL) mid-run and a standby takes over; a node agent is
stopped (NotReady, its VPS Unknown, nothing moved) and restarted; the end state satisfies
DESIGN.md invariants 1 and 2 (`assert_converged`).
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

import nodeagent.agent as agent_mod
from controllers import layout
from controllers.main import ControllerProcess
from nodeagent.images import ImagePolicy
from reconcile import keys
from reconcile.etcd_server import EtcdServer
from reconcile.objects import Store
from specs.kinds import VPS, Image, ImageSource, ImageSpec, Node, Subscription, SubscriptionStatus
from specs.meta import ObjectMeta
from tests.helpers import builders as b
from tests.helpers.converge import assert_converged, convergence_problems
from tests.helpers.wait import wait_for

NODES = ("n1", "n2", "n3")
NODE_XML = """<node><cpu><mhz>2000</mhz><model>i686</model><nodes>1</nodes><sockets>1</sockets>
<cores>16</cores><threads>1</threads><active>16</active></cpu><memory>33554432</memory></node>"""


class Fleet:
    def __init__(self, store: Store, tmp: Path) -> None:
        self.store = store
        self.tmp = tmp
        self.agents: dict[str, object] = {}

    def start_agent(self, node: str) -> None:
        xml = self.tmp / f"{node}.xml"
        xml.write_text(NODE_XML)
        agent = agent_mod.Agent(self.store, node, f"test://{xml}", self.tmp / node, resync=5.0,
                                heartbeat_ttl=3, debounce_seconds=0.2,
                                image_policy=ImagePolicy.for_data_dir(self.tmp / node,
                                                                      extra_dirs=(self.tmp / "images",)))
        agent.start()
        self.agents[node] = agent

    def stop_agent(self, node: str) -> None:
        agent = self.agents.pop(node)
        agent.stop()  # type: ignore[attr-defined]

    def conns(self) -> dict[str, object]:
        return {n: a.hv.conn for n, a in self.agents.items()}  # type: ignore[attr-defined]


def leader_process(etcd: EtcdServer, identity: str) -> subprocess.Popen[bytes]:
    config = etcd.data_dir.parent / "controllers.toml"
    config.write_text(etcd.connection("controllers").to_toml())
    code = textwrap.dedent(f"""
        import logging, signal, threading
        from controllers.main import run_controllers
        from reconcile.connection import EtcdConnection
        logging.basicConfig(level=logging.WARNING)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        run_controllers(etcd=EtcdConnection.from_file({str(config)!r}), identity={identity!r}, stop=stop)
    """)
    return subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2],
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})


@pytest.fixture
def fleet(etcd: EtcdServer, tmp_path: Path) -> Iterator[Fleet]:
    store = etcd.store()
    f = Fleet(store, tmp_path)
    yield f
    for node in list(f.agents):
        f.stop_agent(node)
    store.close()


def phases(store: Store) -> dict[str, str]:
    return {v.name: v.status.phase if v.status else "" for v in store.list(VPS).items}


def converged(store: Store, fleet: Fleet) -> bool:
    problems = convergence_problems(store, fleet.conns())
    return not problems and all(p in ("Running", "Suspended", "Stopped") for p in phases(store).values())


@pytest.mark.timeout(240)
def test_fleet_converges_through_changes_leader_kill_and_agent_restart(
        etcd: EtcdServer, fleet: Fleet, tmp_path: Path) -> None:
    """30 VPS on 3 agent-run nodes converge through resize, suspension, deletion, a leader kill and an agent restart."""
    store = fleet.store
    disk = tmp_path / "images" / "base.qcow2"  # the agents' image directory
    disk.parent.mkdir(exist_ok=True)
    disk.write_bytes(b"\0" * 4096)
    for obj in (b.plan("s1", vcpus=1, memory=128, disk=1), b.plan("s2", vcpus=2, memory=256, disk=2), b.customer(),
                b.pool(cidr="10.20.0.0/24", gateway="10.20.0.1", ipv6="2001:db8:20::/64")):
        store.create(obj)
    store.create(Image(metadata=ObjectMeta(name="tiny"), spec=ImageSpec(
        os="busybox", version="1", source=ImageSource(path=str(disk), format="raw",
                                                   sha256=hashlib.sha256(disk.read_bytes()).hexdigest()),
        minDiskGiB=1)))
    for n in NODES:
        store.create(b.node(n, vcpus=16, memory=32768, disk=500))
        fleet.start_agent(n)
    for s in range(5):
        store.create(b.subscription(f"sub-{s}", plan_name="s1"))

    leader = leader_process(etcd, "leader-a")
    standby = ControllerProcess(store, identity="standby-b", ttl=15, retry_period=0.5)
    try:
        wait_for(lambda: store.kv_get(f"{store.root}/election/{layout.ELECTION_NAME}") is not None, timeout=30,
                 what="the subprocess to lead")
        standby.start()
        assert not standby.is_leader
        for i in range(30):
            store.create(b.vps(f"vm-{i:02d}", sub=f"sub-{i % 5}", image_name="tiny", uid=None))
        wait_for(lambda: converged(store, fleet), timeout=90, what="30 VPS running")
        nodes_used = {v.status.node for v in store.list(VPS).items if v.status}
        assert nodes_used == set(NODES)  # spread

        # A node agent dies: its node goes NotReady and its VPS Unknown, in place.
        victims = sorted(v.name for v in store.list(VPS).items if v.status and v.status.node == "n2")
        assert victims
        fleet.stop_agent("n2")
        wait_for(lambda: store.get(Node, "n2").status.state == "NotReady", timeout=30,  # type: ignore[union-attr]
                 what="n2 NotReady")
        wait_for(lambda: all(phases(store)[v] == "Unknown" for v in victims), timeout=30, what="VPS Unknown")
        assert all(store.get(VPS, v).status.node == "n2" for v in victims)  # type: ignore[union-attr]
        fleet.start_agent("n2")
        wait_for(lambda: converged(store, fleet), timeout=90, what="converged after the agent restart")
        assert store.get(Node, "n2").status.state == "Ready"  # type: ignore[union-attr]

        # Changes in flight, then the leader dies by SIGKILL.
        sub0 = store.get(Subscription, "sub-0")
        sub0.spec.plan = "s2"
        store.update(sub0)
        store.put_status(Subscription, "sub-1", SubscriptionStatus(
            state="Suspended", suspendReason="nonpayment", suspendedAt=datetime.now(UTC)))
        for i in (2, 7):
            store.delete(VPS, f"vm-{i:02d}")
        leader.send_signal(signal.SIGKILL)
        leader.wait(10)
        wait_for(lambda: standby.is_leader, timeout=30, what="the standby to take over")
        wait_for(lambda: converged(store, fleet) and len(phases(store)) == 28, timeout=90,
                 what="changes converged after the takeover")
        ph = phases(store)
        assert all(ph[f"vm-{i:02d}"] == "Suspended" for i in range(1, 30, 5))
        resized = store.get(VPS, "vm-00").status
        assert resized is not None and resized.actual.vcpus == 2

        assert_converged(store, fleet.conns())
        allocs, _ = store.kv_range(keys.booking_prefix(store.root))
        assert len(allocs) == 28
    finally:
        if leader.poll() is None:
            leader.send_signal(signal.SIGKILL)
            leader.wait(10)
        standby.stop()
