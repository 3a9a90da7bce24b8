"""The host-side anti-spoofing filter of every VPS NIC, as pure values: libvirt nwfilter XML and parameters.

Every bridged or NAT-ed NIC references the filter `hostplane-vps` with the VPS's booking as
parameters (MAC, each IPv4 address as IP, each IPv6 address plus the MAC's link-local as IPV6).
libvirt programs ebtables/iptables from it per tap, and re-programs them when the domain's
interface is updated with new parameters, so an address added to or released from the booking
takes effect without a reboot. What the filter enforces, frames from the guest:

    source MAC           only the VPS's MAC (no-mac-spoofing)
    IPv4 / ARP           source address and ARP sender only the booked IPv4 addresses
    IPv6                 source only the booked IPv6 addresses, its link-local, or :: (DAD)
    DHCP / DHCPv6 / RA   never as a server (UDP source 67 / 547) or router (ICMPv6 type 134)
    anything else        dropped: VLAN tags, STP, other ethertypes
and frames to the guest: only unicast to its own MAC (or broadcast/multicast), so unknown
unicast a bridge floods is not seen by every VPS.

ebtables cannot look inside a neighbour advertisement, so the NDP target address is not
checked (its source address is). This module must never do I/O; the agent applies what it returns.
"""

from __future__ import annotations

import hashlib
import ipaddress
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping

from specs.domain import DomainSpec

FILTER_NAME = "hostplane-vps"
# A booking without IPv4 gets this placeholder: nothing routes from it, and an absent IP
# parameter would make libvirt learn whatever address the guest uses first.
NO_IPV4 = "0.0.0.0"
TAP_PREFIX = {"bridge": "hpb", "isolated-nat": "hpn"}

Params = tuple[tuple[str, str], ...]


def _rule(parent: ET.Element, action: str, direction: str, priority: int | None = None,
          proto: str | None = None, **attrs: str) -> None:
    el = ET.SubElement(parent, "rule", {"action": action, "direction": direction,
                                        **({"priority": str(priority)} if priority is not None else {})})
    if proto is not None:
        ET.SubElement(el, proto, attrs)


def _filter(name: str, chain: str, priority: int | None = None) -> ET.Element:
    attrs = {"name": name, "chain": chain}
    if priority is not None:
        attrs["priority"] = str(priority)
    return ET.Element("filter", attrs)


def _ref(parent: ET.Element, name: str) -> None:
    ET.SubElement(parent, "filterref", {"filter": name})


def filters() -> dict[str, str]:
    """Every filter Hostplane defines, name -> XML; `hostplane-vps` is the one NICs reference."""
    out: dict[str, ET.Element] = {}

    # Only unicast for its own MAC, or broadcast/multicast, reaches the guest.
    f = _filter("hostplane-mac-in", "mac-in", -790)
    _rule(f, "return", "in", 100, "mac", dstmacaddr="$MAC")
    # Broadcast, IPv4 and IPv6 multicast (libvirt takes only left-contiguous MAC masks).
    _rule(f, "return", "in", 200, "mac", dstmacaddr="ff:ff:ff:ff:ff:ff")
    _rule(f, "return", "in", 210, "mac", dstmacaddr="01:00:5e:00:00:00", dstmacmask="ff:ff:ff:80:00:00")
    _rule(f, "return", "in", 220, "mac", dstmacaddr="33:33:00:00:00:00", dstmacmask="ff:ff:00:00:00:00")
    _rule(f, "drop", "in", 1000)
    out[f.get("name", "")] = f

    # IPv4 from the guest: only its booked addresses (0.0.0.0 for a DHCP client's discover), never a
    # DHCP server. One chain with an explicit final drop, like no-ip-spoofing plus the server rule.
    f = _filter("hostplane-ipv4", "ipv4-hp", -710)
    _rule(f, "drop", "out", 100, "ip", protocol="udp", srcportstart="67", srcportend="67")  # DHCP server
    _rule(f, "return", "out", 200, "ip", srcipaddr="0.0.0.0", protocol="udp", dstportstart="67", dstportend="67")
    _rule(f, "return", "out", 500, "ip", srcipaddr="$IP")
    _rule(f, "drop", "out", 1000)
    out[f.get("name", "")] = f

    f = _filter("hostplane-ipv6", "ipv6-hp", -610)
    _rule(f, "drop", "out", 100, "ipv6", protocol="icmpv6", type="134")  # router advertisement
    _rule(f, "drop", "out", 110, "ipv6", protocol="udp", srcportstart="547", srcportend="547")  # DHCPv6 server
    _rule(f, "return", "out", 400, "ipv6", srcipaddr="::", srcipmask="128", protocol="icmpv6")  # DAD
    _rule(f, "return", "out", 500, "ipv6", srcipaddr="$IPV6")
    _rule(f, "drop", "out", 1000)
    out[f.get("name", "")] = f

    root = _filter(FILTER_NAME, "root")
    _ref(root, "no-mac-spoofing")
    _ref(root, "hostplane-mac-in")
    _ref(root, "hostplane-ipv4")
    _rule(root, "accept", "out", -650, "mac", protocolid="ipv4")
    _ref(root, "allow-incoming-ipv4")
    _ref(root, "hostplane-ipv6")
    _rule(root, "accept", "out", -600, "mac", protocolid="ipv6")
    _ref(root, "allow-incoming-ipv6")
    _ref(root, "no-arp-spoofing")
    _rule(root, "accept", "inout", -500, "mac", protocolid="arp")
    _ref(root, "no-other-l2-traffic")
    out[FILTER_NAME] = root
    return {name: ET.tostring(el, encoding="unicode") for name, el in out.items()}


def _canonical(xml: str) -> str:
    """A filter's meaning without what libvirt adds (uuid, ids, default priorities written out)."""
    root = ET.fromstring(xml)
    for uuid in root.findall("uuid"):
        root.remove(uuid)
    for el in root.iter():
        el.text = el.text.strip() if el.text and el.text.strip() else None
        el.tail = None
        if el.tag == "rule" and el.get("priority") is None:
            el.set("priority", "500")
        for child in el:
            if el.tag == "rule":
                # libvirt writes the state match and default attributes back; only ours count.
                for key in [k for k in child.attrib if k in ("statematch",)]:
                    del child.attrib[key]
    return ET.tostring(root, encoding="unicode")


def filters_to_define(existing: Mapping[str, str]) -> list[str]:
    """Names of Hostplane filters missing from `existing` (name -> libvirt's XML) or different from ours."""
    want = filters()
    order = [n for n in want if n != FILTER_NAME] + [FILTER_NAME]  # referenced filters first
    return [n for n in order if n not in existing or _canonical(existing[n]) != _canonical(want[n])]


def with_uuid(xml: str, uuid: str | None) -> str:
    """A filter definition carrying `uuid` (the one libvirt holds it under), or as it is without one."""
    if uuid is None:
        return xml
    root = ET.fromstring(xml)
    el = ET.Element("uuid")
    el.text = uuid
    root.insert(0, el)
    return ET.tostring(root, encoding="unicode")


def link_local(mac: str) -> str:
    """The IPv6 link-local address a guest derives from its MAC (modified EUI-64)."""
    b = bytes.fromhex(mac.replace(":", ""))
    eui = bytes([b[0] ^ 0x02]) + b[1:3] + b"\xff\xfe" + b[3:6]
    return str(ipaddress.IPv6Address(b"\xfe\x80" + b"\x00" * 6 + eui))


def params(spec: DomainSpec) -> Params | None:
    """The filter parameters the booking gives this VPS's NIC; None when its NIC takes no filter (user mode)."""
    net = spec.network
    if net.mode not in TAP_PREFIX:
        return None
    v4: list[str] = []
    v6: list[str] = []
    for addr in [a.address for a in (net.ipv4, net.ipv6) if a is not None] + list(net.extraIPs):
        ip = ipaddress.ip_address(addr)
        (v4 if ip.version == 4 else v6).append(str(ip))
    v6.append(link_local(net.mac))
    pairs = [("MAC", net.mac)] + [("IP", a) for a in (v4 or [NO_IPV4])] + [("IPV6", a) for a in v6]
    return canonical_params(pairs)


def canonical_params(pairs: Iterable[tuple[str, str]]) -> Params:
    """Parameters in one order (libvirt does not keep ours), duplicates collapsed."""
    return tuple(sorted(set(pairs)))


def tap_name(uid: str, mode: str) -> str:
    """The host-side tap of a VPS NIC: a mode prefix and 12 hex of the uid (Linux allows 15 bytes).

    The prefix says which host guard applies (`hostguard`), so a tap is never mistaken for another mode's.
    """
    return TAP_PREFIX[mode] + hashlib.sha256(uid.encode()).hexdigest()[:12]


# The network of isolated-nat NICs without a booked IPv4 (no IP pool yet): no address, no NAT, ports isolated.
NO_ADDRESS_NETWORK = ("hostplane-isolated", "hpnat0")


def nat_network(gateway: str | None, prefix: int | None) -> tuple[str, str]:
    """The libvirt network and bridge name of the isolated NAT network whose gateway is `gateway/prefix`.

    Without a gateway: `NO_ADDRESS_NETWORK`, on which a guest reaches nothing at all.
    """
    if gateway is None or prefix is None:
        return NO_ADDRESS_NETWORK
    digest = hashlib.sha256(f"{gateway}/{prefix}".encode()).hexdigest()[:8]
    return f"hostplane-nat-{digest}", f"hpnat{digest}"


def orphan_bindings(bindings: Mapping[str, str], active: Iterable[str]) -> list[str]:
    """Tap names (port dev -> owner domain) of Hostplane filter bindings whose domain is not running.

    Only taps with a Hostplane prefix are considered: bindings of other guests are never touched.
    """
    running = set(active)
    prefixes = tuple(TAP_PREFIX.values())
    return sorted(dev for dev, owner in bindings.items() if dev.startswith(prefixes) and owner not in running)
