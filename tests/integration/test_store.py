"""The typed store against a real etcd: objects, compare-and-swap, finalizers, status, limits."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from reconcile import keys
from reconcile.errors import AlreadyExists, Conflict, NotFound, TooLarge
from reconcile.etcd import MAX_VALUE_BYTES, Delete, Get, ModIs, Put, Rider, UnchangedSince, decode
from reconcile.objects import Store
from specs import Plan


def plan(name: str, *, vcpus: int = 1, labels: dict[str, str] | None = None, **meta: Any) -> Plan:
    return Plan.model_validate({
        "kind": "Plan",
        "metadata": {"name": name, "labels": labels or {}, **meta},
        "spec": {"vcpus": vcpus, "memoryMiB": 512, "diskGiB": 10,
                 "price": {"amount": "4.99", "currency": "EUR"}},
    })


def with_vcpus(obj: Plan, vcpus: int) -> Plan:
    return obj.model_copy(update={"spec": obj.spec.model_copy(update={"vcpus": vcpus})})


def test_create_then_get_returns_the_same_object(store: Store) -> None:
    """create fills uid, generation 1, creationTimestamp and resourceVersion; get returns the same."""
    created = store.create(plan("small"))
    assert created.metadata.uid and created.metadata.generation == 1
    assert created.metadata.creationTimestamp is not None
    assert created.metadata.resourceVersion is not None
    assert store.get(Plan, "small") == created


def test_create_of_a_taken_name_is_already_exists_and_changes_nothing(store: Store) -> None:
    """A second create of the same name raises AlreadyExists and leaves the first object as it was."""
    first = store.create(plan("small"))
    with pytest.raises(AlreadyExists):
        store.create(plan("small", vcpus=8))
    assert store.get(Plan, "small") == first


def test_get_of_a_missing_object_is_not_found(store: Store) -> None:
    """get of a name never created raises NotFound."""
    with pytest.raises(NotFound):
        store.get(Plan, "nope")


def test_update_bumps_generation_only_on_spec_change(store: Store) -> None:
    """A spec change moves generation and resourceVersion; a label change moves only resourceVersion."""
    created = store.create(plan("small"))
    changed = store.update(with_vcpus(created, 2))
    assert changed.metadata.generation == 2
    assert int(changed.metadata.resourceVersion or 0) > int(created.metadata.resourceVersion or 0)
    relabelled = store.update(changed.model_copy(update={
        "metadata": changed.metadata.model_copy(update={"labels": {"tier": "a"}})}))
    assert relabelled.metadata.generation == 2
    assert relabelled.metadata.resourceVersion != changed.metadata.resourceVersion
    assert store.get(Plan, "small") == relabelled


def test_update_of_an_unchanged_object_writes_nothing(store: Store) -> None:
    """Updating with the object as read is a no-op: the etcd revision does not move."""
    created = store.create(plan("small"))
    before = store.revision()
    assert store.update(created) == created
    assert store.revision() == before


def test_update_keeps_uid_and_creation_time_from_the_stored_object(store: Store) -> None:
    """A client cannot overwrite uid, creationTimestamp or deletionTimestamp through update."""
    created = store.create(plan("small"))
    forged = created.model_copy(update={"metadata": created.metadata.model_copy(update={"uid": "forged"})})
    updated = store.update(with_vcpus(forged, 3))
    assert updated.metadata.uid == created.metadata.uid
    assert store.get(Plan, "small").metadata.creationTimestamp == created.metadata.creationTimestamp


def test_update_with_a_stale_resource_version_is_conflict(store: Store) -> None:
    """An update carrying an old resourceVersion raises Conflict and leaves the newer write in place."""
    created = store.create(plan("small"))
    newer = store.update(with_vcpus(created, 2))
    with pytest.raises(Conflict):
        store.update(with_vcpus(created, 4))
    assert store.get(Plan, "small") == newer


def test_update_of_a_missing_object_is_not_found(store: Store) -> None:
    """update never creates: a name that does not exist raises NotFound."""
    with pytest.raises(NotFound):
        store.update(plan("ghost"))


def test_two_writers_racing_from_the_same_read_exactly_one_wins(store: Store) -> None:
    """Two threads updating the same read at once: one succeeds, the other gets Conflict, every time."""
    store.create(plan("race"))
    for round_ in range(15):
        read = store.get(Plan, "race")
        barrier = threading.Barrier(2)
        outcomes: list[str] = []

        def write(vcpus: int, read: Plan = read, barrier: threading.Barrier = barrier,
                  outcomes: list[str] = outcomes) -> None:
            barrier.wait()
            try:
                store.update(with_vcpus(read, vcpus))
                result = f"won:{vcpus}"
            except Conflict:
                result = "conflict"
            outcomes.append(result)  # list.append is atomic

        vals = (100 + 2 * round_, 101 + 2 * round_)
        threads = [threading.Thread(target=write, args=(v,)) for v in vals]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert sorted(o.split(":")[0] for o in outcomes) == ["conflict", "won"], outcomes
        winner = int(next(o for o in outcomes if o.startswith("won")).split(":")[1])
        assert store.get(Plan, "race").spec.vcpus == winner


def test_list_by_kind_and_label_selector(store: Store) -> None:
    """list returns only the kind asked for, filtered by equality, inequality and existence selectors."""
    store.create(plan("a", labels={"tier": "small", "region": "eu"}))
    store.create(plan("b", labels={"tier": "large", "region": "eu"}))
    store.create(plan("c", labels={"tier": "small"}))

    def names(sel: Any) -> list[str]:
        return [p.name for p in store.list(Plan, sel).items]

    assert names(None) == ["a", "b", "c"]
    assert names("tier=small") == ["a", "c"]
    assert names({"tier": "small", "region": "eu"}) == ["a"]
    assert names("tier!=small") == ["b"]
    assert names("region") == ["a", "b"]
    assert names("!region") == ["c"]
    assert names("tier=none") == []


def test_list_fills_status_and_revision(store: Store) -> None:
    """list attaches each object's status and returns the revision it read at."""
    store.create(plan("a"))
    store.put_status(Plan, "a", {"subscribers": 3})
    result = store.list(Plan)
    assert result.items[0].status == {"subscribers": 3}
    assert result.revision == store.revision()


def test_list_does_not_see_names_sharing_a_prefix_of_another_kind(store: Store) -> None:
    """Objects under another kind's prefix (or another root) never show up in a list."""
    from specs import Node

    node = Node.model_validate({"kind": "Node", "metadata": {"name": "n1"},
                                "spec": {"capacity": {"vcpus": 4, "memoryMiB": 4096, "diskGiB": 50}}})
    store.create(node)
    store.create(plan("p"))
    assert [p.name for p in store.list(Plan).items] == ["p"]
    assert [n.name for n in store.list(Node).items] == ["n1"]


def test_delete_without_finalizers_removes_spec_and_status(store: Store) -> None:
    """delete of an object without finalizers removes both its spec and status keys."""
    store.create(plan("gone"))
    store.put_status(Plan, "gone", {"x": 1})
    assert store.delete(Plan, "gone") is None
    with pytest.raises(NotFound):
        store.get(Plan, "gone")
    assert store.kv_get(keys.status_key(Plan, "gone", store.root)) is None


def test_delete_with_a_stale_resource_version_is_conflict(store: Store) -> None:
    """delete with resource_version of an older read raises Conflict and deletes nothing."""
    created = store.create(plan("keep"))
    store.update(with_vcpus(created, 2))
    with pytest.raises(Conflict):
        store.delete(Plan, "keep", resource_version=created.metadata.resourceVersion)
    assert store.get(Plan, "keep").spec.vcpus == 2


def test_delete_of_a_missing_object_is_not_found(store: Store) -> None:
    """delete of a name that does not exist raises NotFound."""
    with pytest.raises(NotFound):
        store.delete(Plan, "nope")


def test_finalizers_mark_then_last_removal_deletes(store: Store) -> None:
    """delete with finalizers only marks deletionTimestamp; removing the last finalizer deletes it."""
    store.create(plan("fin", finalizers=["a.hostplane.io/x", "b.hostplane.io/y"]))
    marked = store.delete(Plan, "fin")
    assert marked is not None and marked.metadata.deletionTimestamp is not None
    again = store.delete(Plan, "fin")
    assert again is not None and again.metadata.deletionTimestamp == marked.metadata.deletionTimestamp

    current = store.get(Plan, "fin")
    assert current.metadata.deletionTimestamp == marked.metadata.deletionTimestamp
    one_left = store.update(current.model_copy(update={
        "metadata": current.metadata.model_copy(update={"finalizers": ["b.hostplane.io/y"]})}))
    assert store.get(Plan, "fin").metadata.finalizers == ["b.hostplane.io/y"]
    # A client cannot clear the deletion mark through update.
    cleared = one_left.model_copy(update={
        "metadata": one_left.metadata.model_copy(update={"deletionTimestamp": None})})
    assert store.update(cleared).metadata.deletionTimestamp is not None

    last = store.get(Plan, "fin")
    store.update(last.model_copy(update={"metadata": last.metadata.model_copy(update={"finalizers": []})}))
    with pytest.raises(NotFound):
        store.get(Plan, "fin")


def test_put_status_writes_only_when_changed(store: Store) -> None:
    """put_status returns True and moves the revision on a change, False and no write otherwise."""
    store.create(plan("s"))
    assert store.put_status(Plan, "s", {"n": 1}) is True
    rev = store.revision()
    assert store.put_status(Plan, "s", {"n": 1}) is False
    assert store.revision() == rev
    assert store.put_status(Plan, "s", {"n": 2}) is True
    assert store.get(Plan, "s").status == {"n": 2}


def test_put_status_leaves_spec_and_resource_version_alone(store: Store) -> None:
    """Status is a separate key: writing it does not change the object's resourceVersion."""
    created = store.create(plan("s"))
    store.put_status(Plan, "s", {"n": 1})
    assert store.get(Plan, "s").metadata.resourceVersion == created.metadata.resourceVersion


def test_put_status_of_a_missing_object_is_refused(store: Store) -> None:
    """put_status for an object that does not exist raises NotFound and writes no orphan key."""
    with pytest.raises(NotFound):
        store.put_status(Plan, "ghost", {"n": 1})
    assert store.kv_get(keys.status_key(Plan, "ghost", store.root)) is None


def test_too_large_object_is_refused_and_changes_nothing(store: Store) -> None:
    """An object or status bigger than etcd accepts raises TooLarge and nothing is written."""
    huge = plan("huge")
    huge = huge.model_copy(update={"spec": huge.spec.model_copy(update={"description": "x" * (MAX_VALUE_BYTES + 1)})})
    rev = store.revision()
    with pytest.raises(TooLarge):
        store.create(huge)
    store.create(plan("small"))
    with pytest.raises(TooLarge):
        store.put_status(Plan, "small", {"blob": "y" * (MAX_VALUE_BYTES + 1)})
    assert store.revision() == rev + 1
    with pytest.raises(TooLarge):
        store.kv_put(store.root + "/raw", b"z" * (MAX_VALUE_BYTES + 1))


def test_stored_value_is_canonical_json_without_status_or_resource_version(store: Store) -> None:
    """The spec key holds the object minus status and resourceVersion (those live elsewhere)."""
    store.create(plan("k"))
    kv = store.kv_get(keys.spec_key(Plan, "k", store.root))
    assert kv is not None
    data = decode(kv.value)
    assert "status" not in data and "resourceVersion" not in data["metadata"]
    assert data["kind"] == "Plan"


def test_kv_put_compare_and_swap(store: Store) -> None:
    """kv_put with expect=0 creates only if absent; with a mod_revision only if unchanged."""
    key = store.root + "/raw/a"
    rev = store.kv_put(key, b"1", expect=0)
    with pytest.raises(AlreadyExists):
        store.kv_put(key, b"2", expect=0)
    rev2 = store.kv_put(key, b"2", expect=rev)
    with pytest.raises(Conflict):
        store.kv_put(key, b"3", expect=rev)
    kv = store.kv_get(key)
    assert kv is not None and kv.value == b"2" and kv.mod_revision == rev2


def test_kv_delete_and_prefix_delete(store: Store) -> None:
    """kv_delete reports whether the key existed; prefix delete removes every key under it."""
    base = store.root + "/raw/"
    for i in range(3):
        store.kv_put(f"{base}{i}", b"v")
    assert store.kv_delete(base + "0") is True
    assert store.kv_delete(base + "0") is False
    assert store.kv_delete(base, prefix=True) is True
    assert store.kv_range(base)[0] == []


def test_kv_delete_with_a_stale_expectation_is_conflict(store: Store) -> None:
    """kv_delete with expect of an older mod_revision raises Conflict and keeps the key."""
    key = store.root + "/raw/d"
    old = store.kv_put(key, b"1")
    store.kv_put(key, b"2")
    with pytest.raises(Conflict):
        store.kv_delete(key, expect=old)
    assert store.kv_get(key) is not None


def test_txn_runs_success_or_failure_branch(store: Store) -> None:
    """txn applies the success ops when every compare holds, else the failure ops, atomically."""
    a, b = store.root + "/raw/a", store.root + "/raw/b"
    res = store.txn([ModIs(a, 0)], [Put(a, b"1"), Put(b, b"1")], [Get(a)])
    assert res.succeeded
    res = store.txn([ModIs(a, 0)], [Put(a, b"2")], [Get(a), Delete(b)])
    assert not res.succeeded and res.gets[0][0].value == b"1"
    assert store.kv_get(b) is None


def test_lease_grant_refresh_and_expiry(store: Store) -> None:
    """A key on a lease lives while refreshed; after the TTL it is gone and refresh says NotFound."""
    import time

    lease = store.grant_lease(1)
    key = store.root + "/leased"
    store.kv_put(key, b"alive", lease=lease)
    assert store.refresh_lease(lease) >= 1
    assert store.kv_get(key) is not None
    deadline = time.monotonic() + 8
    while store.kv_get(key) is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert store.kv_get(key) is None
    with pytest.raises(NotFound):
        store.refresh_lease(lease)


def test_revoked_lease_deletes_its_keys(store: Store) -> None:
    """revoke_lease removes the keys bound to the lease at once."""
    lease = store.grant_lease(30)
    key = store.root + "/leased"
    store.kv_put(key, b"v", lease=lease)
    store.revoke_lease(lease)
    assert store.kv_get(key) is None


def test_update_through_another_store_instance_sees_the_conflict(store: Store) -> None:
    """A second process's write is noticed: an update from a stale read through any Store is Conflict."""
    other = Store(store.conn, root=store.root)
    try:
        mine = store.create(plan("shared"))
        theirs = other.update(with_vcpus(other.get(Plan, "shared"), 5))
        with pytest.raises(Conflict):
            store.update(with_vcpus(mine, 6))
        # A fresh read through the first store then updates fine.
        again = store.update(with_vcpus(store.get(Plan, "shared"), 7))
        assert int(again.metadata.resourceVersion or 0) > int(theirs.metadata.resourceVersion or 0)
        assert other.get(Plan, "shared").spec.vcpus == 7
    finally:
        other.close()


def test_update_recovers_when_the_remembered_value_is_wrong(store: Store) -> None:
    """If the store's remembered bytes for a revision are wrong, update re-reads instead of failing."""
    created = store.create(plan("mem"))
    key = keys.spec_key(Plan, "mem", store.root)
    store._remember(key, int(created.metadata.resourceVersion or 0), b'{"metadata":{}}')
    updated = store.update(with_vcpus(created, 3))
    assert updated.metadata.generation == 2 and updated.metadata.uid == created.metadata.uid
    assert store.get(Plan, "mem").spec.vcpus == 3


def test_update_returns_the_current_status(store: Store) -> None:
    """update's result carries the object's stored status, not whatever the caller passed in."""
    created = store.create(plan("st"))
    store.put_status(Plan, "st", {"n": 1})
    forged = created.model_copy(update={"status": {"n": 999}})
    assert store.update(with_vcpus(forged, 2)).status == {"n": 1}
    assert store.update(store.get(Plan, "st")).status == {"n": 1}


def test_a_corrupt_stored_value_is_a_store_error_naming_the_key(store: Store) -> None:
    """A spec key holding something that is not a valid object raises StoreError with the key, not NotFound."""
    from reconcile.errors import StoreError

    key = keys.spec_key(Plan, "bad", store.root)
    store.kv_put(key, b'{"kind": "Plan", "metadata": {"name": "bad"}, "spec": {"vcpus": 0}}')
    for call in (lambda: store.get(Plan, "bad"), lambda: store.list(Plan)):
        with pytest.raises(StoreError, match="stored value is not a valid Plan") as info:
            call()
        assert key in str(info.value) and not isinstance(info.value, NotFound)


def test_unchanged_update_from_a_stale_read_is_conflict(store: Store) -> None:
    """Re-sending an object as read after someone else changed it is Conflict, not a silent no-op."""
    other = Store(store.conn, root=store.root)
    try:
        mine = store.create(plan("stale"))
        other.update(with_vcpus(other.get(Plan, "stale"), 9))
        with pytest.raises(Conflict):
            store.update(mine)
        with pytest.raises(Conflict):
            other.update(mine)
        assert store.get(Plan, "stale").spec.vcpus == 9
    finally:
        other.close()


def test_get_spec_at_a_remembered_version_reads_nothing_and_stays_safe(store: Store) -> None:
    """A read-modify-write pinned to the version this store last wrote skips the read; the update
    still compares that version, so a change made elsewhere in between is a Conflict."""
    created = store.create(plan("spec-at"))
    rv = created.metadata.resourceVersion
    other = Store(store.conn, root=store.root)
    try:
        seen = store.get_spec_at(Plan, "spec-at", rv)
        assert seen.spec == created.spec and seen.metadata.resourceVersion == rv
        other.update(with_vcpus(other.get(Plan, "spec-at"), created.spec.vcpus + 1))
        # Still the remembered copy (nothing read), but writing it over the newer version fails.
        assert store.get_spec_at(Plan, "spec-at", rv).spec.vcpus == created.spec.vcpus
        with pytest.raises(Conflict):
            store.update(seen)
        # Any other version is read from etcd, as `get` would.
        fresh = store.get_spec_at(Plan, "spec-at", "1")
        assert fresh.spec.vcpus == created.spec.vcpus + 1
    finally:
        other.close()


def test_a_rider_lands_with_the_write_or_not_at_all(store: Store) -> None:
    """Puts riding on create/update commit in the write's own transaction; no write, no rider."""
    ride = Rider([Put(store.root + "/audit/r1", b"{}")])
    created = store.create(plan("rider"), rider=ride)
    assert ride.written
    kv = store.kv_get(store.root + "/audit/r1")
    assert kv is not None and str(kv.mod_revision) == created.metadata.resourceVersion
    unchanged = Rider([Put(store.root + "/audit/r2", b"{}")])
    store.update(created, rider=unchanged)  # nothing to write
    assert not unchanged.written and store.kv_get(store.root + "/audit/r2") is None
    refused = Rider([Put(store.root + "/audit/r3", b"{}")])
    with pytest.raises(AlreadyExists):
        store.create(plan("rider"), rider=refused)
    assert not refused.written and store.kv_get(store.root + "/audit/r3") is None
    changed = Rider([Put(store.root + "/audit/r4", b"{}")])
    updated = store.update(with_vcpus(created, 3), rider=changed)
    kv = store.kv_get(store.root + "/audit/r4")
    assert changed.written and kv is not None and str(kv.mod_revision) == updated.metadata.resourceVersion


def test_unchanged_since_compares_a_whole_prefix(store: Store) -> None:
    """UnchangedSince holds while no key under the prefix is written after the revision, on an empty prefix too."""
    prefix = store.root + "/probe/"
    assert store.txn([UnchangedSince(prefix, store.revision())], []).succeeded
    store.kv_put(prefix + "a", b"1")
    seen = store.revision()
    store.kv_put(store.root + "/elsewhere", b"x")
    assert store.txn([UnchangedSince(prefix, seen)], []).succeeded
    store.kv_put(prefix + "b", b"2")
    assert not store.txn([UnchangedSince(prefix, seen)], []).succeeded
    assert store.txn([UnchangedSince(prefix, store.revision())], []).succeeded
