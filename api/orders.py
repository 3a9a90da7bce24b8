"""POST /v1/orders: a Subscription and its VPS for a customer, from a plan and an image, in one step.

Both objects are written in one etcd transaction, so an order is either wholly there or not
at all. The order is refused with 402 when the customer's balance plus credit limit does not
cover the first period (the plan's monthly price); nothing is charged here, billing charges
afterwards. A customer orders for itself only and only public plans. This module must never
write ledger entries or statuses.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api import access
from api.auth import Principal
from api.deps import Body, Caller, State
from api.errors import Forbidden, Invalid, PaymentRequired, refuse_unknown_fields
from api.objects import render
from controllers import ledger
from reconcile import keys
from reconcile.errors import AlreadyExists, NotFound
from reconcile.store import ModIs, Put, Store, encode
from specs.io import validate_object
from specs.kinds import VPS, Customer, Image, Plan, Resource, Subscription
from specs.meta import API_VERSION
from specs.money import format_minor, to_minor

router = APIRouter(prefix="/v1", tags=["orders"])

FIELDS = {"plan", "image", "hostname", "sshKeys", "name", "customer"}


def _invalid(path: str, message: str) -> Invalid:
    return Invalid(f"{path}: {message}", [{"path": path, "message": message}])


def _new_meta(name: str, now: datetime) -> dict[str, Any]:
    return {"name": name, "uid": secrets.token_hex(16), "generation": 1,
            "creationTimestamp": now.isoformat().replace("+00:00", "Z")}


def _doc(obj: Resource) -> dict[str, Any]:
    data: dict[str, Any] = obj.model_dump(mode="json", exclude={"status"}, exclude_none=True)
    data["metadata"].pop("resourceVersion", None)
    return data


def place_order(store: Store, caller: Principal, body: Any, *, now: datetime) -> dict[str, Any]:
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
                           "spec": {"subscription": name, "image": image.name, "hostname": body["hostname"],
                                    "sshKeys": body.get("sshKeys") or []}}, "order")
    first = to_minor(plan.spec.price.amount, currency)
    balance = ledger.read_account(store, customer_name).balanceMinor
    credit = to_minor(cust.spec.creditLimit, currency)
    if balance + credit < first:
        raise PaymentRequired(
            f"the balance ({format_minor(balance, currency)} {currency}) and credit limit "
            f"({format_minor(credit, currency)} {currency}) do not cover the first period "
            f"({format_minor(first, currency)} {currency}); add funds first")
    skey, vkey = keys.spec_key(Subscription, name, store.root), keys.spec_key(VPS, name, store.root)
    res = store.txn([ModIs(skey, 0), ModIs(vkey, 0)],
                    [Put(skey, encode(_doc(sub))), Put(vkey, encode(_doc(vps)))])
    if not res.succeeded:
        raise AlreadyExists(f"a subscription or server named {name!r} already exists")
    for obj in (sub, vps):
        obj.metadata.resourceVersion = str(res.revision)
    return {"subscription": render(sub), "vps": render(vps),
            "firstPeriod": {"amount": format_minor(first, currency), "currency": currency, "amountMinor": first},
            "resourceVersion": str(res.revision)}


def _named(store: Store, cls: type[Plan] | type[Image], name: Any, path: str) -> Any:
    if not isinstance(name, str) or not name:
        raise _invalid(path, "must be a name")
    try:
        return store.get(cls, name)
    except NotFound:
        raise _invalid(path, f"no {cls.KIND.lower()} {name!r}") from None


@router.post("/orders", status_code=201, summary="Order a server: Subscription + VPS from a plan and an image "
             "(402 when balance and credit do not cover the first period)")
def order(body: Body, state: State, caller: Caller) -> JSONResponse:
    out = place_order(state.store, caller, body, now=datetime.now(UTC))
    return JSONResponse(out, status_code=201, headers={"Location": f"/v1/vps/{out['vps']['metadata']['name']}"})
