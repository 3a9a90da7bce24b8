"""POST /v1/orders: a Subscription and its VPS for a customer, from a plan and an image, in one step.

Both objects are written in one etcd transaction, so an order is either wholly there or not
at all. The order is refused with 402 when the customer's balance plus credit limit does not
cover the monthly cost of all its subscriptions that are not terminated, this one included;
the same transaction compares that nothing the check read has changed (no subscription written
since, the same balance and credit limit), so parallel orders cannot each pass alone. Nothing
is charged here, billing charges afterwards. The name is claimed for the customer in the same
transaction (api.names): a name used for another customer's objects is refused (409).
A customer orders for itself only and only public plans. This module must never
write ledger entries or statuses.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api import access, names
from api.auth import Principal
from api.deps import Body, Caller, State
from api.errors import Forbidden, Invalid, PaymentRequired, refuse_unknown_fields
from api.objects import render
from controllers import ledger
from reconcile import keys
from reconcile.errors import AlreadyExists, Conflict, NotFound
from reconcile.store import Get, ModIs, Put, Store, UnchangedSince, decode, encode
from specs.io import validate_object
from specs.kinds import VPS, Customer, Image, Plan, Resource, Subscription, SubscriptionStatus
from specs.meta import API_VERSION
from specs.money import format_minor, to_minor

router = APIRouter(prefix="/v1", tags=["orders"])

FIELDS = {"plan", "image", "hostname", "sshKeys", "name", "customer"}
# Tries when the customer's subscriptions, balance or credit limit change between the check and the write.
ORDER_ATTEMPTS = 5


def _invalid(path: str, message: str) -> Invalid:
    return Invalid(f"{path}: {message}", [{"path": path, "message": message}])


def _new_meta(name: str, now: datetime) -> dict[str, Any]:
    return {"name": name, "uid": secrets.token_hex(16), "generation": 1,
            "creationTimestamp": now.isoformat().replace("+00:00", "Z")}


def _doc(obj: Resource) -> dict[str, Any]:
    data: dict[str, Any] = obj.model_dump(mode="json", exclude={"status"}, exclude_none=True)
    data["metadata"].pop("resourceVersion", None)
    return data


def place_order(store: Store, caller: Principal, body: Any, *, now: datetime,
                servers_named: Callable[[str], list[str]] | None = None,
                node_selector: dict[str, str] | None = None) -> dict[str, Any]:
    """Validate, check the customer's money, and write the Subscription and VPS in one transaction.

    `servers_named(name)`: the servers that refer to a Subscription of that name (the watch hub's
    index); an order never takes such a name. `node_selector`: the VPS's (a region, api.do)."""
    if caller.role not in access.STAFF and caller.role != "customer":
        raise Forbidden(f"role {caller.role!r} may not place orders")
    if not isinstance(body, dict):
        raise _invalid("", "the body must be an object")
    refuse_unknown_fields(body, FIELDS)
    missing = sorted({"plan", "image", "hostname"} - set(body))
    if caller.role in access.STAFF and "customer" not in body:
        missing.append("customer")
    if missing:
        raise Invalid(f"missing fields: {', '.join(missing)}", [{"path": f, "message": "is required"}
                                                                  for f in missing])
    customer_name = caller.customer if caller.role == "customer" else body["customer"]
    if caller.role == "customer" and body.get("customer") not in (None, caller.customer):
        raise access.not_found(Customer.KIND, str(body.get("customer")))
    if not isinstance(customer_name, str) or not customer_name:
        raise _invalid("customer", "must name a customer")
    try:
        cust = store.get(Customer, customer_name)
    except NotFound:
        raise _invalid("customer", f"no customer {customer_name!r}") from None
    plan = _named(store, Plan, body["plan"], "plan")
    if caller.role == "customer" and not plan.spec.public:
        raise _invalid("plan", f"no plan {body['plan']!r}")
    image = _named(store, Image, body["image"], "image")
    if plan.spec.diskGiB < image.spec.minDiskGiB:
        raise _invalid("image", f"image {image.name!r} needs a disk of {image.spec.minDiskGiB} GiB; plan "
                                f"{plan.name!r} has {plan.spec.diskGiB} GiB")
    currency = cust.spec.currency
    if plan.spec.price.currency != currency:
        raise _invalid("plan", f"plan {plan.name!r} is priced in {plan.spec.price.currency}; the customer pays in "
                               f"{currency}")
    name = body.get("name") or f"{customer_name[:50]}-{secrets.token_hex(3)}"
    sub = validate_object({"apiVersion": API_VERSION, "kind": "Subscription", "metadata": _new_meta(name, now),
                           "spec": {"customer": customer_name, "plan": plan.name}}, "order")
    vps = validate_object({"apiVersion": API_VERSION, "kind": "VPS", "metadata": _new_meta(name, now),
                           "spec": {"subscription": name, "subscriptionUID": sub.metadata.uid, "image": image.name,
                                    "hostname": body["hostname"], "sshKeys": body.get("sshKeys") or [],
                                    **({"nodeSelector": node_selector} if node_selector else {})}}, "order")
    if servers_named and servers_named(name):
        # Servers still refer to a Subscription of this name (made before uids bound them): not free.
        raise AlreadyExists(f"the name {name!r} is taken; choose another one")
    first = to_minor(plan.spec.price.amount, currency)
    skey, vkey = keys.spec_key(Subscription, name, store.root), keys.spec_key(VPS, name, store.root)
    for _ in range(ORDER_ATTEMPTS):
        snap = _read_commitments(store, customer_name, currency)
        claim_compare, claim = names.claim_for_order(store, name, customer_name)
        covered = snap.balance + snap.credit
        if covered < snap.committed + first:
            raise PaymentRequired(
                f"the balance ({format_minor(snap.balance, currency)} {currency}) and credit limit "
                f"({format_minor(snap.credit, currency)} {currency}) do not cover the monthly cost of your "
                f"subscriptions with this one ({format_minor(snap.committed, currency)} + "
                f"{format_minor(first, currency)} {currency}); add funds first")
        # The decision holds only if nothing it read changed: no subscription written since the read
        # (another order of this customer, racing), the same balance, the same credit limit.
        res = store.txn([ModIs(skey, 0), ModIs(vkey, 0), claim_compare,
                         UnchangedSince(keys.spec_prefix(Subscription, store.root), snap.revision),
                         ModIs(ledger.account_key(customer_name, store.root), snap.account_revision),
                         ModIs(keys.spec_key(Customer, customer_name, store.root), snap.customer_revision)],
                        [Put(skey, encode(_doc(sub))), Put(vkey, encode(_doc(vps))), claim],
                        [Get(skey), Get(vkey)])
        if res.succeeded:
            break
        if res.gets[0] or res.gets[1]:
            raise AlreadyExists(f"a subscription or server named {name!r} already exists")
    else:
        raise Conflict("the customer's subscriptions kept changing while this order was checked; retry")
    for obj in (sub, vps):
        obj.metadata.resourceVersion = str(res.revision)
    return {"subscription": render(sub), "vps": render(vps),
            "firstPeriod": {"amount": format_minor(first, currency), "currency": currency, "amountMinor": first},
            "resourceVersion": str(res.revision)}


@dataclass(frozen=True)
class Commitments:
    """What an order is checked against, read at one revision."""

    revision: int
    balance: int
    credit: int
    committed: int  # monthly cost of the customer's subscriptions that are not terminated
    account_revision: int
    customer_revision: int


def monthly_commitment(subs: list[Subscription], prices: dict[str, int], customer: str) -> int:
    """The monthly cost (minor units) of `customer`'s subscriptions that are not terminated or cancelled. Pure.

    `prices`: plan name -> monthly price in the customer's currency (plans missing from it cost nothing
    here: a subscription on a deleted plan is not charged)."""
    return sum(prices.get(s.spec.plan, 0) for s in subs
               if s.spec.customer == customer and not s.spec.cancelled
               and (s.status is None or s.status.state != "Terminated"))


def _read_commitments(store: Store, customer: str, currency: str) -> Commitments:
    root = store.root
    res = store.txn([], [Get(keys.spec_prefix(Subscription, root), True), Get(keys.status_prefix(Subscription, root),
                                                                               True),
                         Get(keys.spec_prefix(Plan, root), True), Get(ledger.account_key(customer, root)),
                         Get(keys.spec_key(Customer, customer, root))])
    if not res.gets[4]:
        raise _invalid("customer", f"no customer {customer!r}")
    cust = Customer.model_validate(decode(res.gets[4][0].value))
    states = {kv.key.rsplit("/", 1)[-1]: kv.value for kv in res.gets[1]}
    subs = []
    for kv in res.gets[0]:
        sub = Subscription.model_validate(decode(kv.value))
        raw = states.get(sub.name)
        if raw is not None and sub.spec.customer == customer:
            sub = sub.model_copy(update={"status": SubscriptionStatus.model_validate(decode(raw))})
        subs.append(sub)
    prices: dict[str, int] = {}
    for kv in res.gets[2]:
        plan = Plan.model_validate(decode(kv.value))
        if plan.spec.price.currency == currency:
            prices[plan.name] = to_minor(plan.spec.price.amount, currency)
    acct = res.gets[3][0] if res.gets[3] else None
    balance = ledger.Account.from_bytes(acct.value, acct.mod_revision).balanceMinor if acct is not None else 0
    return Commitments(res.revision, balance, to_minor(cust.spec.creditLimit, currency),
                       monthly_commitment(subs, prices, customer), acct.mod_revision if acct is not None else 0,
                       res.gets[4][0].mod_revision)


def _named(store: Store, cls: type[Plan] | type[Image], name: Any, path: str) -> Any:
    if not isinstance(name, str) or not name:
        raise _invalid(path, "must be a name")
    try:
        return store.get(cls, name)
    except NotFound:
        raise _invalid(path, f"no {cls.KIND.lower()} {name!r}") from None


@router.post("/orders", status_code=201, summary="Order a server: Subscription + VPS from a plan and an image "
             "(402 when balance and credit do not cover the monthly cost of every subscription with this one)")
def order(body: Body, state: State, caller: Caller) -> JSONResponse:
    hub = state.hub
    if hub is not None:
        hub.start()
    out = place_order(state.store, caller, body, now=datetime.now(UTC),
                      servers_named=hub.servers_of_subscription if hub is not None else None)
    return JSONResponse(out, status_code=201, headers={"Location": f"/v1/vps/{out['vps']['metadata']['name']}"})
