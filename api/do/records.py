"""What the DigitalOcean API keeps beside Hostplane's kinds, in etcd under `do/` (reconcile.keys).

    do/next-id                          the last integer id handed out (one sequence for all)
    do/ids/<uid>                        an object's id, by uid (a droplet's or an image's)
    do/droplets/<customer>/<id>         {"vps", "uid", "tags", "region"}: the customer's droplet ids
    do/keys/<customer>/<id>             {"id", "name", "public_key", "fingerprint"}
    do/actions/<customer>/<id>          an action record (api.do.mapping.action_progress decides it)

Ids are allocated with a compare-and-swap on the counter, together with the records that use
them, so two API processes never hand out one id twice. Everything is per customer: another
customer's id is simply not under the caller's prefix. This module must never change a kind.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from reconcile import keys
from reconcile.errors import Conflict
from reconcile.store import KV, Get, ModIs, Put, Store

ATTEMPTS = 10
BATCH = 40  # ids per transaction: 3 operations each, under etcd's default of 128 per transaction


def _load(kv: KV) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(kv.value)
    return out


def _dump(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def allocate(store: Store, count: int, puts_for: Any) -> list[int]:
    """`count` fresh ids, written with `puts_for(ids) -> (compares, puts)` in the same transaction."""
    counter = keys.do_counter_key(store.root)
    for _ in range(ATTEMPTS):
        kv = store.kv_get(counter)
        last = int(kv.value) if kv is not None else 0
        ids = list(range(last + 1, last + 1 + count))
        compares, puts = puts_for(ids)
        res = store.txn([ModIs(counter, kv.mod_revision if kv is not None else 0), *compares],
                        [Put(counter, str(ids[-1] if ids else last).encode()), *puts])
        if res.succeeded:
            return ids
    raise Conflict("ids kept being taken while this request allocated one; retry")


def ids_by_uid(store: Store, uids: Iterable[str]) -> dict[str, int]:
    wanted = list(dict.fromkeys(uids))
    if not wanted:
        return {}
    res = store.txn([], [Get(keys.do_id_key(u, store.root)) for u in wanted])
    return {u: int(kvs[0].value) for u, kvs in zip(wanted, res.gets, strict=True) if kvs}


def image_ids(store: Store, uids: list[str]) -> dict[str, int]:
    """Integer ids for images (by uid), allocating the missing ones."""
    for _ in range(ATTEMPTS):
        have = ids_by_uid(store, uids)
        missing = [u for u in uids if u not in have]
        if not missing:
            return have
        try:
            allocate(store, len(missing), lambda ids, m=missing: (
                [ModIs(keys.do_id_key(u, store.root), 0) for u in m],
                [Put(keys.do_id_key(u, store.root), str(i).encode()) for u, i in zip(m, ids, strict=True)]))
        except Conflict:
            continue
    return ids_by_uid(store, uids)


def droplets(store: Store, customer: str) -> dict[int, dict[str, Any]]:
    """The customer's droplet records: id -> {"vps", "uid", "tags", "region"}."""
    kvs, _ = store.kv_range(keys.do_droplet_prefix(customer, store.root))
    return {int(keys.last_segment(kv.key)): _load(kv) for kv in kvs}


def droplet(store: Store, customer: str, droplet_id: int) -> dict[str, Any] | None:
    kv = store.kv_get(keys.do_droplet_key(customer, droplet_id, store.root))
    return _load(kv) if kv is not None else None


def add_droplets(store: Store, customer: str, servers: list[tuple[str, str]], *, tags: list[str] | None = None,
                 region: str | None = None) -> dict[int, dict[str, Any]]:
    """Ids for servers (name, uid) of `customer` that have none yet; returns all the customer's records
    (id -> {"vps", "uid", "tags", "region"}), as `droplets` does.

    Known ids come from one range read of the customer's records; new ones are written BATCH at a
    time (etcd caps the operations of one transaction)."""
    for _ in range(ATTEMPTS):
        recs = droplets(store, customer)
        have = {rec["uid"] for rec in recs.values()}
        missing = [(n, u) for n, u in servers if u not in have]
        if not missing:
            return recs

        def puts(ids: list[int], m: list[tuple[str, str]]) -> tuple[list[Any], list[Put]]:
            compares = [ModIs(keys.do_id_key(u, store.root), 0) for _, u in m]
            out = []
            for (name, uid), i in zip(m, ids, strict=True):
                out.append(Put(keys.do_id_key(uid, store.root), str(i).encode()))
                out.append(Put(keys.do_droplet_key(customer, i, store.root),
                               _dump({"vps": name, "uid": uid, "tags": tags or [], "region": region})))
            return compares, out

        try:
            for at in range(0, len(missing), BATCH):
                chunk = missing[at:at + BATCH]
                allocate(store, len(chunk), lambda ids, c=chunk: puts(ids, c))
        except Conflict:
            continue
    return droplets(store, customer)


def forget_droplet(store: Store, customer: str, droplet_id: int, uid: str) -> None:
    store.kv_delete(keys.do_droplet_key(customer, droplet_id, store.root))
    store.kv_delete(keys.do_id_key(uid, store.root))


# ------------------------------------------------------------------ SSH keys

def ssh_keys(store: Store, customer: str) -> list[dict[str, Any]]:
    kvs, _ = store.kv_range(keys.do_ssh_key_prefix(customer, store.root))
    return [_load(kv) for kv in kvs]


def add_ssh_key(store: Store, customer: str, name: str, public_key: str, fingerprint: str) -> dict[str, Any] | None:
    """The new key record, or None when the customer already has a key with this fingerprint."""
    if any(k["fingerprint"] == fingerprint for k in ssh_keys(store, customer)):
        return None
    doc: dict[str, Any] = {}

    def puts(ids: list[int]) -> tuple[list[Any], list[Put]]:
        doc.update({"id": ids[0], "name": name, "public_key": public_key, "fingerprint": fingerprint})
        return [], [Put(keys.do_ssh_key_key(customer, ids[0], store.root), _dump(doc))]

    allocate(store, 1, puts)
    return doc


def remove_ssh_key(store: Store, customer: str, key_id: int) -> bool:
    return store.kv_delete(keys.do_ssh_key_key(customer, key_id, store.root))


# ------------------------------------------------------------------ actions

def actions(store: Store, customer: str) -> list[tuple[KV, dict[str, Any]]]:
    kvs, _ = store.kv_range(keys.do_action_prefix(customer, store.root))
    return [(kv, _load(kv)) for kv in kvs]


def action(store: Store, customer: str, action_id: int) -> tuple[KV, dict[str, Any]] | None:
    kv = store.kv_get(keys.do_action_key(customer, action_id, store.root))
    return (kv, _load(kv)) if kv is not None else None


def add_action(store: Store, customer: str, doc: dict[str, Any]) -> dict[str, Any]:
    """Record an action; its id is allocated here (doc["id"] is set)."""
    def puts(ids: list[int]) -> tuple[list[Any], list[Put]]:
        doc["id"] = ids[0]
        return [], [Put(keys.do_action_key(customer, ids[0], store.root), _dump(doc))]

    allocate(store, 1, puts)
    return doc


def settle_action(store: Store, customer: str, kv: KV, doc: dict[str, Any]) -> bool:
    """Write a decided action over the record read as `kv` (compare-and-swap); False if it changed."""
    res = store.txn([ModIs(kv.key, kv.mod_revision)], [Put(kv.key, _dump(doc))])
    return res.succeeded
