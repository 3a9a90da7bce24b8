"""The VPS resolver's decision: VPS + Subscription + Plan + Image + addresses -> DomainSpec.

It implements DESIGN.md's table "What billing does to a server":

    subscription                      the DomainSpec
    Active / Overdue (in grace)       power follows vps.spec.powerState
    Suspended (status or operator)    Paused ("suspended: <reason>"), Stopped once
                                      suspendedAt + suspendShutdownAfter has passed
    Suspended, nonpayment, on hold    as Active: a do-not-suspend override is in force
    Terminated                        Stopped ("terminated"); None (no domain) once
                                      terminatedAt + retention has passed
    VPS being deleted                 None
    plan changed                      the plan's size; maxima from the node's maxResize

A node being drained stops its domains ("node drained") until the drain is lifted.
Billing policy: the customer's overrides the plan's, which overrides the defaults.
This module must never do I/O, read a clock (`now` is passed) or decide billing states: what
billing allows a server is asked of billing's one pure function, `controllers.billing.power_for`.
"""

from __future__ import annotations

from datetime import datetime

from controllers.billing import DEFAULT_POLICY, Policy, power_for
from controllers.ipam import IPAllocation, mac_candidates
from specs import rules
from specs.domain import BandwidthLimit, DesiredPower, DomainImage, DomainNetwork, DomainSpec, IPAssignment
from specs.kinds import VPS, Customer, Image, MaxResize, NodeNetwork, Plan, Subscription


def next_change(vps: VPS, sub: Subscription, plan: Plan, customer: Customer | None, now: datetime,
                defaults: Policy = DEFAULT_POLICY) -> datetime | None:
    """When the resolver's answer will change by the clock alone (for a timed requeue)."""
    return power_for(sub, now, plan=plan, customer=customer, defaults=defaults).next_change


def attachment(node_network: NodeNetwork | None, ips: IPAllocation | None) -> dict[str, object]:
    """The NIC attachment fields of a `DomainNetwork`: the node's mode, bridge and the pool's VLAN."""
    if node_network is None:
        return {}
    out: dict[str, object] = {"mode": node_network.mode}
    if node_network.mode == "bridge":
        out["bridge"] = node_network.bridge
        if ips is not None and ips.pool in node_network.vlans:
            out["vlan"] = node_network.vlans[ips.pool]
    return out


def resolve(
    vps: VPS,
    subscription: Subscription,
    plan: Plan,
    image: Image,
    ips: IPAllocation | None,
    now: datetime,
    *,
    mac: str | None = None,
    customer: Customer | None = None,
    max_resize: MaxResize | None = None,
    node_network: NodeNetwork | None = None,
    drained: bool = False,
    defaults: Policy = DEFAULT_POLICY,
) -> DomainSpec | None:
    """The DomainSpec the VPS's node should run, or None when no domain should exist.

    `mac` is the booked MAC (the uid's first candidate when not given); `ips` None means the
    VPS has no addresses yet and the domain gets a network interface without them.
    `node_network` is the node's `spec.network` (None: the entry leaves the mode to the agent).
    """
    if vps.metadata.deletionTimestamp is not None:
        return None
    if subscription.spec.plan != plan.name:
        raise ValueError(f"plan: subscription {subscription.name!r} names plan {subscription.spec.plan!r}, "
                         f"not {plan.name!r}")
    allowed = power_for(subscription, now, plan=plan, customer=customer, defaults=defaults)
    if not allowed.exists:
        return None
    power: DesiredPower = allowed.power or vps.spec.powerState
    reason = allowed.reason
    shutdown_after = int(allowed.shutdown_after.total_seconds()) if allowed.shutdown_after is not None else None
    if drained and power != "Stopped":
        power, reason = "Stopped", "node drained"
    ceiling = max_resize or MaxResize()
    src = image.spec.source
    if mac is None:
        mac = next(mac_candidates(vps.metadata.uid or vps.name))
    network = DomainNetwork(mac=mac, dns=list(ips.dns) if ips else [], **attachment(node_network, ips))
    if ips is not None:
        network.ipv4 = IPAssignment(address=ips.ipv4, prefixLength=ips.prefix4, gateway=ips.gateway4)
        if ips.ipv6 is not None and ips.prefix6 is not None:
            network.ipv6 = IPAssignment(address=ips.ipv6, prefixLength=ips.prefix6, gateway=ips.gateway6)
    bw = plan.spec.bandwidth
    return DomainSpec(
        vps=vps.name,
        uid=vps.metadata.uid or "",
        vcpus=plan.spec.vcpus,
        memoryMiB=plan.spec.memoryMiB,
        diskGiB=rules.disk_gib(plan, image),
        maxVcpus=max(ceiling.vcpus, plan.spec.vcpus),
        maxMemoryMiB=max(ceiling.memoryMiB, plan.spec.memoryMiB),
        power=power,
        powerReason=reason,
        shutdownAfterPausedSeconds=shutdown_after if power == "Paused" else None,
        image=DomainImage(name=image.name, path=src.path, url=src.url, sha256=src.sha256, format=src.format,
                          kernel=image.spec.kernel, initrd=image.spec.initrd, cmdline=image.spec.cmdline),
        hostname=vps.spec.hostname,
        sshKeys=list(vps.spec.sshKeys),
        passwordHash=vps.spec.passwordHash,
        network=network,
        bandwidth=BandwidthLimit(inboundKbps=bw.inboundKbps, outboundKbps=bw.outboundKbps) if bw else None,
        rebuildGeneration=vps.spec.rebuildGeneration,
        restartGeneration=vps.spec.restartGeneration,
    )
