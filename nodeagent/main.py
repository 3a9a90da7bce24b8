"""Process entry points: one agent on a real hypervisor, or a simulated fleet in one process.

The simulated fleet gives every node its own in-memory libvirt test driver (a private node XML
per node: `test:///default` is shared within a process) and runs all agents on one shared
work queue, one worker pool and one housekeeping thread, so hundreds of nodes stay light.
Both return when `stop` is set, having stopped everything they started.
"""

from __future__ import annotations

import logging
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from nodeagent.agent import Agent
from nodeagent.endpoint import EndpointConfig
from nodeagent.images import ImagePolicy
from reconcile.connection import EtcdConnection
from reconcile.controller import Controller, Result
from reconcile.store import Store

log = logging.getLogger(__name__)


def run_agent(*, etcd: EtcdConnection, node: str, libvirt_uri: str, data_dir: Path, stop: threading.Event,
              image_policy: ImagePolicy | None = None, endpoint: EndpointConfig | None = None) -> None:
    """Run one node's agent until `stop` is set (with its TLS endpoint for consoles, if configured)."""
    store = Store(etcd)
    agent = Agent(store, node, libvirt_uri, data_dir, image_policy=image_policy, endpoint=endpoint)
    try:
        agent.start()
        log.info("agent %s: running on %s", node, libvirt_uri)
        stop.wait()
    finally:
        agent.stop()
        store.close()


def simulated_node_xml(path: Path, *, cpus: int = 32, memory_mib: int = 128 * 1024) -> str:
    """Write a test-driver node description (host CPUs and memory, no domains); returns its URI."""
    node = ET.Element("node")
    cpu = ET.SubElement(node, "cpu")
    for tag, value in (("mhz", "2400"), ("model", "x86_64"), ("active", str(cpus)), ("total", str(cpus)),
                       ("nodes", "1"), ("sockets", "1"), ("cores", str(cpus)), ("threads", "1")):
        ET.SubElement(cpu, tag).text = value
    ET.SubElement(node, "memory").text = str(memory_mib * 1024)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(ET.tostring(node, encoding="unicode"))
    return f"test://{path.resolve()}"


class Fleet:
    """N agents sharing one work queue, one worker pool and one housekeeping thread."""

    def __init__(self, store: Store, names: list[str], data_dir: Path, *, workers: int = 4,
                 resync: float = 60.0, heartbeat_ttl: int = 10, image_dirs: tuple[Path, ...] = ()) -> None:
        self.store = store
        self.heartbeat_ttl = heartbeat_ttl
        self.controller = Controller("fleet", self._reconcile, workers=workers)
        queue = self.controller.queue
        self.agents: dict[str, Agent] = {}
        for name in names:
            uri = simulated_node_xml(data_dir / name / "node.xml")

            def enqueue(vps: str, after: float, _node: str = name) -> None:
                key = f"{_node}/{vps}"
                if after > 0:
                    queue.add_after(key, after)
                else:
                    queue.add(key)

            # The fleet's nodes share the fleet's image directory (`<data_dir>/images`).
            policy = ImagePolicy.for_data_dir(data_dir / name, extra_dirs=(data_dir / "images", *image_dirs))
            self.agents[name] = Agent(store, name, uri, data_dir / name, resync=resync,
                                      heartbeat_ttl=heartbeat_ttl, enqueue=enqueue, image_policy=policy)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._housekeeping, name="fleet-hk", daemon=True)

    def _reconcile(self, key: str) -> Result | None:
        node, vps = key.split("/", 1)
        return self.agents[node].reconcile_key(vps)

    def start(self) -> Fleet:
        self.controller.start()
        for agent in self.agents.values():
            agent.start()
        self._thread.start()
        return self

    def _housekeeping(self) -> None:
        interval = max(0.5, self.heartbeat_ttl / 3)
        while not self._stop.is_set():
            began = time.monotonic()
            for agent in self.agents.values():
                if self._stop.is_set():
                    return
                try:
                    agent.housekeep()
                except Exception:
                    log.exception("fleet: housekeeping of %s failed", agent.node)
            self._stop.wait(max(0.0, interval - (time.monotonic() - began)))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.controller.stop()
        for agent in self.agents.values():
            agent.stop()


def run_simulated_fleet(*, etcd: EtcdConnection, nodes: int, data_dir: Path, stop: threading.Event,
                        prefix: str = "sim", image_dirs: tuple[Path, ...] = ()) -> None:
    """Run `nodes` simulated agents named f"{prefix}-{i}" until `stop` is set."""
    store = Store(etcd)
    fleet = Fleet(store, [f"{prefix}-{i}" for i in range(nodes)], data_dir, image_dirs=image_dirs)
    try:
        fleet.start()
        log.info("fleet: %d simulated nodes running", nodes)
        stop.wait()
    finally:
        fleet.stop()
        store.close()
