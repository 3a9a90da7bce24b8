"""Data safety on real QEMU: a running guest survives an agent on an empty etcd and one of another cluster."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from nodeagent.agent import Agent
from nodeagent.domain_xml import domain_name, root_volume_name, seed_volume_name
from reconcile import keys
from reconcile.etcd_server import EtcdServer
from reconcile.store import Store
from specs.domain import DomainImage, DomainNetwork, DomainSpec, ObservedDomain
from tests.e2e.guest.build import GuestImage
from tests.e2e.guest.session import Session
from tests.helpers.wait import wait_for


@pytest.fixture
def conn(qemu: Session) -> Iterator[libvirt.virConnect]:
    c = libvirt.open(qemu.uri)
    yield c
    c.close()


@pytest.mark.timeout(300)
def test_running_guest_survives_empty_etcd_and_another_cluster(store: Store, etcd_session: EtcdServer,
                                                               qemu: Session, agent_dir: Path,
                                                               guest_image: GuestImage,
                                                               conn: libvirt.virConnect) -> None:
    """After its desired entry is wiped, and beside another cluster's agent, the guest runs on with its disk."""
    node = "safe-" + uuid.uuid4().hex[:6]
    pool = f"hp-{node}"
    spec = DomainSpec.model_validate({
        "vps": "keep-1", "uid": "safe" + uuid.uuid4().hex[:8], "vcpus": 1, "memoryMiB": 96, "diskGiB": 1,
        "maxVcpus": 1, "maxMemoryMiB": 128, "hostname": "keep-one",
        "image": DomainImage(name="test-guest", path=guest_image.disk, sha256=guest_image.disk_sha256,
                             kernel=guest_image.kernel, initrd=guest_image.initrd, cmdline=guest_image.cmdline),
        "network": DomainNetwork(mac="52:54:00:5a:fe:01"), "shutdownGraceSeconds": 5})
    name = domain_name(spec.uid)
    other = etcd_session.store("root", root=store.root.replace("/hostplane/v1", "/other/hostplane/v1"))
    agents: list[Agent] = []
    try:
        first = Agent(store, node, qemu.uri, agent_dir, resync=1.0, heartbeat_ttl=3, pool_name=pool).start()
        agents.append(first)
        gen = store.kv_put(keys.desired_key(node, "keep-1", store.root), spec.model_dump_json().encode())

        def running() -> ObservedDomain | None:
            kv = store.kv_get(keys.observed_key(node, "keep-1", store.root))
            obs = ObservedDomain.model_validate_json(kv.value) if kv else None
            return obs if obs is not None and obs.observedGeneration == gen and obs.power == "Running" else None
        wait_for(running, timeout=120, interval=0.5, what="guest running")
        first.stop()
        agents.remove(first)
        vols = {root_volume_name(name), seed_volume_name(name)}

        # Another cluster (its own id) on the same libvirt, and then ours on a wiped desired prefix.
        theirs_dir = agent_dir / "other"  # writable by the hypervisor's user, like agent_dir
        theirs_dir.mkdir(mode=0o755)
        os.chown(theirs_dir, agent_dir.stat().st_uid, agent_dir.stat().st_gid)
        stranger = Agent(other, node, qemu.uri, theirs_dir, resync=1.0, heartbeat_ttl=3, pool_name=f"{pool}-x")
        stranger.start()
        agents.append(stranger)
        store.kv_delete(keys.desired_prefix(node, store.root), prefix=True)
        again = Agent(store, node, qemu.uri, agent_dir, resync=1.0, heartbeat_ttl=3, pool_name=pool).start()
        agents.append(again)
        time.sleep(4)  # three resync periods and more, for both
        dom = conn.lookupByName(name)
        assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        assert vols <= set(conn.storagePoolLookupByName(pool).listVolumes())
        hb = json.loads(store.kv_get(keys.heartbeat_key(node, store.root)).value)  # type: ignore[union-attr]
        assert [o["uid"] for o in hb["orphans"]] == [spec.uid]
        theirs = json.loads(other.kv_get(keys.heartbeat_key(node, other.root)).value)  # type: ignore[union-attr]
        assert theirs["orphans"] == [] and theirs["domains"]["foreign"] >= 1
    finally:
        for a in agents:
            a.stop()
        other.kv_delete(other.root.removesuffix("hostplane/v1"), prefix=True)
        other.close()
        try:
            dom = conn.lookupByName(name)
            if dom.isActive():
                dom.destroy()
            dom.undefine()
        except libvirt.libvirtError:
            pass
        for p in (pool, f"{pool}-x"):
            try:
                sp = conn.storagePoolLookupByName(p)
                for vol in sp.listAllVolumes(0):
                    vol.delete(0)
                sp.destroy()
                sp.undefine()
            except libvirt.libvirtError:
                pass
