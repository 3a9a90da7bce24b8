"""Name claims: a Subscription or VPS name, once used for a customer's objects, stays that customer's.

    <root>/names/<name>    {"customer": "<customer>"}    written with the first object of that name

Ownership follows uids (a VPS is bound to the uid of its Subscription), so a reused name never
inherits servers. Claims go further: a customer's order cannot take a name that was used for
another customer's objects at all, so nothing that still mentions the old name (events, audit
records, a hoster's tickets and invoices) can be mistaken for the new owner's. A claim is written
in the same transaction as the object (orders, and staff creates through the API) and never
deleted. Staff may reuse any name deliberately; their create moves the claim. See docs/adr/007.

This module reads claims and builds the writes; it must never write by itself.
"""

from __future__ import annotations

import json

from reconcile import keys
from reconcile.errors import AlreadyExists
from reconcile.etcd import KV, ModIs, Put
from reconcile.objects import Store


def claim_put(root: str, name: str, customer: str) -> Put:
    return Put(keys.name_claim_key(name, root), json.dumps({"customer": customer}).encode())


def claimant(kv: KV | None) -> str | None:
    if kv is None:
        return None
    try:
        data = json.loads(kv.value)
    except ValueError:
        return ""  # unreadable: claimed by nobody we could match, so by someone else
    return str(data.get("customer", "")) if isinstance(data, dict) else ""


def claim_for_order(store: Store, name: str, customer: str) -> tuple[ModIs, Put]:
    """The compare and the put that claim `name` for `customer` in an order's transaction.

    AlreadyExists when another customer's objects used the name before (the claim says so), so
    the order is refused before anything is written; the compare keeps a concurrent claim out."""
    kv = store.kv_get(keys.name_claim_key(name, store.root))
    holder = claimant(kv)
    if holder is not None and holder != customer:
        raise AlreadyExists(f"the name {name!r} is taken; choose another one")
    return ModIs(keys.name_claim_key(name, store.root), kv.mod_revision if kv is not None else 0), \
        claim_put(store.root, name, customer)
