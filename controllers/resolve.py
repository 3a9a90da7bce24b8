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
This module must never do I/O, read a clock (`now` is passed) or decide billing states: it
only reads the ones billing wrote.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from controllers.ipam import IPAllocation, mac_candidates
from specs.domain import BandwidthLimit, DesiredPower, DomainImage, DomainNetwork, DomainSpec, IPAssignment
from specs.kinds import VPS, Customer, Image, MaxResize, NodeNetwork, Plan, Subscription, SubscriptionStatus

DEFAULT_SHUTDOWN_AFTER_HOURS = 24


@dataclass(frozen=True)
class BillingDefaults:
    """DESIGN.md's defaults an operator can change."""

    grace_days: int = 3
    suspend_days: int = 14
    retention_days: int = 7
    suspend_shutdown_after_hours: int = DEFAULT_SHUTDOWN_AFTER_HOURS


@dataclass(frozen=True)
class Policy:
    retention: timedelta
    shutdown_after: timedelta


def billing_policy(plan: Plan, customer: Customer | None, defaults: BillingDefaults) -> Policy:
    """The effective retention and suspend-shutdown delays for one VPS."""
    layers = [plan.spec.billing] + ([customer.spec.billing] if customer is not None else [])
    retention_days = defaults.retention_days
    shutdown_hours = defaults.suspend_shutdown_after_hours
    for layer in layers:
        if layer.retentionDays is not None:
            retention_days = layer.retentionDays
        if layer.suspendShutdownAfterHours is not None:
            shutdown_hours = layer.suspendShutdownAfterHours
    return Policy(timedelta(days=retention_days), timedelta(hours=shutdown_hours))


@dataclass(frozen=True)
class Suspension:
    reason: str
    since: datetime | None


def suspension(sub: Subscription, customer: Customer | None, now: datetime) -> Suspension | None:
    """Why the subscription's servers are suspended now, or None."""
    status = sub.status or SubscriptionStatus()
    if sub.spec.suspend is not None:
        return Suspension(sub.spec.suspend, status.suspendedAt)
    if status.state != "Suspended":
        return None
    reason = status.suspendReason or "nonpayment"
    if reason == "nonpayment":
        holds = [sub.spec.suspendHoldUntil] + ([customer.spec.suspendHoldUntil] if customer else [])
        if any(h is not None and h > now for h in holds):
            return None
    return Suspension(reason, status.suspendedAt)


def retention_over(sub: Subscription, policy: Policy, now: datetime) -> bool:
    """True once a terminated subscription's retention has passed (never without terminatedAt)."""
    status = sub.status or SubscriptionStatus()
    if status.state != "Terminated" or status.terminatedAt is None:
        return False
    return now >= status.terminatedAt + policy.retention


def next_change(vps: VPS, sub: Subscription, plan: Plan, customer: Customer | None, now: datetime,
                defaults: BillingDefaults = BillingDefaults()) -> datetime | None:
    """When the resolver's answer will change by the clock alone (for a timed requeue)."""
    policy = billing_policy(plan, customer, defaults)
    status = sub.status or SubscriptionStatus()
    times: list[datetime] = []
    if status.state == "Terminated" and status.terminatedAt is not None:
        times.append(status.terminatedAt + policy.retention)
    sus = suspension(sub, customer, now)
    if sus is not None and sus.since is not None:
        times.append(sus.since + policy.shutdown_after)
    if status.state == "Suspended":
        holds = [sub.spec.suspendHoldUntil] + ([customer.spec.suspendHoldUntil] if customer else [])
        times.extend(h for h in holds if h is not None)
    future = [t for t in times if t > now]
    return min(future) if future else None


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
    defaults: BillingDefaults = BillingDefaults(),
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
    policy = billing_policy(plan, customer, defaults)
    if retention_over(subscription, policy, now):
        return None
    status = subscription.status or SubscriptionStatus()
    power: DesiredPower = vps.spec.powerState
    reason = ""
    shutdown_after: int | None = None
    sus = suspension(subscription, customer, now)
    if status.state == "Terminated":
        power, reason = "Stopped", "terminated"
    elif sus is not None:
        reason = f"suspended: {sus.reason}"
        shutdown_after = int(policy.shutdown_after.total_seconds())
        over = sus.since is not None and now >= sus.since + policy.shutdown_after
        power = "Stopped" if over else "Paused"
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
        diskGiB=max(plan.spec.diskGiB, image.spec.minDiskGiB),
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
