"""The /v2 endpoints: a sub-application mounted by api.server, answering as DigitalOcean does.

Every path answers with and without a trailing slash (no redirects). Only customer tokens are
served (an operator has the native API): a customer sees its own droplets, keys and actions,
anything else is `not_found`. Creates are orders (api.orders: the balance and credit rule, 402);
actions are the native VPS actions (api.actions) plus an action record whose status follows the
node's observation (api.do.mapping.action_progress), decided when it is read. Every answer
carries `ratelimit-limit/-remaining/-reset` from the caller's token bucket.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import TypeAdapter, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from api import access
from api.actions import run_action
from api.auth import Principal
from api.deps import PRINCIPAL_SCOPE_KEY, AppState, Caller, limit_key, read_limited
from api.do import mapping, records
from api.do.errors import on_error
from api.errors import ApiError, BadRequest, Forbidden, Invalid
from api.orders import monthly_commitment, place_order
from reconcile import keys
from reconcile.errors import NotFound, StoreError
from reconcile.store import Store
from specs import SpecError
from specs.domain import ObservedDomain
from specs.kinds import VPS, Customer, Hostname, Image, IPPool, Node, Plan, SSHKey, Subscription
from specs.money import to_minor

MAX_PER_PAGE = 200
ACTION_TYPES = {"power_on": "start", "power_off": "stop", "shutdown": "stop", "reboot": "reboot",
                "power_cycle": "reboot", "resize": "resize", "rebuild": "rebuild", "rename": None}
_SSH_KEY = TypeAdapter(SSHKey)
_HOSTNAME = TypeAdapter(Hostname)


def _invalid(message: str) -> Invalid:
    return Invalid(message)


def _customer(caller: Principal) -> str:
    if caller.role != "customer" or not caller.customer:
        raise Forbidden("the DigitalOcean-compatible API serves customer tokens; operators use /v1")
    return caller.customer


def _now() -> datetime:
    return datetime.now(UTC)


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit() and len(value) < 19:
        return int(value)
    return None


def _truthy(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() == "true")


# ------------------------------------------------------------------ pagination

def _page_params(request: Request) -> tuple[int, int]:
    q = request.query_params
    try:
        page = int(q.get("page", "1"))
        per_page = int(q.get("per_page", "20"))
    except ValueError:
        raise BadRequest("page and per_page must be integers") from None
    if page < 1 or per_page < 1:
        raise BadRequest("page and per_page must be at least 1")
    return page, min(per_page, MAX_PER_PAGE)


def _paged(request: Request, name: str, items: list[Any], render: Callable[[Any], Any]) -> dict[str, Any]:
    page, per_page = _page_params(request)
    window, numbers = mapping.page_numbers(len(items), page, per_page)
    pages = {rel: str(request.url.include_query_params(page=n, per_page=per_page)) for rel, n in numbers.items()}
    return {name: [render(i) for i in items[window]], "links": {"pages": pages}, "meta": {"total": len(items)}}


def _origin(request: Request) -> str:
    return f"{request.url.scheme}://{request.url.netloc}"


# ------------------------------------------------------------------ lookups

def _nodes_by_region(nodes: list[Node]) -> dict[str, list[Node]]:
    out: dict[str, list[Node]] = {}
    for n in nodes:
        slug = mapping.region_of(n)
        if slug:
            out.setdefault(slug, []).append(n)
    return out


def _public_plans(store: Store) -> list[Plan]:
    return sorted((p for p in store.list(Plan).items if p.spec.public),
                  key=lambda p: (mapping.minor(p), p.name))


def _images(store: Store) -> list[tuple[Image, int]]:
    imgs = sorted(store.list(Image).items, key=lambda i: i.name)
    ids = records.image_ids(store, [i.metadata.uid or i.name for i in imgs])
    return [(i, ids[i.metadata.uid or i.name]) for i in imgs]


def _context(store: Store, customer: str, subs: dict[str, Subscription]) -> mapping.DropletContext:
    plans = {p.name: p for p in store.list(Plan).items}
    nodes = store.list(Node).items
    regions = sorted(_nodes_by_region(nodes))
    return mapping.DropletContext(
        plans=plans, plan_of={s.name: s.spec.plan for s in subs.values() if s.spec.customer == customer},
        images={i.name: (i, n) for i, n in _images(store)}, nodes={n.name: n for n in nodes},
        pools={p.name: p for p in store.list(IPPool).items}, regions=regions,
        sizes=[p.name for p in sorted((p for p in plans.values() if p.spec.public), key=mapping.minor)])


def _my_servers(store: Store, customer: str) -> tuple[list[VPS], dict[str, Subscription]]:
    subs = access.subscription_owners(store)
    mine = [v for v in store.list(VPS).items
            if v.metadata.uid and v.metadata.deletionTimestamp is None and access.owner(store, v, subs) == customer]
    return mine, subs


def _droplet_vps(store: Store, customer: str, droplet_id: Any) -> tuple[dict[str, Any], VPS]:
    n = _int(droplet_id)
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


def _render_droplets(store: Store, customer: str, servers: list[tuple[int, VPS]],
                     subs: dict[str, Subscription], recs: dict[int, dict[str, Any]] | None = None
                     ) -> list[dict[str, Any]]:
    ctx = _context(store, customer, subs)
    recs = recs if recs is not None else records.droplets(store, customer)
    return [mapping.droplet(v, i, recs.get(i, {}).get("tags") or [], recs.get(i, {}).get("region"), ctx)
            for i, v in servers]


def _ids(recs: dict[int, dict[str, Any]]) -> dict[str, int]:
    return {rec["uid"]: i for i, rec in recs.items()}


def _all_droplets(store: Store, customer: str
                  ) -> tuple[list[tuple[int, VPS]], dict[str, Subscription], dict[int, dict[str, Any]]]:
    """The customer's live servers with their droplet ids (allocated if missing), by id; subscriptions; records."""
    mine, subs = _my_servers(store, customer)
    recs = records.add_droplets(store, customer, [(v.name, v.metadata.uid or "") for v in mine])
    ids = _ids(recs)
    return sorted(((ids[v.metadata.uid or ""], v) for v in mine if (v.metadata.uid or "") in ids),
                  key=lambda t: t[0]), subs, recs


# ------------------------------------------------------------------ actions

def _observed(store: Store, vps: VPS) -> ObservedDomain | None:
    node = vps.status.node if vps.status is not None else None
    if not node:
        return None
    kv = store.kv_get(keys.observed_key(node, vps.name, store.root))
    return ObservedDomain.model_validate_json(kv.value) if kv is not None else None


def _decide(store: Store, customer: str, kv: Any, doc: dict[str, Any]) -> dict[str, Any]:
    """The action with its status brought up to what the node has reported (written once decided)."""
    if doc.get("status") != "in-progress":
        return doc
    try:
        vps: VPS | None = store.get(VPS, doc["vps"])
    except NotFound:
        vps = None
    progress = mapping.action_progress(doc, vps, _observed(store, vps) if vps is not None else None, _now())
    if progress.status == "in-progress":
        return doc
    decided = {**doc, "status": progress.status, "completed_at": mapping.iso(_now()), "error": progress.reason}
    records.settle_action(store, customer, kv, decided)
    return decided


def _action_doc(doc: dict[str, Any]) -> dict[str, Any]:
    out = {"id": doc["id"], "status": doc["status"], "type": doc["type"], "started_at": doc["started_at"],
           "completed_at": doc.get("completed_at"), "resource_id": doc.get("resource_id"),
           "resource_type": doc.get("resource_type", "droplet"), "region_slug": doc.get("region_slug")}
    if doc["status"] == "errored":
        out["error_message"] = doc.get("error") or "failed"  # not in DigitalOcean's object; clients ignore it
    return out


def _region_slug(store: Store, vps: VPS, rec: dict[str, Any]) -> str | None:
    node = vps.status.node if vps.status is not None else None
    if node:
        try:
            return mapping.region_of(store.get(Node, node))
        except NotFound:
            pass
    region = rec.get("region")
    return region if isinstance(region, str) else None


def _record_action(store: Store, customer: str, droplet_id: int, vps: VPS, rec: dict[str, Any], type_: str,
                   target: dict[str, Any]) -> dict[str, Any]:
    doc = {"status": "in-progress" if target else "completed", "type": type_, "started_at": mapping.iso(_now()),
           "completed_at": None if target else mapping.iso(_now()), "resource_id": droplet_id,
           "resource_type": "droplet", "region_slug": _region_slug(store, vps, rec), "vps": vps.name,
           "uid": vps.metadata.uid, "target": target, "error": ""}
    return records.add_action(store, customer, doc)


def _image_by_ref(store: Store, ref: Any, field: str) -> Image:
    n = _int(ref)
    for img, img_id in _images(store):
        if (n is not None and img_id == n) or (isinstance(ref, str) and img.name == ref):
            return img
    raise _invalid(f"{field}: no image {ref!r}")


def _plan_by_slug(store: Store, slug: Any) -> Plan:
    for p in _public_plans(store):
        if p.name == slug:
            return p
    raise _invalid(f"size: no size {slug!r}")


def droplet_action(store: Store, caller: Principal, droplet_id: str, body: Any) -> dict[str, Any]:
    customer = _customer(caller)
    rec, vps = _droplet_vps(store, customer, droplet_id)  # first: someone else's droplet is 404 whatever the body
    if not isinstance(body, dict) or not isinstance(body.get("type"), str):
        raise _invalid("type: an action type is required")
    type_ = body["type"]
    if type_ not in ACTION_TYPES:
        raise _invalid(f"type: {type_!r} is not supported here; supported: {', '.join(ACTION_TYPES)}")
    n = int(droplet_id)
    for kv, doc in records.actions(store, customer):
        if doc.get("resource_id") == n and doc.get("status") == "in-progress" \
                and _decide(store, customer, kv, doc)["status"] == "in-progress":
            raise _invalid("Droplet already has a pending event.")
    target: dict[str, Any]
    if type_ == "rename":
        name = body.get("name")
        try:
            hostname = _HOSTNAME.validate_python(name)
        except ValidationError:
            raise _invalid(f"name: {name!r} is not a valid hostname") from None
        store.update(vps.model_copy(update={"spec": vps.spec.model_copy(update={"hostname": hostname})}))
        target = {}
    elif type_ == "resize":
        plan = _plan_by_slug(store, body.get("size"))
        run_action(store, caller, vps.name, "resize", {"plan": plan.name})
        target = {"vcpus": plan.spec.vcpus, "memoryMiB": plan.spec.memoryMiB}
        if _truthy(body.get("disk")):
            target["diskGiB"] = plan.spec.diskGiB
    elif type_ == "rebuild":
        img = _image_by_ref(store, body.get("image"), "image")
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
    return {"action": _action_doc(_record_action(store, customer, n, vps, rec, type_, target))}


# ------------------------------------------------------------------ create / delete

def create_droplets(store: Store, state: AppState, caller: Principal, body: Any,
                    origin: str) -> dict[str, Any]:
    customer = _customer(caller)
    if not isinstance(body, dict):
        raise _invalid("the body must be a JSON object")
    names = body.get("names") if body.get("names") is not None else [body.get("name")]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise _invalid("name: a name (or names) is required")
    if len(names) > 10:
        raise _invalid("names: at most 10 droplets at once")
    if body.get("user_data"):
        raise _invalid("user_data: not supported by this provider")
    if _truthy(body.get("backups")):
        raise _invalid("backups: backups are not offered by this provider")
    if body.get("volumes"):
        raise _invalid("volumes: block storage volumes are not offered by this provider")
    tags = body.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) and 0 < len(t) <= 255 for t in tags):
        raise _invalid("tags: must be a list of strings")
    plan = _plan_by_slug(store, body.get("size"))
    img = _image_by_ref(store, body.get("image"), "image")
    selector: dict[str, str] | None = None
    region = body.get("region")
    if region:
        nodes = _nodes_by_region(store.list(Node).items).get(str(region))
        if not nodes:
            raise _invalid(f"region: no region {region!r}")
        label = next(lbl for lbl in mapping.REGION_LABELS if nodes[0].metadata.labels.get(lbl) == region)
        selector = {label: str(region)}
    key_refs = body.get("ssh_keys") or []
    if not isinstance(key_refs, list):
        raise _invalid("ssh_keys: must be a list of ids or fingerprints")
    mine = records.ssh_keys(store, customer)
    public_keys = []
    for ref in key_refs:
        n = _int(ref)
        hit = next((k for k in mine if (n is not None and k["id"] == n) or k["fingerprint"] == ref), None)
        if hit is None:
            raise _invalid(f"ssh_keys: no key {ref!r} on this account")
        public_keys.append(hit["public_key"])
    hub = state.hub
    if hub is not None:
        hub.start()
    made: list[tuple[int, VPS]] = []
    actions = []
    for name in names:
        out = place_order(store, caller, {"plan": plan.name, "image": img.name, "hostname": name,
                                          "sshKeys": public_keys}, now=_now(),
                          servers_named=hub.servers_of_subscription if hub is not None else None,
                          node_selector=selector)
        vps = store.get(VPS, out["vps"]["metadata"]["name"])
        ids = _ids(records.add_droplets(store, customer, [(vps.name, vps.metadata.uid or "")], tags=list(tags),
                                        region=str(region) if region else None))
        droplet_id = ids[vps.metadata.uid or ""]
        made.append((droplet_id, vps))
        rec = records.droplet(store, customer, droplet_id) or {}
        act = _record_action(store, customer, droplet_id, vps, rec, "create", {"power": "Running"})
        actions.append({"id": act["id"], "rel": "create", "href": f"{origin}/v2/actions/{act['id']}"})
    rendered = _render_droplets(store, customer, made, access.subscription_owners(store))
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
    mine, subs = _my_servers(store, customer)
    currency = cust.spec.currency
    plans = [p for p in store.list(Plan).items if p.spec.price.currency == currency]
    prices = {p.name: mapping.minor(p) for p in plans}
    committed = monthly_commitment(list(subs.values()), prices, customer)
    public = sorted(prices[p.name] for p in plans if p.spec.public)
    balance = cust.status.balanceMinor if cust.status is not None else 0
    limit = mapping.droplet_limit(len(mine), balance, to_minor(cust.spec.creditLimit, currency), committed,
                                  public[0] if public else None)
    return {"account": mapping.account(cust, limit)}


# ------------------------------------------------------------------ the app

def _parse(raw: bytes) -> Any:
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise BadRequest("the request body is not valid JSON") from None


def build_app(state: AppState) -> FastAPI:
    """The /v2 sub-application over the API's own state (the same store, tokens and rate limits)."""
    app = FastAPI(title="DigitalOcean-compatible API", openapi_url=None, docs_url=None, redoc_url=None,
                  redirect_slashes=False)
    app.state.hostplane = state
    for exc_type in (ApiError, SpecError, StoreError, StarletteHTTPException, RequestValidationError, Exception):
        app.add_exception_handler(exc_type, on_error)

    @app.middleware("http")
    async def ratelimit_headers(request: Request, call_next: Callable[[Request], Any]) -> Response:
        response: Response = await call_next(request)
        principal = request.scope.get(PRINCIPAL_SCOPE_KEY)
        buckets = state.buckets
        limit = max(1, int(buckets.burst))
        remaining = limit
        if isinstance(principal, Principal) and principal.role != "admin" and buckets.rate > 0:
            remaining = max(0, int(buckets.peek(limit_key(principal), time.monotonic())))
        refill = (limit - remaining) / buckets.rate if buckets.rate > 0 else 0
        response.headers["ratelimit-limit"] = str(limit)
        response.headers["ratelimit-remaining"] = str(remaining)
        response.headers["ratelimit-reset"] = str(int(time.time() + math.ceil(refill)))
        return response

    def get(path: str, status: int = 200) -> Callable[[Any], Any]:
        def wrap(fn: Any) -> Any:
            app.add_api_route(path, fn, methods=["GET"], status_code=status)
            app.add_api_route(path + "/", fn, methods=["GET"], status_code=status, include_in_schema=False)
            return fn
        return wrap

    def route(path: str, method: str) -> Callable[[Any], Any]:
        def wrap(fn: Any) -> Any:
            app.add_api_route(path, fn, methods=[method])
            app.add_api_route(path + "/", fn, methods=[method], include_in_schema=False)
            return fn
        return wrap

    store = state.store

    @get("/account")
    def get_account(caller: Caller) -> dict[str, Any]:
        return account(store, _customer(caller))

    @get("/regions")
    def list_regions(request: Request, caller: Caller) -> dict[str, Any]:
        _customer(caller)
        sizes = [p.name for p in _public_plans(store)]
        by_region = _nodes_by_region(store.list(Node).items)
        return _paged(request, "regions", sorted(by_region), lambda s: mapping.region(s, by_region[s], sizes))

    @get("/sizes")
    def list_sizes(request: Request, caller: Caller) -> dict[str, Any]:
        _customer(caller)
        regions = sorted(_nodes_by_region(store.list(Node).items))
        return _paged(request, "sizes", _public_plans(store), lambda p: mapping.size(p, regions))

    @get("/images")
    def list_images(request: Request, caller: Caller) -> dict[str, Any]:
        _customer(caller)
        regions = sorted(_nodes_by_region(store.list(Node).items))
        q = request.query_params
        imgs = _images(store)
        # Every Hostplane image is a public distribution image: none are private, none carry tags.
        if _truthy(q.get("private")) or q.get("tag_name") or q.get("type") not in (None, "distribution"):
            imgs = []
        return _paged(request, "images", imgs, lambda t: mapping.image(t[0], t[1], regions))

    @get("/images/{ref}")
    def get_image(ref: str, caller: Caller) -> dict[str, Any]:
        _customer(caller)
        regions = sorted(_nodes_by_region(store.list(Node).items))
        n = _int(ref)
        for img, img_id in _images(store):
            if img_id == n or img.name == ref:
                return {"image": mapping.image(img, img_id, regions)}
        raise NotFound("The resource you were accessing could not be found.")

    @get("/account/keys")
    def list_keys(request: Request, caller: Caller) -> dict[str, Any]:
        return _paged(request, "ssh_keys", records.ssh_keys(store, _customer(caller)), lambda k: k)

    @route("/account/keys", "POST")
    async def create_key(request: Request, caller: Caller) -> JSONResponse:
        customer = _customer(caller)
        body = _parse(await read_limited(request, state.settings.max_body_bytes))
        if not isinstance(body, dict):
            raise _invalid("the body must be a JSON object")
        name, public_key = body.get("name"), body.get("public_key")
        if not isinstance(name, str) or not name.strip() or len(name) > 255:
            raise _invalid("name: a name is required")
        try:
            key = _SSH_KEY.validate_python(public_key)
        except ValidationError as exc:
            raise _invalid(f"public_key: {exc.errors()[0]['msg']}") from None
        doc = await run_in_threadpool(records.add_ssh_key, store, customer, name.strip(), key,
                                      mapping.fingerprint(key))
        if doc is None:
            raise _invalid("SSH Key is already in use on your account")
        return JSONResponse({"ssh_key": doc}, status_code=201)

    def _key(customer: str, ref: str) -> dict[str, Any]:
        n = _int(ref)
        for k in records.ssh_keys(store, customer):
            if k["id"] == n or k["fingerprint"] == ref:
                return k
        raise NotFound("The resource you were accessing could not be found.")

    @get("/account/keys/{ref}")
    def get_key(ref: str, caller: Caller) -> dict[str, Any]:
        return {"ssh_key": _key(_customer(caller), ref)}

    @route("/account/keys/{ref}", "DELETE")
    def delete_key(ref: str, caller: Caller) -> Response:
        customer = _customer(caller)
        records.remove_ssh_key(store, customer, _key(customer, ref)["id"])
        return Response(status_code=204)

    @get("/droplets")
    def list_droplets(request: Request, caller: Caller) -> dict[str, Any]:
        customer = _customer(caller)
        servers, subs, recs = _all_droplets(store, customer)
        tag, name = request.query_params.get("tag_name"), request.query_params.get("name")
        if tag or name:
            servers = [(i, v) for i, v in servers
                       if (not tag or tag in (recs.get(i, {}).get("tags") or []))
                       and (not name or v.spec.hostname == name)]
        page, per_page = _page_params(request)
        window = servers[mapping.page_numbers(len(servers), page, per_page)[0]]
        rendered = dict(zip((i for i, _ in window), _render_droplets(store, customer, window, subs, recs),
                            strict=True))
        return _paged(request, "droplets", servers, lambda t: rendered[t[0]])

    @route("/droplets", "POST")
    async def create_droplet(request: Request, caller: Caller) -> JSONResponse:
        body = _parse(await read_limited(request, state.settings.max_body_bytes))
        out = await run_in_threadpool(create_droplets, store, state, caller, body, _origin(request))
        return JSONResponse(out, status_code=202)

    @route("/droplets", "DELETE")
    def delete_by_tag(request: Request, caller: Caller) -> Response:
        customer = _customer(caller)
        tag = request.query_params.get("tag_name")
        if not tag:
            raise _invalid("tag_name: required")
        servers, _, recs = _all_droplets(store, customer)
        for i, vps in servers:
            if tag in (recs.get(i, {}).get("tags") or []):
                destroy(store, customer, vps)
        return Response(status_code=204)

    @get("/droplets/{droplet_id}")
    def get_droplet(droplet_id: str, caller: Caller) -> dict[str, Any]:
        customer = _customer(caller)
        _, vps = _droplet_vps(store, customer, droplet_id)
        return {"droplet": _render_droplets(store, customer, [(int(droplet_id), vps)],
                                            access.subscription_owners(store))[0]}

    @route("/droplets/{droplet_id}", "DELETE")
    def delete_droplet(droplet_id: str, caller: Caller) -> Response:
        customer = _customer(caller)
        _, vps = _droplet_vps(store, customer, droplet_id)
        destroy(store, customer, vps)
        return Response(status_code=204)

    def _actions(request: Request, customer: str, resource: int | None) -> dict[str, Any]:
        docs = [(kv, d) for kv, d in records.actions(store, customer)
                if resource is None or d.get("resource_id") == resource]
        return _paged(request, "actions", docs, lambda t: _action_doc(_decide(store, customer, t[0], t[1])))

    @get("/droplets/{droplet_id}/actions")
    def list_droplet_actions(droplet_id: str, request: Request, caller: Caller) -> dict[str, Any]:
        customer = _customer(caller)
        _droplet_vps(store, customer, droplet_id)
        return _actions(request, customer, int(droplet_id))

    @route("/droplets/{droplet_id}/actions", "POST")
    async def post_droplet_action(droplet_id: str, request: Request, caller: Caller) -> JSONResponse:
        body = _parse(await read_limited(request, state.settings.max_body_bytes))
        out = await run_in_threadpool(droplet_action, store, caller, droplet_id, body)
        return JSONResponse(out, status_code=201)

    def _one_action(customer: str, action_id: str, resource: int | None) -> dict[str, Any]:
        n = _int(action_id)
        found = records.action(store, customer, n) if n is not None else None
        if found is None or (resource is not None and found[1].get("resource_id") != resource):
            raise NotFound("The resource you were accessing could not be found.")
        return {"action": _action_doc(_decide(store, customer, found[0], found[1]))}

    @get("/droplets/{droplet_id}/actions/{action_id}")
    def get_droplet_action(droplet_id: str, action_id: str, caller: Caller) -> dict[str, Any]:
        customer = _customer(caller)
        _droplet_vps(store, customer, droplet_id)
        return _one_action(customer, action_id, int(droplet_id))

    @get("/actions")
    def list_actions(request: Request, caller: Caller) -> dict[str, Any]:
        return _actions(request, _customer(caller), None)

    @get("/actions/{action_id}")
    def get_action(action_id: str, caller: Caller) -> dict[str, Any]:
        return _one_action(_customer(caller), action_id, None)

    return app
