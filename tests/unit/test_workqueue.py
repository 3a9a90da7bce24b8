"""Work queue semantics: no concurrent processing of a key, collapsing, backoff."""

from __future__ import annotations

import threading
import time
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from reconcile.controller import Controller, Result
from reconcile.workqueue import WorkQueue


def test_duplicates_collapse() -> None:
    """Adding a waiting key again does not queue it twice."""
    q = WorkQueue()
    for _ in range(5):
        q.add("a")
    q.add("b")
    assert len(q) == 2
    assert q.get(0) == "a"
    assert q.get(0) == "b"
    assert q.get(0.01) is None


def test_key_added_while_processing_is_requeued_after_done() -> None:
    """A key added while a worker holds it is handed out again only after done()."""
    q = WorkQueue()
    q.add("a")
    assert q.get(0) == "a"
    q.add("a")
    assert q.get(0.01) is None
    q.done("a")
    assert q.get(0) == "a"


def test_backoff_grows_and_resets() -> None:
    """Per-key delay doubles with each failure, is capped, and forget() resets it."""
    q = WorkQueue(base_delay=0.01, max_delay=0.04, qps=1000, burst=1000)
    delays = []
    for _ in range(4):
        t0 = time.monotonic()
        q.add_rate_limited("k")
        assert q.get(1.0) == "k"
        q.done("k")
        delays.append(time.monotonic() - t0)
    assert q.num_requeues("k") == 4
    assert delays[1] >= 0.02 * 0.9 and delays[2] >= 0.04 * 0.9
    assert delays[3] < 0.04 + 0.05  # capped
    q.forget("k")
    assert q.num_requeues("k") == 0


def test_add_after_keeps_earliest() -> None:
    """A key scheduled twice fires once, at the earlier time."""
    q = WorkQueue()
    q.add_after("k", 5.0)
    q.add_after("k", 0.01)
    assert q.get(1.0) == "k"
    q.done("k")
    assert q.get(0.05) is None


def test_shut_down_wakes_getters() -> None:
    """get() returns None once the queue shuts down."""
    q = WorkQueue()
    out: list[str | None] = []
    t = threading.Thread(target=lambda: out.append(q.get()))
    t.start()
    q.shut_down()
    t.join(2)
    assert out == [None]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.sampled_from("abcde"), min_size=1, max_size=60))
def test_never_concurrent_and_nothing_lost(keys: list[str]) -> None:
    """With 4 workers a key is never reconciled by two at once, and every key is seen after its last add."""
    active: Counter[str] = Counter()
    seen_after_add: dict[str, bool] = {}
    lock = threading.Lock()
    violations: list[str] = []

    def reconcile(key: str) -> Result | None:
        with lock:
            active[key] += 1
            if active[key] > 1:
                violations.append(key)
            seen_after_add[key] = True
        time.sleep(0.0005)
        with lock:
            active[key] -= 1
        return None

    c = Controller("t", reconcile, workers=4).start()
    for k in keys:
        with lock:
            seen_after_add[k] = False
        c.queue.add(k)
    deadline = time.monotonic() + 5
    while not c.idle and time.monotonic() < deadline:
        time.sleep(0.002)
    c.stop()
    assert violations == []
    assert all(seen_after_add.values())


def test_controller_retries_errors_with_backoff_then_succeeds() -> None:
    """A failing reconcile is retried with backoff; success forgets the failures."""
    calls: list[float] = []

    def reconcile(key: str) -> Result | None:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise RuntimeError("transient")
        return None

    q = WorkQueue(base_delay=0.02, qps=1000, burst=1000)
    c = Controller("t", reconcile, queue=q).start()
    q.add("x")
    deadline = time.monotonic() + 3
    while len(calls) < 3 and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.02)
    c.stop()
    assert len(calls) == 3
    assert calls[1] - calls[0] >= 0.018
    assert calls[2] - calls[1] >= 0.036  # the second retry waits twice as long
    assert q.num_requeues("x") == 0


def test_requeue_after() -> None:
    """Result(requeue_after=...) brings the key back after the delay."""
    calls: list[str] = []

    def reconcile(key: str) -> Result:
        calls.append(key)
        return Result(requeue_after=0.02) if len(calls) < 3 else Result()

    c = Controller("t", reconcile).start()
    c.queue.add("k")
    deadline = time.monotonic() + 2
    while len(calls) < 3 and time.monotonic() < deadline:
        time.sleep(0.005)
    c.stop()
    assert calls == ["k", "k", "k"]
