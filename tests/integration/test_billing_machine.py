"""A hypothesis state machine over billing on a real etcd: payments (repeated, concurrent), hourly ticks,
plan changes, controller restarts and races, and time jumps. Money always adds up and each key counts once."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from controllers.billing import ledger, payments
from controllers.billing.charging import ceil_hour, floor_hour, span_price
from controllers.billing.controller import BillingController
from controllers.billing.lifecycle import LEGAL
from reconcile.etcd_server import EtcdServer
from specs.kinds import Subscription
from tests.integration.test_billing_ledger import make_customer, make_plan, make_sub

T0 = datetime(2026, 11, 1, tzinfo=UTC)
PRICES = {"small": 672, "big": 6720}
SUBS = ("web", "db")


class Clock:
    def __init__(self) -> None:
        self.now = T0 + timedelta(minutes=7)

    def __call__(self) -> datetime:
        return self.now


def make_machine(etcd: EtcdServer) -> type[RuleBasedStateMachine]:
    class BillingMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.store = etcd.store(root=f"/t/{uuid.uuid4().hex[:12]}/hostplane/v1")
            make_customer(self.store)
            make_plan(self.store, "small", "6.72")
            make_plan(self.store, "big", "67.20")
            for s in SUBS:
                make_sub(self.store, s, created=T0)
            self.clock = Clock()
            self.ctl = BillingController(self.store, clock=self.clock)
            self.paid: dict[str, int] = {}
            self.states: dict[str, str] = dict.fromkeys(SUBS, "Active")

        def teardown(self) -> None:
            self.store.close()

        def _sync(self, *controllers: BillingController) -> None:
            if len(controllers) == 1:
                controllers[0].sync_customer("acme")
            else:
                threads = [threading.Thread(target=c.sync_customer, args=("acme",)) for c in controllers]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
            for s in SUBS:
                status = self.store.get(Subscription, s).status
                new = status.state if status is not None else "Active"
                assert new in LEGAL[self.states[s]], (self.states[s], new)
                self.states[s] = new

        def _record(self, tx: str, minor: int, out: list[ledger.Applied | None]) -> None:
            notice = payments.PaymentNotice("webhook", tx, "acme", ledger.format_minor(minor, "EUR"), "EUR")
            try:
                out.append(payments.record_payment(self.store, notice, now=self.clock()))
            except ledger.KeyReused:
                out.append(None)

        def _check_deliveries(self, tx: str, minor: int, results: list[ledger.Applied | None]) -> None:
            """However many deliveries of one payment ran, and in whatever order, it counted once."""
            if tx in self.paid and self.paid[tx] != minor:
                assert results and all(r is None for r in results)  # the key reused with another amount
                return
            assert all(r is not None for r in results)
            first = [r for r in results if r is not None and not r.duplicate]
            assert len(first) == (0 if tx in self.paid else 1)
            assert {r.result["amountMinor"] for r in results if r is not None} == {minor}
            self.paid.setdefault(tx, minor)

        def _pay(self, tx: str, minor: int) -> None:
            results: list[ledger.Applied | None] = []
            self._record(tx, minor, results)
            self._check_deliveries(tx, minor, results)

        @rule(tx=st.sampled_from(["t1", "t2", "t3", "t4"]), amount=st.sampled_from([500, 5000, 50_000]))
        def pay(self, tx: str, amount: int) -> None:
            self._pay(tx, amount)
            self._sync(self.ctl)

        @rule(tx=st.sampled_from(["c1", "c2"]))
        def pay_concurrently(self, tx: str) -> None:
            results: list[ledger.Applied | None] = []
            threads = [threading.Thread(target=self._record, args=(tx, 2000, results)) for _ in range(3)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert len(results) == 3
            self._check_deliveries(tx, 2000, results)
            self._sync(self.ctl)

        @precondition(lambda self: self.clock.now < T0 + timedelta(days=28))
        @rule(hours=st.integers(1, 30), minutes=st.integers(0, 59))
        def tick(self, hours: int, minutes: int) -> None:
            self.clock.now += timedelta(hours=hours, minutes=minutes)
            self._sync(self.ctl)

        @precondition(lambda self: self.clock.now < T0 + timedelta(days=20))
        @rule(days=st.integers(2, 8))
        def time_jump(self, days: int) -> None:
            self.clock.now += timedelta(days=days)
            self._sync(self.ctl)

        @rule(sub=st.sampled_from(SUBS), plan=st.sampled_from(sorted(PRICES)))
        def change_plan(self, sub: str, plan: str) -> None:
            obj = self.store.get(Subscription, sub)
            self.store.update(obj.model_copy(update={"spec": obj.spec.model_copy(update={"plan": plan})}))
            self._sync(self.ctl)

        @rule()
        def restart_controller(self) -> None:
            self.ctl = BillingController(self.store, clock=self.clock)
            self._sync(self.ctl)

        @rule()
        def two_controllers_at_once(self) -> None:
            self._sync(self.ctl, BillingController(self.store, clock=self.clock))

        @invariant()
        def money_adds_up(self) -> None:
            acct, total, status = ledger.audit(self.store, "acme")
            assert acct == total == status
            items = ledger.entries(self.store, "acme")
            pays = [e for e in items if e.type == "payment"]
            assert len(pays) == len(self.paid) and sum(e.amountMinor for e in pays) == sum(self.paid.values())

        @invariant()
        def every_hour_charged_once_at_its_plan_and_none_after_termination(self) -> None:
            items = ledger.entries(self.store, "acme")
            for s in SUBS:
                charges = sorted((e for e in items if e.type == "charge" and e.subscription == s),
                                 key=lambda e: e.periodStart or T0)
                at = floor_hour(T0)
                for e in charges:
                    assert e.periodStart == at and e.periodEnd is not None and e.plan is not None
                    assert -e.amountMinor == span_price(PRICES[e.plan], e.periodStart, e.periodEnd)
                    at = e.periodEnd
                assert at <= floor_hour(self.clock.now) + timedelta(hours=1)
                status = self.store.get(Subscription, s).status
                if status is not None and status.terminatedAt is not None:
                    assert at <= ceil_hour(status.terminatedAt)

    return BillingMachine


def test_billing_state_machine(etcd_session: EtcdServer) -> None:
    """Any mix of payments, duplicates, ticks, plan changes, restarts and jumps keeps every billing invariant."""
    run_state_machine_as_test(make_machine(etcd_session),
                              settings=settings(max_examples=20, stateful_step_count=25, deadline=None))
