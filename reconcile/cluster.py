"""The cluster id: created once in etcd, read by every process of the cluster.

Every domain's metadata and every storage pool carries it, so an agent never touches what
another Hostplane cluster (another etcd, a wiped prefix, a typo in `--etcd`) created on the
same libvirt. It must never change once written: creation is a compare-and-put on absence.
"""

from __future__ import annotations

import uuid

from reconcile import keys
from reconcile.store import ModIs, Put, Store


def ensure_cluster_id(store: Store) -> str:
    """The cluster id under `<root>/meta/cluster-id`, created (random) if absent; races agree on one."""
    key = keys.cluster_id_key(store.root)
    kv = store.kv_get(key)
    if kv is not None:
        return kv.value.decode()
    fresh = uuid.uuid4().hex
    res = store.txn([ModIs(key, 0)], [Put(key, fresh.encode())])
    if res.succeeded:
        return fresh
    kv = store.kv_get(key)
    assert kv is not None  # someone else created it between our read and our put
    return kv.value.decode()
