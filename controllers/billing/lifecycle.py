"""Billing's decision: where a subscription's lifecycle goes next, given money and time.

    Active ──balance < -creditLimit──► Overdue ──grace──► Suspended(nonpayment) ──suspendDays──► Terminated
      ▲                                  │                   │                                     │
      └────── debt cleared ◄─────────────┴───────────────────┘                          retention ─► VPS deleted

Operator suspensions (`spec.suspend`: abuse, admin, customer) suspend at once and lift only
when the operator clears them; a `suspendHoldUntil` in the future keeps a debtor Overdue
instead of Suspended. A cancelled subscription is terminated at once. External-billing
subscriptions keep the state their billing system set (only retention runs here).

`next_billing_state` is pure: values in, values out, no I/O and no clock (`now` is passed).
It must never read or write etcd; the billing controller does that with its answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from specs.kinds import (
    BillingPolicy,
    Customer,
    Plan,
    Subscription,
    SubscriptionState,
    SubscriptionStatus,
    SuspendReason,
)
from specs.money import to_minor

WarningKind = Literal["Overdue", "SuspensionSoon", "Suspended", "TerminationSoon", "Terminated", "DeletionSoon"]

# Which states may follow which (a decision may pass through several in one call after a
# time jump; each step is one of these).
LEGAL: dict[str, frozenset[str]] = {
    "Active": frozenset({"Active", "Overdue", "Suspended", "Terminated"}),
    "Overdue": frozenset({"Overdue", "Active", "Suspended", "Terminated"}),
    "Suspended": frozenset({"Suspended", "Active", "Overdue", "Terminated"}),
    "Terminated": frozenset({"Terminated"}),
}


@dataclass(frozen=True)
class Policy:
    """The billing clock. Defaults are DESIGN.md's; plans and customers override them."""

    grace: timedelta = timedelta(days=3)
    suspend_period: timedelta = timedelta(days=14)
    retention: timedelta = timedelta(days=7)
    shutdown_after: timedelta = timedelta(hours=24)
    # How long before a suspension, termination or deletion the customer is warned.
    warn_before: timedelta = timedelta(days=1)


DEFAULT_POLICY = Policy()


def effective_policy(plan: BillingPolicy | None, customer: BillingPolicy | None,
                     defaults: Policy = DEFAULT_POLICY) -> Policy:
    """The plan's overrides apply over the defaults, the customer's over the plan's."""
    grace, suspend, retention, shutdown = (defaults.grace, defaults.suspend_period, defaults.retention,
                                           defaults.shutdown_after)
    for layer in (plan, customer):
        if layer is None:
            continue
        if layer.graceDays is not None:
            grace = timedelta(days=layer.graceDays)
        if layer.suspendDays is not None:
            suspend = timedelta(days=layer.suspendDays)
        if layer.retentionDays is not None:
            retention = timedelta(days=layer.retentionDays)
        if layer.suspendShutdownAfterHours is not None:
            shutdown = timedelta(hours=layer.suspendShutdownAfterHours)
    return Policy(grace, suspend, retention, shutdown, defaults.warn_before)


def customer_state(balance_minor: int, credit_minor: int) -> Literal["Active", "Overdue"]:
    """A customer's billing state for a balance: Overdue once the balance is below minus the credit limit."""
    return "Overdue" if balance_minor < -credit_minor else "Active"


def policy_for(plan: Plan, customer: Customer | None, defaults: Policy = DEFAULT_POLICY) -> Policy:
    """The policy of one subscription: its plan's and its customer's overrides over `defaults`."""
    return effective_policy(plan.spec.billing, customer.spec.billing if customer is not None else None, defaults)


# ------------------------------------------------------------------ what billing does to a server


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


@dataclass(frozen=True)
class ServerPower:
    """What billing allows a subscription's servers at one instant (DESIGN.md's table)."""

    exists: bool = True  # False once a terminated subscription's retention has passed: no domain
    power: Literal["Paused", "Stopped"] | None = None  # None: the server's own powerState
    reason: str = ""  # "terminated", "suspended: <reason>" or ""
    shutdown_after: timedelta | None = None  # a suspension's delay from Paused to Stopped
    next_change: datetime | None = None  # when this answer changes by the clock alone


def power_for(subscription: Subscription, now: datetime, *, plan: Plan, customer: Customer | None = None,
              defaults: Policy = DEFAULT_POLICY) -> ServerPower:
    """What billing allows the subscription's servers at `now`. Pure: the resolver's only question to billing.

    Terminated: stopped, and gone once terminatedAt + retention has passed. Suspended (by status or
    operator, unless a nonpayment suspension is on hold): paused, stopped once suspendedAt +
    shutdown_after has passed. Otherwise the server's own power state."""
    policy = policy_for(plan, customer, defaults)
    status = subscription.status or SubscriptionStatus()
    sus = suspension(subscription, customer, now)
    times: list[datetime] = []
    if status.state == "Terminated" and status.terminatedAt is not None:
        times.append(status.terminatedAt + policy.retention)
    if sus is not None and sus.since is not None:
        times.append(sus.since + policy.shutdown_after)
    if status.state == "Suspended":
        holds = [subscription.spec.suspendHoldUntil] + ([customer.spec.suspendHoldUntil] if customer else [])
        times.extend(h for h in holds if h is not None)
    future = [t for t in times if t > now]
    nxt = min(future) if future else None
    if status.state == "Terminated":
        gone = status.terminatedAt is not None and now >= status.terminatedAt + policy.retention
        return ServerPower(exists=not gone, power="Stopped", reason="terminated", next_change=nxt)
    if sus is not None:
        over = sus.since is not None and now >= sus.since + policy.shutdown_after
        return ServerPower(power="Stopped" if over else "Paused", reason=f"suspended: {sus.reason}",
                           shutdown_after=policy.shutdown_after, next_change=nxt)
    return ServerPower(next_change=nxt)


@dataclass(frozen=True)
class BillingFacts:
    """What the decision depends on besides the current status."""

    balance_minor: int
    credit_limit_minor: int = 0
    operator_suspend: SuspendReason | None = None
    hold_until: datetime | None = None
    cancelled: bool = False
    external: bool = False

    @property
    def in_debt(self) -> bool:
        return self.balance_minor < -self.credit_limit_minor


@dataclass(frozen=True)
class Warning:
    """A notice owed to the customer; `key` is stable so it is queued once."""

    kind: WarningKind
    deadline: datetime | None
    key: str


@dataclass(frozen=True)
class BillingDecision:
    status: SubscriptionStatus
    path: tuple[SubscriptionState, ...]
    warnings: tuple[Warning, ...] = ()
    delete_vps: bool = False
    wake_at: datetime | None = None


def _held(facts: BillingFacts, now: datetime) -> bool:
    return facts.hold_until is not None and facts.hold_until > now


def _status(s: SubscriptionStatus, **update: object) -> SubscriptionStatus:
    return s.model_copy(update=update)


def _step(s: SubscriptionStatus, f: BillingFacts, p: Policy, now: datetime) -> SubscriptionStatus:
    """One transition (or none). Pure."""
    if s.state == "Terminated":
        return s
    if f.cancelled:
        return _status(s, state="Terminated", terminatedAt=now)
    if f.external:
        return s
    overdue_since = (s.overdueSince or now) if f.in_debt else None
    if f.operator_suspend is not None:
        same = s.state == "Suspended" and s.suspendReason == f.operator_suspend
        return _status(s, state="Suspended", suspendReason=f.operator_suspend,
                       suspendedAt=(s.suspendedAt or now) if same else now, overdueSince=overdue_since)
    if s.state == "Suspended" and s.suspendReason not in (None, "nonpayment"):
        # The operator lifted their suspension; money decides from here.
        return _status(s, state="Overdue" if f.in_debt else "Active", suspendReason=None, suspendedAt=None,
                       overdueSince=overdue_since)
    if not f.in_debt:
        return _status(s, state="Active", suspendReason=None, suspendedAt=None, overdueSince=None)
    assert overdue_since is not None
    held = _held(f, now)
    if s.state == "Active":
        return _status(s, state="Overdue", overdueSince=overdue_since, suspendReason=None, suspendedAt=None)
    if s.state == "Overdue":
        if not held and now >= overdue_since + p.grace:
            return _status(s, state="Suspended", suspendReason="nonpayment", suspendedAt=now,
                           overdueSince=overdue_since)
        return _status(s, overdueSince=overdue_since)
    # Suspended for non-payment.
    if held:
        return _status(s, state="Overdue", suspendReason=None, suspendedAt=None, overdueSince=overdue_since)
    suspended_at = s.suspendedAt or now
    if now >= suspended_at + p.suspend_period:
        return _status(s, state="Terminated", terminatedAt=now, overdueSince=overdue_since,
                       suspendReason="nonpayment", suspendedAt=suspended_at)
    return _status(s, suspendReason="nonpayment", suspendedAt=suspended_at, overdueSince=overdue_since)


def _warnings(s: SubscriptionStatus, f: BillingFacts, p: Policy, now: datetime) -> list[Warning]:
    out: list[Warning] = []
    if s.state == "Overdue" and s.overdueSince is not None:
        at = s.overdueSince.isoformat()
        out.append(Warning("Overdue", s.overdueSince + p.grace, f"overdue-{at}"))
        deadline = s.overdueSince + p.grace
        if not _held(f, now) and now >= deadline - p.warn_before:
            out.append(Warning("SuspensionSoon", deadline, f"suspension-{at}"))
    elif s.state == "Suspended" and s.suspendedAt is not None:
        at = s.suspendedAt.isoformat()
        if s.suspendReason == "nonpayment":
            deadline = s.suspendedAt + p.suspend_period
            out.append(Warning("Suspended", deadline, f"suspended-{at}"))
            if now >= deadline - p.warn_before:
                out.append(Warning("TerminationSoon", deadline, f"termination-{at}"))
        else:
            out.append(Warning("Suspended", None, f"suspended-{s.suspendReason}-{at}"))
    elif s.state == "Terminated" and s.terminatedAt is not None:
        at = s.terminatedAt.isoformat()
        deadline = s.terminatedAt + p.retention
        out.append(Warning("Terminated", deadline, f"terminated-{at}"))
        if now >= deadline - p.warn_before:
            out.append(Warning("DeletionSoon", deadline, f"deletion-{at}"))
    return out


def _wake_at(s: SubscriptionStatus, f: BillingFacts, p: Policy, now: datetime) -> datetime | None:
    times: list[datetime] = []
    if s.state == "Overdue" and s.overdueSince is not None:
        times += [s.overdueSince + p.grace - p.warn_before, s.overdueSince + p.grace]
    if s.state == "Suspended" and s.suspendReason == "nonpayment" and s.suspendedAt is not None:
        times += [s.suspendedAt + p.suspend_period - p.warn_before, s.suspendedAt + p.suspend_period]
    if s.state == "Terminated" and s.terminatedAt is not None:
        times += [s.terminatedAt + p.retention - p.warn_before, s.terminatedAt + p.retention]
    if f.hold_until is not None:
        times.append(f.hold_until)
    future = [t for t in times if t > now]
    return min(future) if future else None


def next_billing_state(current: SubscriptionStatus | None, facts: BillingFacts, policy: Policy,
                       now: datetime) -> BillingDecision:
    """Where the subscription is at `now`: its status, the warnings owed, whether its VPS goes.

    Transitions repeat until nothing changes (a controller that was down for a week catches
    up in one call), but every new timestamp is `now`: time the controller did not see
    never counts against the customer. Warnings of every state passed through are returned,
    in order, so a notice always precedes the step it announces.
    """
    s = current or SubscriptionStatus()
    path: list[SubscriptionState] = [s.state]
    warnings: list[Warning] = []
    for _ in range(8):
        warnings += _warnings(s, facts, policy, now)
        nxt = _step(s, facts, policy, now)
        if nxt == s:
            break
        s = nxt
        if s.state != path[-1]:
            path.append(s.state)
    unique: list[Warning] = []
    for w in warnings:
        if all(u.key != w.key for u in unique):
            unique.append(w)
    delete = (s.state == "Terminated" and s.terminatedAt is not None and now >= s.terminatedAt + policy.retention)
    return BillingDecision(status=s, path=tuple(path), warnings=tuple(unique), delete_vps=delete,
                           wake_at=_wake_at(s, facts, policy, now))


__all__ = [
    "DEFAULT_POLICY", "LEGAL", "BillingDecision", "BillingFacts", "Policy", "Warning",
    "effective_policy", "next_billing_state",
]


def decide_subscription(customer: Customer, sub: Subscription, plan: Plan | None, balance_minor: int, now: datetime,
                        defaults: Policy = DEFAULT_POLICY) -> BillingDecision:
    """The billing controller's decision for one subscription, from what it read (a snapshot). Pure.

    The facts (balance against the credit limit, the latest hold, operator suspension, cancellation,
    external billing) and the policy (plan and customer overrides over `defaults`) feed
    `next_billing_state`; the controller commits the decision (status, warnings, deletion)."""
    policy = effective_policy(plan.spec.billing if plan else None, customer.spec.billing, defaults)
    holds = [h for h in (sub.spec.suspendHoldUntil, customer.spec.suspendHoldUntil) if h is not None]
    facts = BillingFacts(balance_minor=balance_minor,
                         credit_limit_minor=to_minor(customer.spec.creditLimit, customer.spec.currency),
                         operator_suspend=sub.spec.suspend, hold_until=max(holds) if holds else None,
                         cancelled=sub.spec.cancelled, external=sub.spec.billingMode == "external")
    return next_billing_state(sub.status, facts, policy, now)


def needs_status_write(sub: Subscription, decision: BillingDecision) -> bool:
    """Whether the decision changes the stored status (a subscription without one always gets one)."""
    return sub.status is None or decision.status != sub.status
