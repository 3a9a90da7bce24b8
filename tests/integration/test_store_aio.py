"""The asyncio store on a real etcd: the same operations and errors as the blocking Store."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from reconcile.aio import AsyncStore
from reconcile.errors import AlreadyExists, Conflict, NotFound
from reconcile.etcd_server import EtcdServer
from reconcile.objects import Store
from specs import Plan
from tests.integration.test_store import plan, with_vcpus


def test_objects_round_trip_with_the_same_rules_as_the_blocking_store(store: Store) -> None:
    """create/get/list/update/delete through AsyncStore; errors are the store's; both stores agree."""

    async def scenario() -> None:
        astore = AsyncStore(store)
        try:
            created = await astore.create(plan("a1", labels={"tier": "x"}))
            assert created.metadata.generation == 1 and created.metadata.uid
            assert await astore.get(Plan, "a1") == store.get(Plan, "a1") == created
            with pytest.raises(AlreadyExists):
                await astore.create(plan("a1"))
            with pytest.raises(NotFound):
                await astore.get(Plan, "missing")

            updated = await astore.update(with_vcpus(created, 2))
            assert updated.metadata.generation == 2 and store.get(Plan, "a1").spec.vcpus == 2
            with pytest.raises(Conflict):  # the old version is stale now
                await astore.update(with_vcpus(created, 3))
            # A change made through the blocking store is seen, and the stale one still refused.
            store.update(with_vcpus(store.get(Plan, "a1"), 4))
            with pytest.raises(Conflict):
                await astore.update(with_vcpus(updated, 5))
            # The version this process just wrote is remembered: no read, same object.
            spec_at = await astore.get_spec_at(Plan, "a1", (await astore.get(Plan, "a1")).metadata.resourceVersion)
            assert spec_at.spec.vcpus == 4

            await astore.create(plan("a2"))
            listed = await astore.list(Plan, "tier=x")
            assert [p.name for p in listed.items] == ["a1"] and listed.revision >= int(spec_at.metadata.resourceVersion
                                                                                         or 0)
            assert await astore.delete(Plan, "a2") is None
            with pytest.raises(NotFound):
                await astore.get(Plan, "a2")
            kvs, _ = await astore.kv_range(store.root + "/specs/plans/")
            assert [kv.key.rsplit("/", 1)[1] for kv in kvs] == ["a1"]
        finally:
            await astore.close()

    asyncio.run(scenario())


def test_a_call_while_etcd_restarts_is_retried_until_it_answers(etcd: EtcdServer) -> None:
    """etcd down for a moment: the call waits within the retry budget and succeeds, as the blocking store's does."""
    store = etcd.store(retry_seconds=20)
    try:
        store.create(plan("r1"))

        async def scenario() -> None:
            astore = AsyncStore(store)
            try:
                current = await astore.get(Plan, "r1")
                etcd.stop()
                restart = threading.Timer(1.0, etcd.start)
                restart.start()
                t0 = time.monotonic()
                again = await astore.update(with_vcpus(current, 3))
                assert again.spec.vcpus == 3 and time.monotonic() - t0 >= 0.5
                assert (await astore.get(Plan, "r1")).spec.vcpus == 3
                restart.join()
            finally:
                await astore.close()

        asyncio.run(scenario())
    finally:
        store.close()
