"""Request plumbing shared by the routes: settings, bearer auth and bounded body parsing.

Bodies are read here with a hard size limit before any parsing, so an oversized or
malicious request costs at most `max_body_bytes` of memory. YAML aliases are refused:
a few bytes of anchors can otherwise expand into an enormous document.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import yaml
from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from api.auth import Principal, TokenVerifier
from api.errors import BadRequest, Forbidden, PayloadTooLarge, Unauthorized
from reconcile.store import Store

_YAML_TYPES = {"application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml"}


@dataclass
class Settings:
    max_body_bytes: int = 1024 * 1024
    heartbeat_seconds: float = 15.0
    # /metrics without a token, but only for clients on the loopback interface.
    open_metrics_on_loopback: bool = True


@dataclass
class AppState:
    store: Store
    verifier: TokenVerifier
    settings: Settings
    ready_store: Store | None = None


async def app_state(request: Request) -> AppState:
    state: AppState = request.app.state.hostplane
    return state


State = Annotated[AppState, Depends(app_state)]


def bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def authenticate(request: Request, state: AppState) -> Principal:
    """The caller's principal, or 401. Blocking: it may read etcd."""
    return _check(bearer(request), state.verifier.verify)


async def authenticated(request: Request, state: State) -> Principal:
    """Dependency: like `authenticate`, but reads etcd in the thread pool only on a cache miss."""
    token = bearer(request)
    cached = state.verifier.cached(token) if token is not None else None
    if cached is not None:
        return _check(token, lambda _: cached)
    return await run_in_threadpool(_check, token, state.verifier.verify)


def _check(token: str | None, verify: Callable[[str], Principal | None]) -> Principal:
    if token is None:
        raise Unauthorized("an 'Authorization: Bearer <token>' header is required")
    principal = verify(token)
    if principal is None:
        raise Unauthorized("the bearer token is not valid")
    return principal


async def admin(caller: Annotated[Principal, Depends(authenticated)]) -> Principal:
    """Dependency: a caller whose token has the admin role, else 403."""
    if caller.role != "admin":
        raise Forbidden(f"a token with role {caller.role!r} may not use this endpoint")
    return caller


# Any valid token (routes that scope by customer check the principal themselves).
Caller = Annotated[Principal, Depends(authenticated)]
# Operators only: the object routes, watch and events see every customer's objects.
Admin = Annotated[Principal, Depends(admin)]


async def read_body(request: Request, state: State) -> Any:
    """Dependency: the request body parsed as JSON or (by content type) YAML."""
    limit = state.settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return parse_body(b"".join(chunks), request.headers.get("content-type", ""))


def parse_body(raw: bytes, content_type: str) -> Any:
    ctype = content_type.split(";", 1)[0].strip().lower()
    if not raw.strip():
        raise BadRequest("the request body is empty")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("the request body is not UTF-8") from None
    if ctype in _YAML_TYPES:
        return _parse_yaml(text)
    if ctype and ctype != "application/json" and not ctype.endswith("+json"):
        raise BadRequest(f"unsupported content type {ctype!r}; send application/json or application/yaml")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadRequest(f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise BadRequest("invalid JSON: nested too deeply") from None


def _parse_yaml(text: str) -> Any:
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                raise BadRequest("YAML aliases are not accepted in request bodies")
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise BadRequest(f"invalid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    except RecursionError:
        raise BadRequest("invalid YAML: nested too deeply") from None
    if len(docs) != 1:
        raise BadRequest(f"expected exactly one YAML document, got {len(docs)}")
    return docs[0]


Body = Annotated[Any, Depends(read_body)]
