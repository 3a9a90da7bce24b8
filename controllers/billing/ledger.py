"""The ledger: append-only money entries per customer, and the balance, in one etcd transaction.

    <root>/ledger/<customer>/<seq:012d>                 one entry (payment, charge, refund, adjustment, credit)
    <root>/billing/accounts/<customer>                  {seq, balanceMinor, currency, rolledSeq, openingMinor, ...}
    <root>/billing/statements/<customer>/<YYYY-MM>      a closed month: opening, closing, totals, lines
    <root>/idempotency/<scope>/<key>                    the first result of a keyed entry
    <root>/status/customers/<customer>                  Customer.status (balance), written with the entry

An append compares the account's and the customer status's mod_revisions and that every
entry's idempotency key is absent, then writes the entries, the account, the status and
the keys at once: the balance always equals the statements' closing plus the entries after
it, and a key is applied once whatever the retries, restarts and races. Closed months roll
up into statements so etcd holds one month of entries per customer, not all of them.

Amounts are signed integer minor units: payment and credit > 0, charge and refund < 0,
adjustment != 0. This module must never decide billing states or read a clock: `now` is
passed in.

    LedgerError
      ├── InvalidEntry        an amount, type, currency or key is wrong (.field names it)
      │     └── CurrencyMismatch   the entry's currency is not the customer's
      ├── UnknownCustomer     no such customer
      ├── KeyReused           the idempotency key was used for a different request
      └── GuardFailed         a caller's compare (leader fence, charge cursor) did not hold
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

from controllers.billing.status import customer_status_put
from reconcile import keys
from reconcile.errors import NotFound
from reconcile.etcd import Compare, CreatedAt, Delete, Get, ModIs, Op, Put
from reconcile.keys import account_key, entry_key, statement_key, statements_prefix
from reconcile.objects import Store
from specs.kinds import Customer
from specs.money import CURRENCY_EXPONENT, format_minor, to_minor

EntryType = Literal["payment", "charge", "refund", "adjustment", "credit"]
ENTRY_TYPES: tuple[EntryType, ...] = ("payment", "charge", "refund", "adjustment", "credit")
_SAFE_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")
MAX_ATTEMPTS = 50
# etcd refuses transactions with more than 128 operations by default.
MAX_OPS = 120


class LedgerError(Exception):
    """Base of the ledger's errors."""


class InvalidEntry(LedgerError, ValueError):
    def __init__(self, field_: str, message: str) -> None:
        self.field = field_
        super().__init__(f"{field_}: {message}")


class CurrencyMismatch(InvalidEntry):
    pass


class UnknownCustomer(LedgerError, NotFound):
    pass


class KeyReused(LedgerError):
    pass


class GuardFailed(LedgerError):
    pass


# ------------------------------------------------------------------ keys


def safe_key(key: str) -> str:
    """An idempotency key usable as one etcd key segment (foreign ids are hashed if odd)."""
    if _SAFE_KEY.fullmatch(key):
        return key
    return "h-" + hashlib.sha256(key.encode()).hexdigest()


def month_of(when: datetime) -> str:
    return f"{when.astimezone(UTC):%Y-%m}"


def _next_month(month: str) -> str:
    y, m = int(month[:4]), int(month[5:7])
    return f"{y + m // 12:04d}-{m % 12 + 1:02d}"


# ------------------------------------------------------------------ values


@dataclass(frozen=True)
class NewEntry:
    """An entry to append. `scope`/`key` make it idempotent; `fingerprint` what makes a repeat equal."""

    type: EntryType
    amount_minor: int
    currency: str
    scope: str
    key: str
    description: str = ""
    subscription: str | None = None
    plan: str | None = None
    reference: str | None = None
    period_start: datetime | None = None
    period_end: datetime | None = None
    fingerprint: str = ""
    key_lease: int | None = None


@dataclass(frozen=True)
class Entry:
    seq: int
    type: str
    amountMinor: int
    currency: str
    time: datetime
    key: str
    description: str = ""
    subscription: str | None = None
    plan: str | None = None
    reference: str | None = None
    periodStart: datetime | None = None
    periodEnd: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in self.__dict__.items():
            if v is None or v == "":
                continue
            out[k] = v.isoformat() if isinstance(v, datetime) else v
        out["amount"] = format_minor(self.amountMinor, self.currency)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Entry:
        kw = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for k in ("time", "periodStart", "periodEnd"):
            if kw.get(k) is not None:
                kw[k] = datetime.fromisoformat(kw[k])
        return cls(**kw)


@dataclass(frozen=True)
class Account:
    customer: str
    currency: str
    seq: int = 0
    balanceMinor: int = 0
    rolledSeq: int = 0
    openingMinor: int = 0
    rolledMonth: str | None = None
    revision: int = 0

    def to_bytes(self) -> bytes:
        data = {k: v for k, v in self.__dict__.items() if k != "revision"}
        return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, raw: bytes, revision: int) -> Account:
        return cls(**json.loads(raw), revision=revision)


@dataclass(frozen=True)
class Applied:
    """The outcome of one keyed entry: the stored result, and whether it was already there."""

    result: dict[str, Any]
    duplicate: bool


@dataclass
class _Snapshot:
    customer: Customer
    customer_create_rev: int
    account: Account
    status_rev: int


# ------------------------------------------------------------------ validation


def validate(entry: NewEntry, currency: str) -> None:
    """Raise InvalidEntry naming the field if `entry` cannot be appended for a `currency` customer."""
    if entry.type not in ENTRY_TYPES:
        raise InvalidEntry("type", f"must be one of {', '.join(ENTRY_TYPES)}, not {entry.type!r}")
    if isinstance(entry.amount_minor, bool) or not isinstance(entry.amount_minor, int):
        raise InvalidEntry("amount", "must be integer minor units")
    if entry.currency not in CURRENCY_EXPONENT:
        raise InvalidEntry("currency", f"unknown currency {entry.currency!r}")
    if entry.currency != currency:
        raise CurrencyMismatch("currency", f"{entry.currency} differs from the customer's currency {currency}")
    sign_ok = {
        "payment": entry.amount_minor > 0, "credit": entry.amount_minor > 0,
        "charge": entry.amount_minor < 0, "refund": entry.amount_minor < 0,
        "adjustment": entry.amount_minor != 0,
    }[entry.type]
    if not sign_ok:
        want = {"payment": "positive", "credit": "positive", "charge": "negative", "refund": "negative",
                "adjustment": "non-zero"}[entry.type]
        raise InvalidEntry("amount", f"a {entry.type} must be {want}, got {format_minor(entry.amount_minor, currency)}")
    if abs(entry.amount_minor) >= 10 ** (15 + CURRENCY_EXPONENT[currency]):
        raise InvalidEntry("amount", "is beyond any real amount")
    if not entry.scope or "/" in entry.scope or not entry.key:
        raise InvalidEntry("key", "an idempotency scope and key are required")


def parse_amount(amount: Any, currency: str, field_: str = "amount") -> int:
    """Decimal string (or exact number) -> minor units, as InvalidEntry naming `field_` on error."""
    try:
        return to_minor(amount, currency)
    except ValueError as exc:
        raise InvalidEntry(field_, str(exc)) from None


# ------------------------------------------------------------------ reading


def _snapshot(store: Store, customer: str) -> _Snapshot:
    skey = keys.spec_key(Customer, customer, store.root)
    tkey = keys.status_key(Customer, customer, store.root)
    res = store.txn([], [Get(skey), Get(tkey), Get(account_key(customer, store.root))])
    if not res.gets[0]:
        raise UnknownCustomer(f"customer {customer!r} not found")
    spec_kv = res.gets[0][0]
    data = json.loads(spec_kv.value)
    cust = Customer.model_validate(data)
    acct_kv = res.gets[2][0] if res.gets[2] else None
    account = (Account.from_bytes(acct_kv.value, acct_kv.mod_revision) if acct_kv is not None
               else Account(customer=customer, currency=cust.spec.currency))
    status_rev = res.gets[1][0].mod_revision if res.gets[1] else 0
    return _Snapshot(cust, spec_kv.create_revision, account, status_rev)


def read_account(store: Store, customer: str) -> Account:
    return _snapshot(store, customer).account


def balance(store: Store, customer: str) -> int:
    return read_account(store, customer).balanceMinor


def entries(store: Store, customer: str) -> list[Entry]:
    """The live (not yet rolled up) entries of a customer, oldest first."""
    acct_kv = store.kv_get(account_key(customer, store.root))
    rolled = Account.from_bytes(acct_kv.value, acct_kv.mod_revision).rolledSeq if acct_kv else 0
    kvs, _ = store.kv_range(keys.ledger_prefix(customer, store.root))
    out = [Entry.from_json(json.loads(kv.value)) for kv in kvs]
    return [e for e in out if e.seq > rolled]


def audit(store: Store, customer: str) -> tuple[int, int, int]:
    """(account balance, opening + sum of live entries, Customer.status balance) at one revision."""
    res = store.txn([], [Get(account_key(customer, store.root)), Get(keys.ledger_prefix(customer, store.root), True),
                         Get(keys.status_key(Customer, customer, store.root))])
    if not res.gets[0]:
        status_minor = json.loads(res.gets[2][0].value).get("balanceMinor", 0) if res.gets[2] else 0
        return 0, 0, int(status_minor)
    acct = Account.from_bytes(res.gets[0][0].value, res.gets[0][0].mod_revision)
    live = [Entry.from_json(json.loads(kv.value)) for kv in res.gets[1]]
    total = acct.openingMinor + sum(e.amountMinor for e in live if e.seq > acct.rolledSeq)
    status_minor = json.loads(res.gets[2][0].value).get("balanceMinor", 0) if res.gets[2] else 0
    return acct.balanceMinor, total, int(status_minor)


def read_key(store: Store, scope: str, key: str) -> dict[str, Any] | None:
    kv = store.kv_get(keys.idempotency_key(scope, safe_key(key), store.root))
    return None if kv is None else dict(json.loads(kv.value))


# ------------------------------------------------------------------ appending


def append(store: Store, customer: str, new: Sequence[NewEntry], *, now: datetime,
           guard: Sequence[Compare] = (), also: Sequence[Op] = ()) -> list[Applied]:
    """Append keyed entries for one customer and move the balance, atomically; return one Applied per entry.

    An entry whose key already exists is not applied again: its first result comes back with
    `duplicate=True` (KeyReused if its fingerprint differs). `guard` compares (a leader
    fence, a charge cursor) and `also` operations ride in the same transaction; when a guard
    fails, GuardFailed is raised and nothing is written.
    """
    if not new:
        return []
    if len(new) * 2 + len(also) + 2 > MAX_OPS:
        raise InvalidEntry("entries", f"too many entries for one transaction ({len(new)})")
    idem = [keys.idempotency_key(e.scope, safe_key(e.key), store.root) for e in new]
    if len(set(idem)) != len(idem):
        raise InvalidEntry("key", "two entries in one append share an idempotency key")
    done: dict[int, Applied] = {}
    for _ in range(MAX_ATTEMPTS):
        snap = _snapshot(store, customer)
        for e in new:
            validate(e, snap.account.currency)
        if snap.customer.spec.currency != snap.account.currency:
            raise CurrencyMismatch("currency", f"the customer's currency is now {snap.customer.spec.currency}, "
                                               f"but the ledger is in {snap.account.currency}")
        pending = [i for i in range(len(new)) if i not in done]
        if not pending:
            break
        acct = snap.account
        seq, bal = acct.seq, acct.balanceMinor
        ops: list[Op] = []
        results: dict[int, dict[str, Any]] = {}
        for i in pending:
            e = new[i]
            seq += 1
            bal += e.amount_minor
            entry = Entry(seq=seq, type=e.type, amountMinor=e.amount_minor, currency=e.currency, time=now,
                          key=f"{e.scope}/{e.key}", description=e.description, subscription=e.subscription,
                          plan=e.plan, reference=e.reference, periodStart=e.period_start, periodEnd=e.period_end)
            result = {"customer": customer, "seq": seq, "type": e.type, "amountMinor": e.amount_minor,
                      "amount": format_minor(e.amount_minor, e.currency), "currency": e.currency,
                      "balanceMinor": bal, "balance": format_minor(bal, e.currency), "time": now.isoformat(),
                      "fingerprint": e.fingerprint}
            results[i] = result
            ops.append(Put(entry_key(customer, seq, store.root), _dumps(entry.to_json())))
            ops.append(Put(idem[i], _dumps(result), e.key_lease))
        new_acct = replace(acct, seq=seq, balanceMinor=bal)
        ops.append(Put(account_key(customer, store.root), new_acct.to_bytes()))
        ops.append(customer_status_put(snap.customer, bal, acct.currency, store.root))
        compares: list[Compare] = [
            CreatedAt(keys.spec_key(Customer, customer, store.root), snap.customer_create_rev),
            ModIs(account_key(customer, store.root), acct.revision),
            ModIs(keys.status_key(Customer, customer, store.root), snap.status_rev),
            *(ModIs(idem[i], 0) for i in pending),
            *guard,
        ]
        res = store.txn(compares, [*ops, *also], [Get(idem[i]) for i in pending])
        if res.succeeded:
            for i in pending:
                done[i] = Applied(results[i], duplicate=False)
            break
        found = False
        for i, got in zip(pending, res.gets, strict=True):
            if got:
                found = True
                stored = dict(json.loads(got[0].value))
                if stored.get("fingerprint", "") != new[i].fingerprint:
                    raise KeyReused(f"idempotency key {new[i].scope}/{new[i].key} was used for a different request")
                done[i] = Applied(stored, duplicate=True)
        if not found:
            now_snap = _snapshot(store, customer)
            if (now_snap.account.revision == acct.revision and now_snap.status_rev == snap.status_rev
                    and now_snap.customer_create_rev == snap.customer_create_rev):
                raise GuardFailed("a guarded compare (leader fence or cursor) did not hold")
    else:
        raise GuardFailed(f"ledger of {customer!r}: too much contention after {MAX_ATTEMPTS} attempts")
    return [done[i] for i in range(len(new))]


def _dumps(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


# ------------------------------------------------------------------ statements


@dataclass
class Statement:
    customer: str
    month: str
    currency: str
    openingMinor: int
    closingMinor: int
    firstSeq: int
    lastSeq: int
    final: bool
    totals: dict[str, int] = field(default_factory=dict)
    lines: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["opening"] = format_minor(self.openingMinor, self.currency)
        out["closing"] = format_minor(self.closingMinor, self.currency)
        return out


def build_statement(customer: str, month: str, currency: str, opening: int, items: Iterable[Entry],
                    *, final: bool) -> Statement:
    """Sum entries into a statement: payments and the like one line each, charges one line per subscription."""
    items = list(items)
    totals: dict[str, int] = {}
    lines: list[dict[str, Any]] = []
    charges: dict[tuple[str, str], dict[str, Any]] = {}
    for e in items:
        totals[e.type] = totals.get(e.type, 0) + e.amountMinor
        if e.type == "charge":
            line = charges.setdefault((e.subscription or "", e.plan or ""), {
                "type": "charge", "subscription": e.subscription, "plan": e.plan, "hours": 0, "amountMinor": 0})
            line["amountMinor"] += e.amountMinor
            if e.periodStart is not None and e.periodEnd is not None:
                line["hours"] += int((e.periodEnd - e.periodStart).total_seconds() // 3600)
        else:
            lines.append({"seq": e.seq, "time": e.time.isoformat(), "type": e.type, "amountMinor": e.amountMinor,
                          "description": e.description, "reference": e.reference})
    lines.extend(charges.values())
    for line in lines:
        line["amount"] = format_minor(line["amountMinor"], currency)
    closing = opening + sum(e.amountMinor for e in items)
    return Statement(customer, month, currency, opening, closing, items[0].seq if items else 0,
                     items[-1].seq if items else 0, final, totals, lines)


def statement(store: Store, customer: str, month: str) -> Statement:
    """The statement of `month`: the rolled-up one if the month is closed, else one built from live entries."""
    if not re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])", month):
        raise InvalidEntry("month", f"must be YYYY-MM, not {month!r}")
    kv = store.kv_get(statement_key(customer, month, store.root))
    if kv is not None:
        data = json.loads(kv.value)
        return Statement(**{k: v for k, v in data.items() if k in Statement.__dataclass_fields__})
    acct = read_account(store, customer)
    if acct.rolledMonth is not None and month <= acct.rolledMonth:
        # A closed month without entries of its own: the balance carried over from the month before.
        earlier = [m for m in statements(store, customer) if m < month]
        carried = statement(store, customer, earlier[-1]).closingMinor if earlier else 0
        return Statement(customer, month, acct.currency, carried, carried, 0, 0, True)
    live = entries(store, customer)
    opening = acct.openingMinor + sum(e.amountMinor for e in live if month_of(e.time) < month)
    return build_statement(customer, month, acct.currency, opening, [e for e in live if month_of(e.time) == month],
                           final=False)


def statements(store: Store, customer: str) -> list[str]:
    """Months with a closed statement, oldest first."""
    kvs, _ = store.kv_range(statements_prefix(customer, store.root), keys_only=True)
    return [keys.last_segment(kv.key) for kv in kvs]


def roll_up(store: Store, customer: str, *, now: datetime, guard: Sequence[Compare] = ()) -> list[str]:
    """Close every month that has ended: write its statement and drop its entries. Returns the months closed.

    The statement and the account's new opening balance are one transaction; the entries are
    deleted afterwards in batches (readers ignore entries at or below `rolledSeq`, so an
    interrupted deletion is harmless and finished by the next roll-up).
    """
    closed: list[str] = []
    current = month_of(now)
    for _ in range(240):
        acct = read_account(store, customer)
        if acct.revision == 0:
            break
        live = entries(store, customer)
        if not live:
            break
        month = month_of(live[0].time)
        if acct.rolledMonth is not None and month <= acct.rolledMonth:
            # A late entry stamped in a closed month (a clock behind) goes on the next one.
            month = _next_month(acct.rolledMonth)
        if month >= current:
            break
        items = _prefix(live, month)
        st = build_statement(customer, month, acct.currency, acct.openingMinor, items, final=True)
        new_acct = replace(acct, rolledSeq=items[-1].seq, openingMinor=st.closingMinor, rolledMonth=month)
        skey = statement_key(customer, month, store.root)
        res = store.txn([ModIs(account_key(customer, store.root), acct.revision), ModIs(skey, 0), *guard],
                        [Put(skey, _dumps(st.__dict__)), Put(account_key(customer, store.root), new_acct.to_bytes())])
        if not res.succeeded:
            continue
        closed.append(month)
    _drop_rolled(store, customer)
    return closed


def _prefix(live: list[Entry], month: str) -> list[Entry]:
    out = []
    for e in live:
        if month_of(e.time) > month:
            break
        out.append(e)
    return out


def _drop_rolled(store: Store, customer: str) -> None:
    kv = store.kv_get(account_key(customer, store.root))
    if kv is None:
        return
    rolled = Account.from_bytes(kv.value, kv.mod_revision).rolledSeq
    kvs, _ = store.kv_range(keys.ledger_prefix(customer, store.root), keys_only=True)
    stale = [k.key for k in kvs if int(keys.last_segment(k.key)) <= rolled]
    for i in range(0, len(stale), MAX_OPS):
        store.txn([], [Delete(k) for k in stale[i:i + MAX_OPS]])


__all__ = [
    "ENTRY_TYPES", "Account", "Applied", "CurrencyMismatch", "Entry", "GuardFailed", "InvalidEntry", "KeyReused",
    "LedgerError", "NewEntry", "Statement", "UnknownCustomer", "append", "audit", "balance", "entries",
    "parse_amount", "read_account", "read_key", "roll_up", "statement", "statements",
]
