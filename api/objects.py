"""REST routes for every kind: /v1/<kind>[/<name>[/status]].

Clients write metadata and spec; status is the controllers' and is ignored in bodies.
The object routes are coroutines on the event loop and reach etcd through the asyncio store
(`reconcile.aio`), with no thread hop; a check that may read the store for a customer
(ownership of a VPS, admission rules) runs in the thread pool with the blocking store.
Every handler asks api.access first: a customer sees only its own objects (404 for anyone
else's) and may patch only a few fields. This module must never write a status key.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from api import access, audit, ownership
from api.admission import admit_update, needs_store
from api.auth import Principal, revoke_customer_tokens
from api.deps import AppState, Body, Caller, State
from api.errors import BadRequest, Forbidden, Invalid, UnknownKind
from api.merge_patch import merge_patch
from api.sessions import end_customer_sessions
from reconcile import keys
from reconcile.errors import AlreadyExists, Conflict
from reconcile.etcd import Rider, decode
from reconcile.selector import parse_selector
from specs import VPS, Customer, Plan, Resource, Subscription, kind_for
from specs.io import validate_object
from specs.meta import API_VERSION

router = APIRouter(prefix="/v1", tags=["objects"])

_SOURCE = "request body"
_PATCH_ATTEMPTS = 5
# Kinds whose update is checked against the current object: cross-object rules (api.admission),
# billing adjustments (api.access.require_billing_fields), a server's binding to its Subscription.
_ADMITTED: tuple[type[Resource], ...] = (Plan, Subscription, Customer, VPS)

T = TypeVar("T")


async def checked(state: AppState, caller: Principal, check: Callable[..., T], *args: Any) -> T:
    """Run an api.access check: at once when it cannot read the store (every role but customer),
    else in the thread pool (a customer's ownership of a VPS is looked up)."""
    if caller.role != "customer":
        return check(state.store, caller, *args)
    return await run_in_threadpool(check, state.store, caller, *args)


async def admitted(state: AppState, current: Resource, new: Resource) -> None:
    """api.admission's cross-object rules; the store is read (in the thread pool) only if a rule needs it."""
    if needs_store(current, new):
        await run_in_threadpool(admit_update, state.store, current, new)


def resolve_kind(kind: str) -> type[Resource]:
    try:
        return kind_for(kind)
    except KeyError as exc:
        raise UnknownKind(str(exc.args[0])) from None


def render(obj: Resource) -> dict[str, Any]:
    data: dict[str, Any] = obj.model_dump(mode="json", exclude_none=True)
    return data


async def _updated(state: AppState, request: Request, obj: Resource) -> Response:
    """Write `obj` (compare-and-swap) with the request's audit record in the same transaction."""
    ride = audit.rider(request.scope, 200, state.store.root)
    updated = await state.astore.update(obj, rider=ride)
    audit.recorded(request.scope, ride, 200)
    return object_response(updated)


def object_response(obj: Resource, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    """An object as the JSON body of a response, serialised by pydantic in one step (same JSON as `render`)."""
    return Response(obj.model_dump_json(exclude_none=True), status_code=status_code, headers=headers,
                    media_type="application/json")


def object_from_body(body: Any, cls: type[Resource], *, name: str | None) -> Resource:
    """Validate a client's object for `cls` (and `name`, when the path names one); drop status."""
    if not isinstance(body, dict):
        raise Invalid("the body must be an object", [{"path": "", "message": "must be a mapping"}])
    data = {k: v for k, v in body.items() if k != "status"}
    kind = data.get("kind")
    if kind is None:
        data["kind"] = cls.KIND
    elif not isinstance(kind, str) or kind_for_or_none(kind) is not cls:
        raise Invalid(f"kind {kind!r} does not match the path ({cls.KIND})",
                      [{"path": "kind", "message": f"must be {cls.KIND!r} to match the path"}])
    data.setdefault("apiVersion", API_VERSION)
    meta = data.get("metadata")
    if name is not None and isinstance(meta, dict) and "name" not in meta:
        data["metadata"] = {**meta, "name": name}
    elif name is not None and meta is None:
        data["metadata"] = {"name": name}
    obj = validate_object(data, _SOURCE)
    if name is not None and obj.name != name:
        raise Invalid(f"metadata.name {obj.name!r} does not match the path ({name!r})",
                      [{"path": "metadata.name", "message": f"must be {name!r} to match the path"}])
    return obj


def kind_for_or_none(kind: str) -> type[Resource] | None:
    try:
        return kind_for(kind)
    except KeyError:
        return None


@router.get("/events", summary="Events recorded about objects, oldest first (empty when none are recorded)")
def list_events(state: State, caller: Caller, kind: str | None = None, name: str | None = None) -> JSONResponse:
    # Events live at <root>/events/<Kind>/<name>/<time>, written by the controllers; the
    # subject is in the key, so each item gets `kind` and `name` from there.
    prefix = keys.events_prefix(state.store.root)
    if kind:
        cls = resolve_kind(kind)
        if name:
            access.deny_unreadable_kind(caller, cls, name)
        elif cls.KIND not in access.readable_kinds(caller):
            raise Forbidden(f"role {caller.role!r} may not read events of {cls.PLURAL}")
        prefix += cls.KIND + "/"
        if name:
            prefix += name + "/"
    elif not access.readable_kinds(caller):
        raise Forbidden(f"role {caller.role!r} may not read events")
    if caller.role == "customer":
        return ownership.customer_events(state, caller, prefix, kind and resolve_kind(kind).KIND, name)
    seen: dict[tuple[str, str], bool] = {}
    kvs, rev = state.store.kv_range(prefix)
    items: list[dict[str, Any]] = []
    for kv in kvs:
        parts = kv.key[len(keys.events_prefix(state.store.root)):].split("/")
        if len(parts) != 3 or (name is not None and parts[1] != name):
            continue
        if not access.event_visible(state.store, caller, parts[0], parts[1], seen):
            continue
        try:
            ev = decode(kv.value)
        except ValueError:
            continue
        if isinstance(ev, dict):
            items.append({"kind": parts[0], "name": parts[1], **ev})
    return JSONResponse({"apiVersion": API_VERSION, "kind": "EventList",
                         "metadata": {"resourceVersion": str(rev)}, "items": items})


@router.get("/{kind}", summary="List objects of a kind, optionally by label selector")
async def list_objects(kind: str, state: State, caller: Caller,
                 labelSelector: str | None = Query(None, description="e.g. `tier=standard,!legacy`"),
                 ) -> JSONResponse:
    cls = resolve_kind(kind)
    access.require_collection(caller, cls, "list")
    try:
        selector = parse_selector(labelSelector)
    except ValueError as exc:
        raise BadRequest(str(exc), [{"path": "labelSelector", "message": str(exc)}]) from None
    result = await state.astore.list(cls, selector)
    items = await checked(state, caller, access.filter_visible, result.items)
    return JSONResponse({"apiVersion": API_VERSION, "kind": f"{cls.KIND}List",
                         "metadata": {"resourceVersion": str(result.revision)},
                         "items": [render(o) for o in items]})


@router.post("/{kind}", status_code=201, summary="Create an object")
async def create_object(kind: str, body: Body, state: State, caller: Caller, request: Request) -> Response:
    cls = resolve_kind(kind)
    access.require_collection(caller, cls, "create")
    obj = object_from_body(body, cls, name=None)
    # Identity and timestamps are the server's to assign.
    meta = obj.metadata.model_copy(update={"uid": None, "creationTimestamp": None, "resourceVersion": None})
    access.require_billing_fields(caller, None, obj)
    if isinstance(obj, Customer):
        await ownership.refuse_kept_ledger(state, obj.name)
    obj = await ownership.bind(state, None, obj)
    try:
        ride = audit.rider(request.scope, 201, state.store.root)
        claim = await ownership.claim(state, obj)
        if claim is not None:
            ride = ride or Rider([])
            ride.puts.append(claim)
        created = await state.astore.create(obj.model_copy(update={"metadata": meta}), rider=ride)
        audit.recorded(request.scope, ride, 201)
    except AlreadyExists:
        # The store names the etcd key; the client should see the object instead.
        raise AlreadyExists(f"{cls.KIND} {obj.name!r} already exists") from None
    return object_response(created, 201, {"Location": f"/v1/{cls.PLURAL}/{created.name}"})


@router.get("/{kind}/{name}", summary="Read an object with its status")
async def get_object(kind: str, name: str, state: State, caller: Caller) -> Response:
    cls = resolve_kind(kind)
    access.deny_unreadable_kind(caller, cls, name)
    obj = await state.astore.get(cls, name)
    return object_response(await checked(state, caller, access.require_visible, obj))


@router.put("/{kind}/{name}", summary="Replace metadata and spec (409 if metadata.resourceVersion is stale); "
            "finalizers are kept unless the body lists them")
async def replace_object(kind: str, name: str, body: Body, state: State, caller: Caller,
                         request: Request) -> Response:
    cls = resolve_kind(kind)
    await _require_write(state, caller, cls, name, "replace")
    obj = object_from_body(body, cls, name=name)
    meta = body.get("metadata") if isinstance(body, dict) else None
    keep_finalizers = not (isinstance(meta, dict) and "finalizers" in meta)
    if keep_finalizers or cls in _ADMITTED:
        # Pinning the version keeps this read-modify-write safe (and, when this process last
        # saw the object at that version, spares the read).
        current = await state.astore.get_spec_at(cls, name, obj.metadata.resourceVersion)
        access.require_billing_fields(caller, current, obj)
        obj = await ownership.bind(state, current, obj)
        await admitted(state, current, obj)
        update: dict[str, Any] = {"resourceVersion": obj.metadata.resourceVersion or current.metadata.resourceVersion}
        if keep_finalizers:
            # A body that does not mention finalizers keeps the server's: dropping one by
            # omission would skip a controller's cleanup.
            update["finalizers"] = current.metadata.finalizers
        obj = obj.model_copy(update={"metadata": obj.metadata.model_copy(update=update)})
    return await _updated(state, request, obj)


@router.patch("/{kind}/{name}", summary="JSON merge patch (RFC 7386) of metadata and spec")
async def patch_object(kind: str, name: str, body: Body, state: State, caller: Caller,
                       request: Request) -> Response:
    cls = resolve_kind(kind)
    access.deny_unreadable_kind(caller, cls, name)
    if not isinstance(body, dict):
        raise Invalid("a merge patch must be an object", [{"path": "", "message": "must be a mapping"}])
    patch = {k: v for k, v in body.items() if k != "status"}
    meta_patch = patch.get("metadata")
    pinned = isinstance(meta_patch, dict) and meta_patch.get("resourceVersion") is not None
    for attempt in range(_PATCH_ATTEMPTS):
        current = await state.astore.get(cls, name)
        await checked(state, caller, access.require_patch, current, patch)
        doc = render(current)
        doc.pop("status", None)
        obj = object_from_body(merge_patch(doc, patch), cls, name=name)
        access.require_billing_fields(caller, current, obj)
        obj = await ownership.bind(state, current, obj)
        await admitted(state, current, obj)
        try:
            return await _updated(state, request, obj)
        except Conflict:
            # Unpinned patches apply to whatever is current: re-read and apply again.
            if pinned or attempt == _PATCH_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


@router.delete("/{kind}/{name}", status_code=204,
               summary="Delete; with finalizers the object is only marked (202 with the object)")
async def delete_object(kind: str, name: str, state: State, caller: Caller,
                  resourceVersion: str | None = Query(None, description="delete only if unchanged")) -> Response:
    cls = resolve_kind(kind)
    await _require_write(state, caller, cls, name, "delete")
    if cls is Subscription:
        await ownership.refuse_if_servers(state, name)
    elif cls is Customer:
        await ownership.refuse_if_subscriptions(state, name)
    marked = await state.astore.delete(cls, name, resource_version=resourceVersion)
    if marked is not None:
        return object_response(marked, 202)
    if cls is Customer:
        # Tokens, sessions and the password name the customer: a customer created later under the
        # same name must not be reachable with them.
        await run_in_threadpool(revoke_customer_tokens, state.store, name)
        await run_in_threadpool(end_customer_sessions, state.store, name)
    return Response(status_code=204)


@router.get("/{kind}/{name}/status", summary="Read an object's status (written by controllers only)")
async def get_status(kind: str, name: str, state: State, caller: Caller) -> JSONResponse:
    cls = resolve_kind(kind)
    access.deny_unreadable_kind(caller, cls, name)
    obj = await checked(state, caller, access.require_visible, await state.astore.get(cls, name))
    status = obj.status.model_dump(mode="json", exclude_none=True) if hasattr(obj.status, "model_dump") \
        else obj.status
    return JSONResponse({"apiVersion": API_VERSION, "kind": cls.KIND,
                         "metadata": {"name": obj.name, "resourceVersion": obj.metadata.resourceVersion,
                                      "generation": obj.metadata.generation},
                         "status": status or {}})


async def _require_write(state: AppState, caller: Principal, cls: type[Resource], name: str, verb: str) -> None:
    """Replace/delete: writers by kind pass at once; anyone else learns 404 or 403 (after one read)."""
    if access.may_write_kind(caller, cls.KIND):
        return
    access.deny_unreadable_kind(caller, cls, name)
    await checked(state, caller, access.require_write, await state.astore.get(cls, name), verb)
