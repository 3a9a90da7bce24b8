"""The ledger and hourly charging on a real etcd: once-only keys, balance = sum, statements, races."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from controllers.billing import ledger
from controllers.billing.charging import Charger, read_cursor
from reconcile import keys
from reconcile.etcd import ModIs
from reconcile.objects import Store
from specs.kinds import Customer, Plan, Subscription

T0 = datetime(2026, 11, 1, tzinfo=UTC)
H = timedelta(hours=1)


def make_customer(store: Store, name: str = "acme", currency: str = "EUR", credit: str = "0") -> None:
    store.create(Customer.model_validate({"metadata": {"name": name}, "spec": {
        "email": f"{name}@example.com", "currency": currency, "creditLimit": credit}}))


def make_plan(store: Store, name: str = "small", amount: str = "6.72", currency: str = "EUR") -> None:
    store.create(Plan.model_validate({"metadata": {"name": name}, "spec": {
        "vcpus": 1, "memoryMiB": 512, "diskGiB": 10, "price": {"amount": amount, "currency": currency}}}))


def make_sub(store: Store, name: str, customer: str = "acme", plan: str = "small", created: datetime = T0) -> None:
    store.create(Subscription.model_validate({"metadata": {"name": name, "creationTimestamp": created.isoformat()},
                                              "spec": {"customer": customer, "plan": plan}}))


def pay(store: Store, minor: int, key: str, *, customer: str = "acme", currency: str = "EUR",
        now: datetime = T0) -> ledger.Applied:
    entry = ledger.NewEntry("payment", minor, currency, "payment-manual", key, fingerprint=f"{customer}/{minor}")
    return ledger.append(store, customer, [entry], now=now)[0]


def assert_adds_up(store: Store, customer: str = "acme") -> int:
    acct, total, status = ledger.audit(store, customer)
    assert acct == total == status
    return acct


def test_payment_moves_balance_and_status_together(store: Store) -> None:
    """A payment is an entry, the account balance and Customer.status, all equal to the sum."""
    make_customer(store)
    a = pay(store, 50_000, "BANK-1")
    assert not a.duplicate and a.result["balance"] == "500.00"
    assert assert_adds_up(store) == 50_000
    cust = store.get(Customer, "acme")
    assert cust.status is not None and cust.status.balance == "500.00" and cust.status.state == "Active"
    [e] = ledger.entries(store, "acme")
    assert (e.type, e.amountMinor, e.currency, e.key) == ("payment", 50_000, "EUR", "payment-manual/BANK-1")


def test_same_key_is_applied_once_and_answered_the_same(store: Store) -> None:
    """Delivering a payment twice credits it once; the second answer is the first one."""
    make_customer(store)
    first = pay(store, 1000, "TX-9")
    second = pay(store, 1000, "TX-9", now=T0 + H)
    assert second.duplicate and second.result == first.result
    assert assert_adds_up(store) == 1000
    with pytest.raises(ledger.KeyReused):
        pay(store, 2000, "TX-9")
    assert assert_adds_up(store) == 1000


def test_concurrent_deliveries_credit_once(store: Store) -> None:
    """Eight threads delivering the same payment at once credit it exactly once."""
    make_customer(store)
    results: list[ledger.Applied] = []
    barrier = threading.Barrier(8)

    def deliver() -> None:
        barrier.wait()
        results.append(pay(store, 777, "TX-RACE"))

    threads = [threading.Thread(target=deliver) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(not r.duplicate for r in results) == 1
    assert len({r.result["seq"] for r in results}) == 1
    assert assert_adds_up(store) == 777


def test_concurrent_distinct_payments_all_count(store: Store) -> None:
    """Many different payments racing on one account all land, and the balance is their sum."""
    make_customer(store)
    threads = [threading.Thread(target=pay, args=(store, 100 + i, f"P{i}")) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert assert_adds_up(store) == sum(100 + i for i in range(10))
    assert [e.seq for e in ledger.entries(store, "acme")] == list(range(1, 11))


@pytest.mark.parametrize(("entry", "field"), [
    (ledger.NewEntry("payment", 0, "EUR", "s", "k"), "amount"),
    (ledger.NewEntry("payment", -5, "EUR", "s", "k"), "amount"),
    (ledger.NewEntry("charge", 5, "EUR", "s", "k"), "amount"),
    (ledger.NewEntry("payment", 5, "USD", "s", "k"), "currency"),
    (ledger.NewEntry("payment", 5, "XXX", "s", "k"), "currency"),
    (ledger.NewEntry("payment", 5, "EUR", "", "k"), "key"),
])
def test_bad_entries_are_refused_and_change_nothing(store: Store, entry: ledger.NewEntry, field: str) -> None:
    """A bad amount, currency or key is refused naming the field; the ledger is untouched."""
    make_customer(store)
    with pytest.raises(ledger.InvalidEntry) as exc:
        ledger.append(store, "acme", [entry], now=T0)
    assert exc.value.field == field
    assert ledger.entries(store, "acme") == [] and assert_adds_up(store) == 0


def test_unknown_customer_is_refused(store: Store) -> None:
    """A payment for a customer that does not exist is an error and writes nothing."""
    with pytest.raises(ledger.UnknownCustomer):
        pay(store, 100, "X", customer="ghost")
    assert store.kv_range(keys.ledger_prefix("ghost", store.root))[0] == []


def test_amounts_with_too_many_decimals_are_refused() -> None:
    """'1.005' EUR and a float with hidden digits are refused before any write."""
    with pytest.raises(ledger.InvalidEntry, match="amount"):
        ledger.parse_amount("1.005", "EUR")
    with pytest.raises(ledger.InvalidEntry, match="amount"):
        ledger.parse_amount(0.1 + 0.2, "EUR")
    assert ledger.parse_amount("500.00", "EUR") == 50_000


def test_failed_guard_writes_nothing(store: Store) -> None:
    """When a caller's compare (a deposed leader's fence) fails, nothing is appended."""
    make_customer(store)
    store.kv_put(store.root + "/fence", b"x")
    with pytest.raises(ledger.GuardFailed):
        ledger.append(store, "acme", [ledger.NewEntry("credit", 5, "EUR", "s", "k")], now=T0,
                      guard=[ModIs(store.root + "/fence", 1)])
    assert assert_adds_up(store) == 0 and ledger.read_key(store, "s", "k") is None


def test_closed_months_roll_up_into_statements(store: Store) -> None:
    """Ended months become statements, their entries leave etcd, and the balance still adds up."""
    make_customer(store)
    for i, month in enumerate((9, 10, 10)):
        pay(store, 1000 * (i + 1), f"M{i}", now=datetime(2026, month, 15, tzinfo=UTC))
    ledger.append(store, "acme", [ledger.NewEntry("charge", -300, "EUR", "charge", "c1", subscription="s1",
                                                  plan="small", period_start=T0 - 48 * H, period_end=T0 - 24 * H)],
                  now=datetime(2026, 10, 30, tzinfo=UTC))
    pay(store, 4000, "M3", now=datetime(2026, 11, 15, tzinfo=UTC))
    preview = ledger.statement(store, "acme", "2026-10")
    assert not preview.final and preview.openingMinor == 1000 and preview.closingMinor == 1000 + 2000 + 3000 - 300
    closed = ledger.roll_up(store, "acme", now=datetime(2026, 11, 20, tzinfo=UTC))
    assert closed == ["2026-09", "2026-10"]
    assert [e.amountMinor for e in ledger.entries(store, "acme")] == [4000]
    assert len(store.kv_range(keys.ledger_prefix("acme", store.root))[0]) == 1
    oct_ = ledger.statement(store, "acme", "2026-10")
    assert oct_.final and oct_.openingMinor == 1000 and oct_.closingMinor == 5700
    assert oct_.totals == {"payment": 5000, "charge": -300}
    assert {"type": "charge", "subscription": "s1", "plan": "small", "hours": 24, "amountMinor": -300,
            "amount": "-3.00"} in oct_.lines
    assert ledger.statements(store, "acme") == ["2026-09", "2026-10"]
    assert assert_adds_up(store) == 10_000 - 300
    assert ledger.roll_up(store, "acme", now=datetime(2026, 11, 21, tzinfo=UTC)) == []
    quiet = ledger.statement(store, "acme", "2026-08")
    assert quiet.final and quiet.openingMinor == quiet.closingMinor == 0 and quiet.lines == []


def test_late_entry_for_a_closed_month_goes_on_the_next_statement(store: Store) -> None:
    """An entry stamped in a month already closed (a clock behind) is carried by the next statement, not lost."""
    make_customer(store)
    pay(store, 100, "A", now=datetime(2026, 9, 10, tzinfo=UTC))
    assert ledger.roll_up(store, "acme", now=datetime(2026, 10, 2, tzinfo=UTC)) == ["2026-09"]
    pay(store, 200, "LATE", now=datetime(2026, 9, 30, 23, 59, tzinfo=UTC))
    pay(store, 400, "B", now=datetime(2026, 10, 5, tzinfo=UTC))
    assert ledger.roll_up(store, "acme", now=datetime(2026, 11, 2, tzinfo=UTC)) == ["2026-10"]
    oct_ = ledger.statement(store, "acme", "2026-10")
    assert (oct_.openingMinor, oct_.closingMinor, oct_.totals) == (100, 700, {"payment": 600})
    assert ledger.entries(store, "acme") == [] and assert_adds_up(store) == 700


def test_charging_run_charges_each_hour_once(store: Store) -> None:
    """Repeated and concurrent charging runs take each started hour exactly once."""
    make_customer(store)
    make_plan(store)
    for i in range(3):
        make_sub(store, f"s{i}")
    now = T0 + timedelta(hours=9, minutes=30)
    chargers = [Charger(store) for _ in range(4)]
    threads = [threading.Thread(target=c.run, args=(now,)) for c in chargers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    Charger(store).run(now)
    # 10 started hours at 672/672 per hour, for 3 subscriptions.
    assert assert_adds_up(store) == -30
    cur = read_cursor(store, "s0")
    assert cur is not None and cur.through == T0 + 10 * H
    later = Charger(store).run(T0 + timedelta(hours=12, minutes=1))
    assert later.amount_minor == 9 and assert_adds_up(store) == -39


def test_fenced_out_charger_takes_nothing(store: Store) -> None:
    """A charger whose leader fence fails charges nothing and moves no cursor."""
    make_customer(store)
    make_plan(store)
    make_sub(store, "s0")
    store.kv_put(store.root + "/fence", b"x")
    report = Charger(store, fence=lambda: ModIs(store.root + "/fence", 1)).run(T0 + 5 * H)
    assert report.amount_minor == 0 and report.errors
    assert read_cursor(store, "s0") is None and assert_adds_up(store) == 0


def test_month_of_charges_equals_the_plan_price(store: Store) -> None:
    """Charging a whole November at irregular times takes exactly the plan's monthly price."""
    make_customer(store)
    make_plan(store, amount="99.99")
    make_sub(store, "s0")
    c = Charger(store)
    t = T0
    for step in (1, 5, 17, 100, 3, 300, 250, 50, 1000):
        t = min(t + step * H, datetime(2026, 11, 30, 23, 59, tzinfo=UTC))
        c.run(t)
    assert assert_adds_up(store) == -9999
