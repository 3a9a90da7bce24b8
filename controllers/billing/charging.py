"""Hourly charging: every started hour of a subscription is charged once, capped at the monthly price.

    <root>/billing/charged/<subscription>   cursor {uid, customer, through, plan, priceMinor, currency}

A month's price is spread over its first 672 hours (28 days): hour n of a calendar month
(UTC) costs floor(P·(n+1)/672) - floor(P·n/672), so those hours sum to exactly P and the
hours after them are free. Hours are charged from the hour the subscription was created
until the hour in which it was terminated; every started hour counts, whatever the power
state. A plan change takes effect at the next hour: the hours already started are charged
at the plan the cursor holds, then the cursor moves to the new plan (prorated to the hour).
A plan with more memory than the subscription's VPS really has (its status `actual.memoryMiB`:
plugged memory, ADR 013) is not in effect yet: the hours go on at the cursor's plan until the
memory is there, e.g. a growth the guest did not plug that arrives at its next reboot.

Each charge is one ledger entry covering [through, end) with the idempotency key
`charge/<subscription uid>@<first hour>`, appended in the same transaction that moves the
cursor (compare-and-swap) and, when given, checks the leader fence: two controllers, a
restart or a retried request can never charge an hour twice, and a cursor never moves
without its charge. External-billing subscriptions move their cursor without charging.

Pure arithmetic at the top; `Charger` does the I/O. It must never decide billing states.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from controllers.billing import ledger
from reconcile import keys
from reconcile.etcd import Compare, ModIs, Op, Put
from reconcile.keys import cursor_key, cursors_prefix
from reconcile.leader import Fence, fence_compares
from reconcile.objects import Store
from specs.kinds import VPS, Plan, Subscription
from specs.money import format_minor

HOURS_PER_MONTH = 672
HOUR = timedelta(hours=1)
KEY_TTL_SECONDS = 100 * 24 * 3600
# Subscriptions of one customer charged per transaction (each adds three writes).
BATCH = 30

log = logging.getLogger(__name__)



# ------------------------------------------------------------------ pure arithmetic


def floor_hour(t: datetime) -> datetime:
    t = t.astimezone(UTC)
    return t.replace(minute=0, second=0, microsecond=0)


def ceil_hour(t: datetime) -> datetime:
    f = floor_hour(t)
    return f if f == t.astimezone(UTC) else f + HOUR


def _month_start(t: datetime) -> datetime:
    return t.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def _next_month_start(t: datetime) -> datetime:
    m = _month_start(t)
    return m.replace(year=m.year + m.month // 12, month=m.month % 12 + 1)


def _cumulative(price_minor: int, n: int) -> int:
    """The price of the first n hours of a month."""
    n = max(0, min(n, HOURS_PER_MONTH))
    return price_minor * n // HOURS_PER_MONTH


def hour_price(price_minor: int, hour: datetime) -> int:
    """What one hour (starting at `hour`) costs on a plan of `price_minor` a month."""
    n = int((floor_hour(hour) - _month_start(hour)) / HOUR)
    return _cumulative(price_minor, n + 1) - _cumulative(price_minor, n)


def span_price(price_minor: int, start: datetime, end: datetime) -> int:
    """What the hours [start, end) cost, month by month, each month capped at the price."""
    total = 0
    at = floor_hour(start)
    end = floor_hour(end)
    while at < end:
        month = _month_start(at)
        stop = min(end, _next_month_start(at))
        first, last = int((at - month) / HOUR), int((stop - month) / HOUR)
        total += _cumulative(price_minor, last) - _cumulative(price_minor, first)
        at = stop
    return total


def charge_end(sub: Subscription, now: datetime) -> datetime:
    """The end (exclusive) of the hours that should be charged by `now`."""
    end = floor_hour(now) + HOUR
    status = sub.status
    stops = [status.terminatedAt] if status is not None and status.terminatedAt is not None else []
    if sub.metadata.deletionTimestamp is not None:
        stops.append(sub.metadata.deletionTimestamp)
    for t in stops:
        end = min(end, ceil_hour(t))
    return end


@dataclass(frozen=True)
class Cursor:
    subscription: str
    uid: str
    customer: str
    through: datetime
    plan: str
    priceMinor: int
    currency: str
    revision: int = 0

    def to_bytes(self) -> bytes:
        data = {"subscription": self.subscription, "uid": self.uid, "customer": self.customer,
                "through": self.through.isoformat(), "plan": self.plan, "priceMinor": self.priceMinor,
                "currency": self.currency}
        return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, raw: bytes, revision: int) -> Cursor:
        d = json.loads(raw)
        return cls(d["subscription"], d["uid"], d["customer"], datetime.fromisoformat(d["through"]), d["plan"],
                   int(d["priceMinor"]), d["currency"], revision)


@dataclass(frozen=True)
class ChargeStep:
    """What to do for one subscription now: maybe a charge, and the cursor to write."""

    subscription: str
    cursor: Cursor
    amount_minor: int
    start: datetime
    end: datetime
    plan: str


def plan_charge(sub: Subscription, plan: Plan, cursor: Cursor | None, now: datetime, *,
                plugged_mib: int | None = None) -> ChargeStep | None:
    """Pure: the charge owed by `sub` at `now` given its cursor, or None when nothing is to be written.

    `plugged_mib`: the memory its VPS really has (None: unknown, or no VPS); a new plan with more
    than that does not take effect yet.
    """
    if (cursor is not None and cursor.plan != plan.name and plugged_mib is not None
            and plugged_mib < plan.spec.memoryMiB):
        plan = _plan_from_cursor(cursor)
    uid = sub.metadata.uid or sub.name
    price = plan.spec.price.minor
    currency = plan.spec.price.currency
    if cursor is None or cursor.uid != uid:
        created = sub.metadata.creationTimestamp or now
        cursor = Cursor(sub.name, uid, sub.spec.customer, floor_hour(created), plan.name, price, currency, 0)
    end = charge_end(sub, now)
    start = cursor.through
    external = sub.spec.billingMode == "external"
    amount = 0 if external or end <= start else span_price(cursor.priceMinor, start, end)
    through = max(start, end)
    # Hours from here on use the subscription's plan as it is now.
    moved = replace(cursor, through=through, plan=plan.name, priceMinor=price, currency=currency)
    if moved == cursor:
        return None
    return ChargeStep(sub.name, moved, amount, start, through, cursor.plan)


# ------------------------------------------------------------------ I/O


def read_cursors(store: Store) -> dict[str, Cursor]:
    kvs, _ = store.kv_range(cursors_prefix(store.root))
    return {keys.last_segment(kv.key): Cursor.from_bytes(kv.value, kv.mod_revision) for kv in kvs}


def read_cursor(store: Store, sub: str) -> Cursor | None:
    kv = store.kv_get(cursor_key(sub, store.root))
    return None if kv is None else Cursor.from_bytes(kv.value, kv.mod_revision)


@dataclass
class ChargeReport:
    charged: int = 0
    amount_minor: int = 0
    cursors_moved: int = 0
    duplicates: int = 0
    errors: list[str] = field(default_factory=list)

    def add(self, other: ChargeReport) -> None:
        self.charged += other.charged
        self.amount_minor += other.amount_minor
        self.cursors_moved += other.cursors_moved
        self.duplicates += other.duplicates
        self.errors += other.errors


class Charger:
    """Takes the hourly charges owed by now; safe to run any number of times, anywhere."""

    def __init__(self, store: Store, *, fence: Fence | None = None, key_ttl: int = KEY_TTL_SECONDS) -> None:
        self.store = store
        self.fence = fence
        self.key_ttl = key_ttl
        self._lease: int | None = None
        self._lease_day: str | None = None
        self._lock = threading.Lock()

    def _key_lease(self, now: datetime) -> int:
        # One lease per day for that day's charge keys: the cursor is the lasting guard, the keys
        # only need to outlive any retry or late second controller.
        day = f"{now:%Y-%m-%d}"
        with self._lock:
            if self._lease is None or self._lease_day != day:
                self._lease = self.store.grant_lease(self.key_ttl)
                self._lease_day = day
            return self._lease

    def _guard(self) -> list[Compare]:
        return fence_compares(self.fence)

    def charge_customer(self, customer: str, subs: Iterable[Subscription], plans: dict[str, Plan],
                        cursors: dict[str, Cursor], now: datetime, *, attempts: int = 4,
                        guards: Mapping[str, Sequence[Compare]] | None = None,
                        plugged: Mapping[str, int] | None = None) -> ChargeReport:
        """Charge every subscription of one customer owed by `now` (a few transactions).

        When a cursor moved meanwhile (another controller, an earlier life of this one) the
        batch is re-read and re-decided; the charge already taken is never taken again.
        `guards` adds compares per subscription (e.g. on the status the caller read), so a
        charge decided on a status that has since changed (say, to Terminated) is not taken.
        `plugged`: subscription name -> the memory its VPS really has (`plugged_memory`).
        """
        sub_guards: Mapping[str, Sequence[Compare]] = guards or {}
        report = ChargeReport()
        todo = list(subs)
        known = dict(cursors)
        for attempt in range(attempts):
            steps: list[ChargeStep] = []
            for sub in todo:
                plan = plans.get(sub.spec.plan)
                cur = known.get(sub.name)
                if plan is None:
                    if cur is None:
                        report.errors.append(f"{sub.name}: plan {sub.spec.plan!r} not found")
                        continue
                    # The plan is gone: keep charging at the price the cursor holds.
                    plan = _plan_from_cursor(cur)
                step = plan_charge(sub, plan, cur, now, plugged_mib=(plugged or {}).get(sub.name))
                if step is not None:
                    steps.append(step)
            failed: list[str] = []
            for i in range(0, len(steps), BATCH):
                batch = steps[i:i + BATCH]
                try:
                    report.add(self._apply(customer, batch, now, sub_guards))
                except (ledger.GuardFailed, ledger.KeyReused) as exc:
                    if self.fence is not None and _fenced(self.fence):
                        report.errors.append(f"{customer}: no longer leading: {exc}")
                        return report
                    failed += [s.subscription for s in batch]
                except ledger.LedgerError as exc:
                    report.errors.append(f"{customer}: {exc}")
            if not failed:
                return report
            log.info("charging %s: cursors moved meanwhile (attempt %d); re-reading", customer, attempt + 1)
            for name in failed:
                cur = read_cursor(self.store, name)
                if cur is None:
                    known.pop(name, None)
                else:
                    known[name] = cur
            todo = [s for s in todo if s.name in failed]
        report.errors.append(f"{customer}: cursors kept moving; will retry")
        return report

    def _apply(self, customer: str, steps: list[ChargeStep], now: datetime,
               sub_guards: Mapping[str, Sequence[Compare]]) -> ChargeReport:
        report = ChargeReport()
        root = self.store.root
        guard: list[Compare] = [ModIs(cursor_key(s.subscription, root), s.cursor.revision) for s in steps]
        guard += [g for s in steps for g in sub_guards.get(s.subscription, ())]
        guard += self._guard()
        also: list[Op] = [Put(cursor_key(s.subscription, root), s.cursor.to_bytes()) for s in steps]
        new = [
            ledger.NewEntry(
                type="charge", amount_minor=-s.amount_minor, currency=s.cursor.currency, scope="charge",
                key=f"{s.cursor.uid}@{s.start:%Y%m%dT%H}", subscription=s.subscription, plan=s.plan,
                description=f"{s.plan}: {int((s.end - s.start) / HOUR)} h from {s.start:%Y-%m-%d %H:00} UTC",
                period_start=s.start, period_end=s.end, fingerprint=f"{s.start.isoformat()}/{s.end.isoformat()}",
                key_lease=self._key_lease(now),
            )
            for s in steps if s.amount_minor > 0
        ]
        if new:
            applied = ledger.append(self.store, customer, new, now=now, guard=guard, also=also)
            if any(a.duplicate for a in applied):
                # Someone else took these very charges; our cursors are stale, so re-decide.
                raise ledger.GuardFailed("charges already taken by another run")
            report.charged += len(applied)
            report.amount_minor += sum(-a.result["amountMinor"] for a in applied)
        else:
            res = self.store.txn(guard, also)
            if not res.succeeded:
                raise ledger.GuardFailed("a charge cursor moved meanwhile")
        report.cursors_moved += len(steps)
        return report

    def run(self, now: datetime, *, workers: int = 16) -> ChargeReport:
        """One charging run over every subscription, customers in parallel."""
        subs = self.store.list(Subscription).items
        plans = {p.name: p for p in self.store.list(Plan).items}
        cursors = read_cursors(self.store)
        plugged = plugged_memory(self.store.list(VPS).items, subs)
        by_customer: dict[str, list[Subscription]] = {}
        for s in subs:
            by_customer.setdefault(s.spec.customer, []).append(s)
        report = ChargeReport()
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="charge") as pool:
            for r in pool.map(lambda c: self._safe(c, by_customer[c], plans, cursors, now, plugged),
                              list(by_customer)):
                report.add(r)
        return report

    def _safe(self, customer: str, subs: list[Subscription], plans: dict[str, Plan], cursors: dict[str, Cursor],
              now: datetime, plugged: Mapping[str, int]) -> ChargeReport:
        try:
            return self.charge_customer(customer, subs, plans, cursors, now, plugged=plugged)
        except ledger.UnknownCustomer as exc:
            return ChargeReport(errors=[str(exc)])


def plugged_memory(vpses: Iterable[VPS], subs: Iterable[Subscription]) -> dict[str, int]:
    """Pure: subscription name -> the memory its VPS reports as really there (status `actual.memoryMiB`)."""
    by_name = {s.name: s for s in subs}
    out: dict[str, int] = {}
    for v in vpses:
        sub = by_name.get(v.spec.subscription)
        mem = v.status.actual.memoryMiB if v.status is not None else None
        if sub is not None and mem is not None and v.bound_to(sub):
            out[sub.name] = mem
    return out


def _fenced(fence: Fence) -> bool:
    try:
        fence()
    except Exception:
        return True
    return False


def _plan_from_cursor(cur: Cursor) -> Plan:
    data: dict[str, Any] = {
        "metadata": {"name": cur.plan},
        "spec": {"vcpus": 1, "memoryMiB": 1, "diskGiB": 1,
                 "price": {"amount": format_minor(cur.priceMinor, cur.currency), "currency": cur.currency}},
    }
    return Plan.model_validate(data)


__all__ = [
    "HOURS_PER_MONTH",
    "ChargeReport",
    "ChargeStep",
    "Charger",
    "Cursor",
    "ceil_hour",
    "charge_end",
    "floor_hour",
    "hour_price",
    "plan_charge",
    "plugged_memory",
    "read_cursor",
    "read_cursors",
    "span_price",
]
