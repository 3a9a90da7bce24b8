"""Node.spec.network through the API: bad network settings are 422 naming the field, and nothing is created."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.integration.test_api import api, problem

__all__ = ["api"]  # the fixture, imported so pytest finds it here


def node(network: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "hostplane.io/v1", "kind": "Node", "metadata": {"name": "hv1"},
            "spec": {"capacity": {"vcpus": 8, "memoryMiB": 16384, "diskGiB": 100}, "network": network}}


@pytest.mark.parametrize(("network", "path"), [
    ({"mode": "bridge"}, "spec.network.bridge"),
    ({"mode": "user", "bridge": "br0"}, "spec.network.bridge"),
    ({"mode": "bridge", "bridge": "br0 ; reboot"}, "spec.network.bridge"),
    ({"mode": "bridge", "bridge": "br0", "vlans": {"pool-a": 0}}, "spec.network.vlans.pool-a"),
    ({"mode": "isolated-nat", "vlans": {"pool-a": 7}}, "spec.network.vlans"),
    ({"mode": "routed"}, "spec.network.mode"),
    ({"mode": "bridge", "bridge": "br0", "mtu": 9000}, "spec.network.mtu"),
])
def test_bad_node_network_is_422_naming_the_field(api: httpx.Client, network: dict[str, Any], path: str) -> None:
    """Each invalid network setting is refused with its field's path; no node is created."""
    errors = problem(api.post("/v1/nodes", json=node(network)), 422)["errors"]
    assert any(e["path"] == path for e in errors), errors
    assert api.get("/v1/nodes").json()["items"] == []


def test_bridge_node_round_trips(api: httpx.Client) -> None:
    """A bridge node with a VLAN per pool is stored as written; a node without a network gets isolated-nat."""
    body = node({"mode": "bridge", "bridge": "br0", "vlans": {"pool-a": 120}})
    assert api.post("/v1/nodes", json=body).status_code == 201
    assert api.get("/v1/nodes/hv1").json()["spec"]["network"] == {"mode": "bridge", "bridge": "br0",
                                                                  "vlans": {"pool-a": 120}}
    plain = node({})
    plain["metadata"]["name"] = "hv2"
    del plain["spec"]["network"]
    assert api.post("/v1/nodes", json=plain).status_code == 201
    assert api.get("/v1/nodes/hv2").json()["spec"]["network"]["mode"] == "isolated-nat"
