"""VPS actions: one POST that becomes one spec change, answered at once with its resourceVersion.

    POST /v1/vps/<name>/actions/start     spec.powerState = Running
    POST /v1/vps/<name>/actions/stop      spec.powerState = Stopped
    POST /v1/vps/<name>/actions/reboot    spec.restartGeneration += 1
    POST /v1/vps/<name>/actions/rebuild   spec.rebuildGeneration += 1 (optionally {"image": NAME} first)
    POST /v1/vps/<name>/actions/resize    {"plan": NAME}: the Subscription's plan; the disk never shrinks

The controllers and the node agent carry the change out; the answer (202) says only that it
is recorded. A customer may act on its own VPS only (404 otherwise) and resize only to a
public plan. This module must never touch status or anything but the fields above.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from api import access, audit
from api.auth import Principal
from api.deps import Caller, State, parse_body, read_limited
from api.errors import Forbidden, Invalid, refuse_unknown_fields
from reconcile.errors import Conflict, NotFound
from reconcile.store import Rider, Store
from specs.kinds import VPS, Image, Plan, Subscription

router = APIRouter(prefix="/v1", tags=["actions"])

ACTIONS = ("start", "stop", "reboot", "rebuild", "resize")
_ATTEMPTS = 5


def _invalid(path: str, message: str) -> Invalid:
    return Invalid(f"{path}: {message}", [{"path": path, "message": message}])


def _options(body: Any, allowed: set[str]) -> dict[str, Any]:
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise _invalid("", "the body must be an object")
    refuse_unknown_fields(body, allowed)
    return body


def _vps(store: Store, caller: Principal, name: str) -> VPS:
    access.deny_unreadable_kind(caller, VPS, name)
    vps = access.require_visible(store, caller, store.get(VPS, name))
    if not (access.may_write_kind(caller, VPS.KIND) or caller.role == "customer"):
        raise Forbidden(f"role {caller.role!r} may not act on servers")
    return vps


def target_vps(store: Store, caller: Principal, name: str) -> VPS:
    """The VPS `name` if `caller` may act on it (a customer: only its own, else 404), else 403/404."""
    return _vps(store, caller, name)


def _plan(store: Store, caller: Principal, name: Any, path: str) -> Plan:
    if not isinstance(name, str) or not name:
        raise _invalid(path, "must name a plan")
    try:
        plan = store.get(Plan, name)
    except NotFound:
        raise _invalid(path, f"no plan {name!r}") from None
    if caller.role == "customer" and not plan.spec.public:
        raise _invalid(path, f"no plan {name!r}")
    return plan


def run_action(store: Store, caller: Principal, name: str, action: str, body: Any,
               rider: Rider | None = None) -> dict[str, Any]:
    """Apply one action; retried on a concurrent change, since each is a pure function of the current spec.

    `rider` (the request's audit record) is committed with the change, if the action changes anything."""
    opts = _options(body, {"plan"} if action == "resize" else {"image"} if action == "rebuild" else set())
    for attempt in range(_ATTEMPTS):
        vps = _vps(store, caller, name)
        try:
            if action == "resize":
                sub = _resize(store, caller, vps, opts.get("plan"), rider)
                return {"vps": vps.name, "subscription": sub.name, "plan": sub.spec.plan,
                        "resourceVersion": sub.metadata.resourceVersion}
            spec = vps.spec
            if action == "start":
                spec = spec.model_copy(update={"powerState": "Running"})
            elif action == "stop":
                spec = spec.model_copy(update={"powerState": "Stopped"})
            elif action == "reboot":
                spec = spec.model_copy(update={"restartGeneration": spec.restartGeneration + 1})
            elif action == "rebuild":
                update: dict[str, Any] = {"rebuildGeneration": spec.rebuildGeneration + 1}
                if opts.get("image") is not None:
                    update["image"] = _image(store, opts["image"], vps).name
                spec = spec.model_copy(update=update)
            updated = store.update(vps.model_copy(update={"spec": spec}), rider=rider)
            return {"vps": updated.name, "action": action, "resourceVersion": updated.metadata.resourceVersion}
        except Conflict:
            if attempt == _ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def _image(store: Store, name: Any, vps: VPS) -> Image:
    if not isinstance(name, str) or not name:
        raise _invalid("image", "must name an image")
    try:
        return store.get(Image, name)
    except NotFound:
        raise _invalid("image", f"no image {name!r}") from None


def _resize(store: Store, caller: Principal, vps: VPS, plan_name: Any, rider: Rider | None) -> Subscription:
    new = _plan(store, caller, plan_name, "plan")
    try:
        sub = store.get(Subscription, vps.spec.subscription)
    except NotFound:
        sub = None
    if sub is None or not vps.bound_to(sub):
        # Gone, or recreated under the old name for someone else: that one is not this server's to resize.
        raise _invalid("plan", f"the server's subscription {vps.spec.subscription!r} does not exist")
    if sub.spec.plan == new.name:
        return sub
    try:
        old = store.get(Plan, sub.spec.plan)
    except NotFound:
        old = None
    if old is not None and new.spec.diskGiB < old.spec.diskGiB:
        raise _invalid("plan", f"plan {new.name!r} has a smaller disk ({new.spec.diskGiB} GiB) than the current "
                               f"plan {old.name!r} ({old.spec.diskGiB} GiB); disks never shrink")
    if old is not None and new.spec.price.currency != old.spec.price.currency:
        raise _invalid("plan", f"plan {new.name!r} is priced in {new.spec.price.currency}, not "
                               f"{old.spec.price.currency}")
    return store.update(sub.model_copy(update={"spec": sub.spec.model_copy(update={"plan": new.name})}), rider=rider)


@router.post("/vps/{name}/actions/{action}", status_code=202,
             summary="start, stop, reboot, rebuild or resize a server; answered once the change is recorded")
async def vps_action(name: str, action: str, request: Request, state: State, caller: Caller) -> JSONResponse:
    if action not in ACTIONS:
        raise NotFound(f"no action {action!r}; actions: {', '.join(ACTIONS)}")
    raw = await read_limited(request, state.settings.max_body_bytes)
    body = parse_body(raw, request.headers.get("content-type", "")) if raw.strip() else None
    ride = audit.rider(request.scope, 202, state.store.root)
    result = await run_in_threadpool(run_action, state.store, caller, name, action, body, ride)
    audit.recorded(request.scope, ride, 202)
    return JSONResponse(result, status_code=202)

