"""The billing controller: charges, decides subscription states, warns, and deletes after retention.

One reconcile per customer (its subscriptions share one balance): take the hourly charges
owed by now (`charging.py`), close ended months into statements (`ledger.roll_up`), then for
each subscription ask `billing.next_billing_state` and write the answer to
Subscription.status (one fenced compare-and-swap), queue the warnings it owes (an outbox
key per warning, created once, plus a Warning event), and delete the VPSes of a
subscription whose retention has passed (the controllers' finalizer frees the rest).

A customer is reconciled when its account moves (a payment), when it or one of its
subscriptions changes, at the moment a decision said it would change (`wake_at`) and on a
periodic sweep that also takes each new hour's charges.

    <root>/billing/outbox/<customer>/<subscription>.<warning key>   a notice queued for e-mail

It must never decide anything itself (the decisions are pure functions) nor act when the
leader fence no longer holds.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from controllers.billing import charging, ledger
from controllers.billing.lifecycle import (
    DEFAULT_POLICY,
    BillingDecision,
    Policy,
    Warning,
    decide_subscription,
    needs_status_write,
)
from controllers.billing.status import customer_status_put, subscription_status_put
from controllers.events import EventRecorder
from reconcile import keys
from reconcile.controller import Controller, Result
from reconcile.errors import Conflict, NotFound
from reconcile.etcd import Compare, CreatedAt, Exists, Get, ModIs, Put
from reconcile.informer import Informer
from reconcile.keys import outbox_key, outbox_prefix
from reconcile.leader import Fence, fence_compares
from reconcile.objects import Store
from specs.kinds import VPS, Customer, Plan, Subscription, SubscriptionStatus

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]

_MESSAGES = {
    "Overdue": "Your balance is below your credit limit; please pay by {deadline} to keep your server running.",
    "SuspensionSoon": "Your server will be suspended at {deadline} unless the balance is paid.",
    "Suspended": "Your server is suspended; it will be terminated at {deadline} unless the balance is paid.",
    "TerminationSoon": "Your subscription will be terminated at {deadline}; pay now to keep it.",
    "Terminated": "Your subscription is terminated; its server and disks will be deleted at {deadline}.",
    "DeletionSoon": "Your server and its disks will be deleted at {deadline}.",
}


@dataclass
class SyncReport:
    customer: str
    charged_minor: int = 0
    transitions: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    wake_at: datetime | None = None
    errors: list[str] = field(default_factory=list)


class BillingController:
    """Reconciles customers; use `sync_customer` directly (tests) or `start()` for the watch loop."""

    def __init__(self, store: Store, *, clock: Clock, fence: Fence | None = None,
                 defaults: Policy = DEFAULT_POLICY, interval: float = 300.0, workers: int = 2,
                 recorder: EventRecorder | None = None) -> None:
        self.store = store
        self.clock = clock
        self.fence = fence
        self.defaults = defaults
        self.interval = interval
        self.events = recorder or EventRecorder(store, clock=clock)
        self.charger = charging.Charger(store, fence=fence)
        self.controller = Controller("billing", self._reconcile, workers=workers)
        self._subs: Informer[str] | None = None
        self._accounts: Informer[bytes] | None = None
        self._customers: Informer[bytes] | None = None
        self._stop = threading.Event()
        self._sweeper: threading.Thread | None = None
        self._rolled: dict[str, str] = {}

    # ------------------------------------------------------------ reconcile

    def _reconcile(self, customer: str) -> Result | None:
        report = self.sync_customer(customer)
        if report.errors:
            log.warning("billing %s: %s", customer, "; ".join(report.errors))
            return Result(requeue=True)
        if report.wake_at is not None:
            delay = (report.wake_at - self.clock()).total_seconds()
            return Result(requeue_after=min(max(delay, 0.0) + 0.05, self.interval))
        return None

    def _customer_subs(self, customer: str) -> list[Subscription]:
        if self._subs is not None:
            names = [n for n, c in self._subs.items().items() if c == customer]
            out = []
            for n in names:
                try:
                    out.append(self.store.get(Subscription, n))
                except NotFound:
                    continue
            return out
        return [s for s in self.store.list(Subscription).items if s.spec.customer == customer]

    def sync_customer(self, customer: str) -> SyncReport:
        """Charge, roll up, decide and act for one customer, at the injected clock's `now`."""
        now = self.clock()
        report = SyncReport(customer)
        try:
            cust = self.store.get(Customer, customer)
        except NotFound:
            return report
        subs = self._customer_subs(customer)
        plans: dict[str, Plan] = {}
        for s in subs:
            if s.spec.plan not in plans:
                with contextlib.suppress(NotFound):
                    plans[s.spec.plan] = self.store.get(Plan, s.spec.plan)
        cursors = {s.name: c for s in subs if (c := charging.read_cursor(self.store, s.name)) is not None}
        # A new plan is charged only from when its memory is really there (the VPS's status).
        plugged = charging.plugged_memory(self.store.list(VPS).items, subs)
        charged = self.charger.charge_customer(customer, subs, plans, cursors, now, guards=self._status_guards(subs),
                                               plugged=plugged)
        # Another run (a second controller during a leader change, or a sync racing the loop)
        # may have charged with a later clock: never decide as of a time before an hour that
        # is already charged, so a termination cannot predate a charge.
        # The status write below compares these cursors too, so no charge can slip in between.
        cursor_guard: dict[str, list[Compare]] = {}
        for s in subs:
            cur = charging.read_cursor(self.store, s.name)
            key = keys.cursor_key(s.name, self.store.root)
            cursor_guard[s.name] = [ModIs(key, cur.revision if cur is not None else 0)]
            if cur is not None and cur.through - timedelta(hours=1) > now:
                now = cur.through - timedelta(hours=1)
        report.charged_minor = charged.amount_minor
        report.errors += charged.errors
        month = f"{now.astimezone(UTC):%Y-%m}"
        if self._rolled.get(customer) != month:
            ledger.roll_up(self.store, customer, now=now, guard=fence_compares(self.fence))
            self._rolled[customer] = month
        account = ledger.read_account(self.store, customer)
        if account.revision == 0 and cust.status is None:
            tkey = keys.status_key(Customer, customer, self.store.root)
            self.store.txn([ModIs(tkey, 0), Exists(keys.spec_key(Customer, customer, self.store.root)),
                            *fence_compares(self.fence)],
                           [customer_status_put(cust, 0, cust.spec.currency, self.store.root)])
        wakes: list[datetime] = []
        for sub in subs:
            try:
                decision = self._sync_sub(cust, sub, plans.get(sub.spec.plan), account.balanceMinor, now,
                                          report, cursor_guard.get(sub.name, []))
            except ledger.LedgerError as exc:
                report.errors.append(f"{sub.name}: {exc}")
                continue
            if decision.wake_at is not None:
                wakes.append(decision.wake_at)
        report.wake_at = min(wakes) if wakes else None
        return report

    def _status_guards(self, subs: Sequence[Subscription]) -> dict[str, list[Compare]]:
        """A compare per subscription on the status as read: charges follow the state they were decided on."""
        r = self.store.root
        res = self.store.txn([], [Get(keys.status_key(Subscription, s.name, r)) for s in subs])
        out: dict[str, list[Compare]] = {}
        for s, got in zip(subs, res.gets, strict=True):
            kv = got[0] if got else None
            stored = SubscriptionStatus.model_validate(json.loads(kv.value)) if kv is not None else None
            # -1 never matches: the status changed since `s` was read, so charge after re-reading it.
            rev = (kv.mod_revision if kv is not None else 0) if stored == s.status else -1
            out[s.name] = [ModIs(keys.status_key(Subscription, s.name, r), rev)]
        return out

    def _sync_sub(self, cust: Customer, sub: Subscription, plan: Plan | None, balance: int,
                  now: datetime, report: SyncReport, guard: Sequence[Compare] = ()) -> BillingDecision:
        decision = decide_subscription(cust, sub, plan, balance, now, self.defaults)
        # Commit the decision: the status (guarded), then the warnings it owes and the deletion.
        if needs_status_write(sub, decision):
            self._write_status(sub, decision.status, guard)
            if len(decision.path) > 1:
                report.transitions.append((sub.name, decision.path))
                self.events.record("Subscription", sub.name, "Normal", decision.status.state,
                                   " -> ".join(decision.path))
        for w in decision.warnings:
            if self._queue_warning(cust, sub, w, now):
                report.warnings.append(f"{sub.name}:{w.kind}")
        if decision.delete_vps:
            report.deleted += self._delete_vps(sub)
        return decision

    def _write_status(self, sub: Subscription, status: SubscriptionStatus, guard: Sequence[Compare] = ()) -> None:
        r = self.store.root
        skey, tkey = keys.spec_key(Subscription, sub.name, r), keys.status_key(Subscription, sub.name, r)
        res = self.store.txn([], [Get(skey), Get(tkey)])
        if not res.gets[0]:
            return
        current = res.gets[1][0] if res.gets[1] else None
        stored = SubscriptionStatus.model_validate(json.loads(current.value)) if current is not None else None
        if stored != sub.status:
            # Written by someone else since we read it: decide again on the next pass.
            raise ledger.GuardFailed(f"status of {sub.name} changed meanwhile")
        out = self.store.txn([CreatedAt(skey, res.gets[0][0].create_revision),
                              ModIs(tkey, current.mod_revision if current else 0), *guard, *fence_compares(self.fence)],
                             [subscription_status_put(sub.name, status, r)])
        if not out.succeeded:
            raise ledger.GuardFailed(f"status of {sub.name} changed meanwhile (or no longer leading)")

    def _queue_warning(self, cust: Customer, sub: Subscription, w: Warning, now: datetime) -> bool:
        deadline = f"{w.deadline:%Y-%m-%d %H:%M} UTC" if w.deadline is not None else "an operator's decision"
        message = _MESSAGES[w.kind].format(deadline=deadline)
        body = {"to": cust.spec.email, "customer": cust.name, "subscription": sub.name, "kind": w.kind,
                "deadline": w.deadline.isoformat() if w.deadline else None,
                "subject": f"[{sub.name}] {w.kind}", "body": message, "queuedAt": now.isoformat()}
        key = outbox_key(cust.name, sub.name, ledger.safe_key(w.key), self.store.root)
        res = self.store.txn([ModIs(key, 0), *fence_compares(self.fence)],
                             [Put(key, json.dumps(body, sort_keys=True).encode())])
        if res.succeeded:
            self.events.record("Subscription", sub.name, "Warning", w.kind, message)
        return res.succeeded

    def _delete_vps(self, sub: Subscription) -> list[str]:
        fence_compares(self.fence)  # raises when no longer leading
        deleted = []
        for vps in self.store.list(VPS).items:
            if not vps.bound_to(sub) or vps.metadata.deletionTimestamp is not None:
                continue
            # The manager writes the same VPS (finalizer, status): a lost compare-and-swap
            # re-reads and tries again; a delete already under way counts as done.
            if not self._mark_deleted(vps.name):
                continue
            deleted.append(vps.name)
            self.events.record("Subscription", sub.name, "Normal", "Deleted",
                               f"retention passed: VPS {vps.name} deleted")
        return deleted

    def _mark_deleted(self, name: str, attempts: int = 3) -> bool:
        """Delete (with finalizers: mark) a VPS; False if it is already gone."""
        for attempt in range(attempts):
            try:
                self.store.delete(VPS, name)
                return True
            except NotFound:
                return False
            except Conflict:
                if attempt == attempts - 1:
                    raise
        return False

    # ------------------------------------------------------------ loop

    def start(self) -> BillingController:
        r = self.store.root
        self._subs = Informer(self.store, keys.spec_prefix(Subscription, r),
                              decode=lambda _n, raw: str(json.loads(raw)["spec"]["customer"]))
        self._accounts = Informer(self.store, keys.accounts_prefix(r), decode=lambda _n, raw: raw)
        self._customers = Informer(self.store, keys.spec_prefix(Customer, r), decode=lambda _n, raw: raw)
        q = self.controller.queue

        def on_sub(_name: str, old: str | None, new: str | None) -> None:
            for c in {old, new}:
                if c:
                    q.add(c)

        self._subs.add_handler(on_sub)
        self._accounts.add_handler(lambda n, _o, _v: q.add(n))
        self._customers.add_handler(lambda n, _o, new: q.add(n) if new is not None else None)
        for inf in (self._customers, self._subs, self._accounts):
            inf.start()
        self.controller.start()
        self._sweeper = threading.Thread(target=self._sweep, name="billing-sweep", daemon=True)
        self._sweeper.start()
        return self

    def kick(self, customer: str | None = None) -> None:
        """Reconcile one customer (or all) soon."""
        names = [customer] if customer else list(self._customers.items() if self._customers else [])
        for n in names:
            self.controller.queue.add(n)

    def _sweep(self) -> None:
        # Every customer at the top of each hour (its new charges) and at least every `interval`.
        while True:
            now = self.clock()
            top = charging.floor_hour(now) + charging.HOUR + timedelta(seconds=2)
            if self._stop.wait(min(self.interval, max((top - now).total_seconds(), 1.0))):
                return
            self.kick()

    def stop(self) -> None:
        self._stop.set()
        self.controller.stop()
        for inf in (self._accounts, self._subs, self._customers):
            if inf is not None:
                inf.stop()
        if self._sweeper is not None:
            self._sweeper.join(5)

    @property
    def idle(self) -> bool:
        return self.controller.idle


def start_billing(store: Store, *, clock: Clock, fence: Fence | None = None, interval: float = 300.0,
                  defaults: Policy = DEFAULT_POLICY) -> BillingController:
    """Start the billing controller on `store`; the returned handle's `.stop()` stops it.

    `fence` is the leader elector's (`elector.fence`, returning a compare or a list of them);
    every billing write carries it.
    """
    return BillingController(store, clock=clock, fence=fence, interval=interval, defaults=defaults).start()


__all__ = ["BillingController", "SyncReport", "outbox_key", "outbox_prefix", "start_billing"]
