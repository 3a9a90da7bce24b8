"""Consoles and load figures: the agent's sampling cost at 1,000 domains, and keystroke echo round trips.

* Sampling: one `Sampler.sample_once` (one bulk-stats call, parsing, Prometheus text) on the
  libvirt test driver with 1,000 running domains, CPU time of this process per sample, as a share
  of one core at the default 10 s interval; baseline in the same run: 10 domains. (The test
  driver reports state only, not CPU/balloon/block/net counters: libvirt's own cost on QEMU is
  not in this figure, the agent's parsing and rendering of every series is.)
* Echo: one byte typed into the console WebSocket comes back from a PTY that echoes it (the
  guest's place), through the API relay and the node endpoint (mutual TLS) on loopback; p50/p99
  of 300 keystrokes after 50 unmeasured; baseline in the same run: straight to the node endpoint, without the API.
"""

from __future__ import annotations

import os
import ssl
import statistics
import tempfile
import threading
import time
import tty
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt
from websockets.sync.client import ClientConnection, connect

from api.console import ConsoleTLS
from nodeagent.endpoint import Endpoint, EndpointConfig
from nodeagent.hypervisor import Hypervisor
from nodeagent.main import simulated_node_xml
from nodeagent.sampler import Sampler
from reconcile import keys
from reconcile.etcd_server import EtcdServer
from specs.kinds import VPS, VPSStatus
from tests.helpers import access_env

SAMPLES = 20
KEYS = 300


def _domain_xml(name: str) -> str:
    dom = ET.Element("domain", type="test")
    ET.SubElement(dom, "name").text = name
    ET.SubElement(dom, "memory").text = "65536"
    os_ = ET.SubElement(dom, "os")
    ET.SubElement(os_, "type").text = "hvm"
    return ET.tostring(dom, encoding="unicode")


def _sampling(tmp: Path, domains: int) -> float:
    """CPU seconds of this process per sample with `domains` running domains."""
    uri = simulated_node_xml(tmp / f"node-{domains}.xml")
    hv = Hypervisor(uri, tmp / f"agent-{domains}", pool_name=f"bench-{domains}")
    hv.cluster_id = "bench"
    conn = hv.connect()
    names = {}
    for i in range(domains):
        name = f"hp-bench-{i:04d}"
        conn.defineXML(_domain_xml(name)).create()
        names[name] = f"vps-{i:04d}"
    sampler = Sampler(hv, "bench", lambda: names)
    sampler.sample_once()  # warm
    began = time.process_time()
    for _ in range(SAMPLES):
        text = sampler.sample_once()
    took = (time.process_time() - began) / SAMPLES
    assert text.count("hostplane_vps_cpu_seconds_total{") == domains
    for dom in conn.listAllDomains(0):
        dom.destroy()
        dom.undefine()
    hv.close()
    return took


def _echo(master: int, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            data = os.read(master, 4096)
        except OSError:
            return
        if data:
            os.write(master, data)


def _round_trips(ws: ClientConnection, warm: int = 50) -> list[float]:
    """Milliseconds per keystroke echo; the first `warm` are not counted (connection and code warm-up)."""
    out = []
    for i in range(warm + KEYS):
        key = bytes([97 + i % 26])
        t0 = time.perf_counter()
        ws.send(key)
        got = b""
        while key not in got:
            msg = ws.recv(timeout=5)
            got += msg if isinstance(msg, bytes) else msg.encode()
        out.append((time.perf_counter() - t0) * 1000)
    return out[warm:]


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1]


def _echo_bench(tmp: Path) -> tuple[list[float], list[float]]:
    etcd = EtcdServer(tmp / "etcd" / "data")
    etcd.start()
    master, slave = os.openpty()
    tty.setraw(master)
    pty = os.ttyname(slave)
    stop = threading.Event()
    echo = threading.Thread(target=_echo, args=(master, stop), daemon=True)
    echo.start()
    pki = etcd.pki
    cert = pki.node_server("n1")
    endpoint = Endpoint(EndpointConfig("127.0.0.1", 0, cert=cert.cert, key=cert.key, ca=pki.ca_cert),
                        resolve=lambda vps, kind: pty).start()
    api_pair = pki.issue("api")
    root = f"/bench/{uuid.uuid4().hex[:8]}/hostplane/v1"
    store = etcd.store("root", root=root)
    api_store = etcd.store("api", root=root)
    try:
        ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
        ctx.load_cert_chain(str(api_pair.cert), str(api_pair.key))
        with connect(f"wss://{endpoint.address}/console/acme-web/serial", ssl=ctx) as ws:
            direct = _round_trips(ws)
        with access_env.served(store, tmp, app_store=api_store, rate_per_principal=0,
                               console_tls=ConsoleTLS(pki.ca_cert, api_pair.cert, api_pair.key)) as env:
            store.put_status(VPS, "acme-web", VPSStatus(node="n1"))
            store.kv_put(keys.heartbeat_key("n1", root), f'{{"endpoint": "{endpoint.address}"}}'.encode())
            ticket = env.client("customer").post("/v1/vps/acme-web/console", json={"kind": "serial"}).json()
            with connect(env.url.replace("http", "ws", 1) + ticket["url"]) as ws:
                relayed = _round_trips(ws)
    finally:
        endpoint.stop()
        stop.set()
        os.close(slave)
        os.close(master)
        api_store.close()
        store.close()
        etcd.stop()
    return direct, relayed


def run() -> str:
    libvirt.registerErrorHandler(lambda *_: None, None)
    with tempfile.TemporaryDirectory() as tmp:
        small = _sampling(Path(tmp), 10)
        large = _sampling(Path(tmp), 1000)
        direct, relayed = _echo_bench(Path(tmp))
    share = large / 10 * 100
    lines = [
        "## Consoles and load figures",
        "",
        "`tests/bench/bench_console.py` (test driver and loopback; one run, this machine's 2 shared cores).",
        "",
        "| measure | baseline | figure | ratio |",
        "| --- | --- | --- | --- |",
        f"| agent CPU per sample (one bulk-stats call, 1,000 domains) | {small * 1000:.1f} ms at 10 domains "
        f"| {large * 1000:.1f} ms | {large / small:.1f}x |",
        f"| share of one core at the 10 s interval, 1,000 domains | — | {share:.2f} % (target < 2 %) | — |",
        f"| keystroke echo p50, through the API | {_pct(direct, 50):.2f} ms straight to the node endpoint "
        f"| {_pct(relayed, 50):.2f} ms | {_pct(relayed, 50) / _pct(direct, 50):.1f}x |",
        f"| keystroke echo p99, through the API (target < 50 ms) | {_pct(direct, 99):.2f} ms straight to the "
        f"node endpoint | {_pct(relayed, 99):.2f} ms | {_pct(relayed, 99) / _pct(direct, 99):.1f}x |",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
