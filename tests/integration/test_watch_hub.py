"""The shared watch hub on a real etcd: every stream gets exactly what it may see, once, in order.

Streams subscribe at arbitrary moments (also while a batch is still waiting for its fan-out,
and from older revisions served from the buffer); the fan-out renders once per audience.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.hub import Audience, Feed, Ticker, WatchHub
from reconcile.objects import Store
from specs import Image, Plan
from specs.io import validate_object

STAFF = Audience(frozenset({"Plan", "Image"}), None)
CUSTOMER = Audience(frozenset({"Plan", "Image"}), "acme")
PLANS_ONLY = Audience(frozenset({"Plan"}), "acme")


@dataclass(frozen=True)
class Write:
    kind: str  # "Plan" or "Image"
    slot: int  # which object of that kind
    public: bool  # plans only


@dataclass(frozen=True)
class Subscribe:
    audience: int  # index into AUDIENCES
    back: int  # how many writes back from the newest to start after (0: from now)


@dataclass(frozen=True)
class Pause:
    ms: int


AUDIENCES = (STAFF, CUSTOMER, PLANS_ONLY)
steps = st.lists(
    st.one_of(
        st.builds(Write, st.sampled_from(["Plan", "Image"]), st.integers(0, 2), st.booleans()),
        st.builds(Subscribe, st.integers(0, len(AUDIENCES) - 1), st.integers(0, 4)),
        st.builds(Pause, st.integers(0, 8)),
    ),
    min_size=1, max_size=25)


def _object(kind: str, name: str, public: bool) -> Plan | Image:
    if kind == "Plan":
        spec = {"vcpus": 1, "memoryMiB": 512, "diskGiB": 10, "price": {"amount": "4.99", "currency": "EUR"},
                "public": public}
    else:
        spec = {"os": "debian", "version": "12",
                "source": {"path": f"/var/lib/images/{name}.qcow2", "sha256": "0" * 64}}
    obj = validate_object({"kind": kind, "metadata": {"name": name}, "spec": spec}, "test")
    assert isinstance(obj, Plan | Image)
    return obj


def _received(data: bytes) -> list[tuple[int, str, str]]:
    """(revision, kind, name) of every event frame, checking that ids only grow."""
    out = []
    last_id = 0
    for frame in data.decode().split("\n\n"):
        for line in frame.split("\n"):
            if line.startswith("id: "):
                assert int(line[4:]) > last_id
                last_id = int(line[4:])
            elif line.startswith("data: "):
                d = json.loads(line[6:])
                out.append((int(d["resourceVersion"]), d["kind"], d["name"]))
    return out


# Each example writes objects of its own (a fresh tag) under the shared store's root.
@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(program=steps)
def test_every_feed_gets_exactly_what_its_audience_may_see_after_its_revision(store: Store,
                                                                              program: list[object]) -> None:
    tag = uuid.uuid4().hex[:6]
    written: list[tuple[int, str, str, bool]] = []  # (revision, kind, name, public)
    feeds: list[tuple[Feed, int]] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        hub = WatchHub(store, flush_seconds=0.03)
        await loop.run_in_executor(None, hub.start)
        try:
            for step in program:
                if isinstance(step, Write):
                    name = f"{tag}-{step.kind.lower()}-{step.slot}"
                    obj = _object(step.kind, name, step.public)
                    try:
                        current = store.get(type(obj), name)
                        obj.metadata.resourceVersion = current.metadata.resourceVersion
                        done = store.update(obj)
                    except Exception:
                        done = store.create(obj)
                    revision = int(done.metadata.resourceVersion or 0)
                    if not written or revision > written[-1][0]:  # an unchanged object is not rewritten
                        written.append((revision, step.kind, name, step.kind == "Image" or step.public))
                elif isinstance(step, Subscribe):
                    back = step.back and len(written) >= step.back
                    after = written[-step.back][0] - 1 if back else store.revision()
                    feed = Feed(AUDIENCES[step.audience], after)
                    assert hub.subscribe(feed, loop) is not None
                    feeds.append((feed, after))
                else:
                    await asyncio.sleep(step.ms / 1000)
            last = store.revision()
            for _ in range(400):
                if hub.revision >= last:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)  # the last fan-out
        finally:
            hub.stop()

    asyncio.run(scenario())
    for feed, after in feeds:
        got: list[tuple[int, str, str]] = []
        for chunk in feed._chunks:
            got.extend(_received(chunk))
        assert feed.ended is None
        expected = [(rev, kind, name) for rev, kind, name, public in written
                    if rev > after and kind in feed.audience.kinds and (feed.audience.customer is None or public)]
        assert got == expected, (feed.audience, after)


def test_a_stream_too_slow_to_read_is_ended_with_overflow() -> None:
    """Past its byte limit a feed drops what it holds and ends; the stream then tells the client to re-list."""

    async def scenario() -> None:
        feed = Feed(STAFF, 0, max_pending_bytes=100)
        feed.push(b"x" * 60, 1)
        assert await feed.take() == b"x" * 60
        feed.push(b"y" * 60, 2)
        feed.push(b"z" * 60, 3)
        assert feed.ended == ("overflow", None)
        assert await feed.take() == b""
        # Woken by the ticker with nothing pending: None (the stream may send a heartbeat).
        idle = Feed(STAFF, 0)
        ticker = Ticker(0.01)
        ticker.add(idle)
        assert await asyncio.wait_for(idle.take(), 2) is None
        ticker.discard(idle)

    asyncio.run(scenario())
