"""The node agent killed with SIGKILL at random points on real QEMU: restarts converge, no orphan, no lost disk."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from nodeagent.domain_xml import domain_name, root_volume_name, seed_volume_name
from reconcile import keys
from reconcile.cluster import ensure_cluster_id
from reconcile.etcd_server import EtcdServer
from reconcile.objects import Store
from specs.domain import DomainImage, DomainNetwork, DomainSpec, ObservedDomain, Tombstone
from tests.e2e.guest.build import GuestImage
from tests.e2e.guest.session import Session
from tests.helpers.wait import wait_for

pytestmark = pytest.mark.qemu

RUNNER = """
import logging, signal, sys, threading
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
from pathlib import Path
from nodeagent.agent import Agent
from reconcile.connection import EtcdConnection
from reconcile.objects import Store
config, root, node, uri, data, pool = sys.argv[1:7]
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
store = Store(EtcdConnection.from_file(config), root=root)
agent = Agent(store, node, uri, Path(data), resync=2.0, heartbeat_ttl=3, pool_name=pool).start()
stop.wait()
agent.stop()
store.close()
"""


class AgentProcess:
    """The agent as a separate process, so it can really be killed with SIGKILL."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.args = args
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-c", RUNNER, *self.args], stdout=out,
                                         stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[2])

    def kill_mid_action(self, rng: random.Random, what: str = ": ", most: int = 8) -> None:
        """SIGKILL a random moment after the agent logs a random number (1..most) of matching action lines."""
        mark = self.log.stat().st_size if self.log.exists() else 0
        want = rng.randint(1, most)

        def acted() -> bool:
            text = self.log.read_bytes()[mark:].decode(errors="replace") if self.log.exists() else ""
            return sum(" kill-" in line and what in line for line in text.splitlines()) >= want

        # If the agent finishes with fewer actions (an earlier run did the rest), it is killed idle.
        deadline = time.monotonic() + 15
        while not acted() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.2))
        self.kill()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None


@pytest.fixture
def killable(etcd_session: EtcdServer, store: Store, qemu: Session, agent_dir: Path,
             tmp_path: Path) -> Iterator[tuple[AgentProcess, str, libvirt.virConnect]]:
    node = "kill-" + uuid.uuid4().hex[:6]
    pool = f"hp-{node}"
    config = tmp_path / "agent-etcd.toml"
    config.write_text(etcd_session.connection(f"node-{node}", root=store.root).to_toml())
    proc = AgentProcess([str(config), store.root, node, qemu.uri, str(agent_dir), pool],
                        tmp_path / "agent.log")
    ensure_cluster_id(store)  # the controllers' job on start; an agent waits for it before acting
    conn = libvirt.open(qemu.uri)
    yield proc, node, conn
    proc.stop()
    for dom in conn.listAllDomains(0):
        if dom.name().startswith("hp-k"):
            if dom.isActive():
                dom.destroy()
            dom.undefine()
    try:
        p = conn.storagePoolLookupByName(pool)
        for vol in p.listAllVolumes(0):
            vol.delete(0)
        p.destroy()
        p.undefine()
    except libvirt.libvirtError:
        pass
    conn.close()


def _spec(i: int, image: GuestImage) -> DomainSpec:
    return DomainSpec.model_validate({
        "vps": f"kill-{i}", "uid": f"k{uuid.uuid4().hex[:10]}", "vcpus": 1, "memoryMiB": 128, "diskGiB": 1,
        "maxVcpus": 2, "maxMemoryMiB": 256, "hostname": f"kill-{i}", "shutdownGraceSeconds": 5,
        "image": DomainImage(name="test-guest", path=image.disk, sha256=image.disk_sha256, kernel=image.kernel,
                             initrd=image.initrd, cmdline=image.cmdline),
        "network": DomainNetwork(mac=f"52:54:00:aa:00:{i:02x}"),
    })


@pytest.mark.timeout(300)
def test_sigkill_at_random_points_then_restart_converges(
        killable: tuple[AgentProcess, str, libvirt.virConnect], store: Store, guest_image: GuestImage) -> None:
    """Killed during creation and during deletion, each restart converges with one domain per VPS and no orphan."""
    proc, node, conn = killable
    rng = random.Random(int(os.environ.get("HOSTPLANE_KILL_SEED", "7")))
    specs = [_spec(i, guest_image) for i in range(2)]
    gens = {s.vps: store.kv_put(keys.desired_key(node, s.vps, store.root), s.model_dump_json().encode())
            for s in specs}

    def observed(vps: str) -> ObservedDomain | None:
        kv = store.kv_get(keys.observed_key(node, vps, store.root))
        return None if kv is None else ObservedDomain.model_validate_json(kv.value)

    def converged() -> bool:
        return all((o := observed(s.vps)) is not None and o.observedGeneration == gens[s.vps]
                   and o.power == "Running" for s in specs)

    # Creation, interrupted twice at random points once the agent is at work.
    for _ in range(2):
        proc.start()
        proc.kill_mid_action(rng)
    proc.start()
    wait_for(converged, timeout=90, interval=0.2, what="both VPS running after restarts")
    names = [d.name() for d in conn.listAllDomains(0)]
    pool = conn.storagePoolLookupByName(f"hp-{node}")
    pool.refresh(0)
    for s in specs:
        assert names.count(domain_name(s.uid)) == 1
    ours = {v for v in pool.listVolumes() if v.startswith("hp-")}
    assert ours == {f(domain_name(s.uid)) for s in specs for f in (root_volume_name, seed_volume_name)}
    disk = Path(pool.storageVolLookupByName(root_volume_name(domain_name(specs[0].uid))).path())
    inode = disk.stat().st_ino

    # Deletion of the second VPS, interrupted at a random point; the first keeps its disk throughout.
    proc.kill()
    store.kv_delete(keys.desired_key(node, specs[1].vps, store.root))
    store.kv_put(keys.tombstone_key(node, specs[1].uid, store.root),
                 Tombstone(vps=specs[1].vps, uid=specs[1].uid).model_dump_json().encode())
    proc.start()
    proc.kill_mid_action(rng, "kill-1: ", most=2)
    proc.start()
    gone = domain_name(specs[1].uid)
    wait_for(lambda: gone not in [d.name() for d in conn.listAllDomains(0)] and observed(specs[1].vps) is None,
             timeout=60, interval=0.2, what="deleted VPS gone")
    pool.refresh(0)
    assert not [v for v in pool.listVolumes() if v.startswith(gone)]
    assert not [v for v in pool.listVolumes() if v.endswith(".partial")]
    assert disk.stat().st_ino == inode, "the kept VPS's disk must not be recreated"
    assert converged() or observed(specs[0].vps).power == "Running"  # type: ignore[union-attr]
