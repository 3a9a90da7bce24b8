"""Load figures of a node and its domains, in Prometheus text format for the node endpoint's /metrics.

`sample(records, names)` turns one libvirt bulk-stats answer (`virConnectGetAllDomainStats`: every
domain's CPU, balloon, block and interface counters in one call) into per-VPS samples; `render`
writes them, with the node's own CPU, memory and pool figures, as Prometheus text. Both are pure.

Counters are libvirt's own (cumulative since the QEMU process started), so an agent restart does
not reset them; a domain restart does, which Prometheus' `rate()` and `traffic.monthly_totals`
treat as a counter reset. Labels: `node` and `vps` (the agent never knows customers: DESIGN.md,
"the node contract"; the API scopes every query by the VPS it has checked the caller may see).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class DomainSample:
    vps: str
    vcpus: int = 0
    cpu_seconds: float = 0.0
    memory_bytes: int = 0  # what the guest has (balloon current)
    rss_bytes: int = 0  # what QEMU holds on the host
    disk: dict[str, int] = field(default_factory=dict)  # read_bytes, write_bytes, read_ops, write_ops
    net: dict[str, int] = field(default_factory=dict)  # rx_bytes, tx_bytes, rx_packets, tx_packets


@dataclass(frozen=True)
class NodeSample:
    cpus: int = 0
    cpu_seconds: dict[str, float] = field(default_factory=dict)  # mode -> seconds (user, kernel, idle, iowait)
    memory_bytes: int = 0
    memory_free_bytes: int = 0
    pool_bytes: int = 0
    pool_free_bytes: int = 0


_DISK = {"rd.bytes": "read_bytes", "wr.bytes": "write_bytes", "rd.reqs": "read_ops", "wr.reqs": "write_ops"}
_NET = {"rx.bytes": "rx_bytes", "tx.bytes": "tx_bytes", "rx.pkts": "rx_packets", "tx.pkts": "tx_packets"}


def _sum_indexed(stats: Mapping[str, Any], prefix: str, fields: Mapping[str, str]) -> dict[str, int]:
    out = {name: 0 for name in fields.values()}
    for i in range(int(stats.get(f"{prefix}.count", 0) or 0)):
        for key, name in fields.items():
            out[name] += int(stats.get(f"{prefix}.{i}.{key}", 0) or 0)
    return out


def domain_sample(vps: str, stats: Mapping[str, Any]) -> DomainSample:
    """One domain's sample from its bulk-stats dictionary (missing counters count as 0)."""
    return DomainSample(
        vps=vps, vcpus=int(stats.get("vcpu.current", 0) or 0),
        cpu_seconds=int(stats.get("cpu.time", 0) or 0) / 1e9,
        memory_bytes=int(stats.get("balloon.current", 0) or 0) * 1024,
        rss_bytes=int(stats.get("balloon.rss", 0) or 0) * 1024,
        disk=_sum_indexed(stats, "block", _DISK), net=_sum_indexed(stats, "net", _NET))


def sample(records: Iterable[tuple[str, Mapping[str, Any]]], names: Mapping[str, str]) -> list[DomainSample]:
    """Samples of the domains in `records` ((domain name, stats)) that `names` maps to a VPS, by VPS name."""
    out = [domain_sample(names[dom], stats) for dom, stats in records if dom in names]
    return sorted(out, key=lambda s: s.vps)


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _line(name: str, labels: Mapping[str, str], value: float) -> str:
    inner = ",".join(f'{k}="{_esc(v)}"' for k, v in labels.items())
    text = repr(float(value)) if isinstance(value, float) and not value.is_integer() else str(int(value))
    return f"{name}{{{inner}}} {text}"


_HELP = {
    "hostplane_vps_cpu_seconds_total": ("counter", "CPU time the guest used"),
    "hostplane_vps_vcpus": ("gauge", "vCPUs the guest has"),
    "hostplane_vps_memory_bytes": ("gauge", "memory the guest has (balloon)"),
    "hostplane_vps_rss_bytes": ("gauge", "host memory the guest's QEMU holds"),
    "hostplane_vps_disk_read_bytes_total": ("counter", "bytes read from the guest's disks"),
    "hostplane_vps_disk_write_bytes_total": ("counter", "bytes written to the guest's disks"),
    "hostplane_vps_disk_read_ops_total": ("counter", "read requests"),
    "hostplane_vps_disk_write_ops_total": ("counter", "write requests"),
    "hostplane_vps_network_receive_bytes_total": ("counter", "bytes the guest received"),
    "hostplane_vps_network_transmit_bytes_total": ("counter", "bytes the guest sent"),
    "hostplane_vps_network_receive_packets_total": ("counter", "packets the guest received"),
    "hostplane_vps_network_transmit_packets_total": ("counter", "packets the guest sent"),
    "hostplane_node_cpus": ("gauge", "host CPUs"),
    "hostplane_node_cpu_seconds_total": ("counter", "host CPU time by mode"),
    "hostplane_node_memory_bytes": ("gauge", "host memory"),
    "hostplane_node_memory_free_bytes": ("gauge", "free host memory"),
    "hostplane_node_pool_bytes": ("gauge", "storage pool capacity"),
    "hostplane_node_pool_free_bytes": ("gauge", "storage pool space available"),
    "hostplane_node_stats_seconds": ("gauge", "how long the last bulk-stats call took"),
}


def render(node: str, domains: list[DomainSample], host: NodeSample | None, *, took_seconds: float = 0.0) -> str:
    """Prometheus text exposition (version 0.0.4) of the node's and its domains' figures."""
    series: dict[str, list[str]] = {name: [] for name in _HELP}
    for d in domains:
        lab = {"node": node, "vps": d.vps}
        series["hostplane_vps_cpu_seconds_total"].append(_line("hostplane_vps_cpu_seconds_total", lab, d.cpu_seconds))
        series["hostplane_vps_vcpus"].append(_line("hostplane_vps_vcpus", lab, d.vcpus))
        series["hostplane_vps_memory_bytes"].append(_line("hostplane_vps_memory_bytes", lab, d.memory_bytes))
        series["hostplane_vps_rss_bytes"].append(_line("hostplane_vps_rss_bytes", lab, d.rss_bytes))
        for key, metric in (("read_bytes", "disk_read_bytes"), ("write_bytes", "disk_write_bytes"),
                            ("read_ops", "disk_read_ops"), ("write_ops", "disk_write_ops")):
            name = f"hostplane_vps_{metric}_total"
            series[name].append(_line(name, lab, d.disk.get(key, 0)))
        for key, metric in (("rx_bytes", "network_receive_bytes"), ("tx_bytes", "network_transmit_bytes"),
                            ("rx_packets", "network_receive_packets"), ("tx_packets", "network_transmit_packets")):
            name = f"hostplane_vps_{metric}_total"
            series[name].append(_line(name, lab, d.net.get(key, 0)))
    if host is not None:
        lab = {"node": node}
        series["hostplane_node_cpus"].append(_line("hostplane_node_cpus", lab, host.cpus))
        for mode, seconds in sorted(host.cpu_seconds.items()):
            series["hostplane_node_cpu_seconds_total"].append(
                _line("hostplane_node_cpu_seconds_total", {**lab, "mode": mode}, seconds))
        for name, value in (("hostplane_node_memory_bytes", host.memory_bytes),
                            ("hostplane_node_memory_free_bytes", host.memory_free_bytes),
                            ("hostplane_node_pool_bytes", host.pool_bytes),
                            ("hostplane_node_pool_free_bytes", host.pool_free_bytes)):
            series[name].append(_line(name, lab, value))
    series["hostplane_node_stats_seconds"].append(_line("hostplane_node_stats_seconds", {"node": node}, took_seconds))
    out: list[str] = []
    for name, lines in series.items():
        if lines:
            kind, text = _HELP[name]
            out += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", *lines]
    return "\n".join(out) + "\n"
