"""Shared fixtures: a real etcd on free loopback ports in a temp dir, and a Store on it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from reconcile.etcd_server import EtcdServer
from reconcile.store import Store


@pytest.fixture(scope="session")
def etcd_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """One etcd for the session; tests isolate themselves by key root."""
    server = EtcdServer(tmp_path_factory.mktemp("etcd") / "data")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    """A private etcd, for tests that restart, kill or compact it."""
    server = EtcdServer(tmp_path / "etcd-data")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def store(etcd_session: EtcdServer, request: pytest.FixtureRequest) -> Iterator[Store]:
    """A Store on the shared etcd, rooted at a key prefix of its own."""
    import uuid

    root = f"/t/{uuid.uuid4().hex[:12]}/hostplane/v1"
    s = Store(etcd_session.endpoint, root=root)
    yield s
    s.close()
