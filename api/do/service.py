"""What the /v2 routes do, over the store: lookups scoped to the customer, droplets, actions, the account.

Blocking (the routes call it in the thread pool). A customer reaches only its own droplets, keys and
actions: `droplet_vps` is the one place a droplet id becomes a VPS, and anything not the caller's is
NotFound. Creates are orders (api.orders); actions are the native VPS actions (api.actions) plus an
action record whose status `decide` brings up to the node's observation. This module must never
write a status or touch another customer's records.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import TypeAdapter, ValidationError

from api import access
from api.actions import run_action
from api.auth import Principal
from api.deps import AppState
from api.do import mapping, records
from api.errors import Forbidden, Invalid
from api.orders import monthly_commitment, place_order
from reconcile import keys
from reconcile.errors import NotFound
from reconcile.store import Store
from specs.domain import ObservedDomain
from specs.kinds import VPS, Customer, Hostname, Image, IPPool, Node, Plan, SSHKey, Subscription
from specs.money import to_minor

ACTION_TYPES = {"power_on": "start", "power_off": "stop", "shutdown": "stop", "reboot": "reboot",
                "power_cycle": "reboot", "resize": "resize", "rebuild": "rebuild", "rename": None}
SSH_KEY = TypeAdapter(SSHKey)
_HOSTNAME = TypeAdapter(Hostname)


def invalid(message: str) -> Invalid:
    return Invalid(message)


def customer_of(caller: Principal) -> str:
    if caller.role != "customer" or not caller.customer:
        raise Forbidden("the DigitalOcean-compatible API serves customer tokens; operators use /v1")
    return caller.customer


def now() -> datetime:
    return datetime.now(UTC)


def to_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit() and len(value) < 19:
        return int(value)
    return None


def truthy(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() == "true")


# ------------------------------------------------------------------ lookups

def nodes_by_region(nodes: list[Node]) -> dict[str, list[Node]]:
    out: dict[str, list[Node]] = {}
    for n in nodes:
        slug = mapping.region_of(n)
        if slug:
            out.setdefault(slug, []).append(n)
    return out


def public_plans(store: Store) -> list[Plan]:
    return sorted((p for p in store.list(Plan).items if p.spec.public),
                  key=lambda p: (mapping.minor(p), p.name))


def images_with_ids(store: Store) -> list[tuple[Image, int]]:
    imgs = sorted(store.list(Image).items, key=lambda i: i.name)
    ids = records.image_ids(store, [i.metadata.uid or i.name for i in imgs])
    return [(i, ids[i.metadata.uid or i.name]) for i in imgs]


def droplet_context(store: Store, customer: str, subs: dict[str, Subscription]) -> mapping.DropletContext:
    plans = {p.name: p for p in store.list(Plan).items}
    nodes = store.list(Node).items
    regions = sorted(nodes_by_region(nodes))
    return mapping.DropletContext(
        plans=plans, plan_of={s.name: s.spec.plan for s in subs.values() if s.spec.customer == customer},
        images={i.name: (i, n) for i, n in images_with_ids(store)}, nodes={n.name: n for n in nodes},
        pools={p.name: p for p in store.list(IPPool).items}, regions=regions,
        sizes=[p.name for p in sorted((p for p in plans.values() if p.spec.public), key=mapping.minor)])


def my_servers(store: Store, customer: str) -> tuple[list[VPS], dict[str, Subscription]]:
    subs = access.subscription_owners(store)
    mine = [v for v in store.list(VPS).items
            if v.metadata.uid and v.metadata.deletionTimestamp is None and access.owner(store, v, subs) == customer]
    return mine, subs


def droplet_vps(store: Store, customer: str, droplet_id: Any) -> tuple[dict[str, Any], VPS]:
    n = to_int(droplet_id)
    rec = records.droplet(store, customer, n) if n is not None else None
    missing = NotFound("The resource you were accessing could not be found.")
    if rec is None:
        raise missing
    try:
        vps = store.get(VPS, rec["vps"])
    except NotFound:
        raise missing from None
    if vps.metadata.uid != rec["uid"] or vps.metadata.deletionTimestamp is not None \
            or access.owner(store, vps) != customer:
        raise missing
    return rec, vps


def render_droplets(store: Store, customer: str, servers: list[tuple[int, VPS]],
                     subs: dict[str, Subscription], recs: dict[int, dict[str, Any]] | None = None
                     ) -> list[dict[str, Any]]:
    ctx = droplet_context(store, customer, subs)
    recs = recs if recs is not None else records.droplets(store, customer)
    return [mapping.droplet(v, i, recs.get(i, {}).get("tags") or [], recs.get(i, {}).get("region"), ctx)
            for i, v in servers]


def ids_of(recs: dict[int, dict[str, Any]]) -> dict[str, int]:
    return {rec["uid"]: i for i, rec in recs.items()}


def all_droplets(store: Store, customer: str
                  ) -> tuple[list[tuple[int, VPS]], dict[str, Subscription], dict[int, dict[str, Any]]]:
    """The customer's live servers with their droplet ids (allocated if missing), by id; subscriptions; records."""
    mine, subs = my_servers(store, customer)
    recs = records.add_droplets(store, customer, [(v.name, v.metadata.uid or "") for v in mine])
    ids = ids_of(recs)
    return sorted(((ids[v.metadata.uid or ""], v) for v in mine if (v.metadata.uid or "") in ids),
                  key=lambda t: t[0]), subs, recs


# ------------------------------------------------------------------ actions

def observed_of(store: Store, vps: VPS) -> ObservedDomain | None:
    node = vps.status.node if vps.status is not None else None
    if not node:
        return None
    kv = store.kv_get(keys.observed_key(node, vps.name, store.root))
    return ObservedDomain.model_validate_json(kv.value) if kv is not None else None


def decide(store: Store, customer: str, kv: Any, doc: dict[str, Any]) -> dict[str, Any]:
    """The action with its status brought up to what the node has reported (written once decided)."""
    if doc.get("status") != "in-progress":
        return doc
    try:
        vps: VPS | None = store.get(VPS, doc["vps"])
    except NotFound:
        vps = None
    progress = mapping.action_progress(doc, vps, observed_of(store, vps) if vps is not None else None, now())
    if progress.status == "in-progress":
        return doc
    decided = {**doc, "status": progress.status, "completed_at": mapping.iso(now()), "error": progress.reason}
    records.settle_action(store, customer, kv, decided)
    return decided


def action_doc(doc: dict[str, Any]) -> dict[str, Any]:
    out = {"id": doc["id"], "status": doc["status"], "type": doc["type"], "started_at": doc["started_at"],
           "completed_at": doc.get("completed_at"), "resource_id": doc.get("resource_id"),
           "resource_type": doc.get("resource_type", "droplet"), "region_slug": doc.get("region_slug")}
    if doc["status"] == "errored":
        out["error_message"] = doc.get("error") or "failed"  # not in DigitalOcean's object; clients ignore it
    return out


def region_slug(store: Store, vps: VPS, rec: dict[str, Any]) -> str | None:
    node = vps.status.node if vps.status is not None else None
    if node:
        try:
            return mapping.region_of(store.get(Node, node))
        except NotFound:
            pass
    region = rec.get("region")
    return region if isinstance(region, str) else None


def record_action(store: Store, customer: str, droplet_id: int, vps: VPS, rec: dict[str, Any], type_: str,
                   target: dict[str, Any]) -> dict[str, Any]:
    doc = {"status": "in-progress" if target else "completed", "type": type_, "started_at": mapping.iso(now()),
           "completed_at": None if target else mapping.iso(now()), "resource_id": droplet_id,
           "resource_type": "droplet", "region_slug": region_slug(store, vps, rec), "vps": vps.name,
           "uid": vps.metadata.uid, "target": target, "error": ""}
    return records.add_action(store, customer, doc)


def image_by_ref(store: Store, ref: Any, field: str) -> Image:
    n = to_int(ref)
    for img, img_id in images_with_ids(store):
        if (n is not None and img_id == n) or (isinstance(ref, str) and img.name == ref):
            return img
    raise invalid(f"{field}: no image {ref!r}")


def plan_by_slug(store: Store, slug: Any) -> Plan:
    for p in public_plans(store):
        if p.name == slug:
            return p
    raise invalid(f"size: no size {slug!r}")


def droplet_action(store: Store, caller: Principal, droplet_id: str, body: Any) -> dict[str, Any]:
    customer = customer_of(caller)
    rec, vps = droplet_vps(store, customer, droplet_id)  # first: someone else's droplet is 404 whatever the body
    if not isinstance(body, dict) or not isinstance(body.get("type"), str):
        raise invalid("type: an action type is required")
    type_ = body["type"]
    if type_ not in ACTION_TYPES:
        raise invalid(f"type: {type_!r} is not supported here; supported: {', '.join(ACTION_TYPES)}")
    n = int(droplet_id)
    for kv, doc in records.actions(store, customer):
        if doc.get("resource_id") == n and doc.get("status") == "in-progress" \
                and decide(store, customer, kv, doc)["status"] == "in-progress":
            raise invalid("Droplet already has a pending event.")
    target: dict[str, Any]
    if type_ == "rename":
        name = body.get("name")
        try:
            hostname = _HOSTNAME.validate_python(name)
        except ValidationError:
            raise invalid(f"name: {name!r} is not a valid hostname") from None
        store.update(vps.model_copy(update={"spec": vps.spec.model_copy(update={"hostname": hostname})}))
        target = {}
    elif type_ == "resize":
        plan = plan_by_slug(store, body.get("size"))
        run_action(store, caller, vps.name, "resize", {"plan": plan.name})
        target = {"vcpus": plan.spec.vcpus, "memoryMiB": plan.spec.memoryMiB}
        if truthy(body.get("disk")):
            target["diskGiB"] = plan.spec.diskGiB
    elif type_ == "rebuild":
        img = image_by_ref(store, body.get("image"), "image")
        run_action(store, caller, vps.name, "rebuild", {"image": img.name})
        after = store.get(VPS, vps.name)
        target = {"rebuildGeneration": after.spec.rebuildGeneration, "power": after.spec.powerState}
    else:
        native = ACTION_TYPES[type_]
        assert native is not None
        run_action(store, caller, vps.name, native, None)
        after = store.get(VPS, vps.name)
        target = {"power": after.spec.powerState}
        if native == "reboot":
            target["restartGeneration"] = after.spec.restartGeneration
    return {"action": action_doc(record_action(store, customer, n, vps, rec, type_, target))}


# ------------------------------------------------------------------ create / delete

def create_droplets(store: Store, state: AppState, caller: Principal, body: Any,
                    origin: str) -> dict[str, Any]:
    customer = customer_of(caller)
    if not isinstance(body, dict):
        raise invalid("the body must be a JSON object")
    names = body.get("names") if body.get("names") is not None else [body.get("name")]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise invalid("name: a name (or names) is required")
    if len(names) > 10:
        raise invalid("names: at most 10 droplets at once")
    if body.get("user_data"):
        raise invalid("user_data: not supported by this provider")
    if truthy(body.get("backups")):
        raise invalid("backups: backups are not offered by this provider")
    if body.get("volumes"):
        raise invalid("volumes: block storage volumes are not offered by this provider")
    tags = body.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) and 0 < len(t) <= 255 for t in tags):
        raise invalid("tags: must be a list of strings")
    plan = plan_by_slug(store, body.get("size"))
    img = image_by_ref(store, body.get("image"), "image")
    selector: dict[str, str] | None = None
    region = body.get("region")
    if region:
        nodes = nodes_by_region(store.list(Node).items).get(str(region))
        if not nodes:
            raise invalid(f"region: no region {region!r}")
        label = next(lbl for lbl in mapping.REGION_LABELS if nodes[0].metadata.labels.get(lbl) == region)
        selector = {label: str(region)}
    key_refs = body.get("ssh_keys") or []
    if not isinstance(key_refs, list):
        raise invalid("ssh_keys: must be a list of ids or fingerprints")
    mine = records.ssh_keys(store, customer)
    public_keys = []
    for ref in key_refs:
        n = to_int(ref)
        hit = next((k for k in mine if (n is not None and k["id"] == n) or k["fingerprint"] == ref), None)
        if hit is None:
            raise invalid(f"ssh_keys: no key {ref!r} on this account")
        public_keys.append(hit["public_key"])
    hub = state.hub
    if hub is not None:
        hub.start()
    made: list[tuple[int, VPS]] = []
    actions = []
    for name in names:
        out = place_order(store, caller, {"plan": plan.name, "image": img.name, "hostname": name,
                                          "sshKeys": public_keys}, now=now(),
                          servers_named=hub.servers_of_subscription if hub is not None else None,
                          node_selector=selector)
        vps = store.get(VPS, out["vps"]["metadata"]["name"])
        ids = ids_of(records.add_droplets(store, customer, [(vps.name, vps.metadata.uid or "")], tags=list(tags),
                                        region=str(region) if region else None))
        droplet_id = ids[vps.metadata.uid or ""]
        made.append((droplet_id, vps))
        rec = records.droplet(store, customer, droplet_id) or {}
        act = record_action(store, customer, droplet_id, vps, rec, "create", {"power": "Running"})
        actions.append({"id": act["id"], "rel": "create", "href": f"{origin}/v2/actions/{act['id']}"})
    rendered = render_droplets(store, customer, made, access.subscription_owners(store))
    if body.get("names") is not None:
        return {"droplets": rendered, "links": {"actions": actions}}
    return {"droplet": rendered[0], "links": {"actions": actions}}


def destroy(store: Store, customer: str, vps: VPS) -> None:
    """The owner's explicit delete: the VPS is deleted (its disks go with it) and its subscription cancelled,
    unless another live server of the customer is still on that subscription."""
    try:
        sub = store.get(Subscription, vps.spec.subscription)
    except NotFound:
        sub = None
    shared = sub is not None and any(
        v.name != vps.name and v.metadata.deletionTimestamp is None and v.bound_to(sub)
        for v in store.list(VPS).items)
    if sub is not None and vps.bound_to(sub) and sub.spec.customer == customer and not sub.spec.cancelled \
            and not shared:
        store.update(sub.model_copy(update={"spec": sub.spec.model_copy(update={"cancelled": True})}))
    store.delete(VPS, vps.name)


# ------------------------------------------------------------------ account

def account(store: Store, customer: str) -> dict[str, Any]:
    cust = store.get(Customer, customer)
    mine, subs = my_servers(store, customer)
    currency = cust.spec.currency
    plans = [p for p in store.list(Plan).items if p.spec.price.currency == currency]
    prices = {p.name: mapping.minor(p) for p in plans}
    committed = monthly_commitment(list(subs.values()), prices, customer)
    public = sorted(prices[p.name] for p in plans if p.spec.public)
    balance = cust.status.balanceMinor if cust.status is not None else 0
    limit = mapping.droplet_limit(len(mine), balance, to_minor(cust.spec.creditLimit, currency), committed,
                                  public[0] if public else None)
    return {"account": mapping.account(cust, limit)}
