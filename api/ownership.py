"""Who owns what, as the object routes enforce it on writes and on a customer's events (ADR 007).

A VPS is bound to the uid of its Subscription (`bind`, the server decides); Subscription and VPS
names are claimed for their customer (`claim`, api.names); a Subscription with servers, or a
Customer with subscriptions, is not deleted (409), and a Customer name whose ledger is kept is not
given out again. A customer's events are read in one transaction with its objects and shown only
from each object's creation on. This module decides and reads; the routes write.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi.responses import JSONResponse

from api import access, names
from api.auth import Principal
from api.deps import AppState
from reconcile import keys
from reconcile.errors import AlreadyExists, Conflict, NotFound
from reconcile.etcd import KV, Get, Put, decode
from specs import VPS, Customer, Resource, Subscription
from specs.meta import API_VERSION

# An event recorded up to this long before its object's creationTimestamp (another host's clock)
# is still the object's; older ones are about an earlier object of the same name.
EVENT_CLOCK_SKEW_US = 1_000_000


def customer_events(state: AppState, caller: Principal, prefix: str, kind: str | None,
                     name: str | None) -> JSONResponse:
    """A customer's events, read in one transaction: its Customer, every Subscription and VPS spec, and
    the events under `prefix`, at one revision. An event is shown only about an object the customer
    owns now and only from that object's creation on: events about an earlier object that had the
    same name (another customer's) stay hidden."""
    root = state.store.root
    res = state.store.txn([], [Get(keys.spec_key(Customer, caller.customer or "", root)),
                               Get(keys.spec_prefix(Subscription, root), True),
                               Get(keys.spec_prefix(VPS, root), True), Get(prefix, True)])
    owned = owned_since(caller.customer or "", res.gets[0], res.gets[1], res.gets[2])
    if kind and name and (kind, name) not in owned:
        raise access.not_found(kind, name)
    base = keys.events_prefix(root)
    items: list[dict[str, Any]] = []
    for kv in res.gets[3]:
        parts = kv.key[len(base):].split("/")
        since = owned.get((parts[0], parts[1])) if len(parts) == 3 else None
        if since is None or (name is not None and parts[1] != name) or not parts[2].isdigit() \
                or int(parts[2]) + EVENT_CLOCK_SKEW_US < since:
            continue
        try:
            ev = decode(kv.value)
        except ValueError:
            continue
        if isinstance(ev, dict):
            items.append({"kind": parts[0], "name": parts[1], **ev})
    return JSONResponse({"apiVersion": API_VERSION, "kind": "EventList",
                         "metadata": {"resourceVersion": str(res.revision)}, "items": items})


def owned_since(customer: str, cust: list[KV], subs: list[KV], servers: list[KV]) -> dict[tuple[str, str], int]:
    """(kind, name) -> creation time (microseconds) of each object `customer` owns, from raw specs. Pure."""
    def created(doc: dict[str, Any]) -> int:
        raw = doc.get("metadata", {}).get("creationTimestamp")
        try:
            return int(datetime.fromisoformat(str(raw)).timestamp() * 1e6) if raw else 0
        except ValueError:
            return 0

    out: dict[tuple[str, str], int] = {}
    for kv in cust:
        out[(Customer.KIND, customer)] = created(decode(kv.value))
    sub_uid: dict[str, str] = {}
    for kv in subs:
        doc = decode(kv.value)
        if doc.get("spec", {}).get("customer") == customer:
            sub_uid[doc["metadata"]["name"]] = str(doc["metadata"].get("uid") or "")
            out[(Subscription.KIND, doc["metadata"]["name"])] = created(doc)
    for kv in servers:
        doc = decode(kv.value)
        spec = doc.get("spec", {})
        bound = spec.get("subscriptionUID")
        if spec.get("subscription") in sub_uid and (bound is None or bound == sub_uid[spec["subscription"]]):
            out[(VPS.KIND, doc["metadata"]["name"])] = created(doc)
    return out


async def bind(state: AppState, current: Resource | None, new: Resource) -> Resource:
    """A VPS as it is written: bound to the uid of its Subscription (the server decides, never the body).

    Kept while the server stays under the same Subscription name; set afresh when it moves to
    another one (None while that one does not exist yet: ownership then follows the name)."""
    if not isinstance(new, VPS):
        return new
    uid: str | None
    if isinstance(current, VPS) and current.spec.subscription == new.spec.subscription \
            and current.spec.subscriptionUID is not None:
        uid = current.spec.subscriptionUID
    else:
        try:
            uid = (await state.astore.get(Subscription, new.spec.subscription)).metadata.uid
        except NotFound:
            uid = None
    if uid == new.spec.subscriptionUID:
        return new
    return new.model_copy(update={"spec": new.spec.model_copy(update={"subscriptionUID": uid})})


async def claim(state: AppState, obj: Resource) -> Put | None:
    """The name claim a staff create of a Subscription or VPS records for its customer (api.names)."""
    if isinstance(obj, Subscription):
        return names.claim_put(state.store.root, obj.name, obj.spec.customer)
    if isinstance(obj, VPS):
        try:
            sub = await state.astore.get(Subscription, obj.spec.subscription)
        except NotFound:
            return None
        return names.claim_put(state.store.root, obj.name, sub.spec.customer) if obj.bound_to(sub) else None
    return None


async def refuse_kept_ledger(state: AppState, name: str) -> None:
    """409 when an earlier customer of this name left a ledger account (kept: money adds up): a new
    customer would inherit its balance and history."""
    res = await state.astore.txn([], [Get(keys.account_key(name, state.store.root))])
    if res.gets[0]:
        raise AlreadyExists(f"the name {name!r} belonged to an earlier customer whose ledger is kept; "
                            "choose another name")


async def refuse_if_subscriptions(state: AppState, name: str) -> None:
    """409 naming the subscriptions customer `name` still has (they would pass to a namesake)."""
    subs = sorted(s.name for s in (await state.astore.list(Subscription)).items if s.spec.customer == name)
    if subs:
        shown = ", ".join(subs[:10]) + (f" and {len(subs) - 10} more" if len(subs) > 10 else "")
        raise Conflict(f"customer {name!r} still has subscriptions ({shown}); delete them first")


async def refuse_if_servers(state: AppState, name: str) -> None:
    """409 naming the servers that still belong to Subscription `name`: deleting it would leave them
    ownerless (and, before uids bound them, let whoever reused the name take them over)."""
    servers = sorted(v.name for v in (await state.astore.list(VPS)).items if v.spec.subscription == name)
    if servers:
        shown = ", ".join(servers[:10]) + (f" and {len(servers) - 10} more" if len(servers) > 10 else "")
        raise Conflict(f"subscription {name!r} still has servers ({shown}); delete them first")
