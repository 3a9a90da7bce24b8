"""The node agent on real QEMU (qemu:///session, TCG): the life of one VPS, booting the test guest."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import libvirt
import pytest

from nodeagent.agent import Agent
from nodeagent.domain_xml import domain_name
from reconcile import keys
from reconcile.objects import Store
from specs.domain import DomainImage, DomainNetwork, DomainSpec, ObservedDomain, Tombstone
from tests.e2e.guest.build import GuestImage
from tests.e2e.guest.session import Session
from tests.helpers.wait import wait_for

pytestmark = pytest.mark.qemu

SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostplaneE2E e2e@hostplane"


class Harness:
    def __init__(self, store: Store, session: Session, data_dir: Path, image: GuestImage) -> None:
        self.store = store
        self.node = "qemu-" + uuid.uuid4().hex[:6]
        self.agent = Agent(store, self.node, session.uri, data_dir, resync=5.0, heartbeat_ttl=6,
                           debounce_seconds=0.5, pool_name=f"hp-{self.node}")
        self.conn = libvirt.open(session.uri)
        self.logs = data_dir / "logs"
        self.image = DomainImage(name="test-guest", path=image.disk, sha256=image.disk_sha256, format="qcow2",
                                 kernel=image.kernel, initrd=image.initrd, cmdline=image.cmdline)

    def spec(self, **kw: object) -> DomainSpec:
        base: dict[str, object] = {
            "vps": "e2e-1", "uid": "e2e" + uuid.uuid4().hex[:8], "vcpus": 1, "memoryMiB": 128, "diskGiB": 1,
            "maxVcpus": 2, "maxMemoryMiB": 256, "image": self.image, "hostname": "e2e-guest-one",
            "sshKeys": [SSH_KEY], "network": DomainNetwork(mac="52:54:00:12:34:56"), "shutdownGraceSeconds": 20,
        }
        base.update(kw)
        return DomainSpec.model_validate(base)

    def put(self, spec: DomainSpec) -> int:
        return self.store.kv_put(keys.desired_key(self.node, spec.vps, self.store.root),
                                 spec.model_dump_json().encode())

    def observed(self, vps: str = "e2e-1") -> ObservedDomain | None:
        kv = self.store.kv_get(keys.observed_key(self.node, vps, self.store.root))
        return None if kv is None else ObservedDomain.model_validate_json(kv.value)

    def wait(self, pred: Callable[[ObservedDomain], bool], what: str, timeout: float = 60) -> ObservedDomain:
        def check() -> ObservedDomain | None:
            o = self.observed()
            return o if o is not None and pred(o) else None
        return wait_for(check, timeout=timeout, interval=0.2, what=what)

    def serial(self, spec: DomainSpec) -> str:
        p = self.logs / f"{domain_name(spec.uid)}.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def mark(self, spec: DomainSpec) -> int:
        return len(self.serial(spec))

    def wait_booted(self, spec: DomainSpec, mark: int, what: str) -> str:
        """Wait for a boot that finished after `mark` (the log may also have been started afresh)."""
        def booted() -> str | None:
            log = self.serial(spec)
            new = log[mark:] if len(log) >= mark else log
            return new if "hostplane-guest: ready" in new else None
        return wait_for(booted, timeout=90, interval=0.2, what=what)

    def state(self, spec: DomainSpec) -> int:
        return int(self.conn.lookupByName(domain_name(spec.uid)).state()[0])


@pytest.fixture
def harness(store: Store, qemu: Session, agent_dir: Path, guest_image: GuestImage) -> Iterator[Harness]:
    h = Harness(store, qemu, agent_dir, guest_image)
    h.agent.start()
    yield h
    h.agent.stop()
    for dom in h.conn.listAllDomains(0):
        if dom.name().startswith("hp-e2e"):
            if dom.isActive():
                dom.destroy()
            dom.undefine()
    try:
        pool = h.conn.storagePoolLookupByName(f"hp-{h.node}")
        for vol in pool.listAllVolumes(0):
            vol.delete(0)
        pool.destroy()
        pool.undefine()
    except libvirt.libvirtError:
        pass
    h.conn.close()


def _ready(gen: int) -> Callable[[ObservedDomain], bool]:
    return lambda o: o.observedGeneration == gen and any(c.type == "Ready" and c.status == "True" for c in o.conditions)


def _qemu_pid(name: str) -> int | None:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if b"qemu-system" in cmd and f"guest={name},".encode() in cmd:
            return int(entry)
    return None


@pytest.mark.timeout(420)
def test_vps_lifecycle_on_qemu(harness: Harness) -> None:
    """Create, serial identity, pause/resume, reboot, live vCPU, disk grow, crash restart, stop, rebuild, delete."""
    h = harness
    spec = h.spec()
    name = domain_name(spec.uid)

    # create -> running, and the guest reads its identity from the cidata seed
    gen = h.put(spec)
    h.wait(_ready(gen), "running")
    assert h.state(spec) == libvirt.VIR_DOMAIN_RUNNING
    wait_for(lambda: "hostplane-guest: ready" in h.serial(spec), timeout=60, what="guest booted")
    log = h.serial(spec)
    assert "hostplane-guest: hostname=e2e-guest-one" in log
    assert f"hostplane-guest: ssh-key={SSH_KEY}" in log

    # pause / resume (the tiny guest has no agent: the clock note says so)
    gen = h.put(spec.model_copy(update={"power": "Paused"}))
    h.wait(lambda o: o.power == "Paused" and o.observedGeneration == gen, "paused")
    assert h.state(spec) == libvirt.VIR_DOMAIN_PAUSED
    gen = h.put(spec)
    obs = h.wait(lambda o: o.power == "Running" and o.observedGeneration == gen, "resumed")
    assert any(c.type == "ClockSynced" and c.status == "False" for c in obs.conditions)

    # a reboot of the guest (a reset, as the hypervisor sees a reboot from inside) is not taken for a stop
    mark = h.mark(spec)
    h.conn.lookupByName(name).reset(0)
    powers: set[str] = set()

    def rebooted() -> bool:
        o = h.observed()
        if o is not None:
            powers.add(o.power)
        return "hostplane-guest: ready" in h.serial(spec)[mark:]

    wait_for(rebooted, timeout=60, interval=0.1, what="guest rebooted")
    assert powers == {"Running"} and h.state(spec) == libvirt.VIR_DOMAIN_RUNNING

    # live vCPU increase and online disk grow
    grown = spec.model_copy(update={"vcpus": 2, "diskGiB": 2})
    gen = h.put(grown)
    obs = h.wait(lambda o: _ready(gen)(o) and o.vcpus == 2 and o.diskGiB == 2, "vCPU and disk grown live")
    dom = h.conn.lookupByName(name)
    assert dom.vcpusFlags(libvirt.VIR_DOMAIN_AFFECT_LIVE) == 2
    assert dom.blockInfo("vda")[0] == 2 * 1024**3
    assert h.state(spec) == libvirt.VIR_DOMAIN_RUNNING

    # a QEMU crash is restarted (after the 10 s backoff), not left off
    pid = _qemu_pid(name)
    assert pid is not None
    mark = h.mark(spec)
    os.kill(pid, signal.SIGKILL)
    h.wait(lambda o: o.power == "Crashed", "crash seen", timeout=20)
    h.wait(lambda o: o.power == "Running", "restarted after crash", timeout=40)
    h.wait_booted(spec, mark, "booted after the crash restart")

    # stop: ACPI, the guest powers off by itself
    began = time.monotonic()
    gen = h.put(grown.model_copy(update={"power": "Stopped"}))
    obs = h.wait(lambda o: o.power == "Stopped" and o.observedGeneration == gen, "stopped", timeout=45)
    assert "hostplane-guest: power button, powering off" in h.serial(spec)
    assert time.monotonic() - began < 20, "the guest should obey ACPI well before the grace period"

    # rebuild: a fresh root disk, same identity, boots again
    mark = h.mark(spec)
    gen = h.put(grown.model_copy(update={"rebuildGeneration": 1}))
    obs = h.wait(lambda o: _ready(gen)(o) and o.rebuildGeneration == 1 and o.power == "Running", "rebuilt")
    assert obs.diskGiB == 2
    h.wait_booted(spec, mark, "booted again after the rebuild")

    # delete: nothing left in libvirt or the pool
    h.store.kv_delete(keys.desired_key(h.node, "e2e-1", h.store.root))
    h.store.kv_put(keys.tombstone_key(h.node, spec.uid, h.store.root),
                   Tombstone(vps="e2e-1", uid=spec.uid).model_dump_json().encode())
    wait_for(lambda: h.observed() is None, timeout=60, interval=0.2, what="observed removed")
    assert name not in [d.name() for d in h.conn.listAllDomains(0)]
    pool = h.conn.storagePoolLookupByName(f"hp-{h.node}")
    pool.refresh(0)
    assert not [v for v in pool.listVolumes() if v.startswith("hp-")]
