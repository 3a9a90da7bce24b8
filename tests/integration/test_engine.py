"""The engine against a real etcd: informer cache, compaction re-list, leader election."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from reconcile.etcd_server import EtcdServer, free_port
from reconcile.informer import Informer
from reconcile.leader import LeaderElector
from reconcile.objects import Store


def _wait(cond: object, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


def _dec(name: str, raw: bytes) -> str:
    return raw.decode()


def test_informer_lists_then_follows_changes(store: Store) -> None:
    """The cache starts with what exists and follows puts and deletes, telling handlers old and new."""
    prefix = store.root + "/inf/"
    store.kv_put(prefix + "a", b"1")
    seen: list[tuple[str, str | None, str | None]] = []
    inf: Informer[str] = Informer(store, prefix, decode=_dec)
    inf.add_handler(lambda n, o, v: seen.append((n, o, v)))
    inf.start()
    try:
        assert inf.items() == {"a": "1"}
        store.kv_put(prefix + "a", b"2")
        store.kv_put(prefix + "b", b"x")
        store.kv_delete(prefix + "a")
        assert _wait(lambda: inf.items() == {"b": "x"})
        assert seen == [("a", None, "1"), ("a", "1", "2"), ("b", None, "x"), ("a", "2", None)]
    finally:
        inf.stop()


def test_informer_survives_etcd_restart_without_losing_events(etcd: EtcdServer) -> None:
    """Writes made while the informer's watch is reconnecting all reach the cache."""
    s = etcd.store(retry_seconds=15)
    inf: Informer[str] = Informer(s, "/r/", decode=_dec).start()
    try:
        s.kv_put("/r/1", b"a")
        assert _wait(lambda: inf.get("1") == "a")
        etcd.restart()
        for i in range(2, 6):
            s.kv_put(f"/r/{i}", b"b")
        assert _wait(lambda: len(inf.items()) == 5, 15)
    finally:
        inf.stop()
        s.close()


def test_informer_relists_after_compaction(etcd: EtcdServer) -> None:
    """When etcd compacts past the watch, the informer re-lists and reports every difference."""
    s = etcd.store()
    inf: Informer[str] = Informer(s, "/c/", decode=_dec)
    deleted: list[str] = []
    inf.add_handler(lambda n, o, v: deleted.append(n) if v is None else None)
    inf.start()
    try:
        s.kv_put("/c/keep", b"1")
        s.kv_put("/c/gone", b"1")
        assert _wait(lambda: len(inf.items()) == 2)
        # While the informer cannot reach etcd (it knows only the old client port), change
        # and compact through another port, then bring etcd back where the informer looks.
        etcd.stop()
        informer_port = etcd.client_port
        etcd.client_port = free_port()
        etcd.start()
        s2 = etcd.store()
        s2.kv_delete("/c/gone")
        s2.kv_put("/c/new", b"2")
        for i in range(5):
            s2.kv_put("/c/churn", str(i).encode())
        s2.compact(s2.revision())
        s2.close()
        etcd.stop()
        etcd.client_port = informer_port
        etcd.start()
        assert _wait(lambda: inf.items() == {"keep": "1", "new": "2", "churn": "4"}, 15)
        assert "gone" in deleted
        assert inf.relists >= 1
    finally:
        inf.stop()
        s.close()


def test_only_one_leader_and_resign_hands_over(store: Store) -> None:
    """Two electors: exactly one leads; when it stops, the other leads at once."""
    a = LeaderElector(store, "t", "a", ttl=5, retry_period=0.2)
    b = LeaderElector(store, "t", "b", ttl=5, retry_period=0.2)
    a.start(lambda: None, lambda: None)
    assert a.wait_leading(5)
    b.start(lambda: None, lambda: None)
    time.sleep(0.5)
    assert not b.is_leader
    assert store.txn([a.fence()], []).succeeded
    stale = a.fence()
    a.stop()
    assert b.wait_leading(3)
    assert not store.txn([stale], []).succeeded  # the old leader's fence no longer holds
    assert store.txn([b.fence()], []).succeeded
    b.stop()


_CHILD = textwrap.dedent(
    """
    import sys, threading, time
    from reconcile.connection import EtcdConnection
    from reconcile.objects import Store
    from reconcile.leader import LeaderElector
    s = Store(EtcdConnection.from_file(sys.argv[1]), root=sys.argv[2])
    e = LeaderElector(s, "kill", "child", ttl=int(sys.argv[3]), retry_period=0.2)
    e.start(lambda: print("LEADING", flush=True), lambda: None)
    threading.Event().wait()
    """
)


def test_standby_leads_within_ttl_after_leader_is_killed(store: Store, tmp_path: Path,
                                                          etcd_session: EtcdServer) -> None:
    """SIGKILL the leading process: the standby leads within the lease TTL (plus a retry period)."""
    ttl = 3
    config = tmp_path / "controllers.toml"
    config.write_text(etcd_session.connection("controllers", root=store.root).to_toml())
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(config), store.root, str(ttl)],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "LEADING"
        standby = LeaderElector(store, "kill", "standby", ttl=ttl, retry_period=0.2)
        led = threading.Event()
        standby.start(led.set, lambda: None)
        time.sleep(0.3)
        assert not led.is_set()
        killed_at = time.monotonic()
        os.kill(child.pid, signal.SIGKILL)
        child.wait(5)
        assert led.wait(ttl + 2)
        assert time.monotonic() - killed_at <= ttl + 1.0
        standby.stop()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(5)
        if child.stdout is not None:
            child.stdout.close()
