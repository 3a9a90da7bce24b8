"""The audit log: who changed what, when and from where, as append-only records in etcd.

    <root>/audit/<YYYYMMDDTHHMMSS.ffffffZ>-<process>-<seq>   {time, actor, method, path, route, status, ip}

`AuditMiddleware` writes one record for every mutating request (POST, PUT, PATCH, DELETE
under /v1/, and under /v2/, the DigitalOcean-compatible API) made by an authenticated principal,
every login attempt, and every webhook the server accepted, before the response leaves: a change
the client saw acknowledged is always in the log. Requests refused for want of credentials, or by a
rate limit, are not recorded (anyone could fill etcd with them); they are counted in metrics instead.
Records are created create-only (in batches: concurrent requests share one etcd transaction,
each still waiting for its own record to land; written from the event loop through the asyncio
store) and never updated; no route deletes them.
This module must never record a request body, a token, a password or a cookie.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import secrets
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Query
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import access
from api.auth import Principal
from api.deps import PRINCIPAL_SCOPE_KEY, Caller, State
from api.errors import BadRequest
from reconcile.aio import AsyncStore
from reconcile.errors import StoreError
from reconcile.store import ModIs, Put, Rider, Store

log = logging.getLogger(__name__)

MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
ACTOR_SCOPE_KEY = "hostplane.audit_actor"
RECORDED_SCOPE_KEY = "hostplane.audit_recorded"  # the status whose record a route already wrote
_PROCESS = f"{os.getpid():x}{secrets.token_hex(2)}"
_SEQ = itertools.count()


def audit_prefix(root: str) -> str:
    return f"{root}/audit/"


def record_key(root: str, when: datetime) -> str:
    return f"{audit_prefix(root)}{when.strftime('%Y%m%dT%H%M%S.%fZ')}-{_PROCESS}-{next(_SEQ):08d}"


def actor_of(principal: Principal | None) -> dict[str, Any]:
    if principal is None:
        return {"role": "anonymous"}
    out: dict[str, Any] = {"role": principal.role, "id": principal.token_id}
    if principal.customer:
        out["customer"] = principal.customer
    if principal.name:
        out["name"] = principal.name
    return out


def write_record(store: Store, record: dict[str, Any], when: datetime) -> None:
    store.kv_put(record_key(store.root, when), json.dumps(record, separators=(",", ":")).encode(), expect=0)


class AuditWriter:
    """Group commit on the event loop: records submitted while a transaction is in flight go
    together in the next one.

    Under load N mutating requests cost one etcd transaction for their records instead of N
    writes; alone, a record costs one write as before. Each `write` returns when its own record
    is stored (or raises the store's error).
    """

    MAX_BATCH = 64  # compares and puts per transaction stay under etcd's default limit of 128

    def __init__(self, astore: AsyncStore) -> None:
        self._astore = astore
        # Per event loop: records waiting for the next transaction, and the task writing them.
        self._pending: dict[asyncio.AbstractEventLoop, list[tuple[str, bytes, asyncio.Future[None]]]] = {}
        self._writers: dict[asyncio.AbstractEventLoop, asyncio.Task[None]] = {}

    async def write(self, record: dict[str, Any], when: datetime) -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        value = json.dumps(record, separators=(",", ":")).encode()
        self._pending.setdefault(loop, []).append((record_key(self._astore.root, when), value, fut))
        if loop not in self._writers:
            self._writers[loop] = loop.create_task(self._drain(loop))
        await fut

    async def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            while pending := self._pending.get(loop):
                batch, self._pending[loop] = pending[:self.MAX_BATCH], pending[self.MAX_BATCH:]
                await self._write(batch)
        finally:
            self._writers.pop(loop, None)
            self._pending.pop(loop, None)

    async def _write(self, batch: list[tuple[str, bytes, asyncio.Future[None]]]) -> None:
        try:
            res = await self._astore.txn([ModIs(k, 0) for k, _, _ in batch], [Put(k, v) for k, v, _ in batch])
            if not res.succeeded:
                # A key already taken cannot happen with unique keys; store one by one to say which.
                for k, v, fut in batch:
                    try:
                        await self._astore.kv_put(k, v, expect=0)
                        _settle(fut, None)
                    except StoreError as exc:
                        _settle(fut, exc)
                return
        except StoreError as exc:
            for _, _, fut in batch:
                _settle(fut, exc)
            return
        for _, _, fut in batch:
            _settle(fut, None)


def _settle(fut: asyncio.Future[None], error: BaseException | None) -> None:
    if fut.done():  # its request was cancelled (the client went away)
        return
    if error is None:
        fut.set_result(None)
    else:
        fut.set_exception(error)


def _should_record(path: str, method: str, status: int, actor: dict[str, Any] | None,
                   principal: Principal | None) -> bool:
    if method not in MUTATING or not path.startswith(("/v1/", "/v2/")):
        return False
    if path == "/v1/auth/login":
        return status != 429  # throttled attempts are counted, not written: a flood must not fill etcd
    if path.startswith("/v1/webhooks/"):
        return status < 400
    return principal is not None or actor is not None


class AuditMiddleware:
    """Pure ASGI middleware: records a mutation when its response starts, before it is sent."""

    def __init__(self, app: ASGIApp, writer: AuditWriter) -> None:
        self.app = app
        self.writer = writer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") not in MUTATING:
            await self.app(scope, receive, send)
            return

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                await self._record(scope, int(message["status"]))
            await send(message)

        await self.app(scope, receive, send_wrapper)

    async def _record(self, scope: Scope, status: int) -> None:
        if scope.get(RECORDED_SCOPE_KEY) == status:
            return  # written with the change itself (`rider`)
        now = datetime.now(UTC)
        record = record_for(scope, status, now)
        if record is None:
            return
        try:
            await self.writer.write(record, now)
        except StoreError:
            # The change itself may have landed; say so loudly rather than fail the answer.
            log.error("audit record not written: %s %s by %s -> %s", record["method"], record["path"],
                      record["actor"], status)


def record_for(scope: Scope, status: int, now: datetime) -> dict[str, Any] | None:
    """The audit record of the request in `scope` answered with `status`, or None if none is kept."""
    path, method = str(scope.get("path", "")), str(scope.get("method", ""))
    principal = scope.get(PRINCIPAL_SCOPE_KEY)
    actor = scope.get(ACTOR_SCOPE_KEY)
    if not _should_record(path, method, status, actor, principal):
        return None
    client = scope.get("client")
    return {
        "time": now.isoformat(), "actor": actor or actor_of(principal), "method": method, "path": path,
        "route": getattr(scope.get("route"), "path", None), "status": status,
        "ip": client[0] if client else None,
    }


def rider(scope: Scope, status: int, root: str) -> Rider | None:
    """The audit record of this request, to be committed in the same etcd transaction as its change.

    A route that writes one object passes it to the store; if the store says it was written, the
    route calls `recorded` and the middleware does not write the record again. A change and its
    record then land together or not at all."""
    now = datetime.now(UTC)
    record = record_for(scope, status, now)
    if record is None:
        return None
    return Rider([Put(record_key(root, now), json.dumps(record, separators=(",", ":")).encode())])


def recorded(scope: Scope, ride: Rider | None, status: int) -> None:
    """Note that the record of `status` rode with the change (when it did)."""
    if ride is not None and ride.written:
        scope[RECORDED_SCOPE_KEY] = status


router = APIRouter(prefix="/v1", tags=["audit"])


@router.get("/audit", summary="Audit records, oldest first (admin, operator)")
def read_audit(state: State, caller: Caller,
               since: str | None = Query(None, description="ISO time; records at or after it"),
               role: str | None = Query(None, description="only this actor role"),
               customer: str | None = Query(None, description="only this actor customer"),
               limit: int = Query(200, ge=1, le=10_000, description="at most this many, the newest")) -> dict[str, Any]:
    access.require_staff(caller, "read the audit log")
    start = ""
    if since:
        try:
            when = datetime.fromisoformat(since)
        except ValueError:
            raise BadRequest("since: must be an ISO 8601 time", [{"path": "since", "message": "must be ISO 8601"}]) \
                from None
        start = (when if when.tzinfo else when.replace(tzinfo=UTC)).astimezone(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    prefix = audit_prefix(state.store.root)
    kvs, rev = state.store.kv_range(prefix)
    items: list[dict[str, Any]] = []
    for kv in kvs:
        if kv.key[len(prefix):] < start:
            continue
        try:
            rec = json.loads(kv.value)
        except ValueError:
            continue
        actor = rec.get("actor") or {}
        if role and actor.get("role") != role:
            continue
        if customer and actor.get("customer") != customer:
            continue
        items.append({"id": kv.key[len(prefix):], **rec})
    return {"items": items[-limit:], "resourceVersion": str(rev)}
