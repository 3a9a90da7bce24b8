"""The billing controller on a real etcd with an injected clock: overdue, suspended, paid, terminated, deleted."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta

from controllers.billing import ledger
from controllers.billing.controller import BillingController
from controllers.events import read_events
from reconcile.errors import NotFound
from reconcile.etcd import ModIs
from reconcile.keys import outbox_prefix
from reconcile.objects import Store
from specs.kinds import VPS, Subscription
from tests.integration.test_billing_ledger import assert_adds_up, make_customer, make_plan, make_sub, pay

T0 = datetime(2026, 11, 1, tzinfo=UTC)
D = timedelta(days=1)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self.now

    def advance(self, delta: timedelta) -> None:
        with self._lock:
            self.now += delta


def setup(store: Store) -> None:
    make_customer(store)
    make_plan(store, amount="67.20")  # 10 cents an hour
    make_sub(store, "web")
    store.create(VPS.model_validate({"metadata": {"name": "web-1"}, "spec": {
        "subscription": "web", "image": "debian", "hostname": "web-1"}}))


def state(store: Store, name: str = "web") -> tuple[str, str | None]:
    status = store.get(Subscription, name).status
    assert status is not None
    return status.state, status.suspendReason


def outbox(store: Store) -> list[str]:
    kvs, _ = store.kv_range(outbox_prefix(store.root))
    return [json.loads(kv.value)["kind"] for kv in kvs]


def test_unpaid_subscription_is_suspended_after_grace_and_restored_by_payment(store: Store) -> None:
    """Running out of money: Overdue at once, warned, Suspended(nonpayment) after 3 days; a payment restores Active."""
    setup(store)
    clock = Clock(T0 + timedelta(minutes=30))
    ctl = BillingController(store, clock=clock)
    report = ctl.sync_customer("acme")
    assert report.charged_minor == 10 and state(store) == ("Overdue", None)
    clock.advance(2 * D)
    ctl.sync_customer("acme")
    assert state(store) == ("Overdue", None)
    assert outbox(store) == ["Overdue", "SuspensionSoon"]
    clock.advance(D)
    ctl.sync_customer("acme")
    assert state(store) == ("Suspended", "nonpayment")
    sub_status = store.get(Subscription, "web").status
    assert sub_status is not None and sub_status.suspendedAt == clock.now
    balance = assert_adds_up(store)
    assert balance == -10 * (3 * 24 + 1)
    pay(store, 100_000, "BANK-123", now=clock.now)
    ctl.sync_customer("acme")
    assert state(store) == ("Active", None)
    assert store.get(VPS, "web-1").metadata.deletionTimestamp is None
    # Warnings are queued once, however often the controller looks.
    ctl.sync_customer("acme")
    assert sorted(outbox(store)) == ["Overdue", "Suspended", "SuspensionSoon"]
    reasons = [(e["type"], e["reason"]) for e in read_events(store, "Subscription", "web")]
    assert ("Warning", "SuspensionSoon") in reasons and ("Normal", "Suspended") in reasons
    assert ("Normal", "Active") in reasons


def test_never_paying_ends_in_termination_and_deletion_without_further_charges(store: Store) -> None:
    """Never paying: Suspended, Terminated after 14 days, VPS deleted after 7 more; no charge after termination."""
    setup(store)
    clock = Clock(T0 + timedelta(minutes=30))
    ctl = BillingController(store, clock=clock)
    ctl.sync_customer("acme")
    for _ in range(3):
        clock.advance(D)
        ctl.sync_customer("acme")
    assert state(store) == ("Suspended", "nonpayment")
    clock.advance(14 * D)
    ctl.sync_customer("acme")
    assert state(store) == ("Terminated", "nonpayment")
    at_termination = assert_adds_up(store)
    clock.advance(6 * D)
    ctl.sync_customer("acme")
    assert store.get(VPS, "web-1").metadata.deletionTimestamp is None
    assert "DeletionSoon" in outbox(store)
    clock.advance(D)
    report = ctl.sync_customer("acme")
    assert report.deleted == ["web-1"]
    try:
        store.get(VPS, "web-1")
        raise AssertionError("the VPS should be gone")
    except NotFound:
        pass
    assert assert_adds_up(store) == at_termination
    assert "TerminationSoon" in outbox(store) and "Terminated" in outbox(store)


def test_operator_suspension_outlives_payment_and_hold_defers_suspension(store: Store) -> None:
    """An abuse suspension stays after payment until lifted; a hold keeps a debtor Overdue past grace."""
    setup(store)
    clock = Clock(T0 + timedelta(minutes=30))
    ctl = BillingController(store, clock=clock)
    sub = store.get(Subscription, "web")
    store.update(sub.model_copy(update={"spec": sub.spec.model_copy(update={
        "suspendHoldUntil": T0 + 10 * D})}))
    ctl.sync_customer("acme")
    clock.advance(5 * D)
    ctl.sync_customer("acme")
    assert state(store) == ("Overdue", None)
    sub = store.get(Subscription, "web")
    store.update(sub.model_copy(update={"spec": sub.spec.model_copy(update={"suspend": "abuse"})}))
    pay(store, 100_000, "P1", now=clock.now)
    ctl.sync_customer("acme")
    assert state(store) == ("Suspended", "abuse")
    sub = store.get(Subscription, "web")
    store.update(sub.model_copy(update={"spec": sub.spec.model_copy(update={"suspend": None})}))
    ctl.sync_customer("acme")
    assert state(store) == ("Active", None)


def test_two_controllers_at_once_charge_each_hour_once(store: Store) -> None:
    """Two billing controllers reconciling the same customer concurrently charge each hour once."""
    setup(store)
    clock = Clock(T0 + timedelta(hours=47, minutes=59))
    ctls = [BillingController(store, clock=clock) for _ in range(2)]
    threads = [threading.Thread(target=c.sync_customer, args=("acme",)) for c in ctls for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert assert_adds_up(store) == -480


def test_deposed_controller_changes_nothing(store: Store) -> None:
    """A controller whose fence fails neither charges nor moves a subscription's state."""
    setup(store)
    store.kv_put(store.root + "/election", b"other")
    ctl = BillingController(store, clock=Clock(T0 + 5 * D), fence=lambda: ModIs(store.root + "/election", 1))
    ctl.sync_customer("acme")
    assert assert_adds_up(store) == 0
    assert store.get(Subscription, "web").status is None


def test_payment_restores_a_suspended_subscription_within_seconds(store: Store) -> None:
    """With the watch loop running, a payment turns a suspended subscription Active within about a second."""
    setup(store)
    clock = Clock(T0 + timedelta(minutes=30))
    ctl = BillingController(store, clock=clock, interval=60.0).start()
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and (store.get(Subscription, "web").status is None):
            time.sleep(0.02)
        clock.advance(3 * D)
        ctl.kick("acme")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and state(store) != ("Suspended", "nonpayment"):
            time.sleep(0.02)
        assert state(store) == ("Suspended", "nonpayment")
        started = time.monotonic()
        pay(store, ledger.parse_amount("100.00", "EUR"), "BANK-7", now=clock.now)
        while time.monotonic() - started < 5 and state(store) != ("Active", None):
            time.sleep(0.01)
        assert state(store) == ("Active", None)
        assert time.monotonic() - started < 2.0
    finally:
        ctl.stop()
