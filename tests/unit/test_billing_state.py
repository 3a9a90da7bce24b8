"""next_billing_state: the lifecycle table, policy layering, and properties over any history."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from controllers.billing.lifecycle import (
    DEFAULT_POLICY,
    LEGAL,
    BillingFacts,
    Policy,
    effective_policy,
    next_billing_state,
)
from specs.kinds import BillingPolicy, SubscriptionStatus

T0 = datetime(2026, 11, 1, tzinfo=UTC)
D = timedelta(days=1)
P = DEFAULT_POLICY
DEBT = BillingFacts(balance_minor=-1)
PAID = BillingFacts(balance_minor=0)


def st_(state: str, **kw: object) -> SubscriptionStatus:
    return SubscriptionStatus.model_validate({"state": state, **kw})


# (name, current status, facts, now, expected state, expected reason)
TABLE = [
    ("active stays active when paid", st_("Active"), PAID, T0, "Active", None),
    ("active with credit left stays active", st_("Active"), BillingFacts(-500, 1000), T0, "Active", None),
    ("debt beyond credit limit makes it overdue", st_("Active"), BillingFacts(-1001, 1000), T0, "Overdue", None),
    ("overdue within grace stays overdue", st_("Overdue", overdueSince=T0), DEBT, T0 + 2 * D, "Overdue", None),
    ("grace over suspends for non-payment", st_("Overdue", overdueSince=T0), DEBT, T0 + 3 * D, "Suspended",
     "nonpayment"),
    ("hold keeps a debtor overdue past grace", st_("Overdue", overdueSince=T0),
     BillingFacts(-1, hold_until=T0 + 10 * D), T0 + 5 * D, "Overdue", None),
    ("an expired hold no longer protects", st_("Overdue", overdueSince=T0),
     BillingFacts(-1, hold_until=T0 + 4 * D), T0 + 5 * D, "Suspended", "nonpayment"),
    ("a hold lifts a non-payment suspension back to overdue",
     st_("Suspended", suspendReason="nonpayment", suspendedAt=T0, overdueSince=T0 - 3 * D),
     BillingFacts(-1, hold_until=T0 + 5 * D), T0 + D, "Overdue", None),
    ("payment lifts a non-payment suspension",
     st_("Suspended", suspendReason="nonpayment", suspendedAt=T0, overdueSince=T0), PAID, T0 + D, "Active", None),
    ("payment does not lift an abuse suspension",
     st_("Suspended", suspendReason="abuse", suspendedAt=T0), BillingFacts(0, operator_suspend="abuse"), T0 + D,
     "Suspended", "abuse"),
    ("operator suspension applies at once", st_("Active"), BillingFacts(100, operator_suspend="admin"), T0,
     "Suspended", "admin"),
    ("operator lift returns a paid subscription to active", st_("Suspended", suspendReason="admin", suspendedAt=T0),
     PAID, T0 + D, "Active", None),
    ("operator lift leaves a debtor overdue", st_("Suspended", suspendReason="abuse", suspendedAt=T0), DEBT,
     T0 + D, "Overdue", None),
    ("abuse suspension never terminates by itself", st_("Suspended", suspendReason="abuse", suspendedAt=T0),
     BillingFacts(-1, operator_suspend="abuse"), T0 + 100 * D, "Suspended", "abuse"),
    ("suspension period over terminates",
     st_("Suspended", suspendReason="nonpayment", suspendedAt=T0, overdueSince=T0 - 3 * D), DEBT, T0 + 14 * D,
     "Terminated", "nonpayment"),
    ("terminated is final even when paid", st_("Terminated", terminatedAt=T0), BillingFacts(10**6), T0 + D,
     "Terminated", None),
    ("cancelled terminates at once", st_("Active"), BillingFacts(0, cancelled=True), T0, "Terminated", None),
    ("external billing keeps the state it was given", st_("Suspended", suspendReason="admin", suspendedAt=T0),
     BillingFacts(10**6, external=True), T0 + D, "Suspended", "admin"),
    ("external billing ignores debt", st_("Active"), BillingFacts(-10**6, external=True), T0, "Active", None),
]


@pytest.mark.parametrize(("name", "current", "facts", "now", "state", "reason"), TABLE, ids=[t[0] for t in TABLE])
def test_lifecycle_table(name: str, current: SubscriptionStatus, facts: BillingFacts, now: datetime, state: str,
                         reason: str | None) -> None:
    """Each row of the lifecycle table gives its state and suspension reason."""
    out = next_billing_state(current, facts, P, now)
    assert out.status.state == state
    assert out.status.suspendReason == reason


def test_retention_deletes_only_after_it_has_passed() -> None:
    """The VPS is deleted once terminatedAt + retention has passed, not a second before."""
    s = st_("Terminated", terminatedAt=T0)
    assert not next_billing_state(s, DEBT, P, T0 + 7 * D - timedelta(seconds=1)).delete_vps
    assert next_billing_state(s, DEBT, P, T0 + 7 * D).delete_vps


def test_warnings_precede_suspension_and_deletion() -> None:
    """A warning is owed a day before suspension, termination and deletion, with a stable key."""
    over = st_("Overdue", overdueSince=T0)
    assert [w.kind for w in next_billing_state(over, DEBT, P, T0 + D).warnings] == ["Overdue"]
    soon = next_billing_state(over, DEBT, P, T0 + 2 * D).warnings
    assert [w.kind for w in soon] == ["Overdue", "SuspensionSoon"]
    assert soon[1].deadline == T0 + 3 * D
    assert soon == next_billing_state(over, DEBT, P, T0 + 2 * D + timedelta(hours=5)).warnings
    term = st_("Terminated", terminatedAt=T0)
    assert [w.kind for w in next_billing_state(term, DEBT, P, T0 + 6 * D).warnings] == ["Terminated", "DeletionSoon"]


def test_time_jump_passes_through_states_with_their_warnings() -> None:
    """After a long outage an overdue debtor is suspended now, warned first, never terminated at once."""
    out = next_billing_state(st_("Overdue", overdueSince=T0), DEBT, P, T0 + 60 * D)
    assert out.path == ("Overdue", "Suspended")
    assert out.status.suspendedAt == T0 + 60 * D
    assert [w.kind for w in out.warnings] == ["Overdue", "SuspensionSoon", "Suspended"]


def test_wake_at_is_the_next_clock_change() -> None:
    """wake_at names the next moment the answer changes by the clock alone."""
    out = next_billing_state(st_("Overdue", overdueSince=T0), DEBT, P, T0)
    assert out.wake_at == T0 + 2 * D
    assert next_billing_state(st_("Active"), PAID, P, T0).wake_at is None


def test_policy_layers_customer_over_plan_over_defaults() -> None:
    """A customer's override beats the plan's, which beats the default."""
    plan = BillingPolicy(graceDays=5, retentionDays=30)
    cust = BillingPolicy(graceDays=1)
    p = effective_policy(plan, cust)
    assert (p.grace, p.retention, p.suspend_period) == (D, 30 * D, 14 * D)
    assert effective_policy(None, None) == DEFAULT_POLICY


# ------------------------------------------------------------------ properties

states = st.sampled_from(["Active", "Overdue", "Suspended", "Terminated"])
reasons = st.sampled_from([None, "nonpayment", "abuse", "admin", "customer"])
offsets = st.integers(min_value=-40 * 24, max_value=0).map(lambda h: T0 + timedelta(hours=h))


@st.composite
def statuses(draw: st.DrawFn) -> SubscriptionStatus:
    state = draw(states)
    kw: dict[str, object] = {"state": state}
    if state in ("Overdue", "Suspended", "Terminated"):
        kw["overdueSince"] = draw(st.none() | offsets)
    if state in ("Suspended", "Terminated"):
        kw["suspendedAt"] = draw(st.none() | offsets)
        kw["suspendReason"] = draw(reasons)
    if state == "Terminated":
        kw["terminatedAt"] = draw(offsets)
    return SubscriptionStatus.model_validate(kw)


facts_st = st.builds(
    BillingFacts,
    balance_minor=st.integers(-10**6, 10**6),
    credit_limit_minor=st.integers(0, 10**5),
    operator_suspend=st.sampled_from([None, "abuse", "admin", "customer"]),
    hold_until=st.none() | st.integers(-100, 100).map(lambda h: T0 + timedelta(hours=h)),
    cancelled=st.booleans(),
    external=st.booleans(),
)
policies = st.builds(
    Policy,
    grace=st.integers(0, 10).map(lambda d: timedelta(days=d)),
    suspend_period=st.integers(0, 30).map(lambda d: timedelta(days=d)),
    retention=st.integers(0, 30).map(lambda d: timedelta(days=d)),
)


@settings(max_examples=200, deadline=None)
@given(statuses(), facts_st, policies, st.integers(0, 60 * 24).map(lambda h: T0 + timedelta(hours=h)))
def test_decision_is_a_fixed_point_with_legal_steps(s: SubscriptionStatus, f: BillingFacts, p: Policy,
                                                   now: datetime) -> None:
    """Deciding again at the same instant changes nothing, and every step taken is a legal transition."""
    out = next_billing_state(s, f, p, now)
    again = next_billing_state(out.status, f, p, now)
    assert again.status == out.status
    assert again.path == (out.status.state,)
    for a, b in zip(out.path, out.path[1:], strict=False):
        assert b in LEGAL[a]
    if s.state == "Terminated":
        assert out.status == s
    if out.status.state == "Suspended" and not f.external and s.state != "Terminated":
        assert out.status.suspendedAt is not None and out.status.suspendReason is not None


@settings(max_examples=200, deadline=None)
@given(statuses(), facts_st, policies, st.integers(0, 60 * 24).map(lambda h: T0 + timedelta(hours=h)))
def test_only_money_time_or_an_operator_moves_a_subscription(s: SubscriptionStatus, f: BillingFacts, p: Policy,
                                                            now: datetime) -> None:
    """No suspension without debt or an operator; no termination without cancellation or a served suspension."""
    out = next_billing_state(s, f, p, now)
    st_out = out.status
    if s.state != "Terminated" and st_out.state == "Terminated":
        assert f.cancelled or (f.in_debt and not f.external and f.operator_suspend is None)
    if st_out.state == "Suspended" and st_out.suspendReason == "nonpayment" and s.state != "Suspended":
        assert f.in_debt and not (f.hold_until and f.hold_until > now)
        assert st_out.overdueSince is not None and now >= st_out.overdueSince + p.grace
    if not f.in_debt and not f.cancelled and not f.external and f.operator_suspend is None:
        assert st_out.state in ("Active", "Terminated")
    if f.operator_suspend in ("abuse", "admin") and s.state != "Terminated" and not f.cancelled and not f.external:
        assert st_out.state == "Suspended" and st_out.suspendReason == f.operator_suspend


class LifecycleMachine(RuleBasedStateMachine):
    """A subscription over time: payments, charges, holds, operator actions and clock jumps."""

    def __init__(self) -> None:
        super().__init__()
        self.now = T0
        self.balance = 0
        self.hold: datetime | None = None
        self.op: str | None = None
        self.status = SubscriptionStatus()
        self.terminated_at: datetime | None = None

    def _decide(self) -> None:
        facts = BillingFacts(self.balance, 0, self.op, self.hold)  # type: ignore[arg-type]
        before = self.status
        out = next_billing_state(before, facts, P, self.now)
        for a, b in zip(out.path, out.path[1:], strict=False):
            assert b in LEGAL[a]
        self.status = out.status
        if before.state == "Terminated":
            assert out.status == before

    @rule(amount=st.integers(1, 10_000))
    def pay(self, amount: int) -> None:
        self.balance += amount
        self._decide()

    @rule(amount=st.integers(1, 10_000))
    def charge(self, amount: int) -> None:
        if self.status.state != "Terminated":
            self.balance -= amount
        self._decide()

    @rule(hours=st.integers(1, 24 * 20))
    def time_passes(self, hours: int) -> None:
        self.now += timedelta(hours=hours)
        self._decide()

    @rule(days=st.integers(0, 10))
    def hold_for(self, days: int) -> None:
        self.hold = self.now + timedelta(days=days)
        self._decide()

    @rule(reason=st.sampled_from([None, "abuse", "admin"]))
    def operator(self, reason: str | None) -> None:
        self.op = reason
        self._decide()

    @invariant()
    def consistent(self) -> None:
        s = self.status
        if s.state == "Active":
            assert s.overdueSince is None and s.suspendedAt is None
        if s.state == "Overdue":
            assert self.balance < 0 and s.overdueSince is not None
        if s.state == "Terminated":
            assert s.terminatedAt is not None and s.terminatedAt <= self.now
        if s.state == "Suspended" and s.suspendReason == "nonpayment":
            assert self.op is None and self.balance < 0


TestLifecycleMachine = LifecycleMachine.TestCase
TestLifecycleMachine.settings = settings(max_examples=100, stateful_step_count=30, deadline=None)
