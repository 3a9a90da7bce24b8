"""The anti-spoofing filter as desired state: parameters from the booking, NIC XML per mode, planner properties."""

from __future__ import annotations

import ipaddress
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from nodeagent import domain_xml, hostnet, netfilter
from nodeagent import plan as P
from nodeagent.metadata import Meta
from nodeagent.plan import Actual, plan
from specs.domain import DomainNetwork, DomainSpec, IPAssignment
from specs.kinds import NodeNetwork
from tests.unit.test_plan import NOW, actuals, converged_actual, is_converged, run_to_convergence, spec

MAC = "52:54:00:12:34:56"
BOOT = domain_xml.Boot("qemu", "/pool/root.qcow2", "/pool/seed.iso", "/logs/serial.log")


def net(mode: str | None = "bridge", **kw: object) -> DomainNetwork:
    base: dict[str, object] = {
        "mac": MAC, "mode": mode, "ipv4": IPAssignment(address="203.0.113.10", prefixLength=24, gateway="203.0.113.1"),
        "ipv6": IPAssignment(address="2001:db8::10", prefixLength=64, gateway="2001:db8::1"),
    }
    if mode == "bridge":
        base["bridge"] = "br0"
    base.update(kw)
    return DomainNetwork.model_validate(base)


def nic(s: DomainSpec) -> ET.Element:
    root = ET.fromstring(domain_xml.build(s, Meta(vps=s.vps, uid=s.uid), BOOT))
    found = root.find("devices/interface")
    assert found is not None
    return found


# ---------------------------------------------------------------------- parameters


def test_link_local_is_the_macs_eui64() -> None:
    """The guest's link-local address is derived from its MAC as the kernel does (U/L bit flipped)."""
    assert netfilter.link_local(MAC) == "fe80::5054:ff:fe12:3456"


def test_params_carry_mac_every_booked_address_and_link_local() -> None:
    """MAC, each IPv4 as IP, each IPv6 and the link-local as IPV6; extra IPs join their family."""
    s = spec(network=net(extraIPs=["203.0.113.77", "2001:db8::77"]))
    assert netfilter.params(s) == tuple(sorted([
        ("MAC", MAC), ("IP", "203.0.113.10"), ("IP", "203.0.113.77"),
        ("IPV6", "2001:db8::10"), ("IPV6", "2001:db8::77"), ("IPV6", "fe80::5054:ff:fe12:3456"),
    ]))


def test_no_ipv4_gets_a_placeholder_never_learning() -> None:
    """A NIC without IPv4 is filtered for 0.0.0.0, so libvirt never learns an address the guest picks."""
    p = netfilter.params(spec(network=net(ipv4=None, ipv6=None)))
    assert p is not None and ("IP", "0.0.0.0") in p and [k for k, _ in p].count("IP") == 1


def test_user_mode_and_legacy_entries_have_no_filter() -> None:
    """User-mode NICs (and entries without a mode) take no filter: there is no tap to filter."""
    assert netfilter.params(spec(network=net("user"))) is None
    assert netfilter.params(spec(network=net(None))) is None


# ---------------------------------------------------------------------- NIC XML per mode


def test_bridge_nic_is_a_named_tap_with_filter() -> None:
    """Mode bridge: a tap with our prefix on the named bridge and the booking's filter; VLANs are not XML.

    libvirt 9.0 refuses <vlan> on a Linux bridge; the agent puts the tap's bridge port on the VLAN.
    """
    s = spec(network=net(vlan=120))
    n = nic(s)
    assert n.get("type") == "bridge" and n.find("source").get("bridge") == "br0"  # type: ignore[union-attr]
    assert n.find("vlan") is None
    assert hostnet.port_vlan(s) == ("br0", netfilter.tap_name(s.uid, "bridge"), 120)
    tap = n.find("target").get("dev")  # type: ignore[union-attr]
    assert tap == netfilter.tap_name(s.uid, "bridge") and tap.startswith("hpb") and len(tap) <= 15
    xml = domain_xml.build(s, Meta(vps=s.vps, uid=s.uid), BOOT)
    assert domain_xml.read_filter(xml, MAC) == netfilter.params(s)


def test_isolated_nat_nic_joins_its_gateways_network() -> None:
    """Mode isolated-nat: the NIC is on the NAT network named for its pool gateway, filtered."""
    s = spec(network=net("isolated-nat"))
    n = nic(s)
    name, bridge = netfilter.nat_network("203.0.113.1", 24)
    assert n.get("type") == "network" and n.find("source").get("network") == name  # type: ignore[union-attr]
    assert len(bridge) <= 15 and n.find("target").get("dev").startswith("hpn")  # type: ignore[union-attr]
    assert n.find("filterref").get("filter") == netfilter.FILTER_NAME  # type: ignore[union-attr]


def test_isolated_nat_without_address_gets_the_address_less_network() -> None:
    """An isolated-nat entry with no IPv4 yet (no IP pool) is on an isolated network without address or NAT."""
    n = nic(spec(network=net("isolated-nat", ipv4=None)))
    assert n.find("source").get("network") == netfilter.NO_ADDRESS_NETWORK[0]  # type: ignore[union-attr]
    assert n.find("filterref") is not None
    root = ET.fromstring(hostnet.nat_network_xml(*netfilter.NO_ADDRESS_NETWORK, None, None))
    assert root.find("forward") is None and root.find("ip") is None
    assert root.find("port").get("isolated") == "yes"  # type: ignore[union-attr]


def test_user_mode_nic_is_user_without_filter() -> None:
    """Mode user: a user-mode NIC, no tap, no filter."""
    n = nic(spec(network=net("user")))
    assert n.get("type") == "user" and n.find("filterref") is None and n.find("target") is None


ips4 = st.integers(1, 2**24 - 2).map(lambda i: str(ipaddress.IPv4Address(0x0A000000 + i)))
ips6 = st.integers(1, 2**32).map(lambda i: str(ipaddress.IPv6Address(0x20010DB8 << 96 | i)))


@given(st.lists(ips4 | ips6, max_size=6, unique=True))
def test_property_filter_in_xml_round_trips(extra: list[str]) -> None:
    """Whatever the booked addresses, the filter the XML carries reads back as the booking's parameters."""
    s = spec(network=net(extraIPs=extra))
    xml = domain_xml.build(s, Meta(vps=s.vps, uid=s.uid), BOOT)
    assert domain_xml.read_filter(xml, MAC) == netfilter.params(s)


# ---------------------------------------------------------------------- the filter definitions


def test_filter_definitions_are_desired_state() -> None:
    """All filters are defined when missing, none when libvirt holds ours, a tampered one is redefined."""
    ours = netfilter.filters()
    assert netfilter.filters_to_define({})[-1] == netfilter.FILTER_NAME
    assert set(netfilter.filters_to_define({})) == set(ours)
    # libvirt adds a uuid and formats differently: still ours.
    held = {n: x.replace(">", "><uuid>0b2f0d8e-0000-4000-8000-000000000000</uuid>", 1) for n, x in ours.items()}
    assert netfilter.filters_to_define(held) == []
    held["hostplane-ipv6"] = held["hostplane-ipv6"].replace("134", "135")
    assert netfilter.filters_to_define(held) == ["hostplane-ipv6"]


def test_filter_forbids_what_the_issue_names() -> None:
    """The root filter keeps MAC, IPv4/ARP and IPv6 to the booking, and drops DHCP servers and RAs."""
    f = netfilter.filters()
    refs = {r.get("filter") for r in ET.fromstring(f[netfilter.FILTER_NAME]).iter("filterref")}
    assert {"no-mac-spoofing", "hostplane-ipv4", "no-arp-spoofing", "hostplane-ipv6",
            "hostplane-mac-in", "no-other-l2-traffic"} <= refs
    v6 = ET.fromstring(f["hostplane-ipv6"])
    drops = [r.find("ipv6") for r in v6.iter("rule") if r.get("action") == "drop" and r.find("ipv6") is not None]
    assert {(d.get("protocol"), d.get("type"), d.get("srcportstart")) for d in drops if d is not None} == {
        ("icmpv6", "134", None), ("udp", None, "547")}


# ---------------------------------------------------------------------- planner


def test_extra_ip_added_to_running_domain_updates_filter_without_reboot() -> None:
    """Booking one more address on a running VPS plans exactly a live filter update."""
    before = spec(network=net())
    a = converged_actual(before, filter_params=netfilter.params(before))
    assert plan(before, a, now=NOW) == []
    after = spec(network=net(extraIPs=["203.0.113.77"]))
    acts = plan(after, a, now=NOW)
    p_after = netfilter.params(after)
    assert p_after is not None
    assert P.UpdateFilter(p_after, live=True) in acts
    assert not [x for x in acts if isinstance(x, (P.Start, P.RequestShutdown, P.Destroy, P.Define))]


def test_filter_drift_on_running_domain_is_repaired() -> None:
    """A filter stripped from or edited on the live NIC is put back."""
    d = spec(network=net())
    want = netfilter.params(d)
    assert want is not None
    assert plan(d, converged_actual(d, filter_params=None), now=NOW) == [P.UpdateFilter(want, live=True)]
    tampered = (*want, ("IP", "203.0.113.99"))
    assert plan(d, converged_actual(d, filter_params=tampered), now=NOW) == [P.UpdateFilter(want, live=True)]


@st.composite
def networked_specs(draw: st.DrawFn) -> DomainSpec:
    mode = draw(st.sampled_from(["bridge", "isolated-nat", "user"]))
    extra = draw(st.lists(ips4 | ips6, max_size=3, unique=True))
    return spec(network=net(mode, extraIPs=extra), power=draw(st.sampled_from(["Running", "Stopped", "Paused"])))


param_sets = st.none() | st.lists(st.tuples(st.sampled_from(["MAC", "IP", "IPV6"]), ips4 | ips6), max_size=4).map(
    netfilter.canonical_params)


@settings(max_examples=150, deadline=None)
@given(networked_specs(), actuals(), param_sets, st.booleans())
def test_property_filter_converges_and_stays(d: DomainSpec, a: Actual, held: netfilter.Params | None,
                                             acpi: bool) -> None:
    """From any filter a domain holds, plans reach the booking's filter and then plan nothing more.

    A user-mode entry takes no filter; a NIC still running from before keeps the one it has (never loosened).
    """
    a = replace(a, filter_params=held if a.defined else None)
    final, now = run_to_convergence(d, a, guest_acpi=acpi)
    assert is_converged(d, final, now)
    want = netfilter.params(d)
    assert final.filter_params == want or (want is None and final.filter_params in (None, held))
    assert plan(d, final, now=now) == []


@settings(max_examples=150, deadline=None)
@given(networked_specs(), networked_specs())
def test_property_booking_change_never_reboots(before: DomainSpec, after: DomainSpec) -> None:
    """Changing only the addresses of a running VPS never stops, restarts or redefines it."""
    after = spec(network=after.network.model_copy(update={"mode": before.network.mode,
                                                          "bridge": before.network.bridge}))
    before = spec(network=before.network)
    a = converged_actual(before, filter_params=netfilter.params(before))
    for act in plan(after, a, now=NOW):
        assert isinstance(act, (P.UpdateFilter, P.BuildSeed)), act


# ---------------------------------------------------------------------- orphans, names


@given(st.dictionaries(st.sampled_from(["hpb1", "hpn2", "hpbfff", "vnet0", "tap7", "hpx"]),
                       st.sampled_from(["hp-a", "hp-b", "other"])),
       st.sets(st.sampled_from(["hp-a", "hp-b", "other"])))
def test_property_orphan_bindings(bindings: dict[str, str], running: set[str]) -> None:
    """Exactly the Hostplane taps whose domain is not running are orphans; others' taps never are."""
    out = netfilter.orphan_bindings(bindings, running)
    for dev, owner in bindings.items():
        ours = dev.startswith(("hpb", "hpn"))
        assert (dev in out) == (ours and owner not in running)


@given(st.text(min_size=1, max_size=64))
def test_property_tap_names_fit_and_differ_by_mode(uid: str) -> None:
    """Tap names fit Linux's 15 bytes and say their mode."""
    b, n = netfilter.tap_name(uid, "bridge"), netfilter.tap_name(uid, "isolated-nat")
    assert len(b) <= 15 and len(n) <= 15 and b.startswith("hpb") and n.startswith("hpn")


# ---------------------------------------------------------------------- validation


@pytest.mark.parametrize(("network", "field"), [
    ({"mode": "bridge"}, "bridge"),
    ({"mode": "user", "bridge": "br0"}, "bridge"),
    ({"mode": "bridge", "bridge": "br0; rm -rf /"}, "bridge"),
    ({"mode": "bridge", "bridge": "br0", "vlans": {"pool-a": 4095}}, "vlans"),
    ({"mode": "isolated-nat", "vlans": {"pool-a": 10}}, "vlans"),
    ({"mode": "routed"}, "mode"),
])
def test_node_network_errors_name_the_field(network: dict[str, object], field: str) -> None:
    """A bad node network is refused naming its field."""
    with pytest.raises(ValidationError) as info:
        NodeNetwork.model_validate(network)
    assert [e["loc"][0] for e in info.value.errors()] == [field]


def test_node_network_defaults_to_isolated_nat() -> None:
    """A node that says nothing about its network gets the isolated NAT network, never user-mode."""
    assert NodeNetwork().mode == "isolated-nat"


# ---------------------------------------------------------------------- host guard, NAT network


def test_guard_listing_must_match_exactly() -> None:
    """The guard is repaired when a rule is missing, added or changed, and left alone when exact."""
    ipt = "-N HOSTPLANE-GUARD\n" + "\n".join(hostnet.GUARD_RULES["iptables"]) + "\n"
    assert hostnet.guard_listing_ok("iptables", ipt)
    assert not hostnet.guard_listing_ok("iptables", "-N HOSTPLANE-GUARD\n")
    assert not hostnet.guard_listing_ok("iptables", ipt + "-A HOSTPLANE-GUARD -j ACCEPT\n")
    eb = "Bridge chain: HOSTPLANE-GUARD, entries: 1, policy: RETURN\n-i hpb+ -j DROP\n"
    assert hostnet.guard_listing_ok("ebtables", eb)
    assert not hostnet.guard_listing_ok("ebtables", eb.replace("DROP", "ACCEPT"))


def test_nat_network_is_isolated_without_host_services() -> None:
    """The NAT network isolates its ports and runs no DNS/DHCP server on the host."""
    root = ET.fromstring(hostnet.nat_network_xml("hostplane-nat-x", "hpnatx", "10.0.0.1", 24))
    assert root.find("port").get("isolated") == "yes"  # type: ignore[union-attr]
    assert root.find("dns").get("enable") == "no"  # type: ignore[union-attr]
    assert root.find("ip/dhcp") is None and root.find("forward").get("mode") == "nat"  # type: ignore[union-attr]


@pytest.mark.parametrize(("uri", "euid", "mode"), [
    ("qemu:///system", 1000, "isolated-nat"),
    ("qemu:///session", 0, "isolated-nat"),
    ("test:///default", 1000, "isolated-nat"),
    ("qemu:///session", 1000, "user"),
])
def test_up_picks_isolated_nat_wherever_libvirt_can_build_it(uri: str, euid: int, mode: str) -> None:
    """`hostplane up` registers its node with isolated NAT unless only an unprivileged libvirt is there."""
    from api.up import default_network_mode

    assert default_network_mode(uri, euid=euid) == mode


UNTAGGED = hostnet.UNTAGGED_PVID


@pytest.mark.parametrize(("current", "expected"), [
    ([(120, UNTAGGED)], []),
    ([(1, UNTAGGED)], [["bridge", "vlan", "del", "dev", "hpbx", "vid", "1"],
                       ["bridge", "vlan", "add", "dev", "hpbx", "vid", "120", "pvid", "untagged"]]),
    ([(120, frozenset())], [["bridge", "vlan", "add", "dev", "hpbx", "vid", "120", "pvid", "untagged"]]),
    ([(120, UNTAGGED), (7, frozenset())], [["bridge", "vlan", "del", "dev", "hpbx", "vid", "7"],
                                           ["bridge", "vlan", "add", "dev", "hpbx", "vid", "120", "pvid",
                                            "untagged"]]),
    ([], [["bridge", "vlan", "add", "dev", "hpbx", "vid", "120", "pvid", "untagged"]]),
])
def test_tap_ends_in_exactly_its_vlan(current: list[tuple[int, frozenset[str]]], expected: list[list[str]]) -> None:
    """A tap leaves every other VLAN and is an untagged member of its own; nothing is done when it already is."""
    assert hostnet.vlan_commands("hpbx", current, 120) == expected


def test_libvirt_network_dir_created_for_the_local_daemon_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As root next to its libvirtd the agent creates libvirt's dnsmasq directory; for a namespaced daemon never."""
    monkeypatch.setattr(hostnet, "LIBVIRT_STATE_DIR", str(tmp_path))
    monkeypatch.setattr(hostnet.os, "geteuid", lambda: 0)
    hostnet.HostNetwork(netns="elsewhere")._libvirt_network_dirs()
    assert not (tmp_path / "dnsmasq").exists()
    hostnet.HostNetwork()._libvirt_network_dirs()
    assert (tmp_path / "dnsmasq").is_dir()
    monkeypatch.setattr(hostnet.os, "geteuid", lambda: 1000)
    (tmp_path / "dnsmasq").rmdir()
    hostnet.HostNetwork()._libvirt_network_dirs()
    assert not (tmp_path / "dnsmasq").exists()
