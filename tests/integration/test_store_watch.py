"""Store watches and faults against a real etcd: order, resume after restart, compaction, outages."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from reconcile.connection import EtcdConnection
from reconcile.errors import Unavailable
from reconcile.etcd import WatchEvent
from reconcile.etcd_server import EtcdServer
from reconcile.objects import Store
from specs import Plan


class Collector:
    """Gathers watch batches; wait_for blocks until a condition on the events holds."""

    def __init__(self) -> None:
        self.events: list[WatchEvent] = []
        self.compacted: list[int] = []
        self._cond = threading.Condition()

    def on_events(self, events: list[WatchEvent], revision: int) -> None:
        with self._cond:
            self.events.extend(events)
            self._cond.notify_all()

    def on_compacted(self, revision: int) -> None:
        with self._cond:
            self.compacted.append(revision)
            self._cond.notify_all()

    def wait_for(self, cond: Callable[[Collector], bool], timeout: float = 15.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: cond(self), timeout)


@pytest.fixture
def private_store(etcd: EtcdServer) -> Iterator[Store]:
    """A Store on the private etcd, with a retry window long enough to span a restart."""
    s = etcd.store(timeout=2.0, retry_seconds=20.0)
    yield s
    s.close()


def plan(name: str, vcpus: int = 1) -> Plan:
    return Plan.model_validate({
        "kind": "Plan", "metadata": {"name": name},
        "spec": {"vcpus": vcpus, "memoryMiB": 512, "diskGiB": 10, "price": {"amount": "1", "currency": "EUR"}},
    })


def assert_in_order_once(events: list[WatchEvent]) -> None:
    revs = [e.mod_revision for e in events]
    assert revs == sorted(set(revs)), "events must arrive in revision order, each once"


def test_watch_delivers_every_event_in_order(store: Store) -> None:
    """A watch from a revision delivers every put and delete under its prefix, in revision order."""
    prefix = store.root + "/w/"
    start = store.revision() + 1
    got = Collector()
    w = store.watch(prefix, start_revision=start, on_events=got.on_events)
    try:
        for i in range(40):
            store.kv_put(f"{prefix}{i % 7}", str(i).encode())
        store.kv_delete(f"{prefix}3")
        store.kv_put(store.root + "/elsewhere", b"not watched")
        assert got.wait_for(lambda c: len(c.events) >= 41)
    finally:
        w.stop()
    assert_in_order_once(got.events)
    assert [e.value for e in got.events[:40]] == [str(i).encode() for i in range(40)]
    assert got.events[-1].type == "DELETE" and got.events[-1].key == f"{prefix}3"
    assert all(e.key.startswith(prefix) for e in got.events)


def test_watch_from_an_old_revision_replays_history(store: Store) -> None:
    """A watch started at an earlier revision first replays what happened since then."""
    prefix = store.root + "/h/"
    start = store.revision() + 1
    for i in range(5):
        store.kv_put(f"{prefix}{i}", b"v")
    got = Collector()
    w = store.watch(prefix, start_revision=start, on_events=got.on_events)
    try:
        assert got.wait_for(lambda c: len(c.events) == 5)
    finally:
        w.stop()
    assert [e.key for e in got.events] == [f"{prefix}{i}" for i in range(5)]


def test_watch_stop_returns_and_delivers_nothing_more(store: Store) -> None:
    """After stop() the watch thread is gone and later writes are not delivered."""
    prefix = store.root + "/s/"
    got = Collector()
    w = store.watch(prefix, start_revision=store.revision() + 1, on_events=got.on_events)
    assert w.connected.wait(5)
    w.stop()
    assert not w.alive
    store.kv_put(prefix + "late", b"v")
    time.sleep(0.3)
    assert got.events == []


def test_watch_resumes_after_etcd_restart_without_loss_or_duplicates(
    etcd: EtcdServer, private_store: Store
) -> None:
    """Writes before a kill and after the restart all arrive exactly once, in order."""
    store = private_store
    prefix = store.root + "/r/"
    got = Collector()
    w = store.watch(prefix, start_revision=store.revision() + 1, on_events=got.on_events)
    try:
        for i in range(5):
            store.kv_put(f"{prefix}{i}", b"before")
        assert got.wait_for(lambda c: len(c.events) == 5)
        etcd.kill()
        # Issued while etcd is down: each write waits in the store's retry until etcd is back.
        writer = threading.Thread(target=lambda: [store.kv_put(f"{prefix}{i}", b"during") for i in range(5, 8)])
        writer.start()
        time.sleep(0.5)
        etcd.start()
        writer.join(20)
        # Written while the watch may still be reconnecting.
        for i in range(8, 10):
            store.kv_put(f"{prefix}{i}", b"after")
        assert got.wait_for(lambda c: len(c.events) >= 10, timeout=20)
        time.sleep(0.3)  # a duplicate would show up here
    finally:
        w.stop()
    assert w.reconnects >= 1, "the watch must have been cut by the restart"
    assert len(got.events) == 10
    assert_in_order_once(got.events)
    assert [e.key for e in got.events] == [f"{prefix}{i}" for i in range(10)]


def test_watch_after_compaction_reports_the_compact_revision(store: Store) -> None:
    """A watch starting before the compacted revision calls on_compacted with that revision."""
    prefix = store.root + "/c/"
    old = store.revision() + 1
    for i in range(5):
        store.kv_put(f"{prefix}{i}", b"v")
    target = store.kv_put(prefix + "last", b"v")
    store.compact(target)
    got = Collector()
    w = store.watch(prefix, start_revision=old, on_events=got.on_events, on_compacted=got.on_compacted)
    try:
        assert got.wait_for(lambda c: bool(c.compacted), timeout=10)
    finally:
        w.stop()
    assert got.compacted == [target]
    assert got.events == []


def test_store_is_unavailable_when_etcd_is_down_within_its_retry_budget(etcd: EtcdServer) -> None:
    """With etcd stopped every call raises Unavailable after a bounded retry, not a hang."""
    store = etcd.store(timeout=0.5, retry_seconds=1.0)
    try:
        store.create(plan("up"))
        etcd.stop()
        for call in (lambda: store.get(Plan, "up"), lambda: store.create(plan("down")),
                     lambda: store.list(Plan), lambda: store.put_status(Plan, "up", {"a": 1})):
            t0 = time.monotonic()
            with pytest.raises(Unavailable):
                call()
            assert time.monotonic() - t0 < 6
        etcd.start()
        # Nothing half-written while it was down; the store recovers by itself.
        assert [p.name for p in store.list(Plan).items] == ["up"]
    finally:
        store.close()


def test_write_retried_across_an_etcd_restart_is_applied_once(etcd: EtcdServer, private_store: Store) -> None:
    """A create and an update issued while etcd is down succeed once it is back, each applied once."""
    store = private_store
    created = store.create(plan("p"))
    etcd.kill()
    results: dict[str, object] = {}

    def writer() -> None:
        try:
            results["create"] = store.create(plan("q"))
            results["update"] = store.update(created.model_copy(update={
                "spec": created.spec.model_copy(update={"vcpus": 2})}))
        except Exception as exc:  # reported by the assertion below
            results["error"] = exc

    t = threading.Thread(target=writer)
    t.start()
    time.sleep(1.0)
    etcd.start()
    t.join(25)
    assert "error" not in results, results.get("error")
    q = store.kv_get(store.root + "/specs/plans/q")
    p = store.kv_get(store.root + "/specs/plans/p")
    assert q is not None and q.version == 1
    assert p is not None and p.version == 2
    assert store.get(Plan, "p").spec.vcpus == 2


def test_watch_redelivers_a_batch_its_handler_failed_on(store: Store) -> None:
    """If the handler raises, the watch resumes from that batch: no event is skipped."""
    prefix = store.root + "/f/"
    got = Collector()
    failures = [1]

    def flaky(events: list[WatchEvent], revision: int) -> None:
        if failures and any(e.key.endswith("/2") for e in events):
            failures.pop()
            raise RuntimeError("handler bug")
        got.on_events(events, revision)

    w = store.watch(prefix, start_revision=store.revision() + 1, on_events=flaky)
    try:
        for i in range(5):
            store.kv_put(f"{prefix}{i}", b"v")
        assert got.wait_for(lambda c: any(e.key.endswith("/4") for e in c.events))
    finally:
        w.stop()
    assert w.handler_errors == 1
    assert sorted({e.key for e in got.events}) == [f"{prefix}{i}" for i in range(5)]
    assert_in_order_once(got.events)


def test_store_fails_over_to_a_live_member(etcd_session: EtcdServer) -> None:
    """With a dead endpoint listed first, calls fail over to the live one within the retry budget."""
    from reconcile.etcd_server import free_port

    dead = f"127.0.0.1:{free_port()}"
    live = etcd_session.connection()
    conn = EtcdConnection.make([dead, *live.endpoints], ca=live.ca, cert=live.cert, key=live.key)
    store = Store(conn, root=f"/t/failover-{time.monotonic_ns()}", timeout=1.0, retry_seconds=10.0)
    try:
        t0 = time.monotonic()
        created = store.create(plan("fo"))
        assert store.get(Plan, "fo") == created
        assert time.monotonic() - t0 < 10
    finally:
        store.kv_delete(store.root + "/", prefix=True)
        store.close()


def test_writes_whose_replies_time_out_are_applied_once(etcd: EtcdServer) -> None:
    """With a deadline so short that replies get lost, retried creates and updates still land exactly once."""
    store = etcd.store(timeout=0.002, retry_seconds=30.0)
    checker = etcd.store()
    try:
        for i in range(20):
            created = store.create(plan(f"p{i}"))
            store.update(created.model_copy(update={"spec": created.spec.model_copy(update={"vcpus": 3})}))
        kvs, _ = checker.kv_range(checker.root + "/specs/plans/")
        assert len(kvs) == 20
        assert {kv.version for kv in kvs} == {2}, "each object written exactly twice: create, then update"
        assert {p.spec.vcpus for p in checker.list(Plan).items} == {3}
    finally:
        store.close()
        checker.close()
