"""Request plumbing shared by the routes: settings, authentication and bounded body parsing.

A caller is a bearer token or a panel session cookie. A write with a session cookie must
carry `X-Hostplane-CSRF: 1`: a cross-site form cannot set that header, so a forged request
never counts as the customer's. Requests are rate-limited per principal (admin exempt); a
customer's panel sessions share one limit.

Bodies are read here with a hard size limit before any parsing, so an oversized or
malicious request costs at most `max_body_bytes` of memory. YAML aliases are refused:
a few bytes of anchors can otherwise expand into an enormous document.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

import yaml
from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from api.auth import Principal, TokenVerifier
from api.errors import BadRequest, Forbidden, Invalid, PayloadTooLarge, TooManyRequests, Unauthorized
from api.ratelimit import LoginThrottle, StreamSlots, TokenBuckets
from api.sessions import SESSION_COOKIE, Sessions
from reconcile.aio import AsyncStore
from reconcile.pki import PKI
from reconcile.store import Store
from specs.io import duplicate_keys

if TYPE_CHECKING:
    from api.console import ConsoleTLS
    from api.hub import WatchHub

CSRF_HEADER = "X-Hostplane-CSRF"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
PRINCIPAL_SCOPE_KEY = "hostplane.principal"

_YAML_TYPES = {"application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml"}


@dataclass
class Settings:
    max_body_bytes: int = 1024 * 1024
    heartbeat_seconds: float = 15.0
    # /metrics without a token, but only for clients on the loopback interface.
    open_metrics_on_loopback: bool = True
    # Requests per second per token or session (admin tokens are not limited); <= 0: no limit.
    rate_per_principal: float = 50.0
    burst_per_principal: float = 200.0
    cookie_secure: bool | None = None  # None: Secure when the request came over https


@dataclass
class AppState:
    store: Store  # blocking: for `def` routes (they run in the thread pool) and helpers threads
    astore: AsyncStore  # the same operations as coroutines, for `async def` routes
    verifier: TokenVerifier
    settings: Settings
    ready_store: Store | None = None
    sessions: Sessions | None = None
    buckets: TokenBuckets = field(default_factory=lambda: TokenBuckets(0, 1))
    login_throttle: LoginThrottle = field(default_factory=LoginThrottle)
    # Open watch streams per principal in this process (admin tokens are not capped); per_key <= 0: no cap.
    streams: StreamSlots = field(default_factory=lambda: StreamSlots(0))
    hub: WatchHub | None = None
    join_pki: PKI | None = None  # the CA that signs joining nodes' certificates (api.node_join)
    console_tls: ConsoleTLS | None = None  # the API's client certificate for node endpoints (api.console)
    prometheus_url: str | None = None  # where load series are read (api.metrics_routes)


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
    token = bearer(request)
    if token is None and state.sessions is not None and request.cookies.get(SESSION_COOKIE):
        return _admit(request, state, _check(request.cookies[SESSION_COOKIE], state.sessions.verify, "session"))
    return _admit(request, state, _check(token, state.verifier.verify, "token"))


async def authenticated(request: Request) -> Principal:
    """Dependency: like `authenticate`, but reads etcd in the thread pool only on a cache miss.

    The state comes from the app, not from the `State` dependency: one dependency less to
    resolve on every request."""
    return await authenticate_async(request, request.app.state.hostplane)


async def authenticate_async(request: Request, state: AppState) -> Principal:
    token = bearer(request)
    if token is None and state.sessions is not None and request.cookies.get(SESSION_COOKIE):
        sid = request.cookies[SESSION_COOKIE]
        hit = state.sessions.cached(sid)
        if hit is not None:
            return _admit(request, state, hit)
        return _admit(request, state, await run_in_threadpool(_check, sid, state.sessions.verify, "session"))
    cached = state.verifier.cached(token) if token is not None else None
    if cached is not None:
        return _admit(request, state, cached)
    return _admit(request, state, await run_in_threadpool(_check, token, state.verifier.verify, "token"))


def _check(secret: str | None, verify: Callable[[str], Principal | None], what: str) -> Principal:
    if secret is None:
        raise Unauthorized("an 'Authorization: Bearer <token>' header (or a panel session) is required")
    principal = verify(secret)
    if principal is None:
        raise Unauthorized("the bearer token is not valid" if what == "token"
                           else "the session has ended; log in again")
    return principal


def limit_key(principal: Principal) -> str:
    """Whose rate limit and stream cap a request counts against: the token, or for panel sessions the
    customer (every session of a customer shares one, so logging in again does not buy a fresh limit)."""
    if principal.via == "session" and principal.customer is not None:
        return "sessions-of:" + principal.customer
    return principal.token_id


def _admit(request: Request, state: AppState, principal: Principal) -> Principal:
    """Checks that apply to every authenticated request: the rate limit, CSRF for cookie writes."""
    if principal.role != "admin":
        wait = state.buckets.take(limit_key(principal), time.monotonic())
        if wait > 0:
            # Not in the audit log (the principal is not noted yet): a flood must not become etcd writes.
            raise TooManyRequests("too many requests for this token; slow down", retry_after=wait)
    request.scope[PRINCIPAL_SCOPE_KEY] = principal
    if principal.via == "session" and request.method not in SAFE_METHODS \
            and request.headers.get(CSRF_HEADER) != "1":
        raise Forbidden(f"a request made with a session cookie must carry the header '{CSRF_HEADER}: 1'")
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


async def read_body(request: Request) -> Any:
    """Dependency: the request body parsed as JSON or (by content type) YAML."""
    state: AppState = request.app.state.hostplane
    limit = state.settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    return parse_body(await read_limited(request, limit), request.headers.get("content-type", ""))


async def read_limited(request: Request, limit: int) -> bytes:
    """The request's bytes, or PayloadTooLarge as soon as they pass `limit` (nothing more is read)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


# No field of any kind holds an integer anywhere near this long; Python refuses to convert
# one of more than 4,300 digits at all (a ValueError that used to become a 500).
MAX_INT_DIGITS = 64


class _LongInteger:
    """Stands in for an integer literal too long to convert, so the error can name its field."""

    def __init__(self, text: str) -> None:
        self.digits = len(text.lstrip("+-"))


def parse_body(raw: bytes, content_type: str) -> Any:
    ctype = content_type.split(";", 1)[0].strip().lower()
    if not raw.strip():
        raise BadRequest("the request body is empty")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("the request body is not UTF-8") from None
    if ctype in _YAML_TYPES:
        return _refuse_long_integers(_parse_yaml(text))
    if ctype and ctype != "application/json" and not ctype.endswith("+json"):
        raise BadRequest(f"unsupported content type {ctype!r}; send application/json or application/yaml")
    long_seen: list[_LongInteger] = []

    def parse_int(literal: str) -> int | _LongInteger:
        if len(literal) <= MAX_INT_DIGITS:
            return int(literal)
        long_seen.append(_LongInteger(literal))
        return long_seen[-1]

    try:
        doc = json.loads(text, parse_int=parse_int)
    except json.JSONDecodeError as exc:
        raise BadRequest(f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise BadRequest("invalid JSON: nested too deeply") from None
    return _refuse_long_integers(doc) if long_seen else doc


def _long_integer_paths(doc: Any, path: str = "") -> list[tuple[str, int]]:
    if isinstance(doc, _LongInteger):
        return [(path, doc.digits)]
    if isinstance(doc, dict):
        return [hit for k, v in doc.items() for hit in _long_integer_paths(v, f"{path}.{k}" if path else str(k))]
    if isinstance(doc, list):
        return [hit for i, v in enumerate(doc) for hit in _long_integer_paths(v, f"{path}[{i}]")]
    return []


def _refuse_long_integers(doc: Any) -> Any:
    """The document, or Invalid (422) naming each field that holds an integer of over MAX_INT_DIGITS digits."""
    found = _long_integer_paths(doc)
    if not found:
        return doc
    errors = [{"path": path, "message": f"an integer of {digits} digits is too long (at most {MAX_INT_DIGITS})"}
              for path, digits in found]
    raise Invalid("; ".join(f"{e['path'] or 'body'}: {e['message']}" for e in errors), errors)


class _BodyLoader(yaml.SafeLoader):
    """SafeLoader whose integers past MAX_INT_DIGITS become `_LongInteger` instead of a ValueError."""

    def construct_yaml_int(self, node: yaml.ScalarNode) -> Any:
        text = str(node.value).replace("_", "")
        if len(text.lstrip("+-")) > MAX_INT_DIGITS:
            return _LongInteger(text)
        return super().construct_yaml_int(node)


_BodyLoader.add_constructor("tag:yaml.org,2002:int", _BodyLoader.construct_yaml_int)


def _parse_yaml(text: str) -> Any:
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                raise BadRequest("YAML aliases are not accepted in request bodies")
        nodes = [n for n in yaml.compose_all(text, Loader=_BodyLoader) if n is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise BadRequest(f"invalid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    except RecursionError:
        raise BadRequest("invalid YAML: nested too deeply") from None
    if len(nodes) != 1:
        raise BadRequest(f"expected exactly one YAML document, got {len(nodes)}")
    try:
        dups = duplicate_keys(nodes[0])
    except ValueError as exc:
        raise BadRequest(f"invalid YAML: {exc}") from None
    if dups:
        # YAML would silently keep the last value; the contract (docs/CONTRACTS.md) says: an error.
        errors = [{"path": path, "message": f"duplicate key (line {line})"} for path, line in dups]
        raise Invalid("; ".join(f"{e['path']}: {e['message']}" for e in errors), errors)
    loader = _BodyLoader("")
    try:
        return loader.construct_document(nodes[0])
    except (yaml.YAMLError, ValueError) as exc:
        raise BadRequest(f"invalid YAML: {exc}") from None
    except RecursionError:
        raise BadRequest("invalid YAML: nested too deeply") from None
    finally:
        loader.dispose()


Body = Annotated[Any, Depends(read_body)]
