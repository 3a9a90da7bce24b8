"""One etcd watch per API process, shared by every SSE stream, with per-principal filtering.

The hub lists every spec once, then watches `<root>/s` (specs and statuses) from that
revision. Each change becomes a `HubEvent` carrying its pre-rendered SSE data and its
audience: the customer who owns the object ("" for none), "*" for objects every reader of
the kind may see (images, public plans), or "staff". Ownership (subscription -> customer,
VPS -> subscription and its uid) is tracked from the specs as they change, so a VPS status
change is attributed without a read; the audience is fixed when the event arrives, so a
buffered event keeps the owner it had at its revision. Recent events are buffered, so a stream resuming from a recent
revision is served from memory; an older one gets a private watch from the caller.

Fan-out is by audience, not by stream: streams that may see the same events (same kinds,
same customer, or staff) form one group, and each batch is filtered, rendered and encoded
once per group; every stream of the group then gets the same bytes. Under load, batches
that arrive within the flush interval of the last fan-out wait for the next one, so a stream
wakes and writes to its socket at most once per interval however fast etcd changes; when
idle, an event goes out at once. The interval grows with the number of streams (a socket
write each: 5 ms for a few streams, 50 ms for 200) and, up to twice that, with how late the
last fan-outs ran (a loop busy with requests lets fan-out wait longer and write less), never
beyond `flush_seconds` (80 ms).

This module must never decide what a role may read beyond the audience tag (api.access
decides), and never block the event loop: fan-out runs on each stream's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from reconcile import keys
from reconcile.etcd import Watch, WatchEvent, decode
from reconcile.objects import Store
from specs import KINDS, Resource

# Socket writes per second the fan-out may cause under sustained change (each costs tens of
# microseconds of CPU), spread over the streams: the flush interval is streams / this...
STREAM_WRITES_PER_SECOND = 4000
MIN_FLUSH_SECONDS = 0.005
# ...doubled when fan-outs run this late on average (the event loop is saturated).
BUSY_LAG_SECONDS = 0.01
EVERYONE = "*"
STAFF_ONLY = "staff"

_BY_PLURAL: dict[str, type[Resource]] = {cls.PLURAL: cls for cls in KINDS.values()}


@dataclass(frozen=True)
class HubEvent:
    revision: int
    kind: str
    name: str
    audience: str
    data: str  # the JSON after `data: `


@dataclass(frozen=True)
class Audience:
    """What a stream may see: events of `kinds`, all of them (`customer` None: staff) or the customer's."""

    kinds: frozenset[str]
    customer: str | None

    def sees(self, e: HubEvent) -> bool:
        return e.kind in self.kinds and (self.customer is None or e.audience in (EVERYONE, self.customer))


class Feed:
    """One stream's pending output, on its event loop: SSE bytes to send, or why the stream ends.

    Only its loop touches it. `after` is the last revision the stream has (or will get from its
    backlog); frames at or below it are never added.
    """

    def __init__(self, audience: Audience, after: int, *, max_pending_bytes: int = 8 << 20) -> None:
        self.audience = audience
        self.after = after
        self.ended: tuple[str, Any] | None = None  # ("compacted", revision) or ("overflow", None)
        self._chunks: list[bytes] = []
        self._size = 0
        self._max = max_pending_bytes
        self._waiter: asyncio.Future[None] | None = None

    def offer(self, events: list[HubEvent]) -> None:
        """Add the frames of `events` this stream may see (its own rendering: private watches, backlogs)."""
        shown = [e for e in events if self.audience.sees(e)]
        if shown:
            self.push(render(shown, self.after), shown[-1].revision)

    def push(self, data: bytes, last_revision: int) -> None:
        if self.ended is not None or not data:
            return
        self.after = max(self.after, last_revision)
        self._chunks.append(data)
        self._size += len(data)
        if self._size > self._max:
            # A client that reads slower than etcd changes would make this grow without bound.
            self.end("overflow", None)
            return
        self._wake()

    def end(self, why: str, detail: Any) -> None:
        if self.ended is None:
            self.ended = (why, detail)
            self._chunks.clear()
            self._size = 0
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def tick(self) -> None:
        """Wake the stream with nothing to send (a `Ticker` does, so idle streams check in)."""
        self._wake()

    async def take(self) -> bytes | None:
        """Everything pending as one chunk (b"" once ended); None when woken by a tick with nothing pending."""
        if not self._chunks and self.ended is None:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
            if not self._chunks and self.ended is None:
                return None
        data = b"".join(self._chunks) if len(self._chunks) != 1 else self._chunks[0]
        self._chunks.clear()
        self._size = 0
        return data


class Ticker:
    """Ticks every feed of an event loop every `seconds`: one timer per loop instead of one per stream.

    Streams use the ticks to re-check their principal and to send heartbeats while idle.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._feeds: dict[asyncio.AbstractEventLoop, set[Feed]] = {}

    def add(self, feed: Feed) -> None:
        """Register `feed` on the running loop (until `discard`)."""
        loop = asyncio.get_running_loop()
        feeds = self._feeds.get(loop)
        if feeds is None:
            feeds = self._feeds[loop] = set()
            loop.call_later(self.seconds, self._tick, loop)
        feeds.add(feed)

    def discard(self, feed: Feed) -> None:
        feeds = self._feeds.get(asyncio.get_running_loop())
        if feeds is not None:
            feeds.discard(feed)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        feeds = self._feeds.get(loop)
        if not feeds:
            self._feeds.pop(loop, None)
            return
        for feed in feeds:
            feed.tick()
        loop.call_later(self.seconds, self._tick, loop)


class Owners:
    """Who owns what, as far as the specs seen so far say. Not thread-safe: the hub locks."""

    def __init__(self) -> None:
        self.sub_customer: dict[str, str] = {}
        self.sub_uid: dict[str, str] = {}
        self.vps_sub: dict[str, tuple[str, str | None]] = {}  # vps -> (subscription, its uid when recorded)
        self.plan_public: dict[str, bool] = {}
        self.customer_email: dict[str, str] = {}  # customer -> e-mail, lower case
        self.email_customers: dict[str, set[str]] = {}  # the other way round (for panel login)

    def learn(self, plural: str, name: str, doc: Any) -> None:
        spec = doc.get("spec") if isinstance(doc, dict) else None
        if not isinstance(spec, dict):
            return
        if plural == "subscriptions" and isinstance(spec.get("customer"), str):
            self.sub_customer[name] = spec["customer"]
            meta = doc.get("metadata")
            self.sub_uid[name] = str(meta.get("uid") or "") if isinstance(meta, dict) else ""
        elif plural == "vps" and isinstance(spec.get("subscription"), str):
            uid = spec.get("subscriptionUID")
            self.vps_sub[name] = (spec["subscription"], uid if isinstance(uid, str) else None)
        elif plural == "plans":
            self.plan_public[name] = spec.get("public", True) is not False
        elif plural == "customers" and isinstance(spec.get("email"), str):
            self._unindex(name)
            email = spec["email"].strip().lower()
            self.customer_email[name] = email
            self.email_customers.setdefault(email, set()).add(name)

    def _unindex(self, customer: str) -> None:
        old = self.customer_email.pop(customer, None)
        if old is not None:
            names = self.email_customers.get(old, set())
            names.discard(customer)
            if not names:
                self.email_customers.pop(old, None)

    def forget(self, plural: str, name: str) -> None:
        if plural == "subscriptions":
            self.sub_customer.pop(name, None)
            self.sub_uid.pop(name, None)
        elif plural == "vps":
            self.vps_sub.pop(name, None)
        elif plural == "plans":
            self.plan_public.pop(name, None)
        elif plural == "customers":
            self._unindex(name)

    def audience(self, plural: str, name: str) -> str:
        if plural == "customers":
            return name
        if plural == "subscriptions":
            return self.sub_customer.get(name, "")
        if plural == "vps":
            sub, uid = self.vps_sub.get(name, ("", None))
            if uid is not None and self.sub_uid.get(sub) != uid:
                return ""  # bound to a Subscription that is gone: nobody's (a reused name is not its owner)
            return self.sub_customer.get(sub, "")
        if plural == "plans":
            return EVERYONE if self.plan_public.get(name, True) else STAFF_ONLY
        if plural == "images":
            return EVERYONE
        return STAFF_ONLY


def _split(root: str, key: str) -> tuple[str, str, str] | None:
    rest = key[len(root) + 1:] if key.startswith(keys.root_prefix(root)) else ""
    parts = rest.split("/")
    if len(parts) != 3 or parts[0] not in ("specs", "status") or parts[1] not in _BY_PLURAL:
        return None
    return parts[0], parts[1], parts[2]


def translate(events: list[WatchEvent], root: str, owners: Owners, *, learn: bool = True) -> list[HubEvent]:
    """HubEvents for a batch of etcd events, updating `owners` from the specs when `learn`."""
    parsed: list[tuple[WatchEvent, str, str, str, Any]] = []
    for ev in events:
        where = _split(root, ev.key)
        if where is None:
            continue
        part, plural, name = where
        obj: Any = None
        if ev.type == "PUT":
            try:
                obj = decode(ev.value)
            except ValueError:
                continue
        parsed.append((ev, part, plural, name, obj))
    # Ownership first, for the whole batch: an order writes its Subscription and VPS in one revision.
    if learn:
        for ev, part, plural, name, obj in parsed:
            if part == "specs" and ev.type == "PUT":
                owners.learn(plural, name, obj)
    out: list[HubEvent] = []
    for ev, part, plural, name, obj in parsed:
        audience = owners.audience(plural, name)
        if part == "specs" and isinstance(obj, dict) and isinstance(obj.get("metadata"), dict):
            obj["metadata"]["resourceVersion"] = str(ev.mod_revision)
        data = {"type": ev.type, "part": "spec" if part == "specs" else "status", "kind": _BY_PLURAL[plural].KIND,
                "name": name, "resourceVersion": str(ev.mod_revision), "object": obj}
        out.append(HubEvent(ev.mod_revision, _BY_PLURAL[plural].KIND, name, audience,
                            json.dumps(data, separators=(",", ":"))))
    if learn:
        for ev, part, plural, name, _ in parsed:
            if part == "specs" and ev.type == "DELETE":
                owners.forget(plural, name)
    return out


def render(events: list[HubEvent], after: int) -> bytes:
    """The SSE bytes of `events` (all visible to the reader) after revision `after`."""
    return "".join(frames(events, after, _everything)).encode()


def _everything(_: HubEvent) -> bool:
    return True


def frames(events: list[HubEvent], after: int, wanted: Callable[[HubEvent], bool]) -> list[str]:
    """SSE frames of the events a stream may see, after revision `after`. Pure.

    Only the last visible event of a revision carries `id:`, so a client resuming from an
    id has seen the whole revision (as far as it may see it).
    """
    shown = [e for e in events if e.revision > after and wanted(e)]
    out: list[str] = []
    for i, e in enumerate(shown):
        last = i + 1 == len(shown) or shown[i + 1].revision != e.revision
        head = f"id: {e.revision}\n" if last else ""
        out.append(f"{head}data: {e.data}\n\n")
    return out


class WatchHub:
    """The shared watch. `start` blocks (one range read); streams `subscribe` a Feed."""

    def __init__(self, store: Store, *, buffer_events: int = 20_000, flush_seconds: float = 0.08,
                 tick_seconds: float = 1.0) -> None:
        self._store = store
        self.ticker = Ticker(tick_seconds)
        self._buffer: deque[HubEvent] = deque()
        self._buffer_events = buffer_events
        self.flush_seconds = flush_seconds
        # loop -> audience -> handle -> feed; only the loop itself reads its part while fanning out
        self._groups: dict[asyncio.AbstractEventLoop, dict[Audience, dict[int, Feed]]] = {}
        self._handles: dict[int, tuple[asyncio.AbstractEventLoop, Audience]] = {}
        self._next_id = 0
        self._lock = threading.Lock()
        self._start_lock = threading.Lock()
        # Batches not yet fanned out, per loop; a loop is in here while a fan-out is scheduled.
        self._pending: dict[asyncio.AbstractEventLoop, list[HubEvent]] = {}
        self._last_flush: dict[asyncio.AbstractEventLoop, float] = {}
        self._due: dict[asyncio.AbstractEventLoop, float] = {}  # when the scheduled fan-out should run
        self._lag: dict[asyncio.AbstractEventLoop, float] = {}  # moving average of how late fan-outs ran
        self._pending_lock = threading.Lock()
        self._watch: Watch | None = None
        self.owners = Owners()
        self.floor = -1  # every event after this revision is buffered or still to come
        self.revision = 0
        self._stopped = False

    @property
    def started(self) -> bool:
        return self._watch is not None

    def start(self) -> None:
        with self._start_lock:
            if self._watch is not None or self._stopped:
                return
            self._resync()

    def _resync(self) -> None:
        kvs, revision = self._store.kv_range(keys.specs_prefix(self._store.root))
        owners = Owners()
        for kv in kvs:
            where = _split(self._store.root, kv.key)
            if where is not None:
                with contextlib.suppress(ValueError):
                    owners.learn(where[1], where[2], decode(kv.value))
        with self._lock:
            self.owners = owners
            self._buffer.clear()
            self.floor = revision
            self.revision = revision
        self._watch = self._store.watch(keys.objects_prefix(self._store.root), start_revision=revision + 1,
                                        on_events=self._on_events, on_compacted=self._on_compacted)

    def stop(self) -> None:
        with self._start_lock:
            self._stopped = True
            if self._watch is not None:
                self._watch.stop(timeout=0)
                self._watch = None

    def _on_events(self, events: list[WatchEvent], revision: int) -> None:
        with self._lock:
            batch = translate(events, self._store.root, self.owners)
            self.revision = max(self.revision, revision)
            if batch:
                self._buffer.extend(batch)
                while len(self._buffer) > self._buffer_events:
                    self.floor = self._buffer.popleft().revision
            loops = [(loop, sum(len(feeds) for feeds in groups.values())) for loop, groups in self._groups.items()]
        if batch:
            for loop, streams in loops:
                self._schedule(loop, batch, self._interval(loop, streams))

    def _interval(self, loop: asyncio.AbstractEventLoop, streams: int) -> float:
        """The least time between two fan-outs on `loop`: more streams and a busier loop, longer."""
        busy = min(1.0, self._lag.get(loop, 0.0) / BUSY_LAG_SECONDS)
        base = max(MIN_FLUSH_SECONDS, streams / STREAM_WRITES_PER_SECOND)
        return min(self.flush_seconds, base * (1.0 + busy))

    def _schedule(self, loop: asyncio.AbstractEventLoop, batch: list[HubEvent], interval: float) -> None:
        """Queue `batch` for `loop`'s streams; fan out now if the last fan-out is `interval` ago, else then."""
        with self._pending_lock:
            pending = self._pending.get(loop)
            if pending is not None:
                pending.extend(batch)  # a fan-out is already scheduled: it takes these too
                return
            self._pending[loop] = list(batch)
            now = time.monotonic()
            delay = self._last_flush.get(loop, 0.0) + interval - now
            self._due[loop] = now + max(0.0, delay)
        try:
            if delay <= 0:
                loop.call_soon_threadsafe(self._fan_out, loop)
            else:
                loop.call_soon_threadsafe(loop.call_later, delay, self._fan_out, loop)
        except RuntimeError:  # that loop is closed: its streams are gone
            with self._pending_lock:
                self._pending.pop(loop, None)

    def _fan_out(self, loop: asyncio.AbstractEventLoop) -> None:
        """On `loop`: render the pending events once per audience and hand the bytes to each stream."""
        with self._pending_lock:
            events = self._pending.pop(loop, [])
            now = self._last_flush[loop] = time.monotonic()
            late = max(0.0, now - self._due.pop(loop, now))
            self._lag[loop] = 0.8 * self._lag.get(loop, 0.0) + 0.2 * late
        with self._lock:
            groups = [(audience, list(feeds.values())) for audience, feeds in self._groups.get(loop, {}).items()]
        for audience, feeds in groups:
            shown = [e for e in events if audience.sees(e)]
            if not shown:
                continue
            first, last = shown[0].revision, shown[-1].revision
            shared: bytes | None = None
            for feed in feeds:
                if feed.after < first:
                    if shared is None:
                        shared = render(shown, -1)
                    feed.push(shared, last)
                else:  # it subscribed with a backlog reaching into this batch
                    feed.offer(shown)

    def _on_compacted(self, revision: int) -> None:
        # The hub fell behind compaction (etcd was away long): every stream must re-list.
        with self._lock:
            ended = [(loop, [f for feeds in groups.values() for f in feeds.values()])
                     for loop, groups in self._groups.items()]
            self._groups.clear()
            self._handles.clear()
        for loop, feeds in ended:
            for feed in feeds:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(feed.end, "compacted", revision)
        with self._start_lock:
            self._watch = None
            if not self._stopped:
                threading.Thread(target=self.start, name="watch-hub-resync", daemon=True).start()

    def subscribe(self, feed: Feed, loop: asyncio.AbstractEventLoop) -> int | None:
        """Register `feed` for a stream on `loop`, the calling loop: its handle, with the buffered
        events after `feed.after` already offered to it; None when the buffer does not reach back
        that far (the caller then watches etcd itself)."""
        with self._lock:
            if self._watch is None or feed.after < self.floor:
                return None
            backlog = [e for e in self._buffer if e.revision > feed.after]
            self._next_id += 1
            handle = self._next_id
            self._groups.setdefault(loop, {}).setdefault(feed.audience, {})[handle] = feed
            self._handles[handle] = (loop, feed.audience)
        # No fan-out can run meanwhile (it runs on this loop). Batches still pending for this loop
        # are in the buffer too, so in the backlog: offering it moves `feed.after` past them.
        feed.offer(backlog)
        return handle

    def unsubscribe(self, handle: int) -> None:
        with self._lock:
            where = self._handles.pop(handle, None)
            if where is None:
                return
            loop, audience = where
            groups = self._groups.get(loop, {})
            feeds = groups.get(audience, {})
            feeds.pop(handle, None)
            if not feeds:
                groups.pop(audience, None)
            if not groups:
                self._groups.pop(loop, None)
                with self._pending_lock:
                    self._last_flush.pop(loop, None)
                    self._lag.pop(loop, None)

    def customers_with_email(self, email: str) -> list[str] | None:
        """Names of the customers whose e-mail this is (sorted), as of `revision`; None before `start`."""
        with self._lock:
            if self._watch is None:
                return None
            return sorted(self.owners.email_customers.get(email.strip().lower(), ()))

    def servers_of_subscription(self, subscription: str) -> list[str]:
        """Names of the servers whose spec refers to a Subscription of this name (sorted), as of `revision`."""
        with self._lock:
            return sorted(v for v, (sub, _) in self.owners.vps_sub.items() if sub == subscription)

    def translate_private(self, events: list[WatchEvent]) -> list[HubEvent]:
        """For a stream on its own etcd watch: audiences from what the hub knows now."""
        with self._lock:
            return translate(events, self._store.root, self.owners, learn=False)

    @property
    def subscribers(self) -> int:
        with self._lock:
            return len(self._handles)
