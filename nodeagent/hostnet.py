"""The node's side of guest networking: filters, isolated NAT networks, the host guard, orphan bindings.

Per-NIC rules come from libvirt's nwfilter (`netfilter`); what is per node lives here, and every
function puts the host back to what it should be whatever it finds (drift repaired, nothing
duplicated), so the agent calls them at connect and at every resync:

* the `hostplane-*` nwfilter definitions;
* one libvirt NAT network per pool gateway for isolated-nat NICs, with bridge port isolation
  (no guest reaches another guest on it);
* the host guard: a guest never reaches an address of the host itself. Frames from a bridge-mode
  tap (`hpb…`) that the bridge delivers to the host are dropped (ebtables INPUT); packets from an
  isolated NAT bridge (`hpnat…`) to the host are dropped, IPv6 neighbour discovery and answers on
  connections the host opened excepted (iptables/ip6tables INPUT). The NAT network runs no DNS or
  DHCP server on the host (guests are configured by their seed and use the pool's resolvers);
  forwarded (NAT-ed) traffic is not INPUT;
* nwfilter bindings of Hostplane taps whose domain is no longer running are deleted;
* a bridge-mode tap with a VLAN is an untagged member of only that VLAN on its bridge, which must
  have VLAN filtering on (else the agent refuses rather than put the VPS on the untagged network).

ADR 008 says why nwfilter plus these rules and not passt or a bespoke nftables program. Commands
run in `netns` when one is given (a host whose VPS bridges live in a namespace; the tests).
It must never touch a chain, network, filter or binding that is not Hostplane's.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import libvirt

from nodeagent import domain_xml, netfilter
from nodeagent.errors import ActionFailed
from specs.domain import DomainSpec

log = logging.getLogger(__name__)

GUARD_CHAIN = "HOSTPLANE-GUARD"
LIBVIRT_STATE_DIR = "/var/lib/libvirt"
NAT_BRIDGE_MATCH = "hpnat+"
BRIDGE_TAP_MATCH = netfilter.TAP_PREFIX["bridge"] + "+"

# Answers to connections the host opened (an operator's ssh into a guest); a guest opens none.
_ESTABLISHED = f"-A {GUARD_CHAIN} -i {NAT_BRIDGE_MATCH} -m conntrack --ctstate ESTABLISHED -j RETURN"
# The rules each tool's chain must hold, exactly as `-S` (iptables) or `-L` (ebtables) lists them.
GUARD_RULES: dict[str, list[str]] = {
    "ebtables": [f"-i {BRIDGE_TAP_MATCH} -j DROP"],
    "iptables": [_ESTABLISHED, f"-A {GUARD_CHAIN} -i {NAT_BRIDGE_MATCH} -j DROP"],
    "ip6tables": [
        _ESTABLISHED,
        *(f"-A {GUARD_CHAIN} -i {NAT_BRIDGE_MATCH} -p ipv6-icmp -m icmp6 --icmpv6-type {t} -j RETURN"
          for t in (133, 135, 136)),
        f"-A {GUARD_CHAIN} -i {NAT_BRIDGE_MATCH} -j DROP",
    ],
}


def nat_network_xml(name: str, bridge: str, gateway: str | None, prefix: int | None) -> str:
    """An isolated NAT network: the pool gateway on the host bridge, NAT out, ports isolated from each other.

    No DNS or DHCP server (no dnsmasq on the host for guests to talk to): the seed configures them.
    Without a gateway: no address on the host and no forwarding at all (`NO_ADDRESS_NETWORK`).
    """
    net = ET.Element("network")
    ET.SubElement(net, "name").text = name
    if gateway is not None:
        ET.SubElement(net, "forward", {"mode": "nat"})
    ET.SubElement(net, "bridge", {"name": bridge, "stp": "off", "delay": "0"})
    ET.SubElement(net, "port", {"isolated": "yes"})
    ET.SubElement(net, "dns", {"enable": "no"})
    if gateway is not None and prefix is not None:
        ET.SubElement(net, "ip", {"address": gateway, "prefix": str(prefix)})
    return ET.tostring(net, encoding="unicode")


def guard_listing_ok(tool: str, listing: str) -> bool:
    """Whether `tool`'s listing of the guard chain holds exactly our rules."""
    want = GUARD_RULES[tool]
    if tool == "ebtables":
        lines = [ln.strip() for ln in listing.splitlines() if ln.strip().startswith("-")]
    else:
        lines = [ln.strip() for ln in listing.splitlines() if ln.startswith("-A ")]
    return lines == want


UNTAGGED_PVID = frozenset({"PVID", "Egress Untagged"})


def read_filter(dom: libvirt.virDomain, xml: str, mac: str, *, simulated: bool) -> netfilter.Params | None:
    """The filter parameters on the domain's NIC with `mac`, from `xml` (the live XML when it runs).

    On the test driver (`simulated`) the definition's: it cannot update a live device (`update_filter`).
    """
    if simulated:
        xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    return domain_xml.read_filter(xml, mac)


def update_filter(conn: libvirt.virConnect, dom: libvirt.virDomain, mac: str, params: netfilter.Params, *,
                  live: bool, simulated: bool) -> None:
    """New filter parameters on the NIC, in the persistent config and (when running) live: no reboot.

    The test driver cannot update a device: there the persistent definition is rewritten, and its
    filter is what `read_filter` reports (a simulated domain has no tap to filter).
    """
    if simulated:
        root = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        for el in root.findall("devices/interface"):
            m = el.find("mac")
            if m is not None and m.get("address", "").lower() == mac.lower():
                domain_xml.set_filter(el, params)
        conn.defineXML(ET.tostring(root, encoding="unicode"))
        return
    targets = [(libvirt.VIR_DOMAIN_AFFECT_CONFIG, dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))]
    if live and dom.isActive():
        targets.append((libvirt.VIR_DOMAIN_AFFECT_LIVE, dom.XMLDesc(0)))
    for flag, xml in targets:
        nic = domain_xml.interface_xml(xml, mac)
        if nic is None:
            raise ActionFailed(f"no interface with MAC {mac} to filter")
        domain_xml.set_filter(nic, params)
        dom.updateDeviceFlags(ET.tostring(nic, encoding="unicode"), flag)


def vlan_commands(tap: str, current: list[tuple[int, frozenset[str]]], vid: int) -> list[list[str]]:
    """`bridge` commands that leave `tap` an untagged member of exactly VLAN `vid` (none when it is).

    `current` is the tap's VLAN memberships as (vid, flags), from `bridge -j vlan show dev TAP`.
    """
    if current == [(vid, UNTAGGED_PVID)]:
        return []
    cmds = [["bridge", "vlan", "del", "dev", tap, "vid", str(v)] for v, _ in current if v != vid]
    cmds.append(["bridge", "vlan", "add", "dev", tap, "vid", str(vid), "pvid", "untagged"])
    return cmds


def _active(conn: libvirt.virConnect, name: str) -> bool:
    try:
        return bool(conn.lookupByName(name).isActive())
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return False
        raise


def port_vlan(spec: DomainSpec) -> tuple[str, str, int] | None:
    """(bridge, tap, VLAN) when this entry's tap must be put on a VLAN."""
    net = spec.network
    if net.mode != "bridge" or net.vlan is None or net.bridge is None:
        return None
    return net.bridge, netfilter.tap_name(spec.uid, "bridge"), net.vlan


@dataclass
class HostNetwork:
    netns: str | None = None
    # Whether filters and guard were put in place on the current libvirt connection.
    ready: bool = False

    def prepare(self, conn: libvirt.virConnect, specs: list[DomainSpec], *, simulated: bool,
                force: bool = False) -> None:
        """Filters, host guard and NAT networks the given entries need (once per connection, or `force`).

        Nothing is done for user-mode or mode-less entries, so a node without filtered NICs keeps
        its firewall untouched. The test driver has no nwfilter and no host: only networks there.
        """
        filtered = [s for s in specs if netfilter.params(s) is not None]
        if not filtered:
            return
        if not simulated and (force or not self.ready):
            defined = self.ensure_filters(conn)
            repaired = self.ensure_guard()
            if defined or repaired:
                log.info("node network: filters defined %s, guard repaired %s", defined, repaired)
            self.ready = True
        if not simulated and any(domain_xml.nat_network_of(s) is not None for s in filtered):
            self._libvirt_network_dirs()
        for spec in filtered:
            v4 = spec.network.ipv4
            if domain_xml.nat_network_of(spec) is not None:
                has_gw = v4 is not None and v4.gateway is not None
                self.ensure_nat_network(conn, v4.gateway if has_gw and v4 else None,
                                        v4.prefixLength if has_gw and v4 else None)

    def housekeeping(self, conn: libvirt.virConnect, specs: list[DomainSpec], running: list[str], *,
                     simulated: bool) -> list[str]:
        """Repair filters, guard, NAT networks and running taps' VLANs; returns the orphan bindings deleted."""
        self.prepare(conn, specs, simulated=simulated, force=True)
        if simulated or not any(netfilter.params(s) is not None for s in specs):
            return []
        for spec in specs:
            vlan = port_vlan(spec)
            if vlan is not None and domain_xml.domain_name(spec.uid) in running:
                self.ensure_port_vlan(*vlan)
        return self.remove_orphan_bindings(conn, running)

    def _libvirt_network_dirs(self) -> None:
        """libvirt's network driver writes per-network files under /var/lib/libvirt/dnsmasq/ even with no
        dnsmasq running; without Debian's dnsmasq-base nothing creates it and every start on a network fails.
        Only for the local daemon as root (a daemon in another namespace has its own view of the files)."""
        base = Path(LIBVIRT_STATE_DIR)
        if self.netns is None and os.geteuid() == 0 and base.is_dir() and not (base / "dnsmasq").exists():
            (base / "dnsmasq").mkdir(mode=0o755)
            log.info("node network: created %s/dnsmasq for libvirt's network driver", base)

    def _run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        proc = subprocess.run([*prefix, *cmd], capture_output=True, text=True, timeout=30, check=False)
        if check and proc.returncode != 0:
            raise ActionFailed(f"{' '.join(cmd)}: {proc.stderr.strip() or proc.returncode}")
        return proc

    # ------------------------------------------------------------------ filters

    @staticmethod
    def ensure_filters(conn: libvirt.virConnect) -> list[str]:
        """Define every Hostplane filter that is missing or differs; returns the names defined."""
        held: dict[str, str] = {}
        for f in conn.listAllNWFilters(0):
            if f.name().startswith("hostplane-"):
                held[f.name()] = f.XMLDesc(0)
        ours = netfilter.filters()
        redo = netfilter.filters_to_define(held)
        for name in redo:
            # libvirt redefines a filter only under the uuid it already has.
            uuid = ET.fromstring(held[name]).findtext("uuid") if name in held else None
            conn.nwfilterDefineXML(netfilter.with_uuid(ours[name], uuid))
        return redo

    @staticmethod
    def remove_orphan_bindings(conn: libvirt.virConnect, running: Iterable[str]) -> list[str]:
        """Delete bindings of Hostplane taps whose owner domain is not running; returns their taps."""
        bindings: dict[str, str] = {}
        handles = {}
        for b in conn.listAllNWFilterBindings(0):
            owner = ET.fromstring(b.XMLDesc(0)).findtext("owner/name") or ""
            bindings[b.portDev()] = owner
            handles[b.portDev()] = b
        removed = []
        for dev in netfilter.orphan_bindings(bindings, running):
            # `running` may be older than a domain that started since: ask again right before deleting,
            # so a guest that just came up never loses its filter.
            if _active(conn, bindings[dev]):
                continue
            handles[dev].delete()
            removed.append(dev)
        return removed

    # ------------------------------------------------------------- NAT network

    @staticmethod
    def ensure_nat_network(conn: libvirt.virConnect, gateway: str | None, prefix: int | None) -> str:
        """The isolated NAT network for `gateway/prefix`, defined, active and autostarted; returns its name."""
        name, bridge = netfilter.nat_network(gateway, prefix)
        try:
            net = conn.networkLookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_NETWORK:
                raise
            net = conn.networkDefineXML(nat_network_xml(name, bridge, gateway, prefix))
        if not net.isActive():
            net.create()
        if not net.autostart():
            net.setAutostart(1)
        return name

    # -------------------------------------------------------------------- VLAN

    def ensure_port_vlan(self, bridge: str, tap: str, vid: int) -> bool:
        """Make `tap` an untagged member of only VLAN `vid`; True when something changed."""
        link = json.loads(self._run("ip", "-j", "-d", "link", "show", "dev", bridge).stdout or "[]")
        info = (link[0].get("linkinfo", {}).get("info_data", {}) if link else {})
        if info.get("vlan_filtering") != 1:
            raise ActionFailed(f"bridge {bridge} has VLAN filtering off: VLAN {vid} cannot be enforced "
                               f"(ip link set {bridge} type bridge vlan_filtering 1)")
        shown = json.loads(self._run("bridge", "-j", "vlan", "show", "dev", tap).stdout or "[]")
        current = [(int(v["vlan"]), frozenset(v.get("flags", []))) for e in shown if e.get("ifname") == tap
                   for v in e.get("vlans", [])]
        cmds = vlan_commands(tap, current, vid)
        for cmd in cmds:
            self._run(*cmd)
        return bool(cmds)

    # -------------------------------------------------------------- host guard

    def ensure_guard(self) -> list[str]:
        """Put the guard chains and their INPUT jumps back as they should be; returns the tools repaired."""
        repaired = []
        for tool in GUARD_RULES:
            if self._guard_ok(tool):
                continue
            self._rebuild(tool)
            repaired.append(tool)
        return repaired

    def _guard_ok(self, tool: str) -> bool:
        if tool == "ebtables":
            chain = self._run("ebtables", "-t", "filter", "-L", GUARD_CHAIN, check=False)
            jump = self._run("ebtables", "-t", "filter", "-L", "INPUT", check=False)
            return (chain.returncode == 0 and guard_listing_ok(tool, chain.stdout)
                    and f"-j {GUARD_CHAIN}" in jump.stdout)
        chain = self._run(tool, "-w", "-S", GUARD_CHAIN, check=False)
        jump = self._run(tool, "-w", "-C", "INPUT", "-j", GUARD_CHAIN, check=False)
        return chain.returncode == 0 and guard_listing_ok(tool, chain.stdout) and jump.returncode == 0

    def _rebuild(self, tool: str) -> None:
        if tool == "ebtables":
            base = ("ebtables", "-t", "filter")
            if self._run(*base, "-L", GUARD_CHAIN, check=False).returncode != 0:
                self._run(*base, "-N", GUARD_CHAIN, "-P", "RETURN")
            self._run(*base, "-F", GUARD_CHAIN)
            for rule in GUARD_RULES[tool]:
                self._run(*base, "-A", GUARD_CHAIN, *rule.split())
            if f"-j {GUARD_CHAIN}" not in self._run(*base, "-L", "INPUT").stdout:
                self._run(*base, "-I", "INPUT", "1", "-j", GUARD_CHAIN)
            return
        if self._run(tool, "-w", "-S", GUARD_CHAIN, check=False).returncode != 0:
            self._run(tool, "-w", "-N", GUARD_CHAIN)
        self._run(tool, "-w", "-F", GUARD_CHAIN)
        for rule in GUARD_RULES[tool]:
            self._run(tool, "-w", *rule.split())
        if self._run(tool, "-w", "-C", "INPUT", "-j", GUARD_CHAIN, check=False).returncode != 0:
            self._run(tool, "-w", "-I", "INPUT", "1", "-j", GUARD_CHAIN)
