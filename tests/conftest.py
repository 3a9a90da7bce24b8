"""Shared fixtures: a real etcd on free loopback ports in a temp dir, and a Store on it."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from reconcile.etcd_server import EtcdServer
from reconcile.store import Store

# Shared 2-core machines make per-example timing meaningless: no deadlines anywhere. In CI the
# examples are derived from each test's name (derandomize), so a green main stays green and a
# failure there reproduces locally with HYPOTHESIS_PROFILE=ci.
settings.register_profile("dev", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", deadline=None, derandomize=True, database=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev"))


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

    base = f"/t/{uuid.uuid4().hex[:12]}/"
    s = Store(etcd_session.endpoint, root=base + "hostplane/v1")
    yield s
    # Leave the shared etcd as found, so later tests' ranges stay small.
    with contextlib.suppress(Exception):
        s.kv_delete(base, prefix=True)
    s.close()
