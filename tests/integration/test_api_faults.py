"""The API when etcd fails: 503 while it is down, recovery after, and compaction during a watch."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.auth import ensure_admin_token
from api.server import create_app, serving
from reconcile.etcd_server import EtcdServer
from reconcile.objects import Store
from tests.helpers.wait import wait_for

PLAN: dict[str, Any] = {
    "kind": "Plan", "metadata": {"name": "s1"},
    "spec": {"vcpus": 1, "memoryMiB": 1024, "diskGiB": 25, "price": {"amount": "4.49", "currency": "EUR"}},
}


@pytest.fixture
def private_api(etcd: EtcdServer, tmp_path: Path) -> Iterator[tuple[httpx.Client, Store]]:
    """An API on a private etcd, with a short retry budget so an outage surfaces quickly."""
    store = etcd.store(timeout=1.0, retry_seconds=1.0)
    token = ensure_admin_token(store, tmp_path)
    # Token records are cached so auth keeps working while etcd is down.
    app = create_app(store, heartbeat_seconds=0.5, token_cache_seconds=60)
    with serving(app) as url, httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"},
                                           timeout=15) as client:
        yield client, store
    store.close()


def test_etcd_down_is_503_and_changes_nothing_then_recovers(
        private_api: tuple[httpx.Client, Store], etcd: EtcdServer) -> None:
    """With etcd stopped, reads and writes are 503 problems and readyz fails; after restart all works."""
    api, _ = private_api
    assert api.post("/v1/plans", json=PLAN).status_code == 201
    etcd.stop()
    for resp in (api.get("/v1/plans/s1"), api.post("/v1/plans", json=PLAN | {"metadata": {"name": "s2"}})):
        assert resp.status_code == 503, resp.text
        assert resp.headers["content-type"].startswith("application/problem+json")
        assert resp.json()["detail"] == "the store (etcd) is unreachable; retry later"
    assert api.get("/readyz").status_code == 503
    assert api.get("/healthz").status_code == 200
    etcd.start()
    # The clients' gRPC channels reconnect within their backoff (at most ~1 s): converged soon after.
    wait_for(lambda: api.get("/readyz").status_code == 200, timeout=10, what="readyz after etcd restarted")
    listed = wait_for(lambda: (r := api.get("/v1/plans")).status_code == 200 and r, timeout=10,
                      what="the plans list after etcd restarted")
    assert listed and [o["metadata"]["name"] for o in listed.json()["items"]] == ["s1"]


def test_watch_from_a_compacted_revision_tells_the_client_to_relist(
        private_api: tuple[httpx.Client, Store]) -> None:
    """A watch resuming before etcd's compaction point gets a `compacted` event and the stream ends."""
    api, store = private_api
    start = api.get("/v1/plans").json()["metadata"]["resourceVersion"]
    for n in range(3):
        api.post("/v1/plans", json=PLAN | {"metadata": {"name": f"s{n}"}})
    store.compact(store.revision())
    lines = []
    with api.stream("GET", "/v1/watch", params={"kinds": "plans", "resourceVersion": start}) as resp:
        lines = list(resp.iter_lines())
    assert "event: compacted" in lines
    data = next(json.loads(line[6:]) for line in lines if line.startswith("data: "))
    assert data["type"] == "COMPACTED" and data["compactRevision"] > int(start)
