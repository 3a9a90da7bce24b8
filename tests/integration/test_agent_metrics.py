"""The agent's load figures on the libvirt test driver: one bulk-stats call, served at the endpoint's /metrics."""

from __future__ import annotations

import ssl

import httpx
from prometheus_client.parser import text_string_to_metric_families

from nodeagent.endpoint import EndpointConfig
from reconcile.cluster import ensure_cluster_id
from reconcile.etcd_server import EtcdServer
from reconcile.pki import PKI
from specs.domain import DomainImage
from tests.helpers.wait import wait_for
from tests.integration.test_agent import Node, make_spec, ready
from tests.integration.test_agent import image as image  # the fixture
from tests.integration.test_agent import node as node  # the fixture


def client(pki: PKI, identity: str) -> httpx.Client:
    ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
    pair = pki.issue(identity)
    ctx.load_cert_chain(str(pair.cert), str(pair.key))
    return httpx.Client(verify=ctx, timeout=10)


def test_metrics_label_the_nodes_domains_and_only_the_api_reads_them(node: Node, image: DomainImage,
                                                                       etcd_session: EtcdServer) -> None:
    """A running VPS appears with node and vps labels beside the node's own figures; a node certificate gets 403."""
    ensure_cluster_id(node.store)
    pki = etcd_session.pki
    cert = pki.node_server("n1")
    agent = node.start(endpoint=EndpointConfig("127.0.0.1", 0, cert=cert.cert, key=cert.key, ca=pki.ca_cert),
                       stats_interval=0.3)
    gen = node.put(make_spec(image))
    node.wait("web-1", ready(gen), "running")
    assert agent.endpoint is not None
    url = f"https://{agent.endpoint.address}/metrics"
    with client(pki, "api") as api:
        def scraped() -> str | None:
            text = api.get(url).text
            return text if 'vps="web-1"' in text else None
        text = wait_for(scraped, timeout=10, what="web-1 in /metrics")
    families = {f.name: f for f in text_string_to_metric_families(text)}
    [cpu] = families["hostplane_vps_cpu_seconds"].samples
    assert cpu.labels == {"node": "n1", "vps": "web-1"}
    assert families["hostplane_node_stats_seconds"].samples[0].value >= 0
    with client(pki, "node-n2") as other:
        assert other.get(url).status_code == 403
