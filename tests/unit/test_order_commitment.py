"""The order's money check as a pure function: the monthly commitment of a customer's subscriptions."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from api.orders import monthly_commitment
from specs.kinds import Subscription, SubscriptionSpec, SubscriptionStatus
from specs.meta import ObjectMeta

PRICES = {"s1": 500, "s2": 1724, "big": 9999}

subs = st.lists(st.tuples(st.sampled_from(["acme", "globex"]), st.sampled_from([*PRICES, "gone"]),
                          st.booleans(), st.sampled_from(["Active", "Overdue", "Suspended", "Terminated"])),
                max_size=12)


def build(rows: list[tuple[str, str, bool, str]]) -> list[Subscription]:
    return [Subscription(metadata=ObjectMeta(name=f"s-{i}"),
                         spec=SubscriptionSpec(customer=c, plan=p, cancelled=cancelled),
                         status=SubscriptionStatus(state=state)) for i, (c, p, cancelled, state) in enumerate(rows)]


@given(subs)
def test_commitment_counts_only_the_customers_live_subscriptions(rows: list[tuple[str, str, bool, str]]) -> None:
    """The sum of the plan prices of acme's subscriptions that are neither cancelled nor terminated."""
    expected = sum(PRICES.get(p, 0) for c, p, cancelled, state in rows
                   if c == "acme" and not cancelled and state != "Terminated")
    assert monthly_commitment(build(rows), PRICES, "acme") == expected


@given(subs, st.sampled_from(list(PRICES)))
def test_one_more_live_subscription_adds_exactly_its_price(rows: list[tuple[str, str, bool, str]], plan: str) -> None:
    """Ordering grows the commitment by the new plan's price, whatever else exists: no order is counted alone."""
    before = monthly_commitment(build(rows), PRICES, "acme")
    after = monthly_commitment(build([*rows, ("acme", plan, False, "Active")]), PRICES, "acme")
    assert after - before == PRICES[plan]
    assert monthly_commitment(build([*rows, ("globex", plan, False, "Active")]), PRICES, "acme") == before
