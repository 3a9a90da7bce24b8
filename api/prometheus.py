"""Prometheus for `hostplane up` (and tests): its configuration, and the queries the API sends it.

`config(...)` writes the scrape configuration: every node endpoint over mutual TLS (the API's
client certificate: the endpoint admits only `api`) and the API's own /metrics. `PrometheusProcess`
runs Debian's `prometheus` with its own data directory on a loopback port; it is stopped by PID.
`vps_queries` / `node_queries` build PromQL from a name the API has already authorised: a caller
never sends a query. This module must never decide who may read what.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

PROMETHEUS = "/usr/bin/prometheus"
SCRAPE_SECONDS = 10


@dataclass(frozen=True)
class Range:
    seconds: int
    step: int  # seconds between points (at most ~360 points a series)
    window: str  # rate() window: at least two scrapes, at least the step


RANGES = {
    "1h": Range(3600, 15, "1m"),
    "24h": Range(86400, 300, "5m"),
    "7d": Range(7 * 86400, 1800, "30m"),
    "30d": Range(30 * 86400, 7200, "2h"),
}


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def vps_queries(vps: str, window: str) -> dict[str, str]:
    """PromQL per series of one VPS (summed over nodes, so a move between nodes keeps one line). Pure."""
    sel = f'{{vps="{_label(vps)}"}}'

    def rate(metric: str) -> str:
        return f"sum(rate(hostplane_vps_{metric}{sel}[{window}]))"

    return {
        "cpuPercent": f"100 * {rate('cpu_seconds_total')} / clamp_min(sum(hostplane_vps_vcpus{sel}), 1)",
        "memoryBytes": f"sum(hostplane_vps_memory_bytes{sel})",
        "diskReadBytesPerSecond": rate("disk_read_bytes_total"),
        "diskWriteBytesPerSecond": rate("disk_write_bytes_total"),
        "diskReadOpsPerSecond": rate("disk_read_ops_total"),
        "diskWriteOpsPerSecond": rate("disk_write_ops_total"),
        "networkReceiveBytesPerSecond": rate("network_receive_bytes_total"),
        "networkTransmitBytesPerSecond": rate("network_transmit_bytes_total"),
    }


def node_queries(node: str, window: str) -> dict[str, str]:
    """PromQL per series of one node. Pure."""
    sel = f'node="{_label(node)}"'
    busy = f'sum(rate(hostplane_node_cpu_seconds_total{{{sel},mode!="idle"}}[{window}]))'
    total = f"sum(rate(hostplane_node_cpu_seconds_total{{{sel}}}[{window}]))"
    return {
        "cpuPercent": f"100 * {busy} / clamp_min({total}, 1e-9)",
        "memoryUsedBytes": f"sum(hostplane_node_memory_bytes{{{sel}}}) "
                           f"- sum(hostplane_node_memory_free_bytes{{{sel}}})",
        "memoryBytes": f"sum(hostplane_node_memory_bytes{{{sel}}})",
        "poolUsedBytes": f"sum(hostplane_node_pool_bytes{{{sel}}}) - sum(hostplane_node_pool_free_bytes{{{sel}}})",
        "poolBytes": f"sum(hostplane_node_pool_bytes{{{sel}}})",
        "domainsCpuPercent": f'100 * sum(rate(hostplane_vps_cpu_seconds_total{{{sel}}}[{window}])) '
                             f'/ clamp_min(sum(hostplane_node_cpus{{{sel}}}), 1)',
    }


async def query_range(client: httpx.AsyncClient, base: str, queries: dict[str, str], rng: Range,
                      now: float) -> dict[str, list[list[float]]]:
    """Each query's points [[unix seconds, value], ...] over the range ending `now` (empty when no data)."""
    out: dict[str, list[list[float]]] = {}
    start = now - rng.seconds
    for name, promql in queries.items():
        r = await client.get(f"{base.rstrip('/')}/api/v1/query_range",
                             params={"query": promql, "start": f"{start:.3f}", "end": f"{now:.3f}",
                                     "step": str(rng.step)})
        r.raise_for_status()
        result = r.json().get("data", {}).get("result", [])
        values = result[0]["values"] if result else []
        out[name] = [[float(t), float(v)] for t, v in values if v not in ("NaN", "+Inf", "-Inf")]
    return out


def config(*, agents: list[str], api: str | None, ca: Path, cert: Path, key: Path,
           scrape_seconds: int = SCRAPE_SECONDS) -> str:
    """prometheus.yml: node endpoints (mutual TLS with the API's certificate) and the API's /metrics."""
    every = f"{scrape_seconds}s"
    jobs: list[dict[str, object]] = [{
        "job_name": "hostplane-nodes", "scheme": "https", "scrape_interval": every,
        "tls_config": {"ca_file": str(ca), "cert_file": str(cert), "key_file": str(key)},
        "static_configs": [{"targets": agents}],
    }]
    if api:
        jobs.append({"job_name": "hostplane-api", "scheme": "https", "scrape_interval": every,
                     "tls_config": {"ca_file": str(ca)}, "static_configs": [{"targets": [api]}]})
    return yaml.safe_dump({"global": {"scrape_interval": every, "evaluation_interval": every},
                           "scrape_configs": jobs}, sort_keys=False)


def available() -> bool:
    return Path(PROMETHEUS).exists() or shutil.which("prometheus") is not None


def argv(config_file: Path, data_dir: Path, port: int, *, retention: str = "35d") -> list[str]:
    return [PROMETHEUS if Path(PROMETHEUS).exists() else "prometheus", f"--config.file={config_file}",
            f"--storage.tsdb.path={data_dir}", f"--web.listen-address=127.0.0.1:{port}",
            f"--storage.tsdb.retention.time={retention}"]


class PrometheusProcess:
    """One Prometheus on 127.0.0.1:`port` with data in `data_dir` (for tests; `up` runs it as a child)."""

    def __init__(self, data_dir: Path, port: int, config_text: str) -> None:
        self.data_dir = data_dir
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        data_dir.mkdir(parents=True, exist_ok=True)
        self.config_file = data_dir / "prometheus.yml"
        self.config_file.write_text(config_text)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> PrometheusProcess:
        log = open(self.data_dir / "prometheus.log", "wb")  # noqa: SIM115  # the child keeps it
        self.proc = subprocess.Popen(argv(self.config_file, self.data_dir / "tsdb", self.port), stdout=log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited: {(self.data_dir / 'prometheus.log').read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("prometheus did not become ready")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def traffic_queries(vps: str) -> dict[str, str]:
    """The raw byte counters of one VPS, one series per node it ran on (for `api.traffic`). Pure."""
    sel = f'{{vps="{_label(vps)}"}}'
    return {"rx": f"hostplane_vps_network_receive_bytes_total{sel}",
            "tx": f"hostplane_vps_network_transmit_bytes_total{sel}"}


async def series_values(client: httpx.AsyncClient, base: str, promql: str, start: float, end: float,
                        step: int) -> list[list[float]]:
    """The values of every series `promql` returns over [start, end] (each oldest first)."""
    r = await client.get(f"{base.rstrip('/')}/api/v1/query_range",
                         params={"query": promql, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": str(step)})
    r.raise_for_status()
    return [[float(v) for _, v in s["values"]] for s in r.json().get("data", {}).get("result", [])]
