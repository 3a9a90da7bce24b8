"""Hourly charging arithmetic: 672-hour cap, exact monthly totals, proration, termination."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from controllers.billing.charging import HOURS_PER_MONTH, Cursor, hour_price, plan_charge, plugged_memory, span_price
from specs.kinds import VPS, Plan, Subscription

H = timedelta(hours=1)
NOV = datetime(2026, 11, 1, tzinfo=UTC)


def plan(name: str, amount: str, currency: str = "EUR") -> Plan:
    return Plan.model_validate({"metadata": {"name": name}, "spec": {
        "vcpus": 1, "memoryMiB": 512, "diskGiB": 10, "price": {"amount": amount, "currency": currency}}})


def sub(plan_name: str = "small", created: datetime = NOV, **status: object) -> Subscription:
    return Subscription.model_validate({
        "metadata": {"name": "s1", "uid": "u1", "creationTimestamp": created.isoformat()},
        "spec": {"customer": "c1", "plan": plan_name}, "status": status or None})


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10**9), st.sampled_from([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]))
def test_a_full_month_costs_exactly_the_price(price: int, month: int) -> None:
    """Every hour of any calendar month adds up to exactly the monthly price, never more."""
    start = datetime(2026, month, 1, tzinfo=UTC)
    end = datetime(2026 + month // 12, month % 12 + 1, 1, tzinfo=UTC)
    assert span_price(price, start, end) == price
    hours = int((end - start) / H)
    assert sum(hour_price(price, start + i * H) for i in range(hours)) == price
    assert all(hour_price(price, start + i * H) == 0 for i in range(HOURS_PER_MONTH, hours))


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10**7), st.integers(0, 24 * 70), st.integers(0, 24 * 70), st.integers(0, 24 * 70))
def test_spans_add_up(price: int, a: int, b: int, c: int) -> None:
    """Charging [a, b) then [b, c) costs the same as [a, c): the run size never changes the money."""
    a, b, c = sorted((a, b, c))
    t = NOV - timedelta(days=20)
    assert span_price(price, t + a * H, t + b * H) + span_price(price, t + b * H, t + c * H) == \
        span_price(price, t + a * H, t + c * H)


def test_first_charge_covers_the_hours_started_since_creation() -> None:
    """A subscription created at 10:20 is charged for 10:00 and 11:00 at 11:05."""
    step = plan_charge(sub(created=NOV + timedelta(hours=10, minutes=20)), plan("small", "6.72"), None,
                       NOV + timedelta(hours=11, minutes=5))
    assert step is not None
    assert (step.start, step.end, step.amount_minor) == (NOV + 10 * H, NOV + 12 * H, 2)
    assert step.cursor.through == NOV + 12 * H


def test_nothing_to_do_when_the_hour_is_already_charged() -> None:
    """Running again within the same hour writes nothing."""
    p = plan("small", "6.72")
    cur = Cursor("s1", "u1", "c1", NOV + 12 * H, "small", 672, "EUR", 5)
    assert plan_charge(sub(), p, cur, NOV + timedelta(hours=11, minutes=59)) is None


def test_plan_change_is_prorated_to_the_hour() -> None:
    """After an upgrade the started hours are at the old price, the next hour at the new one."""
    cur = Cursor("s1", "u1", "c1", NOV + 10 * H, "small", 672, "EUR", 5)
    big = plan("big", "67.20")
    step = plan_charge(sub("big"), big, cur, NOV + timedelta(hours=10, minutes=30))
    assert step is not None and step.plan == "small" and step.amount_minor == 1
    assert (step.cursor.plan, step.cursor.priceMinor, step.cursor.through) == ("big", 6720, NOV + 11 * H)
    nxt = plan_charge(sub("big"), big, step.cursor, NOV + timedelta(hours=11, minutes=1))
    assert nxt is not None and nxt.plan == "big" and nxt.amount_minor == 10


def test_new_plan_is_charged_only_once_its_memory_is_there() -> None:
    """An upgrade whose memory the VPS does not have yet (growth at next reboot) goes on at the old price."""
    cur = Cursor("s1", "u1", "c1", NOV + 10 * H, "small", 672, "EUR", 5)
    big = Plan.model_validate({"metadata": {"name": "big"}, "spec": {
        "vcpus": 1, "memoryMiB": 1024, "diskGiB": 10, "price": {"amount": "67.20", "currency": "EUR"}}})
    held = plan_charge(sub("big"), big, cur, NOV + timedelta(hours=11, minutes=1), plugged_mib=256)
    assert held is not None and held.plan == "small" and held.amount_minor == 2
    assert (held.cursor.plan, held.cursor.priceMinor) == ("small", 672)
    there = plan_charge(sub("big"), big, held.cursor, NOV + timedelta(hours=12, minutes=1), plugged_mib=1024)
    assert there is not None and there.amount_minor == 1 and there.cursor.plan == "big"
    nxt = plan_charge(sub("big"), big, there.cursor, NOV + timedelta(hours=13, minutes=1), plugged_mib=1024)
    assert nxt is not None and nxt.amount_minor == 10
    vps = VPS.model_validate({"metadata": {"name": "v1"}, "spec": {"subscription": "s1", "image": "debian",
                                                                     "hostname": "v1"},
                              "status": {"actual": {"memoryMiB": 256}}})
    assert plugged_memory([vps], [sub("big")]) == {"s1": 256}


def test_no_charge_after_termination() -> None:
    """Hours that start after terminatedAt are never charged, however late the run."""
    terminated = NOV + timedelta(hours=5, minutes=10)
    s = sub(state="Terminated", terminatedAt=terminated.isoformat())
    step = plan_charge(s, plan("small", "6.72"), None, NOV + timedelta(days=9))
    assert step is not None and step.end == NOV + 6 * H and step.amount_minor == 6
    assert plan_charge(s, plan("small", "6.72"), step.cursor, NOV + timedelta(days=30)) is None


def test_external_billing_moves_the_cursor_without_charging() -> None:
    """An externally billed subscription is never charged here."""
    s = sub()
    s = s.model_copy(update={"spec": s.spec.model_copy(update={"billingMode": "external"})})
    step = plan_charge(s, plan("small", "6.72"), None, NOV + timedelta(days=2))
    assert step is not None and step.amount_minor == 0 and step.cursor.through == NOV + 49 * H


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 700), st.sampled_from(["a", "b", "c"])), min_size=1, max_size=6),
       st.lists(st.integers(1, 50), min_size=1, max_size=40))
def test_month_with_plan_changes_costs_the_prorated_price(changes: list[tuple[int, str]], runs: list[int]) -> None:
    """Over a month with plan changes at any hours and runs at any times, the total is the per-hour proration."""
    prices = {"a": plan("a", "10.00"), "b": plan("b", "33.33"), "c": plan("c", "99.99")}
    schedule = {h: name for h, name in changes}
    current = "a"
    cur: Cursor | None = None
    total = 0
    t = NOV
    expected_plan: dict[int, str] = {}
    hour = 0
    end = datetime(2026, 12, 1, tzinfo=UTC)
    for step_hours in runs * 20:
        if t >= end:
            break
        t = min(t + step_hours * H - timedelta(minutes=1), end - timedelta(minutes=1))
        for h in sorted(schedule):
            if NOV + h * H <= t:
                current = schedule.pop(h)
        step = plan_charge(sub(current), prices[current], cur, t)
        if step is None:
            continue
        while NOV + hour * H < step.end:
            expected_plan[hour] = step.plan
            hour += 1
        total += step.amount_minor
        cur = step.cursor
    want = sum(hour_price(prices[p].spec.price.minor, NOV + h * H) for h, p in expected_plan.items())
    assert total == want
    exact = sum(prices[p].spec.price.minor for h, p in expected_plan.items() if h < HOURS_PER_MONTH) / 672
    assert abs(total - exact) <= len(changes) + 2
