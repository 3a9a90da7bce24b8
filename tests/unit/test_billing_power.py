"""billing.power_for — the resolver's one question to billing: table tests and properties."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from controllers.billing import DEFAULT_POLICY, Policy, ServerPower, power_for
from controllers.resolve import resolve
from tests.helpers import builders as b

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def test_power_table() -> None:
    """Active follows the server; suspended pauses then stops; terminated stops, then is gone after retention."""
    plan = b.plan()
    assert power_for(b.subscription(), NOW, plan=plan) == ServerPower()
    sus = b.subscription(state="Suspended", suspendReason="abuse", suspendedAt=NOW - timedelta(hours=1))
    assert power_for(sus, NOW, plan=plan) == ServerPower(
        power="Paused", reason="suspended: abuse", shutdown_after=timedelta(hours=24),
        next_change=NOW + timedelta(hours=23))
    assert power_for(sus, NOW + timedelta(days=2), plan=plan).power == "Stopped"
    term = b.subscription(state="Terminated", terminatedAt=NOW - timedelta(days=7))
    assert power_for(term, NOW, plan=plan) == ServerPower(exists=False, power="Stopped", reason="terminated")


def test_the_one_policy_sets_the_resolvers_delays() -> None:
    """An operator's Policy (billing's one policy) is what the resolver applies; plan overrides still win."""
    term = b.subscription(state="Terminated", terminatedAt=NOW - timedelta(days=2))
    short = Policy(retention=timedelta(days=1))
    assert resolve(b.vps(), term, b.plan(), b.image(), None, NOW, defaults=short) is None
    assert resolve(b.vps(), term, b.plan(), b.image(), None, NOW, defaults=DEFAULT_POLICY) is not None
    assert resolve(b.vps(), term, b.plan(retentionDays=3), b.image(), None, NOW, defaults=short) is not None


STATES = st.sampled_from(["Active", "Overdue", "Suspended", "Terminated"])
HOURS = st.integers(min_value=-60 * 24, max_value=60 * 24).map(lambda h: timedelta(hours=h))


@given(state=STATES, since=HOURS, later=st.integers(min_value=0, max_value=90 * 24))
def test_next_change_is_future_and_nothing_changes_before_it(state: str, since: timedelta, later: int) -> None:
    """next_change is after now, and the answer at any earlier instant equals the answer now."""
    stamps = {"suspendedAt": NOW + since} if state == "Suspended" else {"terminatedAt": NOW + since} \
        if state == "Terminated" else {}
    sub = b.subscription(state=state, **stamps)
    now = power_for(sub, NOW, plan=b.plan())
    assert now.next_change is None or now.next_change > NOW
    at = NOW + timedelta(hours=later)
    if now.next_change is None or at < now.next_change:
        assert power_for(sub, at, plan=b.plan()) == now
