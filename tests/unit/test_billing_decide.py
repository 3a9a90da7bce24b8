"""The billing controller's per-subscription decision from a snapshot (customer, subscription, plan, balance)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from controllers.billing.lifecycle import DEFAULT_POLICY, decide_subscription, needs_status_write
from tests.helpers import builders as b

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def test_debt_beyond_the_credit_limit_makes_a_subscription_overdue() -> None:
    """Balance below minus the credit limit: Active -> Overdue, written; within it nothing changes."""
    d = decide_subscription(b.customer(), b.subscription(), b.plan(), -1, NOW)
    assert d.status.state == "Overdue" and needs_status_write(b.subscription(), d)
    same = decide_subscription(b.customer(), b.subscription(), b.plan(), 0, NOW)
    assert same.status.state == "Active" and not needs_status_write(b.subscription(), same)


def test_the_later_hold_of_customer_and_subscription_counts() -> None:
    """A customer's hold later than the subscription's keeps an overdue subscription from suspension."""
    sub = b.subscription(state="Overdue", overdueSince=NOW - timedelta(days=10))
    sub.spec.suspendHoldUntil = NOW - timedelta(days=1)
    held = decide_subscription(b.customer(hold=NOW + timedelta(days=1)), sub, b.plan(), -100, NOW)
    assert held.status.state == "Overdue"
    free = decide_subscription(b.customer(), sub, b.plan(), -100, NOW)
    assert free.status.state == "Suspended"


def test_plan_overrides_apply_over_the_defaults() -> None:
    """The plan's graceDays replaces the default grace period."""
    sub = b.subscription(state="Overdue", overdueSince=NOW - timedelta(days=2))
    assert decide_subscription(b.customer(), sub, b.plan(), -100, NOW).status.state == "Overdue"
    assert decide_subscription(b.customer(), sub, b.plan(graceDays=1), -100, NOW).status.state == "Suspended"
    assert DEFAULT_POLICY.grace == timedelta(days=3)


@given(balance=st.integers(min_value=-10**6, max_value=10**6))
def test_external_subscriptions_keep_their_state(balance: int) -> None:
    """Whatever the balance, billing never moves an externally billed subscription's state."""
    sub = b.subscription(state="Active")
    sub.spec.billingMode = "external"
    assert decide_subscription(b.customer(), sub, b.plan(), balance, NOW).status.state == "Active"
