"""Guest networking through the agent on libvirt's test driver: NIC XML per mode, the filter following the booking."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from nodeagent import domain_xml, netfilter
from nodeagent.domain_xml import domain_name
from reconcile.objects import Store
from specs.domain import DomainImage, DomainNetwork, DomainSpec, IPAssignment
from tests.helpers.wait import wait_for
from tests.integration.test_agent import Node, image, make_spec, ready

__all__ = ["image"]  # the fixture, imported for its side effect of being visible here

MAC = "52:54:00:ab:cd:01"


@pytest.fixture
def node(store: Store, tmp_path: Path) -> Iterator[Node]:
    n = Node(store, tmp_path)
    yield n
    n.stop()


def bridged(image: DomainImage, **net: object) -> DomainSpec:
    base: dict[str, object] = {
        "mac": MAC, "mode": "bridge", "bridge": "br-public", "vlan": 30,
        "ipv4": IPAssignment(address="198.51.100.10", prefixLength=24, gateway="198.51.100.1"),
        "ipv6": IPAssignment(address="2001:db8:5::10", prefixLength=64, gateway="2001:db8:5::1"),
    }
    base.update(net)
    return make_spec(image, network=DomainNetwork.model_validate(base))


def live_nic(node: Node, spec: DomainSpec, flags: int = 0) -> ET.Element:
    nic = domain_xml.interface_xml(node.domain(spec).XMLDesc(flags), MAC)
    assert nic is not None
    return nic


def test_bridge_mode_domain_has_tap_filter_and_no_tcp_console(node: Node, image: DomainImage) -> None:
    """A bridge-mode VPS runs with its tap on the bridge, the booking's filter, VNC on a socket, a PTY serial."""
    node.start()
    spec = bridged(image)
    node.wait("web-1", ready(node.put(spec)), "running")
    nic = live_nic(node, spec)
    assert nic.get("type") == "bridge" and nic.find("source").get("bridge") == "br-public"  # type: ignore[union-attr]
    assert nic.find("target").get("dev") == netfilter.tap_name(spec.uid, "bridge")  # type: ignore[union-attr]
    assert nic.find("vlan") is None  # the agent puts the tap's bridge port on the VLAN (hostnet)
    xml = node.domain(spec).XMLDesc(0)
    assert domain_xml.read_filter(xml, MAC) == netfilter.params(spec)
    root = ET.fromstring(xml)
    assert [g.get("type") for g in root.findall("devices/graphics")] == ["vnc"]
    assert [x.get("type") for x in root.findall("devices/graphics/listen")] == ["socket"]
    assert root.find("devices/serial").get("type") == "pty"  # type: ignore[union-attr]


def test_extra_ip_added_and_released_without_restart(node: Node, image: DomainImage) -> None:
    """An extra IP joins the NIC's filter and leaves it when released; the domain is never restarted.

    (The test driver cannot update a live device, so the definition carries the change here; the live
    update on real QEMU is proven in tests/e2e/test_guest_network.py.)
    """
    node.start()
    spec = bridged(image)
    node.wait("web-1", ready(node.put(spec)), "running")
    dom = node.domain(spec)
    dom_id = dom.ID()
    more = bridged(image, extraIPs=["198.51.100.77"]).model_copy(update={"uid": spec.uid})
    node.wait("web-1", ready(node.put(more)), "filter updated")
    got = domain_xml.read_filter(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE), MAC)
    assert got == netfilter.params(more) and ("IP", "198.51.100.77") in got
    node.wait("web-1", ready(node.put(spec)), "extra IP released")
    assert domain_xml.read_filter(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE), MAC) == netfilter.params(spec)
    assert dom.ID() == dom_id and dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING


def test_filter_stripped_by_hand_is_put_back(node: Node, image: DomainImage) -> None:
    """Someone redefines the domain without the filter: the next resync puts it back."""
    node.start(resync=0.5)
    spec = bridged(image)
    node.wait("web-1", ready(node.put(spec)), "running")
    root = ET.fromstring(node.domain(spec).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    for nic in root.findall("devices/interface"):
        for ref in nic.findall("filterref"):
            nic.remove(ref)
    stripped = ET.tostring(root, encoding="unicode")
    assert domain_xml.read_filter(stripped, MAC) is None
    # The redefinition wakes the agent (a lifecycle event), so the repair may already be done when we look.
    node.conn.defineXML(stripped)

    def filt() -> object:
        return domain_xml.read_filter(node.domain(spec).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE), MAC)

    wait_for(lambda: filt() == netfilter.params(spec), timeout=15, what="filter repaired")


def test_isolated_nat_creates_the_gateways_network(node: Node, image: DomainImage) -> None:
    """An isolated-nat VPS gets its pool gateway's NAT network, active, with isolated ports."""
    node.start()
    spec = bridged(image, mode="isolated-nat", bridge=None, vlan=None)
    node.wait("web-1", ready(node.put(spec)), "running")
    name, bridge = netfilter.nat_network("198.51.100.1", 24)
    assert root_bridge(name, node) == bridge
    net = node.conn.networkLookupByName(name)
    assert net.isActive()
    root = ET.fromstring(net.XMLDesc(0))
    assert root.find("forward").get("mode") == "nat"  # type: ignore[union-attr]
    assert root.find("port").get("isolated") == "yes"  # type: ignore[union-attr]
    assert root.find("ip").get("address") == "198.51.100.1"  # type: ignore[union-attr]
    assert live_nic(node, spec).find("source").get("network") == name  # type: ignore[union-attr]
    assert node.domain(spec).name() == domain_name(spec.uid)


def root_bridge(network: str, node: Node) -> str | None:
    root = ET.fromstring(node.conn.networkLookupByName(network).XMLDesc(0))
    found = root.find("bridge")
    return None if found is None else found.get("name")
