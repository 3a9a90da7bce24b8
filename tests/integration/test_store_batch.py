"""reconcile.objects.Batch against a real etcd: several object writes in one transaction, all or nothing."""

from __future__ import annotations

from typing import Any

import pytest

from reconcile import keys
from reconcile.errors import NotFound
from reconcile.etcd import ModIs
from reconcile.objects import Store, encode_spec
from specs import Plan


def plan(name: str, **spec: Any) -> Plan:
    return Plan.model_validate({"kind": "Plan", "metadata": {"name": name},
                                "spec": {"vcpus": 1, "memoryMiB": 512, "diskGiB": 10,
                                         "price": {"amount": "4.99", "currency": "EUR"}, **spec}})


def test_a_batch_creates_several_objects_at_once(store: Store) -> None:
    """Two creates commit together; each gets metadata defaults and the transaction's revision."""
    batch = store.batch()
    a, b = batch.create(plan("a")), batch.create(plan("b"))
    res = batch.commit()
    assert res.succeeded
    for obj in (a, b):
        got = store.get(Plan, obj.name)
        assert got.metadata.uid == obj.metadata.uid and got.metadata.uid
        assert got.metadata.generation == 1 and got.metadata.creationTimestamp is not None
        assert obj.metadata.resourceVersion == str(res.revision) == got.metadata.resourceVersion


def test_a_failed_compare_writes_nothing(store: Store) -> None:
    """A taken name (or any failing compare) leaves every object of the batch unwritten."""
    store.create(plan("taken"))
    batch = store.batch()
    batch.create(plan("fresh"))
    batch.create(plan("taken"))
    assert not batch.commit().succeeded
    with pytest.raises(NotFound):
        store.get(Plan, "fresh")
    other = store.batch().require(ModIs(keys.spec_key(Plan, "taken", store.root), 1))
    other.create(plan("fresh"))
    assert not other.commit().succeeded


def test_one_byte_form_for_a_spec(store: Store) -> None:
    """A batch and Store.create write the same bytes for the same object, and update reads them back."""
    created = store.create(plan("x"))
    kv = store.kv_get(keys.spec_key(Plan, "x", store.root))
    assert kv is not None and kv.value == encode_spec(created)
    batch = store.batch().expect(created)
    batch.put_spec(created.model_copy(update={"spec": created.spec.model_copy(update={"vcpus": 2})}))
    assert batch.commit().succeeded
    assert store.get(Plan, "x").spec.vcpus == 2
