"""The /v2 endpoints: a sub-application mounted by api.server, answering as DigitalOcean does.

Every path answers with and without a trailing slash (no redirects). Only customer tokens are
served (an operator has the native API): a customer sees its own droplets, keys and actions,
anything else is `not_found` (api.do.service does the work). Every answer carries
`ratelimit-limit/-remaining/-reset` from the caller's token bucket; errors are DigitalOcean's shape
(api.do.errors).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from api import access
from api.auth import Principal
from api.deps import PRINCIPAL_SCOPE_KEY, AppState, Caller, limit_key, read_limited
from api.do import mapping, records
from api.do import service as svc
from api.do.errors import on_error
from api.errors import ApiError, BadRequest
from reconcile.errors import NotFound, StoreError
from specs import SpecError
from specs.kinds import Node

MAX_PER_PAGE = 200


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
        return svc.account(store, svc.customer_of(caller))

    @get("/regions")
    def list_regions(request: Request, caller: Caller) -> dict[str, Any]:
        svc.customer_of(caller)
        sizes = [p.name for p in svc.public_plans(store)]
        by_region = svc.nodes_by_region(store.list(Node).items)
        return _paged(request, "regions", sorted(by_region), lambda s: mapping.region(s, by_region[s], sizes))

    @get("/sizes")
    def list_sizes(request: Request, caller: Caller) -> dict[str, Any]:
        svc.customer_of(caller)
        regions = sorted(svc.nodes_by_region(store.list(Node).items))
        return _paged(request, "sizes", svc.public_plans(store), lambda p: mapping.size(p, regions))

    @get("/images")
    def list_images(request: Request, caller: Caller) -> dict[str, Any]:
        svc.customer_of(caller)
        regions = sorted(svc.nodes_by_region(store.list(Node).items))
        q = request.query_params
        imgs = svc.images_with_ids(store)
        # Every Hostplane image is a public distribution image: none are private, none carry tags.
        if svc.truthy(q.get("private")) or q.get("tag_name") or q.get("type") not in (None, "distribution"):
            imgs = []
        return _paged(request, "images", imgs, lambda t: mapping.image(t[0], t[1], regions))

    @get("/images/{ref}")
    def get_image(ref: str, caller: Caller) -> dict[str, Any]:
        svc.customer_of(caller)
        regions = sorted(svc.nodes_by_region(store.list(Node).items))
        n = svc.to_int(ref)
        for img, img_id in svc.images_with_ids(store):
            if img_id == n or img.name == ref:
                return {"image": mapping.image(img, img_id, regions)}
        raise NotFound("The resource you were accessing could not be found.")

    @get("/account/keys")
    def list_keys(request: Request, caller: Caller) -> dict[str, Any]:
        return _paged(request, "ssh_keys", records.ssh_keys(store, svc.customer_of(caller)), lambda k: k)

    @route("/account/keys", "POST")
    async def create_key(request: Request, caller: Caller) -> JSONResponse:
        customer = svc.customer_of(caller)
        body = _parse(await read_limited(request, state.settings.max_body_bytes))
        if not isinstance(body, dict):
            raise svc.invalid("the body must be a JSON object")
        name, public_key = body.get("name"), body.get("public_key")
        if not isinstance(name, str) or not name.strip() or len(name) > 255:
            raise svc.invalid("name: a name is required")
        try:
            key = svc.SSH_KEY.validate_python(public_key)
        except ValidationError as exc:
            raise svc.invalid(f"public_key: {exc.errors()[0]['msg']}") from None
        doc = await run_in_threadpool(records.add_ssh_key, store, customer, name.strip(), key,
                                      mapping.fingerprint(key))
        if doc is None:
            raise svc.invalid("SSH Key is already in use on your account")
        return JSONResponse({"ssh_key": doc}, status_code=201)

    def _key(customer: str, ref: str) -> dict[str, Any]:
        n = svc.to_int(ref)
        for k in records.ssh_keys(store, customer):
            if k["id"] == n or k["fingerprint"] == ref:
                return k
        raise NotFound("The resource you were accessing could not be found.")

    @get("/account/keys/{ref}")
    def get_key(ref: str, caller: Caller) -> dict[str, Any]:
        return {"ssh_key": _key(svc.customer_of(caller), ref)}

    @route("/account/keys/{ref}", "DELETE")
    def delete_key(ref: str, caller: Caller) -> Response:
        customer = svc.customer_of(caller)
        records.remove_ssh_key(store, customer, _key(customer, ref)["id"])
        return Response(status_code=204)

    @get("/droplets")
    def list_droplets(request: Request, caller: Caller) -> dict[str, Any]:
        customer = svc.customer_of(caller)
        servers, subs, recs = svc.all_droplets(store, customer)
        tag, name = request.query_params.get("tag_name"), request.query_params.get("name")
        if tag or name:
            servers = [(i, v) for i, v in servers
                       if (not tag or tag in (recs.get(i, {}).get("tags") or []))
                       and (not name or v.spec.hostname == name)]
        page, per_page = _page_params(request)
        window = servers[mapping.page_numbers(len(servers), page, per_page)[0]]
        rendered = dict(zip((i for i, _ in window), svc.render_droplets(store, customer, window, subs, recs),
                            strict=True))
        return _paged(request, "droplets", servers, lambda t: rendered[t[0]])

    @route("/droplets", "POST")
    async def create_droplet(request: Request, caller: Caller) -> JSONResponse:
        body = _parse(await read_limited(request, state.settings.max_body_bytes))
        out = await run_in_threadpool(svc.create_droplets, store, state, caller, body, _origin(request))
        return JSONResponse(out, status_code=202)

    @route("/droplets", "DELETE")
    def delete_by_tag(request: Request, caller: Caller) -> Response:
        customer = svc.customer_of(caller)
        tag = request.query_params.get("tag_name")
        if not tag:
            raise svc.invalid("tag_name: required")
        servers, _, recs = svc.all_droplets(store, customer)
        for i, vps in servers:
            if tag in (recs.get(i, {}).get("tags") or []):
                svc.destroy(store, customer, vps)
        return Response(status_code=204)

    @get("/droplets/{droplet_id}")
    def get_droplet(droplet_id: str, caller: Caller) -> dict[str, Any]:
        customer = svc.customer_of(caller)
        _, vps = svc.droplet_vps(store, customer, droplet_id)
        return {"droplet": svc.render_droplets(store, customer, [(int(droplet_id), vps)],
                                            access.subscription_owners(store))[0]}

    @route("/droplets/{droplet_id}", "DELETE")
    def delete_droplet(droplet_id: str, caller: Caller) -> Response:
        customer = svc.customer_of(caller)
        _, vps = svc.droplet_vps(store, customer, droplet_id)
        svc.destroy(store, customer, vps)
        return Response(status_code=204)

    def _actions(request: Request, customer: str, resource: int | None) -> dict[str, Any]:
        docs = [(kv, d) for kv, d in records.actions(store, customer)
                if resource is None or d.get("resource_id") == resource]
        return _paged(request, "actions", docs, lambda t: svc.action_doc(svc.decide(store, customer, t[0], t[1])))

    @get("/droplets/{droplet_id}/actions")
    def list_droplet_actions(droplet_id: str, request: Request, caller: Caller) -> dict[str, Any]:
        customer = svc.customer_of(caller)
        svc.droplet_vps(store, customer, droplet_id)
        return _actions(request, customer, int(droplet_id))

    @route("/droplets/{droplet_id}/actions", "POST")
    async def post_droplet_action(droplet_id: str, request: Request, caller: Caller) -> JSONResponse:
        body = _parse(await read_limited(request, state.settings.max_body_bytes))
        out = await run_in_threadpool(svc.droplet_action, store, caller, droplet_id, body)
        return JSONResponse(out, status_code=201)

    def _one_action(customer: str, action_id: str, resource: int | None) -> dict[str, Any]:
        n = svc.to_int(action_id)
        found = records.action(store, customer, n) if n is not None else None
        if found is None or (resource is not None and found[1].get("resource_id") != resource):
            raise NotFound("The resource you were accessing could not be found.")
        return {"action": svc.action_doc(svc.decide(store, customer, found[0], found[1]))}

    @get("/droplets/{droplet_id}/actions/{action_id}")
    def get_droplet_action(droplet_id: str, action_id: str, caller: Caller) -> dict[str, Any]:
        customer = svc.customer_of(caller)
        svc.droplet_vps(store, customer, droplet_id)
        return _one_action(customer, action_id, int(droplet_id))

    @get("/actions")
    def list_actions(request: Request, caller: Caller) -> dict[str, Any]:
        return _actions(request, svc.customer_of(caller), None)

    @get("/actions/{action_id}")
    def get_action(action_id: str, caller: Caller) -> dict[str, Any]:
        return _one_action(svc.customer_of(caller), action_id, None)

    return app
