"""The node's load sampler: one libvirt bulk-stats call per interval, kept as Prometheus text.

The node endpoint serves the last text at /metrics (scraped by Prometheus); nothing is stored in
etcd. One call per interval whatever the number of domains (`virConnectGetAllDomainStats`), on a
thread of its own so a slow libvirt never delays the agent's reconciles or heartbeat. This module
must never write anything: it only reads libvirt.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping

import libvirt

from nodeagent import stats
from nodeagent.hypervisor import Hypervisor

log = logging.getLogger(__name__)

STATS = (libvirt.VIR_DOMAIN_STATS_CPU_TOTAL | libvirt.VIR_DOMAIN_STATS_BALLOON | libvirt.VIR_DOMAIN_STATS_VCPU
         | libvirt.VIR_DOMAIN_STATS_INTERFACE | libvirt.VIR_DOMAIN_STATS_BLOCK)


class Sampler:
    """Samples every `interval` seconds; `text()` is the last exposition ("" before the first)."""

    def __init__(self, hv: Hypervisor, node: str, names: Callable[[], Mapping[str, str]], *,
                 facts: Callable[[], object | None] = lambda: None, interval: float = 10.0) -> None:
        self.hv = hv
        self.node = node
        self.names = names
        self.facts = facts
        self.interval = interval
        self._text = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.samples = 0

    def text(self) -> str:
        return self._text

    def start(self) -> Sampler:
        self._thread = threading.Thread(target=self._run, name=f"sampler-{self.node}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                self.sample_once()
            except Exception as exc:  # libvirt down or reconnecting: the next round tries again
                log.debug("sampler %s: %s", self.node, exc)
            self._stop.wait(max(0.5, self.interval - (time.monotonic() - began)))

    def sample_once(self) -> str:
        """One bulk-stats call and the node's figures; returns (and keeps) the exposition."""
        conn = self.hv.conn
        if conn is None:
            return self._text
        began = time.perf_counter()
        with self.hv.call("bulk domain stats"):
            records = [(dom.name(), st) for dom, st in conn.getAllDomainStats(STATS, 0)]
        took = time.perf_counter() - began
        domains = stats.sample(records, self.names())
        self._text = stats.render(self.node, domains, self._host(conn), took_seconds=took)
        self.samples += 1
        return self._text

    def _host(self, conn: libvirt.virConnect) -> stats.NodeSample:
        cpu: dict[str, float] = {}
        with contextlib.suppress(libvirt.libvirtError):
            cpu = {k: v / 1e9 for k, v in conn.getCPUStats(libvirt.VIR_NODE_CPU_STATS_ALL_CPUS, 0).items()}
        facts = self.facts()
        gib = 1024**3
        return stats.NodeSample(
            cpus=int(getattr(facts, "cpus", 0)), cpu_seconds=cpu,
            memory_bytes=int(getattr(facts, "memory_mib", 0)) * 1024**2,
            memory_free_bytes=int(getattr(facts, "free_memory_mib", 0)) * 1024**2,
            pool_bytes=int(float(getattr(facts, "pool_capacity_gib", 0)) * gib),
            pool_free_bytes=int(float(getattr(facts, "pool_available_gib", 0)) * gib))
