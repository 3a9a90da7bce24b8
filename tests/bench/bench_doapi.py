"""DigitalOcean-compatible list cost: GET /v2/droplets?per_page=200 with 1,000 droplets vs the native /v1/vps list.

One `hostplane api` process (as deployed, the `api` etcd identity) and a single-member etcd on
loopback. One customer owns 1,000 servers (Subscription + VPS with a Running status and an
address each). Requests alternate between the two lists, one at a time, so both see the same
machine; latency is client-side. The /v2 list reads the same objects as /v1 (every VPS and
Subscription, to scope them) plus the customer's droplet-id records, plans, images, nodes and
pools, and renders 200 droplets; /v1 renders all 1,000 servers.
"""

from __future__ import annotations

import ipaddress
import os
import tempfile
import time
from pathlib import Path

import httpx

from api.auth import create_token
from reconcile.etcd_server import EtcdServer
from specs.kinds import VPS, VPSIPs, VPSStatus
from tests.bench.bench_api import api_process, pct
from tests.helpers import builders

SERVERS = 1000
ROUNDS = 100


def seed(etcd: EtcdServer) -> str:
    with etcd.store("root") as store:
        store.create(builders.plan("s1"))
        store.create(builders.image())
        store.create(builders.node(labels={"hostplane.io/region": "bench"}))
        store.create(builders.pool(cidr="10.0.0.0/20", gateway="10.0.0.1"))
        store.create(builders.customer("acme"))
        net = ipaddress.IPv4Network("10.0.0.0/20")
        for i in range(SERVERS):
            store.create(builders.subscription(f"sub-{i}", "s1", "acme"))
            store.create(builders.vps(f"web-{i}", f"sub-{i}"))
            store.put_status(VPS, f"web-{i}", VPSStatus(phase="Running", node="n1",
                                                         ips=VPSIPs(ipv4=str(net[10 + i]), pool="pool-a")))
        return create_token(store, "customer", customer="acme")


def measure(url: str, token: str) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {"v2": [], "v1": []}
    paths = {"v2": "/v2/droplets?per_page=200", "v1": "/v1/vps"}
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:
        first = client.get(paths["v2"])  # allocates the 1,000 droplet ids (not measured)
        assert first.status_code == 200 and first.json()["meta"]["total"] == SERVERS, first.text[:300]
        assert len(client.get(paths["v1"]).json()["items"]) == SERVERS
        for _ in range(ROUNDS):
            for name, path in paths.items():
                t = time.perf_counter()
                r = client.get(path)
                samples[name].append(time.perf_counter() - t)
                assert r.status_code == 200, r.text[:300]
    return samples


def run() -> str:
    with tempfile.TemporaryDirectory(prefix="bench-doapi-") as tmp:
        etcd = EtcdServer(Path(tmp) / "etcd").start()
        try:
            token = seed(etcd)
            # No rate limit in play: 200 sequential requests fit the default burst, but say so.
            with api_process(Path(tmp), etcd.args("api")) as api:
                samples = measure(api.url, token)
        finally:
            etcd.stop()
    v2, v1 = samples["v2"], samples["v1"]
    rows = "\n".join(f"| {label} | {len(s)} | {pct(s, 0.5):.1f} | {pct(s, 0.99):.1f} | {sum(s) / len(s) * 1000:.1f} |"
                     for label, s in (("GET /v2/droplets?per_page=200", v2), ("GET /v1/vps (all 1,000)", v1)))
    ratio_p50 = pct(v2, 0.5) / pct(v1, 0.5)
    ratio_mean = sum(v2) / sum(v1)
    return (
        "## DigitalOcean-compatible list\n\n"
        f"`tests/bench/bench_doapi.py`: one customer with {SERVERS:,} servers; one `hostplane api` process\n"
        f"(the `api` etcd identity) and a single-member etcd on loopback, {os.cpu_count()} cores. {ROUNDS} rounds,\n"
        "each one /v2 page of 200 droplets then the native list of all servers, one request at a time;\n"
        "latency client-side in ms.\n\n"
        "| request | n | p50 ms | p99 ms | mean ms |\n| --- | ---: | ---: | ---: | ---: |\n"
        f"{rows}\n\n"
        f"/v2 vs /v1 in the same run: p50 {ratio_p50:.2f}x, mean {ratio_mean:.2f}x.\n"
    )


if __name__ == "__main__":
    print(run())
