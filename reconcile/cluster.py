"""The cluster id: created once in etcd, read by every process of the cluster.

Every domain's metadata and every storage pool carries it, so an agent never touches what
another Hostplane cluster (another etcd, a wiped prefix, a typo in `--etcd`) created on the
same libvirt. It must never change once written: creation is a compare-and-put on absence,
done by the controllers or `hostplane up` (a node's etcd role may only read it).
"""

from __future__ import annotations

import threading
import uuid

from reconcile import keys
from reconcile.errors import PermissionDenied
from reconcile.etcd import ModIs, Put
from reconcile.objects import Store


def read_cluster_id(store: Store) -> str | None:
    kv = store.kv_get(keys.cluster_id_key(store.root))
    return kv.value.decode() if kv is not None else None


def ensure_cluster_id(store: Store) -> str:
    """The cluster id under `<root>/meta/cluster-id`, created (random) if absent; races agree on one."""
    found = read_cluster_id(store)
    if found is not None:
        return found
    key = keys.cluster_id_key(store.root)
    fresh = uuid.uuid4().hex
    if store.txn([ModIs(key, 0)], [Put(key, fresh.encode())]).succeeded:
        return fresh
    found = read_cluster_id(store)
    assert found is not None  # someone else created it between our read and our put
    return found


def await_cluster_id(store: Store, stop: threading.Event, *, interval: float = 0.5) -> str | None:
    """Create the id if this identity may, else wait for the controllers to; None if `stop` is set first."""
    try:
        return ensure_cluster_id(store)
    except PermissionDenied:
        pass
    while not stop.wait(interval):
        found = read_cluster_id(store)
        if found is not None:
            return found
    return None
