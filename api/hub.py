"""One etcd watch per API process, shared by every SSE stream, with per-principal filtering.

The hub lists every spec once, then watches `<root>/s` (specs and statuses) from that
revision. Each change becomes a `HubEvent` carrying its pre-rendered SSE data and its
audience: the customer who owns the object ("" for none), "*" for objects every reader of
the kind may see (images, public plans), or "staff". Ownership (subscription -> customer,
VPS -> subscription) is tracked from the specs as they change, so a VPS status change is
attributed without a read. Recent events are buffered, so a stream resuming from a recent
revision is served from memory; an older one gets a private watch from the caller.

This module must never decide what a role may read beyond the audience tag (api.access
decides), and never block the event loop: deliveries are handed to each stream's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from reconcile.store import Store, Watch, WatchEvent, decode
from specs import KINDS, Resource

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


Deliver = Callable[[tuple[str, Any]], None]


class Owners:
    """Who owns what, as far as the specs seen so far say. Not thread-safe: the hub locks."""

    def __init__(self) -> None:
        self.sub_customer: dict[str, str] = {}
        self.vps_sub: dict[str, str] = {}
        self.plan_public: dict[str, bool] = {}

    def learn(self, plural: str, name: str, doc: Any) -> None:
        spec = doc.get("spec") if isinstance(doc, dict) else None
        if not isinstance(spec, dict):
            return
        if plural == "subscriptions" and isinstance(spec.get("customer"), str):
            self.sub_customer[name] = spec["customer"]
        elif plural == "vps" and isinstance(spec.get("subscription"), str):
            self.vps_sub[name] = spec["subscription"]
        elif plural == "plans":
            self.plan_public[name] = spec.get("public", True) is not False

    def forget(self, plural: str, name: str) -> None:
        if plural == "subscriptions":
            self.sub_customer.pop(name, None)
        elif plural == "vps":
            self.vps_sub.pop(name, None)
        elif plural == "plans":
            self.plan_public.pop(name, None)

    def audience(self, plural: str, name: str) -> str:
        if plural == "customers":
            return name
        if plural == "subscriptions":
            return self.sub_customer.get(name, "")
        if plural == "vps":
            return self.sub_customer.get(self.vps_sub.get(name, ""), "")
        if plural == "plans":
            return EVERYONE if self.plan_public.get(name, True) else STAFF_ONLY
        if plural == "images":
            return EVERYONE
        return STAFF_ONLY


def _split(root: str, key: str) -> tuple[str, str, str] | None:
    rest = key[len(root) + 1:] if key.startswith(root + "/") else ""
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
    """The shared watch. `start` blocks (one range read); streams `subscribe` with a callback."""

    def __init__(self, store: Store, *, buffer_events: int = 20_000) -> None:
        self._store = store
        self._buffer: deque[HubEvent] = deque()
        self._buffer_events = buffer_events
        # handle -> (the stream's event loop, its in-loop callback)
        self._subscribers: dict[int, tuple[asyncio.AbstractEventLoop, Deliver]] = {}
        self._next_id = 0
        self._lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._pending: dict[asyncio.AbstractEventLoop, list[tuple[list[Deliver], tuple[str, Any]]]] = {}
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
        kvs, revision = self._store.kv_range(self._store.root + "/specs/")
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
        self._watch = self._store.watch(self._store.root + "/s", start_revision=revision + 1,
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
            subscribers = list(self._subscribers.values())
        if batch:
            self._dispatch(subscribers, ("hub", batch))

    def _dispatch(self, subscribers: list[tuple[asyncio.AbstractEventLoop, Deliver]], item: tuple[str, Any]) -> None:
        """Hand `item` to every stream, one wake-up per event loop rather than per stream.

        Batches that arrive while a loop has not yet run its last fan-out join it: under load
        each stream then wakes once for many etcd batches (one write instead of many), and
        when idle an event still goes out at once.
        """
        by_loop: dict[asyncio.AbstractEventLoop, list[Deliver]] = defaultdict(list)
        for loop, deliver in subscribers:
            by_loop[loop].append(deliver)
        for loop, delivers in by_loop.items():
            with self._pending_lock:
                pending = self._pending.get(loop)
                if pending is not None:
                    pending.append((delivers, item))
                    continue
                self._pending[loop] = [(delivers, item)]
            try:
                loop.call_soon_threadsafe(self._fan_out, loop)
            except RuntimeError:  # that loop is closed: its streams are gone
                with self._pending_lock:
                    self._pending.pop(loop, None)

    def _fan_out(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._pending_lock:
            pending = self._pending.pop(loop, [])
        # Consecutive event batches for the same streams merge into one item per stream.
        merged: list[tuple[list[Deliver], tuple[str, Any]]] = []
        for delivers, item in pending:
            if merged and item[0] == "hub" and merged[-1][1][0] == "hub" and merged[-1][0] == delivers:
                merged[-1] = (delivers, ("hub", merged[-1][1][1] + item[1]))
            else:
                merged.append((delivers, item))
        for delivers, item in merged:
            for deliver in delivers:
                deliver(item)

    def _on_compacted(self, revision: int) -> None:
        # The hub fell behind compaction (etcd was away long): every stream must re-list.
        with self._lock:
            subscribers = list(self._subscribers.values())
            self._subscribers.clear()
        self._dispatch(subscribers, ("compacted", revision))
        with self._start_lock:
            self._watch = None
            if not self._stopped:
                threading.Thread(target=self.start, name="watch-hub-resync", daemon=True).start()

    def subscribe(self, after: int, deliver: Deliver,
                  loop: asyncio.AbstractEventLoop) -> tuple[int, list[HubEvent]] | None:
        """Register a stream wanting events after `after`: (handle, buffered events), or None when
        the buffer does not reach back that far (the caller then watches etcd itself).
        `deliver` is called on `loop` and must not block."""
        with self._lock:
            if self._watch is None or after < self.floor:
                return None
            backlog = [e for e in self._buffer if e.revision > after]
            self._next_id += 1
            self._subscribers[self._next_id] = (loop, deliver)
            return self._next_id, backlog

    def unsubscribe(self, handle: int) -> None:
        with self._lock:
            self._subscribers.pop(handle, None)

    def translate_private(self, events: list[WatchEvent]) -> list[HubEvent]:
        """For a stream on its own etcd watch: audiences from what the hub knows now."""
        with self._lock:
            return translate(events, self._store.root, self.owners, learn=False)

    @property
    def subscribers(self) -> int:
        with self._lock:
            return len(self._subscribers)
