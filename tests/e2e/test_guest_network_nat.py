"""Guest networking on real QEMU in isolated-nat mode: out through NAT, never into the host, never to each other.

Two guests, C and D, on the isolated NAT network the agent builds for their pool gateway, in the
same namespace lab as the bridge-mode tests (a router outside, host services listening on every
host address). Booted once for the module.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from nodeagent import netfilter
from nodeagent.domain_xml import domain_name
from nodeagent.hypervisor import Hypervisor
from specs.domain import DomainImage, DomainNetwork, DomainSpec, IPAssignment
from tests.e2e.guest.build import GuestImage
from tests.e2e.guest.netlab import HOST4, HOST_OTHER4, HOST_PORTS, ROUTER4, Console, NetLab, netlab, sh
from tests.e2e.test_guest_network import converge

pytestmark = [pytest.mark.qemu, pytest.mark.timeout(600)]

GATEWAY, C4, D4 = "10.77.0.1", "10.77.0.10", "10.77.0.20"


def nat_spec(image: GuestImage, vps: str, mac: str, v4: str) -> DomainSpec:
    return DomainSpec.model_validate({
        "vps": vps, "uid": f"gn-{vps}", "vcpus": 1, "memoryMiB": 96, "diskGiB": 1, "maxVcpus": 1,
        "maxMemoryMiB": 96, "hostname": vps, "shutdownGraceSeconds": 5,
        "image": DomainImage(name="test-guest", path=image.disk, sha256=image.disk_sha256, format="qcow2",
                             kernel=image.kernel, initrd=image.initrd, cmdline=image.cmdline),
        "network": DomainNetwork(mac=mac, mode="isolated-nat",
                                 ipv4=IPAssignment(address=v4, prefixLength=24, gateway=GATEWAY)),
    })


@dataclass
class NatGuests:
    lab: NetLab
    hv: Hypervisor
    c: DomainSpec
    con_c: Console
    con_d: Console


@pytest.fixture(scope="module")
def nat(guest_image: GuestImage, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatGuests]:
    """Guests C and D on their pool gateway's isolated NAT network."""
    with netlab() as lab:
        hv = Hypervisor(lab.uri, Path(tmp_path_factory.mktemp("guestnat")), pool_name="hp-guestnat", netns=lab.host)
        hv.connect()
        c = nat_spec(guest_image, "guest-c", "52:54:00:cc:00:03", C4)
        d = nat_spec(guest_image, "guest-d", "52:54:00:dd:00:04", D4)
        for spec in (c, d):
            converge(hv, spec)
        conn = lab.open()
        cons = [Console(conn, conn.lookupByName(domain_name(s.uid)), hv.logs_dir / f"{domain_name(s.uid)}.log")
                for s in (c, d)]
        for con in cons:
            con.wait_for("hostplane-guest: ready")
        try:
            yield NatGuests(lab, hv, c, cons[0], cons[1])
        finally:
            hv.close()


def test_nat_guest_reaches_outside(nat: NatGuests) -> None:
    """C reaches the router outside through NAT, masqueraded behind the host's public address."""
    sniff = nat.lab.sniff(8)
    out = nat.con_c.run(f"ping -c 2 -W 2 {ROUTER4} >/dev/null && echo OUT-OK || echo OUT-FAIL")
    assert "OUT-OK" in out
    assert [f for f in sniff.frames() if f.get("ip_src") == HOST4 and f.get("proto") == 1]
    _name, bridge = netfilter.nat_network(GATEWAY, 24)
    assert bridge in sh("ip", "-br", "link", netns=nat.lab.host).stdout


def test_nat_guest_cannot_reach_any_host_address(nat: NatGuests) -> None:
    """From C, the host's service ports fail on the gateway, the public and the other host address; ping too."""
    assert nat.lab.connect_from_router(HOST4, HOST_PORTS[0]), "control: the host's service answers the network"
    targets = [(a, p) for a in (GATEWAY, HOST4, HOST_OTHER4) for p in HOST_PORTS]
    lines = "\n".join(f"nc -w 2 {a} {p} </dev/null >/dev/null 2>&1 && echo OPEN-{a}-{p} || echo CLOSED-{a}-{p}"
                      for a, p in targets)
    out = nat.con_c.run(lines + f"\nping -c 1 -W 2 {GATEWAY} >/dev/null && echo PING-HOST || echo NO-PING-HOST")
    for a, p in targets:
        assert f"CLOSED-{a}-{p}" in out, out
    assert "OPEN-" not in out and "NO-PING-HOST" in out


def test_nat_guests_cannot_reach_each_other(nat: NatGuests) -> None:
    """D listens on a port: the host reaches it (answers to the host's own connections pass), C does not."""
    nat.con_d.run("(while true; do echo guest-d | nc -l -p 7000; done) >/dev/null 2>&1 &")
    code = (f"import socket; s = socket.create_connection(({D4!r}, 7000), timeout=3); print(s.recv(16))")
    assert sh(sys.executable, "-c", code, netns=nat.lab.host, check=False).returncode == 0, "control: D listens"
    out = nat.con_c.run(f"nc -w 2 {D4} 7000 </dev/null | grep -q guest-d && echo REACHED-D || echo NOT-D\n"
                        f"ping -c 1 -W 2 {D4} >/dev/null && echo PING-D || echo NO-PING-D")
    assert "NOT-D" in out and "NO-PING-D" in out, out


def test_address_less_isolated_network_builds_on_real_libvirt(nat: NatGuests) -> None:
    """An isolated-nat entry without IPv4 gets `hostplane-isolated`: active, isolated ports, no address, no NAT."""
    name = nat.hv.hostnet.ensure_nat_network(nat.lab.open(), None, None)
    assert name == netfilter.NO_ADDRESS_NETWORK[0]
    net = nat.lab.open().networkLookupByName(name)
    assert net.isActive()
    bridge = netfilter.NO_ADDRESS_NETWORK[1]
    assert "inet" not in sh("ip", "-br", "addr", "show", "dev", bridge, netns=nat.lab.host).stdout.split(bridge, 1)[1]
    assert "<forward" not in net.XMLDesc(0) and "isolated='yes'" in net.XMLDesc(0)
