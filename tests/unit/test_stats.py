"""Bulk stats to Prometheus text (pure): sums over disks and NICs, and text any Prometheus parser reads back."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from nodeagent import stats

STATS = {"cpu.time": 2_500_000_000, "vcpu.current": 2, "balloon.current": 131072, "balloon.rss": 65536,
         "block.count": 2, "block.0.rd.bytes": 100, "block.1.rd.bytes": 23, "block.0.wr.bytes": 7,
         "block.0.rd.reqs": 3, "block.1.wr.reqs": 4, "net.count": 1, "net.0.rx.bytes": 1000, "net.0.tx.bytes": 10,
         "net.0.rx.pkts": 5, "net.0.tx.pkts": 1}


def test_a_domain_sample_sums_disks_and_nics() -> None:
    """CPU in seconds, memory in bytes, disk and network counters summed over devices."""
    s = stats.domain_sample("web-1", STATS)
    assert s.cpu_seconds == 2.5 and s.vcpus == 2
    assert s.memory_bytes == 128 * 1024**2 and s.rss_bytes == 64 * 1024**2
    assert s.disk == {"read_bytes": 123, "write_bytes": 7, "read_ops": 3, "write_ops": 4}
    assert s.net == {"rx_bytes": 1000, "tx_bytes": 10, "rx_packets": 5, "tx_packets": 1}


def test_only_domains_of_this_node_are_sampled() -> None:
    """Domains the agent does not hold a desired entry for (unmanaged, foreign) are left out."""
    out = stats.sample([("hp-a", STATS), ("someone-elses", STATS)], {"hp-a": "web-1"})
    assert [s.vps for s in out] == ["web-1"]


@given(st.lists(st.text(min_size=1, max_size=30), min_size=0, max_size=5, unique=True),
       st.floats(min_value=0, max_value=1e9, allow_nan=False))
def test_rendered_text_parses_back_with_its_labels(names: list[str], cpu: float) -> None:
    """Any VPS names (quotes, backslashes, newlines) give text the Prometheus parser reads back exactly."""
    domains = [stats.DomainSample(vps=n, vcpus=1, cpu_seconds=cpu) for n in names]
    host = stats.NodeSample(cpus=4, cpu_seconds={"user": 1.5, "idle": 10.0}, memory_bytes=8)
    text = stats.render("n1", domains, host)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    cpu_samples = families["hostplane_vps_cpu_seconds"].samples if names else []
    assert sorted(s.labels["vps"] for s in cpu_samples) == sorted(names)
    assert all(abs(s.value - cpu) <= 1e-9 * max(1.0, cpu) for s in cpu_samples)
    modes = {s.labels["mode"]: s.value for s in families["hostplane_node_cpu_seconds"].samples}
    assert modes == {"user": 1.5, "idle": 10.0}
