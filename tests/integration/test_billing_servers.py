"""Billing drives real servers: controllers, billing and a node agent on libvirt's test driver, one injected clock.

A customer runs out of money: the domain is paused, then shut off; a payment has it running
again within seconds; never paying terminates the subscription and, after retention, the
domain, its volumes and its addresses are gone.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import libvirt
import pytest

import nodeagent.agent as agent_mod
from controllers.billing.controller import BillingController
from controllers.main import ControllerProcess
from controllers.manager import ManagerSettings
from nodeagent import domain_xml
from reconcile import keys
from reconcile.errors import NotFound
from reconcile.objects import Store
from specs.kinds import VPS, Image, ImageSource, ImageSpec, Subscription
from specs.meta import ObjectMeta
from tests.helpers import builders as b
from tests.helpers.wait import wait_for
from tests.integration.test_billing_ledger import make_plan, pay

NODE_XML = """<node><cpu><mhz>2000</mhz><model>i686</model><nodes>1</nodes><sockets>1</sockets>
<cores>8</cores><threads>1</threads><active>8</active></cpu><memory>16777216</memory></node>"""
D = timedelta(days=1)


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self.now

    def advance(self, delta: timedelta) -> None:
        with self._lock:
            self.now += delta


class World:
    def __init__(self, store: Store, tmp: Path) -> None:
        self.store = store
        self.clock = Clock()
        xml = tmp / "n1.xml"
        xml.write_text(NODE_XML)
        self.agent = agent_mod.Agent(store, "n1", f"test://{xml}", tmp / "n1", resync=1.0, heartbeat_ttl=3,
                                     debounce_seconds=0.2)
        self.controllers = ControllerProcess(store, identity="ctl", retry_period=0.2, clock=self.clock,
                                             settings=ManagerSettings(resync_seconds=0.5))
        self.billing = BillingController(store, clock=self.clock, interval=0.5,
                                         fence=lambda: self.controllers.elector.fence())

    def sync(self) -> None:
        self.billing.sync_customer("acme")

    def domain_state(self) -> int | None:
        uid = self.store.get(VPS, "web-1").metadata.uid
        try:
            return int(self.agent.hv.conn.lookupByName(domain_xml.domain_name(uid)).state()[0])
        except libvirt.libvirtError:
            return None

    def volumes(self) -> list[str]:
        pools = self.agent.hv.conn.listAllStoragePools()
        return [v.name() for p in pools for v in p.listAllVolumes() if v.name().startswith("hp-")]

    def managed_domains(self) -> list[str]:
        return [d.name() for d in self.agent.hv.conn.listAllDomains() if d.name().startswith("hp-")]


@pytest.fixture
def world(store: Store, tmp_path: Path) -> Iterator[World]:
    disk = tmp_path / "n1" / "images" / "base.raw"  # the agent's image directory (data dir tmp/n1)
    disk.parent.mkdir(parents=True, exist_ok=True)
    disk.write_bytes(b"\0" * 4096)
    make_plan(store, "small", "67.20")  # 10 cents an hour
    store.create(b.customer())
    store.create(b.pool(cidr="10.30.0.0/24", gateway="10.30.0.1"))
    store.create(Image(metadata=ObjectMeta(name="tiny"), spec=ImageSpec(
        os="busybox", version="1", source=ImageSource(path=str(disk), format="raw",
                                                   sha256=hashlib.sha256(disk.read_bytes()).hexdigest()),
        minDiskGiB=1)))
    store.create(b.node("n1", vcpus=8, memory=16384, disk=100))
    w = World(store, tmp_path)
    sub = b.subscription("web", plan_name="small")
    store.create(sub.model_copy(update={"metadata": sub.metadata.model_copy(update={
        "creationTimestamp": w.clock.now})}))
    w.agent.start()
    w.controllers.start()
    wait_for(lambda: w.controllers.is_leader, timeout=20, what="the controllers to lead")
    w.billing.start()
    yield w
    w.billing.stop()
    w.controllers.stop()
    w.agent.stop()


@pytest.mark.timeout(180)
def test_unpaid_server_pauses_then_stops_and_payment_restarts_it(world: World) -> None:
    """Out of money: Suspended pauses the domain, shutdown-after stops it; a payment has it running within seconds."""
    store = world.store
    pay(store, 100, "INITIAL", now=world.clock.now)  # ten hours of credit
    world.sync()
    store.create(b.vps("web-1", sub="web", image_name="tiny", uid=None))
    wait_for(lambda: world.domain_state() == libvirt.VIR_DOMAIN_RUNNING, timeout=60, what="the domain running")

    world.clock.advance(timedelta(hours=11))
    world.sync()
    assert store.get(Subscription, "web").status.state == "Overdue"  # type: ignore[union-attr]
    world.clock.advance(3 * D)
    world.sync()
    assert store.get(Subscription, "web").status.state == "Suspended"  # type: ignore[union-attr]
    wait_for(lambda: world.domain_state() == libvirt.VIR_DOMAIN_PAUSED, timeout=30, what="the domain paused")

    world.clock.advance(D + timedelta(minutes=1))
    world.sync()
    wait_for(lambda: world.domain_state() == libvirt.VIR_DOMAIN_SHUTOFF, timeout=30, what="the domain shut off")

    started = time.monotonic()
    pay(store, 100_000, "BANK-123", now=world.clock.now)
    wait_for(lambda: world.domain_state() == libvirt.VIR_DOMAIN_RUNNING, timeout=30, interval=0.02,
             what="the domain running after payment")
    took = time.monotonic() - started
    assert took < 10, f"running again {took:.1f} s after the payment"
    assert store.get(Subscription, "web").status.state == "Active"  # type: ignore[union-attr]


@pytest.mark.timeout(180)
def test_never_paying_deletes_domain_volumes_and_addresses_after_retention(world: World) -> None:
    """Never paying: Terminated shuts the domain off; after retention the VPS, domain, volumes and IPs are gone."""
    store = world.store
    store.create(b.vps("web-1", sub="web", image_name="tiny", uid=None))
    world.sync()
    wait_for(lambda: world.domain_state() is not None, timeout=60, what="the domain defined")
    for _ in range(4):
        world.clock.advance(D)
        world.sync()
    world.clock.advance(14 * D)
    world.sync()
    assert store.get(Subscription, "web").status.state == "Terminated"  # type: ignore[union-attr]
    wait_for(lambda: world.domain_state() == libvirt.VIR_DOMAIN_SHUTOFF, timeout=30, what="the domain shut off")
    assert store.kv_range(keys.ip_prefix(store.root))[0]
    assert world.volumes()

    world.clock.advance(7 * D + timedelta(minutes=1))
    world.sync()

    def gone() -> bool:
        try:
            store.get(VPS, "web-1")
            return False
        except NotFound:
            return True

    wait_for(gone, timeout=60, what="the VPS deleted")
    wait_for(lambda: not world.managed_domains(), timeout=30, what="the domain undefined")
    assert not store.kv_range(keys.ip_prefix(store.root))[0]
    assert not store.kv_range(keys.booking_prefix(store.root))[0]
    wait_for(lambda: not world.volumes(), timeout=30, what="the volumes deleted")
