"""Node agent benchmark: a burst of VPS on real QEMU, reaction latency, memory with 1,000 domains.

* Burst: 20 VPS of the test guest (128 MiB, TCG). The baseline is a plain script making the same
  libvirt calls one VM after another (root overlay, seed volume + upload, define, start) as fast as
  it can; the agent gets the same 20 as desired entries written at once. Both have the image base
  in their pool beforehand. Per-VPS latency is from the desired entry's put (the script's start)
  to libvirt reporting the domain running, watched from a separate connection every 10 ms.
* Reaction: one running VPS toggled Paused/Running through its desired entry; latency from the
  put to libvirt's state change.
* Memory: an agent in a fresh process on a private test-driver node, RSS with no domains and after
  converging 1,000 running domains (desired entries in its informer, the domains in libvirt).

Everything runs on loopback: a private etcd in a temp dir, a private libvirt session daemon when
needed (tests/e2e/guest/session.py), user-mode NICs. Everything started is stopped.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import libvirt

from nodeagent import cloudinit, domain_xml
from nodeagent.agent import Agent
from nodeagent.metadata import Meta
from nodeagent.storage import GiB, Storage, _vol_xml
from reconcile import keys
from reconcile.connection import EtcdConnection
from reconcile.etcd_server import EtcdServer
from reconcile.objects import Store
from specs.domain import DomainImage, DomainNetwork, DomainSpec
from tests.e2e.guest.build import GuestImage, build
from tests.e2e.guest.session import Session, make_workdir, qemu_session

BURST = 20
TOGGLES = 40
MEMORY_DOMAINS = 1000


def _pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))]


def _image(img: GuestImage) -> DomainImage:
    return DomainImage(name="test-guest", path=img.disk, sha256=img.disk_sha256, format="qcow2",
                       kernel=img.kernel, initrd=img.initrd, cmdline=img.cmdline)


def _spec(i: int, image: DomainImage, **kw: Any) -> DomainSpec:
    base: dict[str, Any] = {
        "vps": f"bench-{i}", "uid": f"b{uuid.uuid4().hex[:10]}", "vcpus": 1, "memoryMiB": 128, "diskGiB": 1,
        "maxVcpus": 2, "maxMemoryMiB": 256, "image": image, "hostname": f"bench-{i}",
        "sshKeys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBench bench@hostplane"],
        "network": DomainNetwork(mac=f"52:54:00:00:{i // 256:02x}:{i % 256:02x}"), "shutdownGraceSeconds": 5,
    }
    base.update(kw)
    return DomainSpec.model_validate(base)


def _wipe(conn: libvirt.virConnect, prefix: str = "hp-b") -> None:
    for dom in conn.listAllDomains(0):
        if dom.name().startswith(prefix):
            if dom.isActive():
                dom.destroy()
            dom.undefine()


def _drop_pool(conn: libvirt.virConnect, name: str) -> None:
    try:
        pool = conn.storagePoolLookupByName(name)
    except libvirt.libvirtError:
        return
    for vol in pool.listAllVolumes(0):
        vol.delete(0)
    pool.destroy()
    pool.undefine()


def _watch_running(conn: libvirt.virConnect, names: set[str], seen: dict[str, float], deadline: float) -> None:
    while len(seen) < len(names) and time.monotonic() < deadline:
        now = time.monotonic()
        for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
            n = dom.name()
            if n in names and n not in seen and dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING:
                seen[n] = now
        time.sleep(0.01)


def _script_burst(session: Session, image: DomainImage) -> tuple[float, list[float]]:
    """The baseline: the same libvirt calls, one VM after another, no agent."""
    work = make_workdir(session)
    conn = libvirt.open(session.uri)
    pool_name = f"bench-script-{uuid.uuid4().hex[:6]}"
    storage = Storage(conn, pool_name=pool_name, pool_dir=work / "pool", work_dir=work / "dl", simulated=False)
    storage.ensure_image(image)
    base = storage.base_paths(image)
    specs = [_spec(i, image) for i in range(BURST)]
    lat: list[float] = []
    try:
        t0 = time.monotonic()
        for s in specs:
            name = domain_xml.domain_name(s.uid)
            storage.pool.createXML(_vol_xml(domain_xml.root_volume_name(name), s.diskGiB * GiB, "qcow2",
                                            backing=(base.disk, "qcow2")), 0)
            iso = cloudinit.build_iso(cloudinit.seed_files(s))
            seed = storage.pool.createXML(_vol_xml(domain_xml.seed_volume_name(name), len(iso), "raw"), 0)
            stream = conn.newStream(0)
            seed.upload(stream, 0, len(iso), 0)
            stream.send(iso)
            stream.finish()
            boot = domain_xml.Boot("kvm" if _kvm(conn) else "qemu", storage.root_path(name), storage.seed_path(name),
                                   str(work / f"{name}.log"), kernel=base.kernel, initrd=base.initrd)
            dom = conn.defineXML(domain_xml.build(s, Meta(vps=s.vps, uid=s.uid), boot))
            dom.create()
            lat.append(time.monotonic() - t0)
        total = time.monotonic() - t0
    finally:
        _wipe(conn)
        _drop_pool(conn, pool_name)
        conn.close()
        shutil.rmtree(work, ignore_errors=True)
    return total, lat


def _kvm(conn: libvirt.virConnect) -> bool:
    try:
        conn.getDomainCapabilities(None, "x86_64", None, "kvm", 0)
        return True
    except libvirt.libvirtError:
        return False


def _agent_burst(session: Session, store: Store, image: DomainImage) -> tuple[float, list[float]]:
    work = make_workdir(session)
    node = f"bench-{uuid.uuid4().hex[:6]}"
    agent = Agent(store, node, session.uri, work, workers=4, resync=60.0, pool_name=f"hp-{node}")
    agent.start()
    watcher = libvirt.open(session.uri)
    try:
        assert agent.hv.storage is not None
        agent.hv.storage.ensure_image(image)
        specs = [_spec(i, image) for i in range(BURST)]
        names = {domain_xml.domain_name(s.uid): s for s in specs}
        put_at: dict[str, float] = {}
        seen: dict[str, float] = {}
        t0 = time.monotonic()
        for s in specs:
            put_at[domain_xml.domain_name(s.uid)] = time.monotonic()
            store.kv_put(keys.desired_key(node, s.vps, store.root), s.model_dump_json().encode())
        _watch_running(watcher, set(names), seen, time.monotonic() + 300)
        total = max(seen.values()) - t0 if len(seen) == BURST else float("nan")
        lat = [seen[n] - put_at[n] for n in seen]
    finally:
        agent.stop()
        _wipe(watcher)
        _drop_pool(watcher, f"hp-{node}")
        watcher.close()
        shutil.rmtree(work, ignore_errors=True)
    return total, lat


def _reaction(session: Session, store: Store, image: DomainImage) -> list[float]:
    work = make_workdir(session)
    node = f"bench-{uuid.uuid4().hex[:6]}"
    agent = Agent(store, node, session.uri, work, resync=60.0, pool_name=f"hp-{node}")
    agent.start()
    watcher = libvirt.open(session.uri)
    lat: list[float] = []
    try:
        spec = _spec(0, image)
        key = keys.desired_key(node, spec.vps, store.root)
        store.kv_put(key, spec.model_dump_json().encode())
        name = domain_xml.domain_name(spec.uid)
        seen: dict[str, float] = {}
        _watch_running(watcher, {name}, seen, time.monotonic() + 120)
        dom = watcher.lookupByName(name)
        for i in range(TOGGLES):
            want, state = (("Paused", libvirt.VIR_DOMAIN_PAUSED) if i % 2 == 0
                           else ("Running", libvirt.VIR_DOMAIN_RUNNING))
            t0 = time.monotonic()
            store.kv_put(key, spec.model_copy(update={"power": want}).model_dump_json().encode())
            deadline = t0 + 10
            while dom.state()[0] != state and time.monotonic() < deadline:
                time.sleep(0.002)
            lat.append(time.monotonic() - t0)
            time.sleep(0.1)
    finally:
        agent.stop()
        _wipe(watcher)
        _drop_pool(watcher, f"hp-{node}")
        watcher.close()
        shutil.rmtree(work, ignore_errors=True)
    return lat


# ----------------------------------------------------------------------- memory (child process)


def _rss_kib() -> tuple[int, int]:
    rss = hwm = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
        elif line.startswith("VmHWM:"):
            hwm = int(line.split()[1])
    return rss, hwm


def memory_worker(etcd_config: str, n: int, data_dir: str) -> None:
    """Run in a fresh process: an agent converging `n` domains on a private test-driver node."""
    import gc

    from nodeagent.main import simulated_node_xml

    store = Store(EtcdConnection.from_file(etcd_config), root=f"/bench/{uuid.uuid4().hex[:8]}/hostplane/v1")
    d = Path(data_dir)
    uri = simulated_node_xml(d / "node.xml", cpus=256, memory_mib=4 * 1024 * 1024)
    agent = Agent(store, "mem", uri, d / "agent", workers=4, resync=600.0)
    agent.start()
    gc.collect()
    rss0, _ = _rss_kib()
    image = DomainImage(name="tiny", path=str(d / "tiny.qcow2"))
    (d / "tiny.qcow2").write_bytes(b"QFI\xfb" + b"\0" * 4092)
    t0 = time.monotonic()
    for i in range(n):
        s = _spec(i, image, memoryMiB=64)
        store.kv_put(keys.desired_key("mem", s.vps, store.root), s.model_dump_json().encode())
    conn = agent.hv.conn
    assert conn is not None
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if len(conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)) >= n and agent.controller is not None \
                and agent.controller.idle:
            break
        time.sleep(0.2)
    converge = time.monotonic() - t0
    running = len(conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE))
    gc.collect()
    time.sleep(1)
    rss1, hwm = _rss_kib()
    agent.stop()
    store.close()
    print(json.dumps({"rss0": rss0, "rss1": rss1, "hwm": hwm, "running": running, "converge": converge}))


def _memory(etcd: EtcdServer) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        endpoint = str(Path(tmp) / "etcd.toml")
        Path(endpoint).write_text(etcd.connection().to_toml())
        code = ("import sys; from tests.bench.bench_agent import memory_worker; "
                f"memory_worker({endpoint!r}, {MEMORY_DOMAINS}, {tmp!r})")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900,
                             cwd=Path(__file__).resolve().parents[2], check=True)
        result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
        return result


# ---------------------------------------------------------------------------------- run


def run() -> str:
    img = build()
    image = _image(img)
    with tempfile.TemporaryDirectory() as tmp:
        etcd = EtcdServer(Path(tmp) / "etcd")
        etcd.start()
        store = etcd.store(root=f"/bench/{uuid.uuid4().hex[:8]}/hostplane/v1")
        try:
            with qemu_session() as session:
                probe = libvirt.open(session.uri)
                accel = "KVM" if _kvm(probe) else "TCG"
                probe.close()
                script_total, script_lat = _script_burst(session, image)
                agent_total, agent_lat = _agent_burst(session, store, image)
                reaction = _reaction(session, store, image)
            mem = _memory(etcd)
        finally:
            store.close()
            etcd.stop()
    ratio = agent_total / script_total if script_total else float("nan")
    ms = [x * 1000 for x in reaction]
    lines = [
        "## Node agent",
        "",
        f"Measured by `tests/bench/bench_agent.py` on {os.cpu_count()} cores, guests under QEMU via a libvirt session "
        f"daemon ({accel}), "
        "a private etcd on loopback.",
        "",
        f"**Burst of {BURST} VPS** (test guest, 128 MiB), desired entry written → domain running in libvirt:",
        "",
        "| | total | p50 per VPS | p95 per VPS | max per VPS |",
        "| --- | --- | --- | --- | --- |",
        f"| plain script, same libvirt calls in sequence | {script_total:.2f} s | {_pct(script_lat, 50):.2f} s | "
        f"{_pct(script_lat, 95):.2f} s | {max(script_lat):.2f} s |",
        f"| agent (4 workers) | {agent_total:.2f} s | {_pct(agent_lat, 50):.2f} s | {_pct(agent_lat, 95):.2f} s | "
        f"{max(agent_lat):.2f} s |",
        "",
        f"Agent / script total: **{ratio:.2f}x** (target at most 1.2x). "
        "For the script, per-VPS latency counts from the "
        "start of the script, as a user queueing 20 VPS at once would see it.",
        "",
        f"**Reaction latency**, desired power change (Paused ↔ Running) → libvirt state change, {len(ms)} changes: "
        f"p50 {_pct(ms, 50):.0f} ms, p99 {_pct(ms, 99):.0f} ms, max {max(ms):.0f} ms (target p99 < 1 s).",
        "",
        f"**Agent memory with {MEMORY_DOMAINS} domains** (test driver, fresh process): "
        f"RSS {mem['rss0'] / 1024:.0f} MiB "
        f"with none, {mem['rss1'] / 1024:.0f} MiB with {mem['running']} running (peak {mem['hwm'] / 1024:.0f} MiB; "
        f"target < 150 MiB); converged in {mem['converge']:.1f} s.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(run())
