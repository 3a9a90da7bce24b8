"""Who may do what: the role table, ownership of objects, and field-level rules for customers.

    admin            everything
    operator         everything but billing adjustments (payments, webhook secrets, a customer's
                     creditLimit) and tokens
    gitops           plans, images, nodes, IP pools (all verbs); nothing else
    customer         its own Customer, Subscriptions, VPS, ledger and events; public plans; images.
                     Writes: PATCH of a VPS's powerState, sshKeys, hostname; PATCH of a
                     Subscription's cancelled/autoRenew; actions; orders
    billing-webhook  reads customers, subscriptions and ledgers

A customer is told 404 for anything it may not see, so names of other customers' objects
never leak; a denied verb on something it may see is 403. Other roles get 403. Routes call
these checks before touching anything. This module must never write to the store.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from typing import Any, TypeVar

from api.auth import Principal
from api.errors import Forbidden
from reconcile.errors import NotFound
from reconcile.objects import Store
from specs.kinds import VPS, Customer, Image, IPPool, Node, Plan, Resource, Subscription

R = TypeVar("R", bound=Resource)

STAFF = frozenset({"admin", "operator"})
GITOPS_KINDS = frozenset({Plan.KIND, Image.KIND, Node.KIND, IPPool.KIND})
CUSTOMER_KINDS = frozenset({Customer.KIND, Subscription.KIND, VPS.KIND, Plan.KIND, Image.KIND})
OWNED_KINDS = frozenset({Customer.KIND, Subscription.KIND, VPS.KIND})
WEBHOOK_KINDS = frozenset({Customer.KIND, Subscription.KIND})

READ_VERBS = frozenset({"list", "get", "watch"})
# What a customer may change with a merge patch, by kind: {"spec": {field, ...}}.
CUSTOMER_PATCH: dict[str, frozenset[str]] = {
    VPS.KIND: frozenset({"powerState", "sshKeys", "hostname"}),
    Subscription.KIND: frozenset({"cancelled", "autoRenew"}),
}


def not_found(kind: str, name: str) -> NotFound:
    return NotFound(f"{kind} {name!r} not found")


def readable_kinds(p: Principal) -> frozenset[str]:
    """The kinds whose objects (some of them, for a customer) the principal may read."""
    if p.role in STAFF:
        return frozenset({Plan.KIND, Image.KIND, Node.KIND, IPPool.KIND, Customer.KIND, Subscription.KIND, VPS.KIND})
    if p.role == "gitops":
        return GITOPS_KINDS
    if p.role == "customer":
        return CUSTOMER_KINDS
    if p.role == "billing-webhook":
        return WEBHOOK_KINDS
    return frozenset()


def may_write_kind(p: Principal, kind: str) -> bool:
    """Create/replace/delete: staff everywhere, gitops on its kinds, nobody else."""
    return p.role in STAFF or (p.role == "gitops" and kind in GITOPS_KINDS)


def require_collection(p: Principal, cls: type[Resource], verb: str) -> None:
    """Kind-level check for list/create/watch (kind names are public, so 403 is fine here)."""
    if verb in READ_VERBS:
        if cls.KIND not in readable_kinds(p):
            raise Forbidden(f"role {p.role!r} may not {verb} {cls.PLURAL}")
    elif not may_write_kind(p, cls.KIND):
        raise Forbidden(f"role {p.role!r} may not {verb} {cls.PLURAL}")


def require_staff(p: Principal, what: str) -> None:
    if p.role not in STAFF:
        raise Forbidden(f"role {p.role!r} may not {what}")


def require_admin(p: Principal, what: str) -> None:
    if p.role != "admin":
        raise Forbidden(f"only an admin may {what}")


# ------------------------------------------------------------------ ownership


def owner(store: Store, obj: Resource, subs: dict[str, Subscription] | None = None) -> str | None:
    """The Customer that owns `obj`, or None (not a customer's kind, or the chain is broken).

    A VPS belongs to the customer of the Subscription it was created under (by uid, not by the
    name alone: a Subscription recreated under an old name does not inherit its servers).
    `subs` (name -> Subscription) spares a read per VPS when filtering a list.
    """
    if isinstance(obj, Customer):
        return obj.name
    if isinstance(obj, Subscription):
        return obj.spec.customer
    if isinstance(obj, VPS):
        if subs is not None:
            sub = subs.get(obj.spec.subscription)
        else:
            try:
                sub = store.get(Subscription, obj.spec.subscription)
            except NotFound:
                sub = None
        return sub.spec.customer if sub is not None and obj.bound_to(sub) else None
    return None


def visible(store: Store, p: Principal, obj: Resource, subs: dict[str, Subscription] | None = None) -> bool:
    kind = obj.KIND
    if kind not in readable_kinds(p):
        return False
    if p.role != "customer":
        return True
    if isinstance(obj, Plan):
        return obj.spec.public
    if kind in OWNED_KINDS:
        return p.customer is not None and owner(store, obj, subs) == p.customer
    return True


def require_visible(store: Store, p: Principal, obj: R) -> R:
    """The object if the principal may see it; otherwise NotFound (customers) or Forbidden."""
    if visible(store, p, obj):
        return obj
    if p.role == "customer":
        raise not_found(obj.KIND, obj.name)
    raise Forbidden(f"role {p.role!r} may not read {obj.KIND.lower()} objects")


def deny_unreadable_kind(p: Principal, cls: type[Resource], name: str) -> None:
    """Before any read of a named object: a kind the principal never sees is 404/403 without a lookup."""
    if cls.KIND in readable_kinds(p):
        return
    if p.role == "customer":
        raise not_found(cls.KIND, name)
    raise Forbidden(f"role {p.role!r} may not use {cls.PLURAL}")


def subscription_owners(store: Store) -> dict[str, Subscription]:
    return {s.name: s for s in store.list(Subscription).items}


def filter_visible(store: Store, p: Principal, items: Iterable[R]) -> list[R]:
    items = list(items)
    if p.role != "customer":
        return [o for o in items if visible(store, p, o)]
    subs = subscription_owners(store) if any(isinstance(o, VPS) for o in items) else None
    return [o for o in items if visible(store, p, o, subs)]


def require_write(store: Store, p: Principal, obj: Resource, verb: str) -> None:
    """Replace/delete of an existing object: 404 if a customer may not see it, else 403 unless allowed."""
    if may_write_kind(p, obj.KIND):
        return
    require_visible(store, p, obj)
    raise Forbidden(f"role {p.role!r} may not {verb} {obj.KIND.lower()} objects")


def require_patch(store: Store, p: Principal, obj: Resource, patch: dict[str, Any]) -> None:
    """A merge patch by `p` on `obj`: staff/gitops by kind; a customer only its allowed spec fields."""
    if may_write_kind(p, obj.KIND):
        return
    require_visible(store, p, obj)
    allowed = CUSTOMER_PATCH.get(obj.KIND) if p.role == "customer" else None
    if allowed is None:
        raise Forbidden(f"role {p.role!r} may not change {obj.KIND.lower()} objects")
    refused = [path for path in _patched_paths(patch) if not _allowed_path(path, allowed)]
    if refused:
        raise Forbidden(f"a customer may change only {', '.join('spec.' + f for f in sorted(allowed))}",
                        [{"path": path, "message": "may not be changed by a customer"} for path in refused])


# Billing adjustments on a kind's spec: only these roles may set or change them.
BILLING_FIELDS: dict[str, tuple[str, ...]] = {Customer.KIND: ("creditLimit",)}
BILLING_ROLES = frozenset({"admin"})


def require_billing_fields(p: Principal, current: Resource | None, new: Resource) -> None:
    """Forbidden unless `p` may make the billing adjustments that writing `new` over `current` makes.

    Creating a Customer with a non-zero creditLimit is one too (current None: compared with "0")."""
    fields = BILLING_FIELDS.get(new.KIND)
    if not fields or p.role in BILLING_ROLES:
        return
    changed = [f for f in fields if _amount(getattr(new.spec, f)) != _amount(
        getattr(current.spec, f) if current is not None else "0")]
    if changed:
        raise Forbidden(f"role {p.role!r} may not change {', '.join('spec.' + f for f in changed)} (a billing "
                        "adjustment: admin only)",
                        [{"path": "spec." + f, "message": "a billing adjustment: admin only"} for f in changed])


def _amount(value: Any) -> Decimal | str:
    try:
        return Decimal(str(value))
    except ArithmeticError:
        return str(value)


def _patched_paths(patch: dict[str, Any]) -> list[str]:
    paths: list[str] = []
    for key, value in patch.items():
        if key in ("spec", "metadata") and isinstance(value, dict):
            paths.extend(f"{key}.{k}" for k in value)
        else:
            paths.append(key)
    return paths


def _allowed_path(path: str, spec_fields: frozenset[str]) -> bool:
    # resourceVersion only pins the patch to a version; apiVersion/kind are checked elsewhere.
    if path in ("metadata.resourceVersion", "metadata.name", "apiVersion", "kind"):
        return True
    return path.startswith("spec.") and path[5:] in spec_fields


def may_read_customer(p: Principal, customer: str) -> None:
    """Ledger and statements of `customer`: staff, the webhook role, or the customer itself (else 404)."""
    if p.role in STAFF or p.role == "billing-webhook":
        return
    if p.role == "customer":
        if p.customer != customer:
            raise not_found(Customer.KIND, customer)
        return
    raise Forbidden(f"role {p.role!r} may not read customer accounts")


def event_visible(store: Store, p: Principal, kind: str, name: str, cache: dict[tuple[str, str], bool]) -> bool:
    """May `p` read events about kind/name? Customers: about their own objects only."""
    if p.role in STAFF:
        return True
    if kind not in readable_kinds(p):
        return False
    if p.role != "customer" or kind not in OWNED_KINDS:
        return p.role != "customer"
    hit = cache.get((kind, name))
    if hit is None:
        cls = {Customer.KIND: Customer, Subscription.KIND: Subscription, VPS.KIND: VPS}[kind]
        try:
            hit = owner(store, store.get(cls, name)) == p.customer
        except NotFound:
            hit = False
        cache[(kind, name)] = hit
    return hit
