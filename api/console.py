"""Consoles in the browser and the CLI: a one-time ticket, then one WebSocket relayed to the node.

    POST /v1/vps/<name>/console   {"kind": "serial"|"vnc"}  → 201 {"ticket", "expiresInSeconds", "url"}
    GET  /v1/console?ticket=…     WebSocket; binary frames both ways (serial bytes, or RFB for VNC)

The POST is checked like any action on the server (a customer's own VPS only, 404 otherwise;
roles that may not act on servers get 403) and audited; a suspended or terminated server's
console is refused (409, saying why). The ticket is random, valid once and for TICKET_SECONDS,
stored only as its sha256 (`consoles/<digest>`, lease-bound); the WebSocket takes it in one
transaction (get + delete), so a replayed ticket finds nothing. The API then connects to the
endpoint the VPS's node publishes in its heartbeat over mutual TLS (it presents its `api`
certificate; the node's certificate must name `node-<node>`) and relays frames both ways.
While the stream is open the token or panel session behind the ticket is re-checked every
RECHECK_SECONDS: a revoked token, an ended session (or a suspended server) closes it.

Close codes the client sees: 4401 ticket unknown/used/expired or credentials revoked, 4403
server suspended, 4404 console unavailable, 4409 another session took over, 4410 guest gone,
4502 node endpoint unreachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import secrets
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, WebSocket
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocketDisconnect, WebSocketState
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from api import actions
from api.auth import Principal
from api.deps import Caller, State, parse_body, read_limited
from api.errors import ApiError, Invalid, refuse_unknown_fields
from api.sessions import SESSION_COOKIE, session_key
from nodeagent.endpoint import peer_common_name
from reconcile import keys
from reconcile.errors import NotFound
from reconcile.store import Delete, Exists, Get, Store
from specs.kinds import VPS, Subscription

router = APIRouter(prefix="/v1", tags=["console"])

TICKET_SECONDS = 30
RECHECK_SECONDS = 0.25
KINDS = ("serial", "vnc")

CLOSE_TICKET = 4401
CLOSE_SUSPENDED = 4403
CLOSE_UNAVAILABLE = 4404
CLOSE_UNREACHABLE = 4502


class ConsoleRefused(ApiError):
    status, title, slug = 409, "Console unavailable", "console-unavailable"


@dataclass(frozen=True)
class ConsoleTLS:
    """The API's client certificate for node endpoints (its `api` identity) and the cluster CA."""

    ca: Path
    cert: Path
    key: Path

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca))
        ctx.load_cert_chain(str(self.cert), str(self.key))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx


def digest(ticket: str) -> str:
    return hashlib.sha256(ticket.encode()).hexdigest()


def refusal(store: Store, vps: VPS) -> str:
    """Why this server's console may not be opened now ("" if it may)."""
    try:
        sub = store.get(Subscription, vps.spec.subscription)
    except NotFound:
        return f"the server's subscription {vps.spec.subscription!r} does not exist"
    state = sub.status.state if sub.status is not None else "Active"
    if state == "Suspended":
        reason = sub.status.suspendReason if sub.status is not None else None
        return f"the server is suspended ({reason or 'no reason given'}); its console is closed until it is resumed"
    if state == "Terminated":
        return "the server's subscription is terminated"
    return ""


def node_endpoint(store: Store, node: str) -> str:
    """host:port of the node's endpoint, from its heartbeat ("" if it publishes none or is down)."""
    kv = store.kv_get(keys.heartbeat_key(node, store.root))
    if kv is None:
        return ""
    try:
        doc = json.loads(kv.value)
    except ValueError:
        return ""
    value = doc.get("endpoint") if isinstance(doc, dict) else None
    return value if isinstance(value, str) else ""


def open_ticket(store: Store, caller: Principal, name: str, kind: str, session: str = "") -> dict[str, Any]:
    """Check everything, store a ticket's hash for TICKET_SECONDS, return the ticket (shown once)."""
    vps = actions.target_vps(store, caller, name)
    why = refusal(store, vps)
    if why:
        raise ConsoleRefused(why)
    node = vps.status.node if vps.status is not None else None
    if not node:
        raise ConsoleRefused("the server is not placed on a node yet")
    if not node_endpoint(store, node):
        raise ConsoleRefused(f"the server's node {node!r} is not reachable for consoles now")
    ticket = secrets.token_urlsafe(32)
    record = {"vps": vps.name, "uid": vps.metadata.uid, "node": node, "kind": kind, "role": caller.role,
              "customer": caller.customer, "tokenId": caller.token_id if caller.via == "token" else "",
              "session": session, "expires": time.time() + TICKET_SECONDS}
    lease = store.grant_lease(TICKET_SECONDS + 2)
    store.kv_put(keys.console_ticket_key(digest(ticket), store.root), json.dumps(record).encode(),
                 lease=lease, expect=0)
    return {"vps": vps.name, "kind": kind, "ticket": ticket, "expiresInSeconds": TICKET_SECONDS,
            "url": f"/v1/console?ticket={ticket}"}


def take_ticket(store: Store, ticket: str) -> dict[str, Any] | None:
    """The ticket's record, removed in the same transaction (so it works once); None if unknown or expired."""
    if not ticket or len(ticket) > 128:
        return None
    key = keys.console_ticket_key(digest(ticket), store.root)
    res = store.txn([Exists(key)], [Get(key), Delete(key)])
    if not res.succeeded or not res.gets or not res.gets[0]:
        return None
    try:
        record = json.loads(res.gets[0][0].value)
    except ValueError:
        return None
    if not isinstance(record, dict) or float(record.get("expires", 0)) < time.time():
        return None
    return record


@router.post("/vps/{name}/console", status_code=201,
             summary="a one-time ticket (30 s) for the server's serial or graphical console WebSocket")
async def console_ticket(name: str, request: Request, state: State, caller: Caller) -> JSONResponse:
    raw = await read_limited(request, state.settings.max_body_bytes)
    body = parse_body(raw, request.headers.get("content-type", "")) if raw.strip() else {}
    if not isinstance(body, dict):
        raise Invalid("the body must be an object", [{"path": "", "message": "the body must be an object"}])
    refuse_unknown_fields(body, {"kind"})
    kind = body.get("kind", "serial")
    if kind not in KINDS:
        raise Invalid(f"kind: must be one of {', '.join(KINDS)}", [{"path": "kind", "message": "serial or vnc"}])
    session = ""
    if caller.via == "session" and request.cookies.get(SESSION_COOKIE):
        session = session_key(state.store.root, request.cookies[SESSION_COOKIE])
    result = await run_in_threadpool(open_ticket, state.store, caller, name, kind, session)
    return JSONResponse(result, status_code=201)


def _still_allowed(request_state: Any, record: dict[str, Any]) -> int:
    """0 while the stream may go on; else the close code (credentials revoked, server suspended)."""
    if record.get("session"):
        if not request_state.sessions.alive(record["session"]):
            return CLOSE_TICKET
    elif record.get("tokenId") and not request_state.verifier.alive(record["tokenId"]):
        return CLOSE_TICKET
    return 0


def _suspended(store: Store, record: dict[str, Any]) -> bool:
    try:
        vps = store.get(VPS, record["vps"])
    except NotFound:
        return True
    return vps.metadata.uid != record.get("uid") or bool(refusal(store, vps))


@router.websocket("/console")
async def console_stream(websocket: WebSocket) -> None:
    state = websocket.app.state.hostplane
    store: Store = state.store
    await websocket.accept()
    record = await run_in_threadpool(take_ticket, store, websocket.query_params.get("ticket", ""))
    if record is None:
        await websocket.close(CLOSE_TICKET, "the ticket is unknown, already used or expired")
        return
    if await run_in_threadpool(_suspended, store, record):
        await websocket.close(CLOSE_SUSPENDED, "the server's console is closed (suspended or gone)")
        return
    tls: ConsoleTLS | None = state.console_tls
    endpoint = await run_in_threadpool(node_endpoint, store, record["node"])
    if tls is None or not endpoint:
        await websocket.close(CLOSE_UNREACHABLE, "the server's node is not reachable for consoles")
        return
    url = f"wss://{endpoint}/console/{record['vps']}/{record['kind']}"
    try:
        upstream = await connect(url, ssl=tls.context(), open_timeout=5, max_size=1 << 20,
                                 ping_interval=20, compression=None)
    except (OSError, WebSocketException, TimeoutError) as exc:
        detail = f" ({exc.response.status_code})" if isinstance(exc, InvalidStatus) else ""
        await websocket.close(CLOSE_UNREACHABLE, f"the server's node did not accept the console{detail}")
        return
    async with upstream:
        # The CA signs every node's certificate: only the VPS's own node may answer for its console.
        if peer_common_name(upstream.transport.get_extra_info("ssl_object")) != f"node-{record['node']}":
            await websocket.close(CLOSE_UNREACHABLE, "the console endpoint is not the server's node")
            return
        await _relay(websocket, upstream, state, store, record)


async def _relay(websocket: WebSocket, upstream: ClientConnection, state: Any, store: Store,
                 record: dict[str, Any]) -> None:
    code, reason = 1000, "console closed"

    async def down() -> None:
        nonlocal code, reason
        try:
            async for message in upstream:
                if isinstance(message, bytes):
                    await websocket.send_bytes(message)
                else:
                    await websocket.send_text(message)
        except ConnectionClosed:
            pass
        if upstream.close_code is not None and upstream.close_code >= 4000:
            code, reason = upstream.close_code, upstream.close_reason or reason

    async def up() -> None:
        with contextlib.suppress(WebSocketDisconnect, ConnectionClosed):
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                data = message.get("bytes")
                await upstream.send(data if data is not None else str(message.get("text") or "").encode())

    async def recheck() -> None:
        nonlocal code, reason
        last_store_check = time.monotonic()
        while True:
            await asyncio.sleep(RECHECK_SECONDS)
            refused = await run_in_threadpool(_still_allowed, state, record)
            if not refused and time.monotonic() - last_store_check >= 5:
                last_store_check = time.monotonic()
                refused = CLOSE_SUSPENDED if await run_in_threadpool(_suspended, store, record) else 0
            if refused:
                code = refused
                reason = ("the token or session behind this console was revoked" if refused == CLOSE_TICKET
                          else "the server's console is closed (suspended or gone)")
                return

    tasks = [asyncio.ensure_future(c) for c in (down(), up(), recheck())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    with contextlib.suppress(ConnectionClosed):
        await upstream.close()
    if websocket.client_state == WebSocketState.CONNECTED:
        with contextlib.suppress(RuntimeError, WebSocketDisconnect):
            await websocket.close(code, reason[:120])
