"""Fleet benchmark: N simulated nodes, 10,000 VPS applied until Running, then a 1,000-VPS mass suspension.

Everything is real but the hypervisors: a private single-member etcd, `run_controllers` in its
own process, `run_simulated_fleet` (N agents on libvirt test-driver connections) in another,
and one more standalone agent ("probe", cordoned, no VPS) whose CPU is sampled while the fleet
is empty, while 10,000 VPS run elsewhere and during the mass suspension: it watches only its
own prefix, so its idle CPU must not grow with the fleet. Every process is started here and
stopped by its PID. Loopback only.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

from reconcile import keys
from reconcile.etcd import WatchEvent
from reconcile.etcd_server import EtcdServer
from reconcile.objects import Store
from specs.kinds import VPS, Image, ImageSource, ImageSpec, Subscription, SubscriptionStatus
from specs.meta import ObjectMeta
from tests.helpers import builders as b

ROOT = Path(__file__).resolve().parents[2]
TICK = os.sysconf("SC_CLK_TCK")


def _spawn(body: str, log: Path) -> subprocess.Popen[bytes]:
    out = log.open("wb")
    code = textwrap.dedent(ENTRY) + textwrap.dedent(body)
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=out, stderr=out,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def _cpu_share(pid: int, seconds: float) -> float:
    """The process's CPU use over `seconds` of wall time, in percent of one core."""
    c0, t0 = _cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return 100.0 * (_cpu_seconds(pid) - c0) / (time.monotonic() - t0)


ENTRY = """
    import logging, signal, threading
    from pathlib import Path
    from reconcile.connection import EtcdConnection
    logging.basicConfig(level=logging.WARNING)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
"""


class Poller:
    """Reads every VPS status once a second; remembers when each VPS was first seen in a phase."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.first_seen: dict[str, dict[str, float]] = {}
        self.counts: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            kvs, _ = self.store.kv_range(keys.status_prefix(VPS, self.store.root))
            now = time.monotonic()
            counts: dict[str, int] = {}
            for kv in kvs:
                name = kv.key.rsplit("/", 1)[-1]
                phase = json.loads(kv.value).get("phase", "")
                counts[phase] = counts.get(phase, 0) + 1
                self.first_seen.setdefault(phase, {}).setdefault(name, now)
            self.counts = counts
            self._stop.wait(1.0)

    def start(self) -> Poller:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def wait(self, phase: str, names: set[str], timeout: float) -> float | None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            seen = self.first_seen.get(phase, {})
            if all(n in seen for n in names):
                return max(seen[n] for n in names)
            time.sleep(0.2)
        return None


class DesiredWatcher:
    """Watches the nodes' prefixes: when each VPS first got a DomainSpec, and when it was first asked to pause."""

    def __init__(self, store: Store) -> None:
        self.first: dict[str, float] = {}
        self.paused: dict[str, float] = {}
        self._watch = store.watch(f"{store.root}/nodes/", start_revision=store.revision() + 1,
                                  on_events=self._on_events)

    def _on_events(self, events: list[WatchEvent], _rev: int) -> None:
        now = time.monotonic()
        for ev in events:
            if ev.type != "PUT" or "/desired/" not in ev.key:
                continue
            name = ev.key.rsplit("/", 1)[-1]
            self.first.setdefault(name, now)
            if b'"power":"Paused"' in ev.value:
                self.paused.setdefault(name, now)

    def stop(self) -> None:
        self._watch.stop()


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def run(nodes: int = 200, vps: int = 10_000, mass: int = 1_000, per_sub: int = 10) -> str:
    tmp = Path(tempfile.mkdtemp(prefix="hostplane-bench-fleet-"))
    etcd = EtcdServer(tmp / "etcd").start()
    store = etcd.store()
    procs: list[subprocess.Popen[bytes]] = []
    poller = Poller(store)
    watcher: DesiredWatcher | None = None
    rows: list[tuple[str, str]] = []
    try:
        base = tmp / "fleet" / "images" / "base.raw"  # under the fleet's image directory
        base.parent.mkdir(parents=True, exist_ok=True)
        base.write_bytes(b"\0" * 4096)
        store.create(b.plan("s1", vcpus=1, memory=128, disk=1))
        store.create(b.customer())
        store.create(Image(metadata=ObjectMeta(name="tiny"), spec=ImageSpec(
            os="busybox", version="1", source=ImageSource(path=str(base), format="raw",
                                                     sha256=hashlib.sha256(base.read_bytes()).hexdigest()))))
        store.create(b.pool(cidr="10.64.0.0/16", gateway="10.64.0.1"))
        subs = vps // per_sub
        with ThreadPoolExecutor(8) as ex:
            list(ex.map(lambda s: store.create(b.subscription(f"sub-{s}", plan_name="s1")), range(subs)))
            list(ex.map(lambda i: store.create(b.node(f"sim-{i}", vcpus=32, memory=65536, disk=4000)), range(nodes)))
        store.create(b.node("probe", schedulable=False))

        def config(identity: str) -> str:
            path = tmp / f"{identity}.toml"
            path.write_text(etcd.connection(identity).to_toml())
            return f"EtcdConnection.from_file({str(path)!r})"

        procs.append(_spawn(f"""
            from nodeagent.main import run_simulated_fleet
            run_simulated_fleet(etcd={config("fleet")}, nodes={nodes}, data_dir=Path({str(tmp / 'fleet')!r}), stop=stop)
        """, tmp / "fleet.log"))
        procs.append(_spawn(f"""
            from nodeagent.main import run_agent, simulated_node_xml
            uri = simulated_node_xml(Path({str(tmp / 'probe' / 'node.xml')!r}))
            run_agent(etcd={config("node-probe")}, node="probe", libvirt_uri=uri, data_dir=Path({str(tmp / 'probe')!r}),
                      stop=stop)
        """, tmp / "probe.log"))
        procs.append(_spawn(f"""
            from controllers.main import run_controllers
            run_controllers(etcd={config("controllers")}, identity="bench", stop=stop)
        """, tmp / "controllers.log"))
        fleet, probe, ctl = procs
        assert etcd.proc is not None
        etcd_pid = etcd.proc.pid
        t_ready = time.monotonic()
        while sum(1 for kv in store.kv_range(f"{store.root}/nodes/", keys_only=True)[0]
                  if kv.key.endswith("/heartbeat")) < nodes + 1:
            if time.monotonic() - t_ready > 180:
                raise TimeoutError("the simulated fleet did not report ready")
            time.sleep(0.5)
        ready_s = time.monotonic() - t_ready
        time.sleep(3)
        probe_empty = _cpu_share(probe.pid, 20)
        fleet_empty = _cpu_share(fleet.pid, 10)

        poller.start()
        watcher = DesiredWatcher(store)
        cpu0 = {p: _cpu_seconds(p) for p in (fleet.pid, ctl.pid, etcd_pid)}
        rows.append(("simulated nodes (one process) + 1 probe agent", f"{nodes} + 1"))
        rows.append(("fleet Ready (all heartbeats) after start", f"{ready_s:.1f} s"))
        names = [f"vm-{i:05d}" for i in range(vps)]
        created: dict[str, float] = {}

        def create(i: int) -> None:
            created[names[i]] = time.monotonic()
            store.create(b.vps(names[i], sub=f"sub-{i // per_sub}", image_name="tiny", uid=None))

        t0 = time.monotonic()
        with ThreadPoolExecutor(8) as ex:
            list(ex.map(create, range(vps)))
        applied_s = time.monotonic() - t0
        rows.append((f"{vps:,} VPS applied (8 client threads, store writes)", f"{applied_s:.1f} s"))
        _progress(rows[-1])
        done = poller.wait("Running", set(names), timeout=900)
        if done is None:
            rows.append((f"{vps:,} VPS applied -> all Running", f"not within 900 s: {poller.counts}"))
            return _section(rows)
        run_s = done - t0
        cpu = {p: _cpu_seconds(p) - c for p, c in cpu0.items()}
        placed = max(watcher.first.get(n, float("inf")) for n in names) - t0
        seen = poller.first_seen["Running"]
        lat = [seen[n] - created[n] for n in names]
        rows.append((f"{vps:,} VPS applied -> every DomainSpec written (controllers' part)",
                     f"{placed:.1f} s ({vps / placed:.0f} VPS/s)"))
        rows.append((f"{vps:,} VPS applied -> all Running", f"{run_s:.1f} s ({vps / run_s:.0f} VPS/s)"))
        rows.append(("CPU seconds used until all Running: controllers / fleet / etcd",
                     f"{cpu[ctl.pid]:.0f} / {cpu[fleet.pid]:.0f} / {cpu[etcd_pid]:.0f} s"))
        rows.append(("per-VPS create -> first seen Running, p50 / p99 / max (1 s polling)",
                     f"{statistics.median(lat):.1f} / {_pct(lat, 0.99):.1f} / {max(lat):.1f} s"))
        _progress(rows[-2])
        time.sleep(3)
        probe_full = _cpu_share(probe.pid, 20)
        fleet_idle = _cpu_share(fleet.pid, 10)
        ctl_idle = _cpu_share(ctl.pid, 10)

        suspended = names[:mass]
        t1 = time.monotonic()
        when = datetime.now(UTC)
        probe_during: list[float] = []
        sampler = threading.Thread(target=lambda: probe_during.append(_cpu_share(probe.pid, 20)), daemon=True)
        sampler.start()
        with ThreadPoolExecutor(8) as ex:
            list(ex.map(lambda s: store.put_status(Subscription, f"sub-{s}", SubscriptionStatus(
                state="Suspended", suspendReason="nonpayment", suspendedAt=when)), range(mass // per_sub)))
        done2 = poller.wait("Suspended", set(suspended), timeout=300)
        paused = max(watcher.paused.get(n, float("inf")) for n in suspended) - t1
        rows.append((f"mass suspension of {mass:,} VPS -> every DomainSpec Paused (controllers' part)",
                     f"{paused:.1f} s"))
        label = f"mass suspension of {mass:,} VPS (billing status) -> all Suspended"
        rows.append((label, f"{done2 - t1:.1f} s" if done2 is not None else f"not within 300 s: {poller.counts}"))
        _progress(rows[-1])
        sampler.join(30)
        rows.append((f"probe agent CPU, fleet empty / {vps:,} VPS running / during mass change",
                     f"{probe_empty:.2f} / {probe_full:.2f} / {probe_during[0] if probe_during else float('nan'):.2f} "
                     f"% of a core (ratio full/empty {probe_full / probe_empty if probe_empty else float('nan'):.2f})"))
        rows.append((f"fleet process CPU idle, empty / {vps:,} VPS",
                     f"{fleet_empty:.1f} / {fleet_idle:.1f} % of a core"))
        rows.append((f"controllers CPU idle with {vps:,} VPS", f"{ctl_idle:.1f} % of a core"))
        heartbeats = sum(1 for kv in store.kv_range(f"{store.root}/nodes/", keys_only=True)[0]
                         if kv.key.endswith("/heartbeat"))
        rows.append(("node heartbeats present at the end", f"{heartbeats} of {nodes + 1}"))
        return _section(rows)
    finally:
        poller.stop()
        if watcher is not None:
            watcher.stop()
        for p in reversed(procs):
            _stop(p)
        store.close()
        etcd.stop()


def _progress(row: tuple[str, str]) -> None:
    print(f"<!-- fleet: {row[0]}: {row[1]} -->", file=sys.stderr, flush=True)


def _section(rows: list[tuple[str, str]]) -> str:
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return textwrap.dedent("""\
        ## Fleet

        `tests/bench/bench_fleet.py`: a private single-member etcd; `run_controllers` (8 workers) in one
        process; `run_simulated_fleet` (libvirt test driver, one private instance per node) in another;
        one more standalone agent ("probe", cordoned, no VPS) whose CPU is sampled as the fleet grows.
        VPS are created through the store (the API's write path without HTTP) by 8 client threads; a
        poller reads every VPS status once a second. Targets: 10,000 VPS converge in under 5 minutes; a
        1,000-VPS mass suspension in under 30 s; an idle agent's CPU independent of fleet size.

        | measure | value |
        | --- | ---: |
        """) + table + "\n"


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:]]
    print(run(*args))
