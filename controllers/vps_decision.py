"""The VPS controller's decision: a snapshot of what it read -> the writes and timing it wants. Pure.

`Manager.reconcile_vps` reads a `VPSSnapshot` (the VPS, its bound subscription, plan, image,
customer, its booking — placed in the read phase by the pure scheduler and IPAM when it had
none — and what the node holds and reports), calls `decide_vps(snapshot, now)` and commits the
returned `VPSDecision` in one fenced transaction. This module never does I/O and never reads a
clock (`now` is passed), so the VPS controller is tested as state in -> state out
(tests/unit/test_vps_decision.py), like `nodeagent/plan.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from controllers.billing import DEFAULT_POLICY
from controllers.billing import Policy as BillingPolicy
from controllers.booking import Booking
from controllers.nodes import drained
from controllers.resolve import next_change, resolve
from controllers.schedule import Resources
from controllers.status import NodeState, VPSProblem, vps_status
from specs import rules
from specs.domain import DomainSpec, ObservedDomain
from specs.kinds import VPS, Customer, Image, Node, Plan, Subscription, VPSStatus

# A requeue a little after the instant the resolver's answer changes, so the clock has passed it.
REQUEUE_SLACK_SECONDS = 0.05


def requirements(vps: VPS, sub: Subscription | None, plan: Plan | None, image: Image | None,
                 sub_name_reused: bool = False) -> tuple[VPSProblem | None, Resources | None]:
    """What keeps the VPS from being resolved (which problem to report), else the size it needs."""
    if sub is None:
        return VPSProblem("Resolved", "SubscriptionNotFound",
                       f"subscription {vps.spec.subscription!r} does not exist"
                       + (" (one of that name was created anew; this server is not part of it)"
                          if sub_name_reused else "")), None
    if plan is None:
        return VPSProblem("Resolved", "PlanNotFound", f"plan {sub.spec.plan!r} does not exist"), None
    if image is None:
        return VPSProblem("Resolved", "ImageNotFound", f"image {vps.spec.image!r} does not exist"), None
    return None, Resources(plan.spec.vcpus, plan.spec.memoryMiB, rules.disk_gib(plan, image))


@dataclass(frozen=True)
class VPSSnapshot:
    """Everything one reconcile of a VPS decides on, read at one moment."""

    vps: VPS  # with our finalizer already added when it lacked it (see `add_finalizer`)
    subscription: Subscription | None  # the subscription bound to this server, or None
    plan: Plan | None
    image: Image | None
    customer: Customer | None
    booking: Booking | None  # the booking after this reconcile's placement (placed in the read phase)
    placement_problem: VPSProblem | None = None  # why the read phase could not place it
    sub_name_reused: bool = False  # a Subscription of the name exists but is someone else's
    add_finalizer: bool = False
    node: Node | None = None  # the booking's node
    desired: DomainSpec | None = None  # the node's current desired entry for the VPS
    other_desired_nodes: frozenset[str] = frozenset()  # other nodes holding a desired entry for it
    observed: ObservedDomain | None = None  # what the booking's node reports
    node_state: NodeState | None = None
    previous_status: VPSStatus | None = None
    billing: BillingPolicy = DEFAULT_POLICY
    pending_retry_seconds: float = 5.0


@dataclass(frozen=True)
class VPSDecision:
    """The typed writes of one reconcile (committed in one transaction) and when to look again."""

    add_finalizer: bool = False
    resize: Resources | None = None  # the booking's new size
    remove_from: tuple[str, ...] = ()  # nodes whose desired entry goes (the server moved away)
    write_desired: bool = False
    desired: DomainSpec | None = None  # the booking node's desired entry when `write_desired`
    delete: bool = False  # terminated and past retention: mark the VPS deleted (the finalizer frees the rest)
    status: VPSStatus | None = None
    pending: bool = False  # waiting for capacity or addresses
    requeue_after: float | None = None
    problem: VPSProblem | None = None
    events: tuple[tuple[str, str, str], ...] = field(default=())  # (type, reason, message)


def decide_vps(s: VPSSnapshot, now: datetime) -> VPSDecision:
    """The reconcile's decision for one VPS that is not being deleted. Pure."""
    vps, sub, plan, image = s.vps, s.subscription, s.plan, s.image
    problem, size = requirements(vps, sub, plan, image, s.sub_name_reused)
    booking = s.booking
    if problem is None and size is not None and booking is None:
        problem = s.placement_problem
    resize = size if size is not None and booking is not None and booking.resources != size else None
    pending = problem is not None and problem.condition == "Scheduled"
    desired = s.desired
    generation = (s.previous_status or VPSStatus()).observedGeneration
    remove_from: tuple[str, ...] = ()
    write_desired = False
    requeue: float | None = None
    if booking is not None:
        remove_from = tuple(sorted(s.other_desired_nodes - {booking.node}))
    if booking is not None and problem is None and sub is not None and plan is not None and image is not None:
        node = s.node
        try:
            fresh = resolve(vps, sub, plan, image, booking.ips, now, mac=booking.mac, customer=s.customer,
                            max_resize=node.spec.maxResize if node is not None else None,
                            node_network=node.spec.network if node is not None else None,
                            drained=drained(node), defaults=s.billing)
        except ValueError as exc:
            problem, fresh = VPSProblem("Resolved", "InvalidSpec", str(exc)), desired
        if fresh is None and problem is None:
            return VPSDecision(add_finalizer=s.add_finalizer, resize=resize, remove_from=remove_from, delete=True,
                               events=(("Normal", "Terminated",
                                        "subscription terminated and retention passed: deleting"),))
        if problem is None:
            write_desired, desired = True, fresh
            generation = vps.metadata.generation
            nxt = next_change(vps, sub, plan, s.customer, now, s.billing)
            if nxt is not None:
                requeue = max((nxt - now).total_seconds(), 0.0) + REQUEUE_SLACK_SECONDS
    elif pending:
        requeue = s.pending_retry_seconds
    node_name = booking.node if booking is not None else None
    status = vps_status(
        vps, previous=s.previous_status, node=node_name, ips=booking.ips if booking is not None else None,
        desired=desired, observed=s.observed if node_name else None, node_state=s.node_state if node_name else None,
        problem=problem, observed_generation=generation, now=now)
    return VPSDecision(add_finalizer=s.add_finalizer, resize=resize, remove_from=remove_from,
                       write_desired=write_desired, desired=desired, status=status, pending=pending,
                       requeue_after=requeue, problem=problem)
