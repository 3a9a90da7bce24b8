"""Routes for principals: tokens (admin), panel login/logout/whoami, customer passwords.

    POST   /v1/tokens                      mint a token {role, customer?, expires?, name?} (admin; shown once)
    GET    /v1/tokens                      every token's public record (admin)
    DELETE /v1/tokens/<id>                 revoke (admin); every API process forgets it at once
    POST   /v1/auth/login                  {email, password} -> {role, customer, name} + session cookie
    POST   /v1/auth/logout                 end the cookie's session
    GET    /v1/auth/whoami                 {role, customer, name} of the caller
    PUT    /v1/customers/<name>/password   {password} (admin, operator)

Login is throttled per (account, client IP), per client IP and per account (api.ratelimit); an
attempt is counted before its password is checked. This module must never
return or log a token secret after minting it, a password, or a session id except as the cookie.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from api import access
from api.audit import ACTOR_SCOPE_KEY
from api.auth import ROLES, TokenError, TokenVerifier, create_token, list_tokens, parse_token, revoke_token
from api.deps import CSRF_HEADER, AppState, Body, Caller, State
from api.errors import BadRequest, Invalid, TooManyRequests, Unauthorized
from api.sessions import SESSION_COOKIE, PasswordError, Sessions, TooManySessions, check_login, set_password
from reconcile import keys
from reconcile.errors import NotFound
from reconcile.etcd import Watch, WatchEvent
from reconcile.objects import Store
from specs.kinds import Customer

router = APIRouter(prefix="/v1", tags=["principals"])

NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def _fields(body: Any, allowed: set[str], required: set[str]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise Invalid("the body must be an object", [{"path": "", "message": "must be a mapping"}])
    unknown = sorted(set(body) - allowed)
    missing = sorted(required - set(body))
    errors = [{"path": f, "message": "unknown field"} for f in unknown]
    errors += [{"path": f, "message": "is required"} for f in missing]
    if errors:
        raise Invalid("; ".join(f"{e['path']}: {e['message']}" for e in errors), errors)
    return body


def _str(body: dict[str, Any], field: str, max_len: int = 256) -> str | None:
    value = body.get(field)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > max_len or any(ord(c) < 32 for c in value):
        raise Invalid(f"{field}: must be a single-line string of at most {max_len} characters",
                      [{"path": field, "message": f"must be a single-line string of at most {max_len} characters"}])
    return value


# ------------------------------------------------------------------ tokens


@router.post("/tokens", status_code=201, summary="Mint a token (admin); the secret is shown only in this answer")
def mint_token(body: Body, state: State, caller: Caller) -> JSONResponse:
    access.require_admin(caller, "mint tokens")
    data = _fields(body, {"role", "customer", "expires", "name"}, {"role"})
    role, customer, name = _str(data, "role", 32), _str(data, "customer", 63), _str(data, "name", 128)
    expires: datetime | None = None
    raw = _str(data, "expires", 64)
    if raw is not None:
        try:
            expires = datetime.fromisoformat(raw)
        except ValueError:
            raise Invalid("expires: must be an ISO 8601 time", [{"path": "expires", "message": "must be an ISO 8601 "
                                                                 "time with a time zone"}]) from None
        if expires.tzinfo is not None and expires <= datetime.now(UTC):
            raise Invalid("expires: must be in the future", [{"path": "expires", "message": "must be in the future"}])
    if customer is not None:
        if not NAME_RE.fullmatch(customer):
            raise Invalid("customer: must be a DNS label", [{"path": "customer", "message": "must be a DNS label"}])
        try:
            state.store.get(Customer, customer)
        except NotFound:
            raise Invalid(f"customer: no customer {customer!r}",
                          [{"path": "customer", "message": "no such customer"}]) from None
    try:
        token = create_token(state.store, role or "", customer=customer, expires=expires, name=name)
    except TokenError as exc:
        raise Invalid(str(exc), [{"path": exc.field, "message": str(exc).split(": ", 1)[-1]}]) from None
    token_id = parse_token(token)
    out = {"id": token_id[0] if token_id else "", "token": token, "role": role, "customer": customer,
           "expires": expires.isoformat() if expires else None, "name": name or ""}
    return JSONResponse(out, status_code=201, headers={"Cache-Control": "no-store"})


@router.get("/tokens", summary="Every token's id, role, customer, expiry and name (admin); never secrets")
def get_tokens(state: State, caller: Caller) -> dict[str, Any]:
    access.require_admin(caller, "list tokens")
    return {"items": list_tokens(state.store), "roles": list(ROLES)}


@router.delete("/tokens/{token_id}", status_code=204, summary="Revoke a token (admin); it stops working at once")
def delete_token(token_id: str, state: State, caller: Caller) -> Response:
    access.require_admin(caller, "revoke tokens")
    if not revoke_token(state.store, token_id):
        raise NotFound(f"token {token_id!r} not found")
    state.verifier.invalidate(token_id)
    return Response(status_code=204)


# ------------------------------------------------------------------ panel login


def _client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def _email_candidates(state: AppState, email: str) -> list[str] | None:
    """The customers the watch hub's e-mail index names for `email` (it follows every Customer spec
    within milliseconds of its write); None, so every customer is read, while the hub is not running."""
    hub = state.hub
    if hub is None:
        return None
    await run_in_threadpool(hub.start)
    return hub.customers_with_email(email)


@router.post("/auth/login", summary="Log a customer in to the panel: sets the hostplane_session cookie")
async def login(request: Request, body: Body, state: State) -> JSONResponse:
    data = _fields(body, {"email", "password"}, {"email", "password"})
    email, password = data["email"], data["password"]
    if not isinstance(email, str) or not isinstance(password, str):
        raise BadRequest("email and password must be strings")
    sessions = state.sessions
    assert sessions is not None
    account = hashlib.sha256(email.strip().lower().encode()).hexdigest()
    source = _client_ip(request)
    throttle = state.login_throttle
    wait = throttle.attempt(account, source, time.monotonic())
    if 0 < wait <= throttle.account_interval:
        # The account's shared pace (many sources failing on it): hold this attempt for its turn
        # rather than refuse it, so the owner is slowed, not sent away.
        await asyncio.sleep(wait)
        wait = throttle.attempt(account, source, time.monotonic())
    if wait > 0:
        raise TooManyRequests("too many failed logins; wait before trying again", retry_after=wait)
    candidates = await _email_candidates(state, email)
    cust = await run_in_threadpool(lambda: check_login(state.store, email, password, slots=sessions.hash_slots,
                                                       candidates=candidates))
    if cust is None:
        raise Unauthorized("wrong e-mail or password")
    throttle.succeeded(account, source, time.monotonic())
    try:
        session_id = await run_in_threadpool(sessions.create, cust)
    except TooManySessions as exc:
        raise TooManyRequests(str(exc), retry_after=exc.retry_after) from None
    # The audit record names the customer who logged in (never the session id).
    request.scope[ACTOR_SCOPE_KEY] = {"role": "customer", "customer": cust.name, "via": "login"}
    name = cust.spec.displayName or cust.name
    resp = JSONResponse({"role": "customer", "customer": cust.name, "name": name},
                        headers={"Cache-Control": "no-store"})
    secure = state.settings.cookie_secure
    resp.set_cookie(SESSION_COOKIE, session_id, max_age=sessions.ttl_seconds, path="/", httponly=True,
                    samesite="strict", secure=request.url.scheme == "https" if secure is None else secure)
    return resp


@router.post("/auth/logout", status_code=204, summary="End the panel session (send the CSRF header)")
async def logout(request: Request, state: State, caller: Caller) -> Response:
    sid = request.cookies.get(SESSION_COOKIE)
    if caller.via == "session" and sid and state.sessions is not None:
        await run_in_threadpool(state.sessions.end, sid)
    resp = Response(status_code=204)
    resp.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return resp


@router.get("/auth/whoami", summary="The caller's role, customer and name")
def whoami(caller: Caller) -> dict[str, Any]:
    return {"role": caller.role, "customer": caller.customer, "name": caller.name or caller.customer or caller.role,
            "via": caller.via, "csrfHeader": CSRF_HEADER}


@router.put("/customers/{name}/password", status_code=204, summary="Set a customer's panel password (staff)")
def put_password(name: str, body: Body, state: State, caller: Caller) -> Response:
    access.require_staff(caller, "set customer passwords")
    data = _fields(body, {"password"}, {"password"})
    try:
        set_password(state.store, name, data["password"])
    except PasswordError as exc:
        raise Invalid(str(exc), [{"path": "password", "message": str(exc).split(": ", 1)[-1]}]) from None
    return Response(status_code=204)


# ------------------------------------------------------------------ cache invalidation


def watch_auth(store: Store, verifier: TokenVerifier, sessions: Sessions) -> Watch:
    """Forget cached tokens and sessions as soon as etcd says they changed (revocation, logout)."""
    tokens = keys.tokens_prefix(store.root)
    sess = keys.sessions_prefix(store.root)

    def on_events(events: list[WatchEvent], _rev: int) -> None:
        for ev in events:
            if ev.key.startswith(tokens):
                verifier.invalidate(ev.key[len(tokens):])
            elif ev.key.startswith(sess):
                sessions.invalidate(ev.key)

    def on_compacted(_rev: int) -> None:
        verifier.invalidate()
        sessions.invalidate()

    return store.watch(keys.auth_prefix(store.root), start_revision=store.revision() + 1, on_events=on_events,
                       on_compacted=on_compacted)
