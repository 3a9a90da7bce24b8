"""The node agent on libvirt's test driver with a real etcd: every action and transition."""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from nodeagent import plan as P
from nodeagent.agent import Agent
from nodeagent.domain_xml import domain_name, root_volume_name, seed_volume_name
from nodeagent.hypervisor import Hypervisor
from nodeagent.images import ImagePolicy
from nodeagent.main import Fleet, simulated_node_xml
from reconcile import keys
from reconcile.cluster import ensure_cluster_id
from reconcile.etcd_server import EtcdServer
from reconcile.store import Store
from specs.domain import DomainImage, DomainNetwork, DomainSpec, ObservedDomain, Tombstone
from tests.helpers.wait import wait_for

IMAGE_BYTES = b"QFI\xfb" + b"\0" * 4092


@pytest.fixture
def image(tmp_path: Path) -> DomainImage:
    path = tmp_path / "images" / "tiny.qcow2"  # the image directory the test nodes are given
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(IMAGE_BYTES)
    return DomainImage(name="tiny", path=str(path), sha256=hashlib.sha256(IMAGE_BYTES).hexdigest())


class Node:
    """One agent on a private test-driver hypervisor, plus helpers to write desired and read observed."""

    def __init__(self, store: Store, tmp: Path, name: str = "n1") -> None:
        self.store = store
        self.name = name
        self.tmp = tmp
        self.uri = simulated_node_xml(tmp / f"{name}.xml")
        self.agent: Agent | None = None

    def start(self, **kw: object) -> Agent:
        kw.setdefault("resync", 2.0)
        kw.setdefault("image_policy", ImagePolicy.for_data_dir(self.tmp / "agent", extra_dirs=(self.tmp / "images",)))
        kw.setdefault("debounce_seconds", 0.2)
        self.agent = Agent(self.store, self.name, self.uri, self.tmp / "agent", heartbeat_ttl=3, **kw)  # type: ignore[arg-type]
        return self.agent.start()

    def stop(self) -> None:
        if self.agent is not None:
            self.agent.stop()
            self.agent = None

    @property
    def conn(self) -> libvirt.virConnect:
        assert self.agent is not None and self.agent.hv.conn is not None
        return self.agent.hv.conn

    def put(self, spec: DomainSpec) -> int:
        key = keys.desired_key(self.name, spec.vps, self.store.root)
        return self.store.kv_put(key, spec.model_dump_json().encode())

    def delete(self, vps: str) -> None:
        """What the controllers' deletion path does: the desired entry goes, a tombstone for its uid comes."""
        kv = self.store.kv_get(keys.desired_key(self.name, vps, self.store.root))
        assert kv is not None
        self.tombstone(DomainSpec.model_validate_json(kv.value))
        self.drop_desired(vps)

    def tombstone(self, spec: DomainSpec) -> None:
        self.store.kv_put(keys.tombstone_key(self.name, spec.uid, self.store.root),
                          Tombstone(vps=spec.vps, uid=spec.uid).model_dump_json().encode())

    def drop_desired(self, vps: str) -> None:
        """The desired entry vanishes without any deletion intent (a wiped prefix, a bad restore)."""
        self.store.kv_delete(keys.desired_key(self.name, vps, self.store.root))

    def heartbeat(self) -> dict[str, object] | None:
        kv = self.store.kv_get(keys.heartbeat_key(self.name, self.store.root))
        return None if kv is None else dict(json.loads(kv.value))

    def observed(self, vps: str) -> ObservedDomain | None:
        kv = self.store.kv_get(keys.observed_key(self.name, vps, self.store.root))
        return None if kv is None else ObservedDomain.model_validate_json(kv.value)

    def wait(self, vps: str, pred: Callable[[ObservedDomain], bool], what: str, timeout: float = 15) -> ObservedDomain:
        def check() -> ObservedDomain | None:
            o = self.observed(vps)
            return o if o is not None and pred(o) else None
        return wait_for(check, timeout=timeout, what=what)

    def domain(self, spec: DomainSpec) -> libvirt.virDomain:
        return self.conn.lookupByName(domain_name(spec.uid))

    def volumes(self) -> set[str]:
        assert self.agent is not None and self.agent.hv.storage is not None
        return set(self.agent.hv.storage.volume_names())


@pytest.fixture
def node(store: Store, tmp_path: Path) -> Iterator[Node]:
    n = Node(store, tmp_path)
    yield n
    n.stop()


def make_spec(image: DomainImage, **kw: object) -> DomainSpec:
    base: dict[str, object] = {
        "vps": "web-1", "uid": uuid.uuid4().hex[:12], "vcpus": 1, "memoryMiB": 128, "diskGiB": 2, "maxVcpus": 4,
        "maxMemoryMiB": 512, "image": image, "hostname": "web-1", "sshKeys": ["ssh-ed25519 AAAAC3Nza k@h"],
        "network": DomainNetwork(mac="52:54:00:00:00:01"), "shutdownGraceSeconds": 5,
    }
    base.update(kw)
    return DomainSpec.model_validate(base)


def ready(gen: int) -> Callable[[ObservedDomain], bool]:
    return lambda o: o.observedGeneration == gen and any(c.type == "Ready" and c.status == "True" for c in o.conditions)


def test_create_runs_and_reports(node: Node, image: DomainImage) -> None:
    """A new desired entry becomes a running domain with disk and seed, reported Ready at its revision."""
    node.start()
    spec = make_spec(image)
    gen = node.put(spec)
    obs = node.wait("web-1", ready(gen), "running and ready")
    assert obs.power == "Running" and obs.vcpus == 1 and obs.memoryMiB == 128 and obs.diskGiB == 2
    assert node.domain(spec).state()[0] == libvirt.VIR_DOMAIN_RUNNING
    name = domain_name(spec.uid)
    assert {root_volume_name(name), seed_volume_name(name)} <= node.volumes()
    def heartbeat() -> dict[str, object] | None:
        kv = node.store.kv_get(keys.heartbeat_key("n1", node.store.root))
        assert kv is not None and kv.lease
        hb: dict[str, object] = json.loads(kv.value)
        return hb if hb["domains"] == {"managed": 1, "unmanaged": 0, "foreign": 0} else None

    hb = wait_for(heartbeat, what="heartbeat counting the domain")
    assert hb["capacity"]["cpus"] == 32 and hb["allocated"]["vcpus"] == 1  # type: ignore[index]


def test_observed_written_only_on_change(node: Node, image: DomainImage) -> None:
    """Once converged, resyncs do not rewrite the observed entry."""
    node.start(resync=0.3)
    gen = node.put(make_spec(image))
    node.wait("web-1", ready(gen), "ready")
    rev = node.store.kv_get(keys.observed_key("n1", "web-1", node.store.root)).mod_revision  # type: ignore[union-attr]
    time.sleep(1.2)
    assert node.store.kv_get(keys.observed_key("n1", "web-1", node.store.root)).mod_revision == rev  # type: ignore[union-attr]


def test_pause_resume_syncs_clock(node: Node, image: DomainImage) -> None:
    """Paused pauses the domain; Running resumes it and re-syncs the guest clock."""
    node.start()
    spec = make_spec(image)
    node.wait("web-1", ready(node.put(spec)), "ready")
    gen = node.put(spec.model_copy(update={"power": "Paused", "powerReason": "suspended: nonpayment"}))
    obs = node.wait("web-1", lambda o: o.power == "Paused" and o.observedGeneration == gen, "paused")
    assert obs.powerReason == "suspended: nonpayment"
    assert node.domain(spec).state()[0] == libvirt.VIR_DOMAIN_PAUSED
    gen = node.put(spec)
    obs = node.wait("web-1", lambda o: o.power == "Running" and o.observedGeneration == gen, "resumed")
    clock = [c for c in obs.conditions if c.type == "ClockSynced"]
    assert clock and clock[0].status == "True"


def test_new_domain_of_a_suspended_vps_starts_paused(node: Node, image: DomainImage) -> None:
    """A desired entry that is Paused from the start is created and left paused (RAM kept, never run)."""
    node.start()
    spec = make_spec(image, power="Paused", powerReason="suspended: nonpayment")
    gen = node.put(spec)
    obs = node.wait("web-1", lambda o: o.power == "Paused" and o.observedGeneration == gen, "created paused")
    assert obs.powerReason == "suspended: nonpayment"
    assert node.domain(spec).state()[0] == libvirt.VIR_DOMAIN_PAUSED


def test_live_resize_grow_and_restart_required(node: Node, image: DomainImage) -> None:
    """vCPU/memory grow live within the maximum, the disk grows, beyond the maximum waits for a restart."""
    node.start()
    spec = make_spec(image, maxVcpus=2, maxMemoryMiB=256)
    node.wait("web-1", ready(node.put(spec)), "ready")
    gen = node.put(spec.model_copy(update={"vcpus": 2, "memoryMiB": 256, "diskGiB": 5}))
    obs = node.wait("web-1", ready(gen), "resized")
    assert (obs.vcpus, obs.memoryMiB, obs.diskGiB) == (2, 256, 5)
    big = spec.model_copy(update={"vcpus": 4, "maxVcpus": 4, "memoryMiB": 256, "diskGiB": 5})
    node.put(big)
    obs = node.wait("web-1", lambda o: any(c.type == "RestartRequired" and c.status == "True"
                                           for c in o.conditions), "restart required")
    assert obs.vcpus == 2
    gen = node.put(big.model_copy(update={"restartGeneration": 1}))
    obs = node.wait("web-1", lambda o: o.vcpus == 4 and o.restartGeneration == 1 and o.power == "Running"
                    and o.observedGeneration == gen, "restarted at new size")
    assert obs.maxVcpus == 4


def test_stop_then_start(node: Node, image: DomainImage) -> None:
    """Stopped shuts the domain off (reported as stopped by the agent); Running boots it again."""
    node.start()
    spec = make_spec(image)
    node.wait("web-1", ready(node.put(spec)), "ready")
    gen = node.put(spec.model_copy(update={"power": "Stopped"}))
    obs = node.wait("web-1", lambda o: o.power == "Stopped" and o.observedGeneration == gen, "stopped")
    assert obs.powerReason == "agent"
    gen = node.put(spec)
    node.wait("web-1", lambda o: o.power == "Running" and o.observedGeneration == gen, "running again")


def test_guest_poweroff_stays_off(node: Node, image: DomainImage) -> None:
    """A domain that powers itself off stays off, reported Stopped (guest); a restart request boots it."""
    node.start()
    spec = make_spec(image)
    node.wait("web-1", ready(node.put(spec)), "ready")
    node.domain(spec).shutdown()  # the guest's own power-off, as the hypervisor reports it
    obs = node.wait("web-1", lambda o: o.power == "Stopped", "guest stop reported")
    assert obs.powerReason == "guest"
    time.sleep(0.5)
    assert node.domain(spec).state()[0] == libvirt.VIR_DOMAIN_SHUTOFF
    gen = node.put(spec.model_copy(update={"restartGeneration": 1}))
    node.wait("web-1", lambda o: o.power == "Running" and o.observedGeneration == gen, "booted by restart")


def test_rebuild_replaces_disk_keeps_identity(node: Node, image: DomainImage) -> None:
    """A rebuild stops the domain, gives it a fresh root disk and boots it with the same seed and MAC."""
    node.start()
    spec = make_spec(image)
    node.wait("web-1", ready(node.put(spec)), "ready")
    uuid_before = node.domain(spec).UUIDString()
    gen = node.put(spec.model_copy(update={"rebuildGeneration": 1}))
    obs = node.wait("web-1", lambda o: o.rebuildGeneration == 1 and o.power == "Running"
                    and o.observedGeneration == gen, "rebuilt")
    assert obs.diskGiB == 2 and node.domain(spec).UUIDString() == uuid_before


def test_delete_removes_domain_volumes_and_report(node: Node, image: DomainImage) -> None:
    """A tombstone for the uid shuts the domain down, deletes volumes, domain, report and the tombstone."""
    node.start()
    spec = make_spec(image)
    node.wait("web-1", ready(node.put(spec)), "ready")
    node.delete("web-1")
    wait_for(lambda: node.observed("web-1") is None, what="observed deleted")
    name = domain_name(spec.uid)
    assert name not in [d.name() for d in node.conn.listAllDomains()]
    assert not any(v.startswith(name) for v in node.volumes())
    wait_for(lambda: node.store.kv_get(keys.tombstone_key("n1", spec.uid, node.store.root)) is None,
             what="tombstone removed once carried out")


def test_tombstone_of_another_uid_deletes_nothing(node: Node, image: DomainImage) -> None:
    """A tombstone is bound to a uid: one naming another incarnation of the same VPS leaves the domain alone."""
    node.start()
    spec = make_spec(image)
    node.wait("web-1", ready(node.put(spec)), "ready")
    node.drop_desired("web-1")
    node.tombstone(make_spec(image))  # same VPS name, another uid
    time.sleep(2.5)  # beyond one resync period
    assert node.domain(spec).isActive()
    assert {root_volume_name(domain_name(spec.uid)), seed_volume_name(domain_name(spec.uid))} <= node.volumes()


def test_unmanaged_same_name_left_alone(node: Node, image: DomainImage) -> None:
    """A domain of the derived name without Hostplane metadata is untouched and reported as a conflict."""
    agent = node.start()
    spec = make_spec(image)
    xml = (f"<domain type='test'><name>{domain_name(spec.uid)}</name><memory>65536</memory>"
           "<os><type>hvm</type></os></domain>")
    foreign = node.conn.defineXML(xml)
    foreign.create()
    node.put(spec)
    obs = node.wait("web-1", lambda o: "NameConflict" in o.lastError, "conflict reported")
    assert obs.power == "Unknown"
    assert foreign.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert agent.hv.facts().unmanaged == 1
    node.delete("web-1")
    time.sleep(0.5)
    assert foreign.isActive()
    foreign.destroy()
    foreign.undefine()


def test_orphan_is_left_running_and_reported_until_tombstoned(node: Node, image: DomainImage) -> None:
    """A managed domain whose desired entry vanished (no tombstone) keeps running with its disks and is reported."""
    node.start()
    spec = make_spec(image)
    node.wait("web-1", ready(node.put(spec)), "ready")
    node.drop_desired("web-1")
    name = domain_name(spec.uid)

    def reported() -> dict[str, object] | None:
        hb = node.heartbeat()
        return hb if hb is not None and hb.get("orphans") else None
    hb = wait_for(reported, timeout=10, what="orphan in the heartbeat")
    assert hb["orphans"] == [{"domain": name, "vps": "web-1", "uid": spec.uid}]
    conds = {c["type"]: c for c in hb["conditions"]}  # type: ignore[attr-defined]
    assert conds["OrphanDomains"]["status"] == "True" and name in conds["OrphanDomains"]["message"]
    assert conds["DesiredStateEmpty"]["status"] == "True"
    time.sleep(4.5)  # more than two resync periods
    assert node.domain(spec).isActive()
    assert {root_volume_name(name), seed_volume_name(name)} <= node.volumes()
    # The operator's intent (a purge writes the same tombstone) removes it.
    node.tombstone(spec)
    wait_for(lambda: name not in [d.name() for d in node.conn.listAllDomains()], what="purged")
    wait_for(lambda: not any(v.startswith(name) for v in node.volumes()), what="volumes gone")
    wait_for(lambda: node.heartbeat() is not None and node.heartbeat()["orphans"] == [],  # type: ignore[index]
             timeout=10, what="orphan list empty")


def test_new_uid_replaces_stale_domain(node: Node, image: DomainImage) -> None:
    """A VPS re-created under a new uid gets a new domain; the old incarnation is removed."""
    node.start()
    old = make_spec(image)
    node.wait("web-1", ready(node.put(old)), "ready")
    new = make_spec(image)
    node.tombstone(old)  # the controllers' deletion of the old incarnation
    gen = node.put(new)
    node.wait("web-1", lambda o: o.uid == new.uid and ready(gen)(o), "new incarnation ready")
    wait_for(lambda: domain_name(old.uid) not in [d.name() for d in node.conn.listAllDomains()], what="stale gone")
    assert not any(v.startswith(domain_name(old.uid)) for v in node.volumes())


def test_bad_checksum_reported_and_nothing_created(node: Node, image: DomainImage) -> None:
    """An image whose bytes do not match its sha256 is refused with a clear error; no domain is made."""
    node.start()
    spec = make_spec(image.model_copy(update={"sha256": "0" * 64}))
    node.put(spec)
    obs = node.wait("web-1", lambda o: "ImageChecksumMismatch" in o.lastError, "checksum error")
    assert obs.power == "Absent"
    assert domain_name(spec.uid) not in [d.name() for d in node.conn.listAllDomains()]


def test_unreachable_libvirt_reported(store: Store, tmp_path: Path, image: DomainImage) -> None:
    """With libvirt unreachable the heartbeat says so and the VPS reports the error."""
    agent = Agent(store, "down", f"qemu+unix:///system?socket={tmp_path}/none.sock", tmp_path / "a",
                  heartbeat_ttl=3, resync=1.0)
    agent.start()
    try:
        store.kv_put(keys.desired_key("down", "web-1", store.root), make_spec(image).model_dump_json().encode())
        hb = wait_for(lambda: store.kv_get(keys.heartbeat_key("down", store.root)), what="heartbeat")
        assert json.loads(hb.value)["libvirt"] is False
        kv = wait_for(lambda: store.kv_get(keys.observed_key("down", "web-1", store.root)), what="report")
        assert "LibvirtUnavailable" in ObservedDomain.model_validate_json(kv.value).lastError
    finally:
        agent.stop()


@pytest.mark.parametrize("seed", range(6))
def test_crash_at_any_step_then_restart_converges(store: Store, tmp_path: Path, image: DomainImage,
                                                   seed: int) -> None:
    """An agent killed after any prefix of its actions leaves state a fresh agent converges, with nothing extra."""
    rng = random.Random(seed)
    n = Node(store, tmp_path)
    spec = make_spec(image)
    hv = Hypervisor(n.uri, tmp_path / "agent",
                    image_policy=ImagePolicy.for_data_dir(tmp_path / "agent", extra_dirs=(tmp_path / "images",)))
    hv.connect()
    # The dead agent's work: the create plan, then (for odd seeds) a delete, cut off at a random step.
    steps: list[tuple[P.Action, DomainSpec | None]] = []
    actual = hv.read(spec.uid, spec=spec).actual
    for action in P.plan(spec, actual, now=time.time()):
        steps.append((action, spec))
    cut = rng.randint(0, len(steps))
    for action, s in steps[:cut]:
        hv.execute(action, s, spec.uid, spec.vps, lambda k, m: None)
    want_deleted = seed % 2 == 1
    if want_deleted and cut == len(steps):
        for action in P.plan(None, hv.read(spec.uid).actual, now=time.time(), tombstoned=True)[: rng.randint(0, 2)]:
            hv.execute(action, None, spec.uid, spec.vps, lambda k, m: None)
    if want_deleted:
        # The desired entry was removed while the agent was down; the observed key says whose it was.
        from nodeagent import report
        obs = report.observe(spec, hv.read(spec.uid, spec=spec).actual, vps="web-1", uid=spec.uid, generation=None,
                             converged=False, error=None, notes={}, previous=None, now=report.datetime.now(report.UTC))
        store.kv_put(keys.observed_key("n1", "web-1", store.root), obs.model_dump_json().encode())
        n.tombstone(spec)
    else:
        n.put(spec)
    # The test driver is private to a connection: the restarted agent must reuse this one.
    n.uri = hv.uri
    agent = Agent(store, "n1", n.uri, tmp_path / "agent", resync=1.0, heartbeat_ttl=3)
    agent.hv = hv
    agent.start()
    try:
        conn = hv.conn
        assert conn is not None
        name = domain_name(spec.uid)
        if want_deleted:
            wait_for(lambda: name not in [d.name() for d in conn.listAllDomains()], what="deleted")
            wait_for(lambda: not any(v.startswith("hp-") for v in hv.storage.volume_names()),  # type: ignore[union-attr]
                     what="no orphan volume")
        else:
            gen = store.kv_get(keys.desired_key("n1", "web-1", store.root)).mod_revision  # type: ignore[union-attr]
            n.agent = agent
            n.wait("web-1", ready(gen), "converged after restart")
            assert [d.name() for d in conn.listAllDomains()].count(name) == 1
            vols = {v for v in hv.storage.volume_names() if v.startswith("hp-")}  # type: ignore[union-attr]
            assert vols == {root_volume_name(name), seed_volume_name(name)}
    finally:
        agent.stop()


def test_simulated_fleet_converges_each_node(store: Store, tmp_path: Path, image: DomainImage) -> None:
    """A fleet of simulated nodes in one process runs each node's desired domains on its own hypervisor."""
    fleet = Fleet(store, ["f-0", "f-1", "f-2"], tmp_path, heartbeat_ttl=3)
    fleet.start()
    try:
        for i in range(3):
            spec = make_spec(image, vps=f"vm-{i}")
            store.kv_put(keys.desired_key(f"f-{i}", spec.vps, store.root), spec.model_dump_json().encode())
        for i, agent in enumerate(fleet.agents.values()):
            conn = agent.hv.conn
            assert conn is not None
            wait_for(lambda c=conn: len(c.listAllDomains()) == 1, what=f"node {i} has its domain")
            wait_for(lambda i=i: store.kv_get(keys.observed_key(f"f-{i}", f"vm-{i}", store.root)), what="report")
            assert store.kv_get(keys.heartbeat_key(f"f-{i}", store.root)) is not None
    finally:
        fleet.stop()


def test_full_pool_reported_then_recovers(node: Node, image: DomainImage) -> None:
    """A pool without room refuses new disks with StorageFull; once room is back the VPS converges."""
    agent = node.start()
    assert agent.hv.storage is not None
    agent.hv.storage.min_free_bytes = 1 << 60  # more than any pool holds
    gen = node.put(make_spec(image))
    obs = node.wait("web-1", lambda o: "StorageFull" in o.lastError, "storage full reported")
    assert obs.power == "Absent"
    agent.hv.storage.min_free_bytes = 0
    node.wait("web-1", ready(gen), "converged once there is room", timeout=20)


def test_image_from_url_fetched_once_for_concurrent_vps(node: Node, tmp_path: Path) -> None:
    """Two VPS on one URL image at once share a single download (a loopback HTTP server counts requests)."""
    import http.server
    import threading

    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            time.sleep(0.3)  # slow enough for both reconciles to ask at once
            self.send_response(200)
            self.send_header("Content-Length", str(len(IMAGE_BYTES)))
            self.end_headers()
            self.wfile.write(IMAGE_BYTES)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/tiny.qcow2"
        image = DomainImage(name="tiny-url", url=url, sha256=hashlib.sha256(IMAGE_BYTES).hexdigest())
        # The operator allows this loopback "mirror"; without that the download is refused (test_images).
        node.start(workers=2, image_policy=ImagePolicy.for_data_dir(tmp_path / "agent",
                                                                    allow_networks=["127.0.0.1/32"]))
        gens = {vps: node.put(make_spec(image, vps=vps)) for vps in ("a-1", "a-2")}
        for vps, gen in gens.items():
            node.wait(vps, ready(gen), f"{vps} ready")
        assert hits == ["/tiny.qcow2"]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_seed_rebuilt_when_identity_changes(node: Node, image: DomainImage) -> None:
    """New SSH keys rebuild the seed (its hash is recorded on the domain); the disk is kept."""
    from nodeagent.metadata import from_domain_xml
    from nodeagent.plan import seed_hash

    node.start()
    spec = make_spec(image)
    node.wait("web-1", ready(node.put(spec)), "ready")
    changed = spec.model_copy(update={"sshKeys": ["ssh-ed25519 AAAAC3NzaNEW new@h"]})
    gen = node.put(changed)
    node.wait("web-1", ready(gen), "converged with new keys")
    meta = from_domain_xml(node.domain(spec).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    assert meta is not None and meta.seed_hash == seed_hash(changed) != seed_hash(spec)


def test_run_agent_entry_point_runs_until_stopped(etcd_session: object, tmp_path: Path, image: DomainImage) -> None:
    """run_agent serves its node until the stop event is set, then returns having revoked its heartbeat."""
    import threading

    from nodeagent.main import run_agent

    node_name = "entry-" + uuid.uuid4().hex[:6]
    conn = etcd_session.connection(f"node-{node_name}")  # type: ignore[attr-defined]
    uri = simulated_node_xml(tmp_path / "node.xml")
    stop = threading.Event()
    t = threading.Thread(target=run_agent, kwargs={"etcd": conn, "node": node_name, "libvirt_uri": uri,
                                                   "data_dir": tmp_path / "d", "stop": stop,
                                                   "image_policy": ImagePolicy.for_data_dir(
                                                       tmp_path / "d", extra_dirs=(tmp_path / "images",))})
    with etcd_session.store() as s:  # type: ignore[attr-defined]
        ensure_cluster_id(s)  # the controllers' job; a node's role may only read it
    t.start()
    with etcd_session.store() as s:  # type: ignore[attr-defined]
        try:
            spec = make_spec(image)
            gen = s.kv_put(keys.desired_key(node_name, spec.vps, s.root), spec.model_dump_json().encode())
            wait_for(lambda: (kv := s.kv_get(keys.observed_key(node_name, spec.vps, s.root))) is not None
                     and ObservedDomain.model_validate_json(kv.value).observedGeneration == gen, what="converged")
        finally:
            stop.set()
            t.join(20)
        assert not t.is_alive()
        assert s.kv_get(keys.heartbeat_key(node_name, s.root)) is None
        s.kv_delete(keys.node_prefix(node_name, s.root), prefix=True)


# ------------------------------------------------------------------ data safety


@pytest.fixture
def shared_libvirt() -> Iterator[libvirt.virConnect]:
    """test:///default keeps its domains while any connection is open: agents come and go on one hypervisor."""
    conn = libvirt.open("test:///default")
    yield conn
    for dom in conn.listAllDomains():
        if dom.name().startswith("hp-"):
            if dom.isActive():
                dom.destroy()
            dom.undefine()
    conn.close()


def _five_running(store: Store, tmp_path: Path, image: DomainImage) -> tuple[list[DomainSpec], set[str]]:
    """An agent of the cluster in `store` creates five running domains on test:///default, then stops."""
    agent = Agent(store, "n1", "test:///default", tmp_path / "agent", heartbeat_ttl=3, resync=1.0,
                  image_policy=ImagePolicy.for_data_dir(tmp_path / "agent", extra_dirs=(tmp_path / "images",)))
    agent.start()
    specs = [make_spec(image, vps=f"web-{i}", hostname=f"web-{i}",
                       network=DomainNetwork(mac=f"52:54:00:00:00:1{i}")) for i in range(5)]
    n = Node(store, tmp_path)
    n.agent = agent
    try:
        for s in specs:
            n.wait(s.vps, ready(n.put(s)), f"{s.vps} ready")
        assert agent.hv.storage is not None
        volumes = {v for v in agent.hv.storage.volume_names() if v.startswith("hp-")}
    finally:
        agent.stop()
    assert len(volumes) == 10
    return specs, volumes


def _still_there(conn: libvirt.virConnect, pool: str, specs: list[DomainSpec], volumes: set[str]) -> None:
    for s in specs:
        assert conn.lookupByName(domain_name(s.uid)).isActive(), s.vps
    assert volumes <= set(conn.storagePoolLookupByName(pool).listVolumes())


def test_agent_on_an_empty_etcd_leaves_five_running_domains_and_their_disks(
        store: Store, tmp_path: Path, image: DomainImage, shared_libvirt: libvirt.virConnect) -> None:
    """Desired prefix wiped (same cluster): after 3 resync periods all 5 domains run with disks; reported as orphans."""
    specs, volumes = _five_running(store, tmp_path, image)
    store.kv_delete(keys.desired_prefix("n1", store.root), prefix=True)
    agent = Agent(store, "n1", "test:///default", tmp_path / "agent", heartbeat_ttl=3, resync=1.0,
                  image_policy=ImagePolicy.for_data_dir(tmp_path / "agent", extra_dirs=(tmp_path / "images",)))
    agent.start()
    try:
        time.sleep(3.5)  # three resync periods and more
        _still_there(shared_libvirt, agent.hv.pool_name, specs, volumes)
        hb = json.loads(store.kv_get(keys.heartbeat_key("n1", store.root)).value)  # type: ignore[union-attr]
        assert {o["uid"] for o in hb["orphans"]} == {s.uid for s in specs}
        conds = {c["type"]: c["status"] for c in hb["conditions"]}
        assert conds["DesiredStateEmpty"] == "True" and conds["OrphanDomains"] == "True"
    finally:
        agent.stop()


def test_another_clusters_agent_never_touches_its_domains(
        store: Store, tmp_path: Path, image: DomainImage, shared_libvirt: libvirt.virConnect,
        etcd_session: EtcdServer) -> None:
    """A second cluster (another key root, its own id) on the same libvirt neither lists nor deletes them."""
    specs, volumes = _five_running(store, tmp_path, image)
    first_pool = f"hostplane-{ensure_cluster_id(store)[:12]}"
    other = etcd_session.store("root", root=store.root.replace("/hostplane/v1", "/other/hostplane/v1"))
    agent = Agent(other, "n1", "test:///default", tmp_path / "other", heartbeat_ttl=3, resync=1.0)
    agent.start()
    try:
        assert agent.cluster_id != ensure_cluster_id(store)
        # Even a tombstone in the other cluster naming one of them (the same uid by mistake) deletes nothing.
        other.kv_put(keys.tombstone_key("n1", specs[0].uid, other.root),
                     Tombstone(vps=specs[0].vps, uid=specs[0].uid).model_dump_json().encode())
        time.sleep(3.5)  # three resync periods and more
        hb = json.loads(other.kv_get(keys.heartbeat_key("n1", other.root)).value)  # type: ignore[union-attr]
        assert hb["orphans"] == [] and hb["domains"]["foreign"] == 5
        _still_there(shared_libvirt, first_pool, specs, volumes)
        assert agent.hv.pool_name != first_pool
    finally:
        agent.stop()
        other.kv_delete(other.root.removesuffix("hostplane/v1"), prefix=True)
        other.close()


def test_a_pool_of_this_name_elsewhere_is_refused_not_reused(tmp_path: Path) -> None:
    """A second data dir finding the pool name taken at the first one's path is refused, never silently reused."""
    from nodeagent.errors import PoolUnusable
    from nodeagent.storage import Storage

    conn = libvirt.open(simulated_node_xml(tmp_path / "n.xml"))
    try:
        first = Storage(conn, pool_name="hp-shared", pool_dir=tmp_path / "a" / "pool", work_dir=tmp_path / "a",
                        simulated=True)
        assert first.pool.isActive()
        with pytest.raises(PoolUnusable, match="not at this node's") as info:
            Storage(conn, pool_name="hp-shared", pool_dir=tmp_path / "b" / "pool", work_dir=tmp_path / "b",
                    simulated=True)
        assert str(tmp_path / "a" / "pool") in str(info.value)
    finally:
        conn.close()


def test_an_unusable_pool_is_a_heartbeat_error_not_an_exit(store: Store, tmp_path: Path) -> None:
    """With the pool unusable the agent keeps running and beating, and the heartbeat says why."""
    name = f"hp-x-{uuid.uuid4().hex[:6]}"
    guard = libvirt.open("test:///default")
    xml = f"<pool type='dir'><name>{name}</name><target><path>{tmp_path / 'other'}</path></target></pool>"
    pool = guard.storagePoolDefineXML(xml, 0)
    pool.create(0)
    agent = Agent(store, "n1", "test:///default", tmp_path / "agent", heartbeat_ttl=3, resync=1.0, pool_name=name)
    try:
        agent.start()

        def reported() -> dict[str, Any] | None:
            kv = store.kv_get(keys.heartbeat_key("n1", store.root))
            hb: dict[str, Any] | None = json.loads(kv.value) if kv is not None else None
            return hb if hb is not None and "not at this node's" in hb.get("error", "") else None
        hb = wait_for(reported, what="heartbeat naming the pool problem")
        assert hb["libvirt"] is False
        assert {c["type"]: c["status"] for c in hb["conditions"]}["LibvirtReachable"] == "False"
        time.sleep(2)  # several beats and reconnect attempts later: still alive, still beating
        assert store.kv_get(keys.heartbeat_key("n1", store.root)) is not None
        assert agent.hv.storage is None
    finally:
        agent.stop()
        pool.destroy()
        pool.undefine()
        guard.close()


# ------------------------------------------------------------------ a slow libvirt


def test_heartbeat_keeps_beating_while_libvirt_is_slow_and_says_so(store: Store, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A first connection that takes long (QEMU probing) shows as warming; a stuck call as LibvirtResponsive=False."""
    n = Node(store, tmp_path)
    agent = Agent(store, "n1", n.uri, tmp_path / "agent", heartbeat_ttl=3, resync=1.0)
    agent.call_limit = 0.5
    release = threading.Event()
    real_connect = agent.hv._connect

    def slow_connect() -> libvirt.virConnect:
        release.wait(20)  # the probe of a fresh libvirtd
        return real_connect()
    monkeypatch.setattr(agent.hv, "_connect", slow_connect)
    starter = threading.Thread(target=agent.start, daemon=True)
    starter.start()
    try:
        def beat() -> dict[str, Any] | None:
            kv = store.kv_get(keys.heartbeat_key("n1", store.root))
            return json.loads(kv.value) if kv is not None else None
        hb = wait_for(lambda: (h := beat()) is not None and h.get("warming") and h, what="a warming heartbeat")
        conds = {c["type"]: c for c in hb["conditions"]}
        assert conds["LibvirtWarm"]["status"] == "False"
        hb = wait_for(lambda: (h := beat()) is not None
                      and {c["type"]: c["status"] for c in h["conditions"]}.get("LibvirtResponsive") == "False" and h,
                      what="the stuck call reported")
        assert "connect" in {c["type"]: c for c in hb["conditions"]}["LibvirtResponsive"]["message"]
        time.sleep(3.5)  # longer than the lease: the beat goes on while libvirt does not answer
        assert beat() is not None
        release.set()
        starter.join(20)
        hb = wait_for(lambda: (h := beat()) is not None and not h.get("warming")
                      and {c["type"]: c["status"] for c in h["conditions"]}["LibvirtResponsive"] == "True" and h,
                      what="warm and responsive")
        assert hb["libvirt"] is True
    finally:
        release.set()
        agent.stop()


def test_an_orphan_removed_by_hand_takes_its_report_with_it(node: Node, image: DomainImage) -> None:
    """Once an orphan's domain and volumes are gone (an operator's virsh), its stale report is deleted too."""
    agent = node.start()
    spec = make_spec(image)
    node.wait("web-1", ready(node.put(spec)), "ready")
    node.drop_desired("web-1")
    time.sleep(2.5)  # a resync: it is an orphan now, report kept
    assert node.observed("web-1") is not None
    dom = node.domain(spec)
    dom.destroy()
    dom.undefine()
    assert agent.hv.storage is not None
    agent.hv.storage.delete_domain_volumes(domain_name(spec.uid))
    wait_for(lambda: node.observed("web-1") is None, timeout=10, what="stale report removed")
