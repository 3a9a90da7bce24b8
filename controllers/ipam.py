"""The address decision: which IPv4 (and IPv6) address a VPS gets, and which MAC. Pure.

An address comes from an `IPPool` whose `nodeSelector` matches the VPS's node. The network
and broadcast addresses, the gateway and every `reserved` address or range are never handed
out; an address in `used` is taken. The search starts at a cursor so that a caller handing
out thousands of addresses does not rescan the taken ones each time. The MAC is derived
from the VPS uid (stable across restarts and rebuilds); on a collision the next candidate in
the uid's own sequence is tried. This module must never do I/O.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

from controllers.schedule import selector_matches
from specs.kinds import IPPool


class IPAllocation(BaseModel):
    """The addresses of one VPS, as booked and as handed to the resolver."""

    model_config = ConfigDict(extra="forbid")

    pool: str
    ipv4: str
    prefix4: int
    gateway4: str | None = None
    ipv6: str | None = None
    prefix6: int | None = None
    gateway6: str | None = None
    dns: list[str] = []


@dataclass(frozen=True)
class AddressDecision:
    allocation: IPAllocation | None
    reason: str = ""
    message: str = ""


def pools_for_node(pools: Iterable[IPPool], node_labels: Mapping[str, str]) -> list[IPPool]:
    """The pools that serve a node, by name."""
    return sorted((p for p in pools if selector_matches(p.spec.nodeSelector, node_labels)),
                  key=lambda p: p.name)


def _blocked4(pool: IPPool) -> tuple[set[int], list[tuple[int, int]]]:
    net = ipaddress.IPv4Network(pool.spec.cidr)
    single = {int(ipaddress.IPv4Address(pool.spec.gateway))}
    if net.prefixlen < 31:
        single |= {int(net.network_address), int(net.broadcast_address)}
    ranges: list[tuple[int, int]] = []
    for r in pool.spec.reserved:
        if "/" in r:
            sub = ipaddress.IPv4Network(r)
            ranges.append((int(sub.network_address), int(sub.broadcast_address)))
        else:
            single.add(int(ipaddress.IPv4Address(r)))
    return single, ranges


def pick_ipv4(pool: IPPool, used: Collection[str], *, cursor: int = 0) -> str | None:
    """The first free IPv4 address of `pool` at or after offset `cursor` (wrapping), or None."""
    net = ipaddress.IPv4Network(pool.spec.cidr)
    first, size = int(net.network_address), net.num_addresses
    single, ranges = _blocked4(pool)
    start = cursor % size if size else 0
    # Membership is checked on the text form so a cursor-led search costs O(tried), not O(used).
    for i in range(size):
        addr = first + (start + i) % size
        if addr in single or any(lo <= addr <= hi for lo, hi in ranges):
            continue
        text = str(ipaddress.IPv4Address(addr))
        if text not in used:
            return text
    return None


def free_count4(pool: IPPool, used: Collection[str]) -> int:
    """How many IPv4 addresses the pool can still hand out."""
    net = ipaddress.IPv4Network(pool.spec.cidr)
    first, last = int(net.network_address), int(net.broadcast_address)
    single, ranges = _blocked4(pool)
    blocked = set(single)
    for lo, hi in ranges:
        blocked.update(range(max(lo, first), min(hi, last) + 1))
    blocked.update(int(ipaddress.IPv4Address(u)) for u in used)
    return net.num_addresses - len({b for b in blocked if first <= b <= last})


def pick_ipv6(pool: IPPool, used: Collection[str], *, cursor: int = 0) -> str | None:
    """A free address in the pool's IPv6 prefix (never the subnet-router address or gateway)."""
    if pool.spec.ipv6Prefix is None:
        return None
    net = ipaddress.IPv6Network(pool.spec.ipv6Prefix)
    blocked = {0}
    if pool.spec.ipv6Gateway:
        blocked.add(int(ipaddress.IPv6Address(pool.spec.ipv6Gateway)) - int(net.network_address))
    else:
        blocked.add(1)  # ::1 of the prefix is the conventional router
    size = min(net.num_addresses, 1 << 32)
    start = max(cursor, 2) % size
    for i in range(size):
        off = (start + i) % size
        if off in blocked:
            continue
        text = str(net.network_address + off)
        if text not in used:
            return text
    return None


def allocate(
    pools: Iterable[IPPool],
    node_labels: Mapping[str, str],
    used: Mapping[str, Collection[str]],
    *,
    cursors: Mapping[str, int] | None = None,
) -> AddressDecision:
    """Addresses for a VPS on a node with `node_labels`; `used[pool]` are the taken ones."""
    candidates = pools_for_node(pools, node_labels)
    if not candidates:
        return AddressDecision(None, "NoIPPool", "no IPPool's nodeSelector matches the node")
    cursors = cursors or {}
    for pool in candidates:
        taken = used.get(pool.name, ())
        v4 = pick_ipv4(pool, taken, cursor=cursors.get(pool.name, 0))
        if v4 is None:
            continue
        net = ipaddress.IPv4Network(pool.spec.cidr)
        v6 = pick_ipv6(pool, taken, cursor=cursors.get(pool.name, 0))
        prefix6 = ipaddress.IPv6Network(pool.spec.ipv6Prefix).prefixlen if pool.spec.ipv6Prefix else None
        gw6 = pool.spec.ipv6Gateway
        if v6 is not None and gw6 is None and pool.spec.ipv6Prefix:
            gw6 = str(ipaddress.IPv6Network(pool.spec.ipv6Prefix).network_address + 1)
        return AddressDecision(IPAllocation(
            pool=pool.name, ipv4=v4, prefix4=net.prefixlen, gateway4=pool.spec.gateway,
            ipv6=v6, prefix6=prefix6 if v6 else None, gateway6=gw6 if v6 else None,
            dns=list(pool.spec.dns)))
    names = ", ".join(p.name for p in candidates)
    return AddressDecision(None, "IPPoolExhausted", f"every IPPool for the node is full: {names}")


def offset_of(pool: IPPool, address: str) -> int:
    """The IPv4 address's offset in its pool, for the next search's cursor."""
    return int(ipaddress.IPv4Address(address)) - int(ipaddress.IPv4Network(pool.spec.cidr).network_address)


def mac_candidates(uid: str) -> Iterator[str]:
    """The uid's MAC addresses in order of preference: 52:54:00 + 3 bytes of sha256(uid, n)."""
    n = 0
    while True:
        digest = hashlib.sha256(f"{uid}/{n}".encode() if n else uid.encode()).digest()
        yield "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])
        n += 1


def pick_mac(uid: str, used: Collection[str]) -> str:
    """The first of the uid's MAC candidates that no other VPS holds."""
    for mac in mac_candidates(uid):
        if mac not in used:
            return mac
    raise AssertionError("unreachable: the candidate sequence is infinite")
