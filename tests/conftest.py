"""Shared fixtures: a real etcd (TLS only, RBAC on) on free loopback ports in a temp dir, and stores on it.

How a test reaches etcd (there is no plaintext path):

* `store`: a Store with the root identity (every key) under a private key root; for tests
  that need everything. Its root is `store.root`.
* `etcd_session.store(identity, root=store.root)` / `etcd.store(identity, root=...)`: a new
  Store as `api`, `controllers`, `fleet`, `node-<name>` or `operator-<name>`, whose etcd role
  is granted for keys under `root` (the caller closes it). `.connection(identity, root=...)`
  gives the EtcdConnection, `.args(identity, root=...)` the `--etcd --etcd-ca --etcd-cert
  --etcd-key` flags for a child process (processes use the default root `/hostplane/v1`).
* `etcd_args(identity)`: the same flags for the private `etcd` fixture's server.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from reconcile.etcd_server import EtcdServer
from reconcile.objects import Store

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
    s = etcd_session.store("root", root=base + "hostplane/v1")
    yield s
    # Leave the shared etcd as found, so later tests' ranges stay small.
    with contextlib.suppress(Exception):
        s.kv_delete(base, prefix=True)
    s.close()


@pytest.fixture
def etcd_args(etcd: EtcdServer) -> Callable[..., list[str]]:
    """`etcd_args(identity, root=...)`: child-process etcd flags for the private `etcd` server."""
    return etcd.args
