"""`assert_converged(store, conns)`: DESIGN.md invariants 1 and 2, read from etcd and libvirt directly.

1. Converged: every VPS that should exist has exactly one managed domain, on its booked node,
   with its plan's size and its billing-decided power state; nothing else managed exists.
2. No orphan: no managed domain, volume, seed image or address allocation without its VPS.

It trusts nothing the controllers report about themselves (no status, no events): the
expected power comes from the subscription's billing state through the resolver's table.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import libvirt

from controllers import layout
from controllers.booking import Booking
from controllers.resolve import resolve
from nodeagent.domain_xml import domain_name, read_sizes, root_volume_name, seed_volume_name
from nodeagent.metadata import from_domain_xml
from reconcile import keys
from reconcile.cluster import ensure_cluster_id
from reconcile.objects import Store
from specs.kinds import VPS, Customer, Image, Node, Plan, Subscription

_POWER = {libvirt.VIR_DOMAIN_RUNNING: "Running", libvirt.VIR_DOMAIN_PAUSED: "Paused",
          libvirt.VIR_DOMAIN_SHUTOFF: "Stopped", libvirt.VIR_DOMAIN_SHUTDOWN: "ShuttingDown",
          libvirt.VIR_DOMAIN_CRASHED: "Crashed", libvirt.VIR_DOMAIN_BLOCKED: "Running"}


def _managed(conn: Any) -> dict[str, tuple[Any, str]]:
    """Managed domains on one connection: domain name -> (domain, VPS uid)."""
    out: dict[str, tuple[Any, str]] = {}
    for dom in conn.listAllDomains(0):
        meta = from_domain_xml(dom.XMLDesc(0))
        if meta is not None:
            out[dom.name()] = (dom, meta.uid)
    return out


def _volumes(conn: Any, pool_name: str) -> set[str]:
    try:
        pool = conn.storagePoolLookupByName(pool_name)
    except libvirt.libvirtError:
        return set()
    pool.refresh(0)
    return {n for n in pool.listVolumes() if n.startswith("hp-")}


def convergence_problems(store: Store, conns: Mapping[str, Any], *, now: datetime | None = None,
                         pool_name: str | None = None) -> list[str]:
    """Every violation of invariants 1 and 2, as sentences; empty when converged."""
    now = now or datetime.now(UTC)
    pool_name = pool_name or f"hostplane-{ensure_cluster_id(store)[:12]}"  # the agents' default pool
    problems: list[str] = []
    vpses = {v.name: v for v in store.list(VPS).items}
    subs = {s.name: s for s in store.list(Subscription).items}
    plans = {p.name: p for p in store.list(Plan).items}
    images = {i.name: i for i in store.list(Image).items}
    customers = {c.name: c for c in store.list(Customer).items}
    nodes = {n.name: n for n in store.list(Node).items}
    kvs, _ = store.kv_range(keys.booking_prefix(store.root))
    bookings = {kv.key.rsplit("/", 1)[-1]: Booking.model_validate_json(kv.value) for kv in kvs}
    managed = {node: _managed(conn) for node, conn in conns.items()}
    volumes = {node: _volumes(conn, pool_name) for node, conn in conns.items()}
    accounted: dict[str, set[str]] = {node: set() for node in conns}

    for name, vps in sorted(vpses.items()):
        sub = subs.get(vps.spec.subscription)
        plan = plans.get(sub.spec.plan) if sub else None
        image = images.get(vps.spec.image)
        if sub is None or plan is None or image is None:
            continue  # not meant to run: a clear condition, checked elsewhere
        b = bookings.get(name)
        if b is None:
            problems.append(f"VPS {name}: no booking")
            continue
        node = nodes.get(b.node)
        want = resolve(vps, sub, plan, image, b.ips, now, mac=b.mac,
                       customer=customers.get(sub.spec.customer),
                       max_resize=node.spec.maxResize if node else None,
                       drained=bool(node and node.metadata.annotations.get(layout.DRAIN_ANNOTATION) == "true"))
        dname = domain_name(vps.metadata.uid or "")
        holders = [n for n, doms in managed.items() if dname in doms]
        if want is None:
            if holders:
                problems.append(f"VPS {name}: should have no domain, found on {holders}")
            continue
        if b.node not in conns:
            problems.append(f"VPS {name}: booked on {b.node}, which has no libvirt connection here")
            continue
        if holders != [b.node]:
            problems.append(f"VPS {name}: domain on {holders or 'no node'}, booked on {b.node}")
            continue
        accounted[b.node].add(dname)
        dom, uid = managed[b.node][dname]
        if uid != vps.metadata.uid:
            problems.append(f"VPS {name}: domain carries uid {uid}, not {vps.metadata.uid}")
        sizes = read_sizes(dom.XMLDesc(0))
        if (sizes.vcpus, sizes.memory_mib) != (want.vcpus, want.memoryMiB):
            problems.append(f"VPS {name}: runs {sizes.vcpus} vCPU/{sizes.memory_mib} MiB, "
                            f"plan says {want.vcpus}/{want.memoryMiB}")
        power = _POWER.get(dom.state(0)[0], "Unknown")
        if power != want.power:
            problems.append(f"VPS {name}: power {power}, billing and spec say {want.power}")

    for node, doms in managed.items():
        for dname in sorted(set(doms) - accounted[node]):
            problems.append(f"node {node}: managed domain {dname} has no VPS that should run there")
        live_names = {dname for dname in accounted[node]}
        for vol in sorted(volumes[node]):
            owner = vol.removesuffix("-root.qcow2").removesuffix("-seed.iso")
            if owner not in live_names and vol in (root_volume_name(owner), seed_volume_name(owner)):
                problems.append(f"node {node}: volume {vol} has no VPS")

    for name, b in sorted(bookings.items()):
        if name not in vpses:
            problems.append(f"booking {name} on {b.node} has no VPS")
    ips, _ = store.kv_range(keys.ip_prefix(store.root))
    held = {(b.ips.pool, a) for b in bookings.values() if b.ips for a in (b.ips.ipv4, b.ips.ipv6) if a}
    for kv in ips:
        pool, _, addr = kv.key[len(keys.ip_prefix(store.root)):].partition("/")
        if (pool, addr) not in held:
            problems.append(f"address {addr} in pool {pool} is allocated to no booked VPS")
    return problems


def assert_converged(store: Store, conns: Mapping[str, Any], **kw: Any) -> None:
    """Fail with every violation of DESIGN.md invariants 1 and 2."""
    problems = convergence_problems(store, conns, **kw)
    assert not problems, "not converged:\n  " + "\n  ".join(problems)
