"""Address and MAC decisions: reserved addresses, exhaustion, uniqueness (table and hypothesis)."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from controllers.ipam import allocate, free_count4, mac_candidates, pick_ipv4, pick_ipv6, pick_mac, pools_for_node
from tests.helpers import builders as b


def test_skips_network_gateway_broadcast_and_reserved() -> None:
    """Network, gateway, broadcast and reserved addresses are never handed out."""
    p = b.pool(cidr="192.0.2.0/29", gateway="192.0.2.1", reserved=["192.0.2.2", "192.0.2.4/31"])
    got = []
    used: set[str] = set()
    while (a := pick_ipv4(p, used)) is not None:
        got.append(a)
        used.add(a)
    assert got == ["192.0.2.3", "192.0.2.6"]
    assert free_count4(p, set()) == 2


def test_exhausted_pool_is_a_clear_condition() -> None:
    """A full pool yields IPPoolExhausted naming the pool; no pool for the node yields NoIPPool."""
    p = b.pool(cidr="192.0.2.0/30", gateway="192.0.2.1")
    d = allocate([p], {}, {"pool-a": {"192.0.2.2"}})
    assert d.allocation is None and d.reason == "IPPoolExhausted" and "pool-a" in d.message
    d2 = allocate([b.pool(selector={"region": "us"})], {"region": "eu"}, {})
    assert d2.allocation is None and d2.reason == "NoIPPool"


def test_pool_selection_by_node_labels() -> None:
    """Only pools whose nodeSelector matches the node serve it."""
    eu, us = b.pool("eu", selector={"region": "eu"}), b.pool("us", cidr="198.51.100.0/24",
                                                            gateway="198.51.100.1", selector={"region": "us"})
    assert [p.name for p in pools_for_node([us, eu], {"region": "us"})] == ["us"]
    d = allocate([eu, us], {"region": "us"}, {})
    assert d.allocation is not None and d.allocation.pool == "us" and d.allocation.ipv4 == "198.51.100.2"


def test_ipv6_only_when_the_pool_has_a_prefix() -> None:
    """An IPv6 address comes with the IPv4 one only from a pool with an IPv6 prefix."""
    d = allocate([b.pool(ipv6="2001:db8:1::/64")], {}, {})
    assert d.allocation is not None and d.allocation.ipv6 == "2001:db8:1::2" and d.allocation.prefix6 == 64
    assert d.allocation.gateway6 == "2001:db8:1::1"
    d4 = allocate([b.pool()], {}, {})
    assert d4.allocation is not None and d4.allocation.ipv6 is None
    assert pick_ipv6(b.pool(ipv6="2001:db8:1::/126"), {"2001:db8:1::2", "2001:db8:1::3"}) is None


def test_cursor_wraps_to_free_addresses() -> None:
    """A search starting at a cursor wraps around to addresses freed earlier in the pool."""
    p = b.pool(cidr="192.0.2.0/29", gateway="192.0.2.1")
    assert pick_ipv4(p, {"192.0.2.3", "192.0.2.4", "192.0.2.5", "192.0.2.6"}, cursor=5) == "192.0.2.2"


def test_mac_is_stable_local_and_probed_on_collision() -> None:
    """A VPS's MAC derives from its uid (52:54:00:...), and the next candidate is used on a collision."""
    first, second = list(zip(range(2), mac_candidates("uid-1"), strict=False))
    assert first[1].startswith("52:54:00:") and first[1] != second[1]
    assert pick_mac("uid-1", set()) == first[1]
    assert pick_mac("uid-1", {first[1]}) == second[1]


@given(prefix=st.integers(26, 30), reserved=st.sets(st.integers(2, 60), max_size=6),
       cursors=st.lists(st.integers(0, 100), max_size=80))
def test_addresses_are_never_handed_out_twice(prefix: int, reserved: set[int], cursors: list[int]) -> None:
    """Whatever the cursors, each address is given once, is inside the pool and is never reserved."""
    net = ipaddress.IPv4Network(f"10.0.0.0/{prefix}")
    res = [str(net.network_address + r) for r in reserved if r < net.num_addresses - 1]
    p = b.pool(cidr=str(net), gateway=str(net.network_address + 1), reserved=res)
    used: set[str] = set()
    for c in cursors:
        a = pick_ipv4(p, used, cursor=c)
        if a is None:
            assert free_count4(p, used) == 0
            break
        assert a not in used and a not in res and ipaddress.IPv4Address(a) in net
        assert a not in (str(net.network_address), str(net.broadcast_address), str(net.network_address + 1))
        used.add(a)


@given(uids=st.lists(st.uuids().map(str), min_size=1, max_size=200, unique=True))
def test_macs_are_unique(uids: list[str]) -> None:
    """Picking MACs one after another never gives two VPS the same address."""
    used: set[str] = set()
    for u in uids:
        m = pick_mac(u, used)
        assert m not in used
        used.add(m)
