"""GET /v1/watch: spec and status changes as server-sent events, resumable by revision.

One etcd watch per API process (api.hub) covers both `specs/` and `status/` (every key
under `<root>/s`) for every stream, so events arrive in revision order and the SSE `id:`
(the etcd revision) is a safe resume point; a stream resuming from before the hub's buffer
gets a watch of its own (staff), or `event: relist` (a customer: the hub knows each event's owner
at its revision only for what it has seen, and today's owner of a name need not be the owner of
then). Each stream carries only what its principal may read (a customer: its own Customer,
Subscriptions and VPS, public plans, images); a revoked token or ended
session ends its streams within a second. Several keys can change in one revision; only the last event of a
revision carries the `id:`, so a client that resumes from it has seen the whole revision.

Event data: {"type": "PUT"|"DELETE", "part": "spec"|"status", "kind", "name",
"resourceVersion", "object"}. On compaction the stream sends `event: compacted` and ends;
a client too slow to keep up gets `event: relist` and the stream ends. Either way the
client must list again and watch from the list's resourceVersion.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from api import access
from api.auth import Principal
from api.deps import AppState, Caller, State, authenticate_async, limit_key
from api.errors import ApiError, BadRequest, Forbidden, TooManyRequests, UnknownKind
from api.hub import Audience, Feed, Owners, frames, translate
from api.ratelimit import Slot
from reconcile import keys
from reconcile.etcd import WatchEvent
from specs import KINDS, Resource, kind_for

router = APIRouter(prefix="/v1", tags=["watch"])

_RECHECK_SECONDS = 1.0
# A stream whose unsent output passes this (its client reads slower than etcd changes) is
# told to re-list instead of growing without bound.
_MAX_PENDING_BYTES = 8 << 20


def _ending(why: str, detail: Any) -> bytes:
    """The last frame of a stream that must re-list: compacted away, or too slow to keep up."""
    if why == "compacted":
        body = {"type": "COMPACTED", "compactRevision": detail,
                "message": "the requested revision is compacted; list again and watch from its resourceVersion"}
        return f"event: compacted\ndata: {json.dumps(body)}\n\n".encode()
    if why == "resume":
        body = {"type": "RELIST", "message": f"revision {detail} is older than this API's watch history; list "
                                            "again and watch from its resourceVersion"}
        return f"event: relist\ndata: {json.dumps(body)}\n\n".encode()
    body = {"type": "RELIST", "message": "this stream fell too far behind; list again and watch from its "
                                         "resourceVersion"}
    return f"event: relist\ndata: {json.dumps(body)}\n\n".encode()


def _kinds(text: str | None) -> dict[str, type[Resource]]:
    """Map each requested kind's plural (the key segment) to its class; all kinds if none named."""
    if not text:
        return {cls.PLURAL: cls for cls in KINDS.values()}
    out: dict[str, type[Resource]] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        try:
            cls = kind_for(part.strip())
        except KeyError as exc:
            raise UnknownKind(str(exc.args[0])) from None
        out[cls.PLURAL] = cls
    return out


def _revision(value: str | None, what: str) -> int | None:
    if value is None or value == "":
        return None
    if not value.isdigit():
        raise BadRequest(f"{what} must be a non-negative integer", [{"path": what, "message": "must be an integer"}])
    return int(value)


def render_events(events: list[WatchEvent], root: str, kinds: dict[str, type[Resource]]) -> list[str]:
    """SSE frames for a batch of etcd events, filtered to `kinds`, for a reader who may see them all. Pure."""
    wanted = {cls.KIND for cls in kinds.values()}
    return frames(translate(events, root, Owners(), learn=False), -1, lambda e: e.kind in wanted)


@router.get("/watch", summary="Server-sent events of spec and status changes the caller may see",
            response_class=StreamingResponse)
async def watch(request: Request, state: State, caller: Caller,
                kinds: str | None = Query(None, description="comma-separated kinds; all the caller may read when "
                                                             "omitted"),
                resourceVersion: str | None = Query(None, description="deliver changes after this revision"),
                last_event_id: str | None = Header(None, alias="Last-Event-ID")) -> StreamingResponse:
    readable = access.readable_kinds(caller)
    wanted = _kinds(kinds)
    refused = sorted(cls.KIND for cls in wanted.values() if cls.KIND not in readable)
    if kinds and refused:
        raise Forbidden(f"role {caller.role!r} may not watch {', '.join(refused)}")
    wanted_kinds = {cls.KIND for cls in wanted.values() if cls.KIND in readable}
    if not wanted_kinds:
        raise Forbidden(f"role {caller.role!r} may not watch anything")
    after = _revision(resourceVersion, "resourceVersion")
    if after is None:
        after = _revision(last_event_id, "Last-Event-ID")
    store = state.store
    hub = state.hub
    assert hub is not None
    await run_in_threadpool(hub.start)
    if after is None:
        after = await run_in_threadpool(store.revision)
    slot = None
    if caller.role != "admin":
        slot = state.streams.acquire(limit_key(caller))
        if slot is None:
            raise TooManyRequests(f"at most {state.streams.per_key} watch streams may be open per principal; close "
                                  "one first", retry_after=state.settings.heartbeat_seconds)
    try:
        return await _open_stream(request, state, caller, wanted_kinds, after, slot)
    except BaseException:
        if slot is not None:
            slot.release()
        raise


async def _open_stream(request: Request, state: AppState, caller: Principal, wanted_kinds: set[str], after: int,
                       slot: Slot | None) -> StreamingResponse:
    store = state.store
    hub = state.hub
    assert hub is not None
    loop = asyncio.get_running_loop()
    audience = Audience(frozenset(wanted_kinds), caller.customer if caller.role == "customer" else None)
    feed = Feed(audience, after, max_pending_bytes=_MAX_PENDING_BYTES)
    handle = hub.subscribe(feed, loop)
    private = None
    if handle is None and audience.customer is not None:
        # Older than the hub's history: who owned what back then is not known here, and today's
        # owners are not the owners of then (a name may have passed to another customer). Re-list.
        feed.end("resume", after)
    elif handle is None:
        # Older than the hub's buffer: this stream reads etcd from that revision itself.
        def deliver(method: Callable[..., None], *args: Any) -> None:
            # Called on the private watch's thread; the loop may already be gone when the client left.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(method, *args)

        private = await run_in_threadpool(
            store.watch, keys.objects_prefix(store.root), start_revision=after + 1,
            on_events=lambda evs, _rev: deliver(feed.offer, hub.translate_private(evs)),
            on_compacted=lambda rev: deliver(feed.end, "compacted", rev))
    heartbeat = state.settings.heartbeat_seconds
    start_from = after

    async def still_allowed() -> bool:
        # A revoked token or ended session closes its streams too, not only its next request.
        try:
            await authenticate_async(request, state)
        except ApiError:
            return False
        return True

    async def stream() -> AsyncIterator[bytes]:
        checked = sent = time.monotonic()
        hub.ticker.add(feed)
        try:
            yield f"retry: 2000\n: watching from revision {start_from}\n\n".encode()
            while True:
                # Everything pending goes out in one write: under load a stream sends one chunk
                # per fan-out, however many events it carries. The hub's ticker wakes an idle
                # stream every second anyway, so a revoked token ends it within a second or two.
                data = await feed.take()
                now = time.monotonic()
                if data is None or now - checked >= _RECHECK_SECONDS:
                    checked = now
                    if not await still_allowed():
                        yield b"event: unauthorized\ndata: {\"type\": \"UNAUTHORIZED\"}\n\n"
                        return
                if feed.ended is not None:
                    yield (data or b"") + _ending(*feed.ended)
                    return
                if data is None and now - sent < heartbeat:
                    continue
                sent = now
                yield data if data is not None else b": heartbeat\n\n"
        finally:
            if slot is not None:
                slot.release()
            hub.ticker.discard(feed)
            if handle is not None:
                hub.unsubscribe(handle)
            if private is not None:
                # Non-blocking: cancels the gRPC stream; its thread ends on its own.
                private.stop(timeout=0)

    body = stream()
    if slot is not None:
        # A stream whose body never starts (the client left first) skips its `finally`: the slot
        # is given back when the generator is collected.
        weakref.finalize(body, slot.release)
    return StreamingResponse(body, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
