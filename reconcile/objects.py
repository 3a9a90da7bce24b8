"""Typed objects over the etcd transport: the kinds of `specs` as stored documents.

`Store` adds to `reconcile.etcd.Etcd` the object API: `get`, `list`, `create`, `update`,
`delete`, `put_status`, with `metadata.resourceVersion` = the spec key's etcd `mod_revision`.
It owns the ONE encoder of stored documents, the metadata defaults of a new object (uid,
generation, creationTimestamp), compare-and-swap, finalizers and status, a cache of the spec
values it last read or wrote, and `Batch`: several object creates and writes (with compares)
committed in one transaction, so no module outside `reconcile/` builds etcd operations or
spec documents by hand.

This module must never decide anything about hosting: it stores.
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, Self, TypeVar

import pydantic_core
from pydantic import TypeAdapter, ValidationError

from reconcile import keys
from reconcile.errors import (
    Conflict,
    NotFound,
    StoreError,
)
from reconcile.etcd import (
    KV,
    Compare,
    CreatedAt,
    Delete,
    Etcd,
    Get,
    ModIs,
    Op,
    Operation,
    Put,
    Rider,
    TxnResult,
    ValueIs,
    _rode,
    decode,
    encode,
)
from reconcile.selector import Selector, matches, parse_selector
from specs.kinds import Resource
from specs.meta import ObjectMeta

R = TypeVar("R", bound=Resource)
T = TypeVar("T")

# Bounds of the remembered spec values (see Store._seen): small values only, so that the
# extra value compare in update's transaction stays well inside etcd's request limit.
_SEEN_VALUE_MAX = 64 * 1024
_SEEN_TOTAL_MAX = 64 * 1024 * 1024

_STATUS_ADAPTERS: dict[type[Resource], TypeAdapter[Any]] = {}


@dataclass(frozen=True)
class _Seen:
    mod_revision: int
    value: bytes
    doc: dict[str, Any] | None  # decoded value when it was at hand; read-only


def _status_adapter(cls: type[Resource]) -> TypeAdapter[Any]:
    """Validator of a kind's status alone (its field type, e.g. `NodeStatus | None`)."""
    adapter = _STATUS_ADAPTERS.get(cls)
    if adapter is None:
        annotation: Any = cls.model_fields["status"].annotation
        adapter = _STATUS_ADAPTERS[cls] = TypeAdapter(annotation)
    return adapter


@dataclass
class ListResult(Generic[T]):
    items: list[T]
    revision: int


def _encode_doc(doc: dict[str, Any]) -> bytes:
    """An object's stored form: compact JSON in model field order, deterministic for a model.

    Spec values are compared only with bytes this store read or wrote itself, so they need not be
    key-sorted; pydantic's serializer is several times cheaper than `json.dumps` here.
    """
    return pydantic_core.to_json(doc)


def _now() -> datetime:
    return datetime.now(UTC)


def spec_document(obj: Resource) -> dict[str, Any]:
    """An object's stored document: metadata and spec, without status or resourceVersion."""
    data = obj.model_dump(mode="json", exclude={"status"}, exclude_none=True)
    data["metadata"].pop("resourceVersion", None)
    return data


def encode_spec(obj: Resource) -> bytes:
    """The one byte form of an object's stored document (every writer of a spec key uses it)."""
    return _encode_doc(spec_document(obj))


def encode_status(status: Any) -> bytes:
    """The one byte form of a status value (a model or its JSON document)."""
    if hasattr(status, "model_dump"):
        status = status.model_dump(mode="json", exclude_none=True)
    return encode(status)


def encode_value(value: Any) -> bytes:
    """The byte form of a typed value kept under a non-object key (desired domain, tombstone)."""
    return encode(value.model_dump(mode="json", exclude_none=True))


def with_new_meta(obj: R, now: datetime | None = None) -> R:
    """`obj` as a new object: uid, generation 1 and creationTimestamp set, no status or versions."""
    meta = obj.metadata.model_copy(update={
        "uid": obj.metadata.uid or str(uuid.uuid4()),
        "generation": 1,
        "creationTimestamp": obj.metadata.creationTimestamp or now or _now(),
        "deletionTimestamp": None,
        "resourceVersion": None,
    })
    return obj.model_copy(update={"metadata": meta, "status": None})


class Batch:
    """Several object creates and writes, with compares, committed in one etcd transaction.

    Build it with `store.batch()`, add compares (`require`, `expect`), object writes (`create`,
    `put_spec`, `put_status`, `remove`) and writes of other keys (`put`, `delete`), then
    `commit(fence)`. Objects are encoded by this module's one encoder; `create` applies the
    metadata defaults of a new object and compares that its name is free. Follow-ups added with
    `after` run with the revision once the transaction succeeded.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.compares: list[Compare] = []
        self.ops: list[Op] = []
        self.after: list[Callable[[int], None]] = []
        self._created: list[tuple[str, bytes, Resource]] = []

    def require(self, *compares: Compare) -> Self:
        self.compares.extend(compares)
        return self

    def expect(self, obj: Resource) -> Self:
        """Compare: the object's spec is still at its `metadata.resourceVersion` (absent: 0)."""
        key = keys.spec_key(type(obj), obj.name, self.store.root)
        self.compares.append(ModIs(key, int(obj.metadata.resourceVersion or 0)))
        return self

    def create(self, obj: R, *, now: datetime | None = None) -> R:
        """Create `obj` (its name must be free) with new metadata; returns the object as written."""
        new = with_new_meta(obj, now)
        key = keys.spec_key(type(new), new.name, self.store.root)
        value = encode_spec(new)
        self.compares.append(ModIs(key, 0))
        self.ops.append(Put(key, value))
        self._created.append((key, value, new))
        return new

    def put_spec(self, obj: Resource) -> Self:
        """Write the object's metadata and spec as they are (guard it with `expect`)."""
        self.ops.append(Put(keys.spec_key(type(obj), obj.name, self.store.root), encode_spec(obj)))
        return self

    def put_status(self, cls: type[Resource], name: str, status: Any) -> Self:
        self.ops.append(Put(keys.status_key(cls, name, self.store.root), encode_status(status)))
        return self

    def remove(self, cls: type[Resource], name: str) -> Self:
        """Delete the object's spec and status."""
        root = self.store.root
        self.ops.extend([Delete(keys.spec_key(cls, name, root)), Delete(keys.status_key(cls, name, root))])
        return self

    def put(self, key: str, value: bytes, lease: int | None = None) -> Self:
        self.ops.append(Put(key, value, lease))
        return self

    def delete(self, key: str) -> Self:
        self.ops.append(Delete(key))
        return self

    def commit(self, fence: Sequence[Compare] = (), failure: Sequence[Op] = ()) -> TxnResult:
        """One transaction: every compare (and `fence`) holds → every write; else `failure`'s reads.

        Created objects get the transaction's revision as `resourceVersion`; `after` follow-ups run."""
        res = self.store.txn([*fence, *self.compares], self.ops, failure)
        if res.succeeded:
            for key, value, obj in self._created:
                obj.metadata.resourceVersion = str(res.revision)
                self.store._remember(key, res.revision, value)
            for fn in self.after:
                fn(res.revision)
        return res



class Store(Etcd):
    """Typed objects in etcd. Thread-safe; one per process is plenty."""

    def _init_layer(self) -> None:
        # Spec values this store last read or wrote, by key: (mod_revision, bytes). It lets
        # `update` of an object read through this store skip re-reading it; the write still
        # compares both the revision and the bytes, so a stale entry can only cost a retry.
        self._seen: OrderedDict[str, _Seen] = OrderedDict()
        self._seen_bytes = 0
        self._seen_lock = threading.Lock()

    @staticmethod
    def _doc(obj: Resource) -> dict[str, Any]:
        return spec_document(obj)

    # The spec value is JSON written by this store from a validated model; parsing it with
    # pydantic's JSON validator in one step is several times cheaper than json.loads + validate.
    def _load(self, cls: type[R], spec: KV, status: KV | None) -> R:
        return self._load_raw(cls, spec.key, spec.value, spec.mod_revision,
                              None if status is None else status.value)

    def _load_raw(self, cls: type[R], key: str, value: bytes, mod_revision: int,
                  status: bytes | None) -> R:
        try:
            obj = cls.model_validate_json(value)
            if status is not None:
                obj.status = _status_adapter(cls).validate_json(status)
        except ValidationError as exc:
            # Written by something else or by an older model: say which key, never guess.
            raise StoreError(f"{key}: stored value is not a valid {cls.KIND}: {exc}") from exc
        obj.metadata.resourceVersion = str(mod_revision)
        self._remember(key, mod_revision, value)
        return obj

    def _remember(self, key: str, mod_revision: int, value: bytes,
                  doc: dict[str, Any] | None = None) -> None:
        """Note a spec value (and, if at hand, its decoded form, which must never be mutated)."""
        with self._seen_lock:
            old = self._seen.pop(key, None)
            if old is not None:
                self._seen_bytes -= len(old.value)
            if len(value) > _SEEN_VALUE_MAX:
                return
            self._seen[key] = _Seen(mod_revision, value, doc)
            self._seen_bytes += len(value)
            while self._seen_bytes > _SEEN_TOTAL_MAX and self._seen:
                _, dropped = self._seen.popitem(last=False)
                self._seen_bytes -= len(dropped.value)

    def _recall(self, key: str) -> _Seen | None:
        with self._seen_lock:
            return self._seen.get(key)

    def _forget(self, key: str) -> None:
        with self._seen_lock:
            old = self._seen.pop(key, None)
            if old is not None:
                self._seen_bytes -= len(old.value)

    def get(self, cls: type[R], name: str) -> R:
        return self._run(self._get_op(cls, name))

    def _get_op(self, cls: type[R], name: str) -> Operation[R]:
        skey, tkey = keys.spec_key(cls, name, self.root), keys.status_key(cls, name, self.root)
        res = yield from self._txn_op([], [Get(skey), Get(tkey)])
        if not res.gets[0]:
            self._forget(skey)
            raise NotFound(f"{cls.KIND} {name!r} not found")
        return self._load(cls, res.gets[0][0], res.gets[1][0] if res.gets[1] else None)

    def get_spec_at(self, cls: type[R], name: str, resource_version: str | None) -> R:
        """The object as of `resource_version` for a read-modify-write, without its status.

        When this store last read or wrote the object at exactly that version, nothing is read:
        an `update` of it compares that revision and those bytes, so a decision taken on this
        copy can only be written over the version it was taken on. Otherwise like `get`.
        """
        return self._run(self._get_spec_at_op(cls, name, resource_version))

    def _get_spec_at_op(self, cls: type[R], name: str, resource_version: str | None) -> Operation[R]:
        seen = self._recall(keys.spec_key(cls, name, self.root))
        if seen is None or resource_version is None or str(seen.mod_revision) != resource_version:
            return (yield from self._get_op(cls, name))
        try:
            obj = cls.model_validate_json(seen.value)
        except ValidationError:
            return (yield from self._get_op(cls, name))
        obj.metadata.resourceVersion = resource_version
        return obj

    def list(self, cls: type[R], selector: Selector | str | Mapping[str, str] | None = None,
             ) -> ListResult[R]:
        """All objects of a kind (with status), optionally filtered by labels, at one revision."""
        return self._run(self._list_op(cls, selector))

    def _list_op(self, cls: type[R], selector: Selector | str | Mapping[str, str] | None = None,
                 ) -> Operation[ListResult[R]]:
        sel = selector if isinstance(selector, tuple) else parse_selector(selector)
        resp = yield from self._txn_raw_op(
            [],
            [Get(keys.spec_prefix(cls, self.root), prefix=True),
             Get(keys.status_prefix(cls, self.root), prefix=True)],
        )
        specs, statuses = (r.response_range.kvs for r in resp.responses)
        status_by_name = {keys.last_segment(kv.key.decode()): kv.value for kv in statuses}
        items: list[R] = []
        for kv in specs:
            key = kv.key.decode()
            obj = self._load_raw(cls, key, kv.value, int(kv.mod_revision),
                                 status_by_name.get(keys.last_segment(key)))
            if matches(sel, obj.metadata.labels):
                items.append(obj)
        return ListResult(items, int(resp.header.revision))

    def create(self, obj: R, *, rider: Rider | None = None) -> R:
        """Create an object; AlreadyExists if the name is taken. Sets uid, generation, times.

        `rider`'s puts (an audit record) are committed in the same transaction."""
        return self._run(self._create_op(obj, rider))

    def _create_op(self, obj: R, rider: Rider | None = None) -> Operation[R]:
        cls = type(obj)
        new = with_new_meta(obj)
        meta = new.metadata
        key = keys.spec_key(cls, new.name, self.root)
        doc = self._doc(new)
        value = _encode_doc(doc)
        rev = yield from self._kv_put_op(key, value, expect=0, rider=rider)
        self._remember(key, rev, value, doc)
        meta.resourceVersion = str(rev)  # `meta` is this call's own copy
        return new

    def update(self, obj: R, *, rider: Rider | None = None) -> R:
        """Replace an object's metadata and spec with compare-and-swap.

        With `metadata.resourceVersion` set, the write fails with Conflict if the object has
        changed since. uid, creationTimestamp and deletionTimestamp are kept from the stored
        object; generation moves when the spec changes; an unchanged object is not rewritten.
        Removing the last finalizer of an object being deleted deletes it.

        An object last read or written through this store at the same resourceVersion is not
        read again: the write is one transaction comparing that revision and those bytes.
        `rider`'s puts are committed with the change, if the update writes one.
        """
        return self._run(self._update_op(obj, rider))

    def _update_op(self, obj: R, rider: Rider | None = None) -> Operation[R]:
        cls = type(obj)
        skey, tkey = keys.spec_key(cls, obj.name, self.root), keys.status_key(cls, obj.name, self.root)
        rv_text = obj.metadata.resourceVersion
        seen = self._recall(skey)
        fast = rv_text is not None and seen is not None and str(seen.mod_revision) == rv_text
        stored: dict[str, Any] | None = None
        status_read: KV | None = None
        if fast and seen is not None:
            rv, stored_raw, stored = seen.mod_revision, seen.value, seen.doc
        else:
            res = yield from self._txn_op([], [Get(skey), Get(tkey)])
            if not res.gets[0]:
                self._forget(skey)
                raise NotFound(f"{cls.KIND} {obj.name!r} not found")
            kv = res.gets[0][0]
            status_read = res.gets[1][0] if res.gets[1] else None
            self._remember(skey, kv.mod_revision, kv.value)
            rv, stored_raw = kv.mod_revision, kv.value
            if rv_text is not None and rv_text != str(rv):
                raise Conflict(
                    f"{cls.KIND} {obj.name!r} was modified (resourceVersion {rv}, not {rv_text}); "
                    "re-read and retry")
        if stored is None:
            stored = decode(stored_raw)
        smeta = stored["metadata"]
        doc = self._doc(obj)
        meta = doc["metadata"]
        for kept in ("uid", "creationTimestamp", "deletionTimestamp"):
            if kept in smeta:
                meta[kept] = smeta[kept]
            else:
                meta.pop(kept, None)
        meta["generation"] = (smeta.get("generation") or 1) + (doc.get("spec") != stored.get("spec"))
        if meta.get("deletionTimestamp") is not None and not meta.get("finalizers"):
            yield from self._remove_op(cls, obj.name, rv, rider)
            return obj.model_copy(update={"metadata": _kept_meta(obj.metadata, meta, None)})
        compares: list[Compare] = [ModIs(skey, rv)]
        if fast:
            compares.append(ValueIs(skey, stored_raw))
        if doc == stored:
            # Nothing to write, but a stale read must still be told so (Conflict), as a write would.
            if not fast:
                status = self._parse_status(cls, None if status_read is None else status_read.value)
                return obj.model_copy(update={"metadata": _kept_meta(obj.metadata, meta, rv), "status": status})
            res = yield from self._txn_op(compares, [Get(tkey)], [Get(skey)])
            if res.succeeded:
                status = self._parse_status(cls, res.gets[0][0].value if res.gets[0] else None)
                return obj.model_copy(update={"metadata": _kept_meta(obj.metadata, meta, rv), "status": status})
            return (yield from self._lost_op(obj, res, rv, fast, rider))
        value = _encode_doc(doc)
        riding = rider.puts if rider is not None else []
        res = yield from self._txn_op(compares, [Put(skey, value), *riding, Get(tkey)], [Get(skey)])
        if res.succeeded:
            _rode(rider)
            rev = res.revision
            status = self._parse_status(cls, res.gets[0][0].value if res.gets[0] else None)
        else:
            current = res.gets[0][0] if res.gets and res.gets[0] else None
            if current is None or current.value != value:
                return (yield from self._lost_op(obj, res, rv, fast, rider))
            # A retried write whose first attempt landed: our bytes are there.
            yield from self._rider_landed_op(rider)
            rev = current.mod_revision
            status = yield from self._read_status_op(cls, tkey)
        self._remember(skey, rev, value, doc)
        return obj.model_copy(update={"metadata": _kept_meta(obj.metadata, meta, rev), "status": status})

    def _lost_op(self, obj: R, res: TxnResult, rv: int, fast: bool, rider: Rider | None = None) -> Operation[R]:
        """An update's compare failed: NotFound, Conflict, or (wrong remembered bytes) try again."""
        cls = type(obj)
        skey = keys.spec_key(cls, obj.name, self.root)
        current = res.gets[0][0] if res.gets and res.gets[0] else None
        if current is None:
            self._forget(skey)
            raise NotFound(f"{cls.KIND} {obj.name!r} not found")
        self._remember(skey, current.mod_revision, current.value)
        if fast and current.mod_revision == rv:
            # The remembered bytes were wrong: decide again on the real ones.
            return (yield from self._update_op(obj, rider))
        raise Conflict(f"{cls.KIND} {obj.name!r} was modified (resourceVersion "
                       f"{current.mod_revision}, not {rv}); re-read and retry")

    def _read_status_op(self, cls: type[Resource], tkey: str) -> Operation[Any]:
        kv = yield from self._kv_get_op(tkey)
        return self._parse_status(cls, None if kv is None else kv.value)

    @staticmethod
    def _parse_status(cls: type[Resource], raw: bytes | None) -> Any:
        return None if raw is None else _status_adapter(cls).validate_json(raw)

    def _remove_op(self, cls: type[Resource], name: str, revision: int,
                   rider: Rider | None = None) -> Operation[None]:
        skey, tkey = keys.spec_key(cls, name, self.root), keys.status_key(cls, name, self.root)
        self._forget(skey)
        riding = rider.puts if rider is not None else []
        res = yield from self._txn_op([ModIs(skey, revision)], [Delete(skey), Delete(tkey), *riding], [Get(skey)])
        if res.succeeded:
            _rode(rider)
        else:
            if not res.gets[0]:
                yield from self._rider_landed_op(rider)
                return  # already gone: a retried delete (or someone else's)
            raise Conflict(f"{cls.KIND} {name!r} was modified; re-read and retry")

    def delete(self, cls: type[R], name: str, *, resource_version: str | None = None) -> R | None:
        """Delete an object. With finalizers it is only marked (deletionTimestamp) and returned."""
        return self._run(self._delete_op(cls, name, resource_version=resource_version))

    def _delete_op(self, cls: type[R], name: str, *, resource_version: str | None = None) -> Operation[R | None]:
        current = yield from self._get_op(cls, name)
        if resource_version is not None and resource_version != current.metadata.resourceVersion:
            raise Conflict(f"{cls.KIND} {name!r} was modified; re-read and retry")
        rv = int(current.metadata.resourceVersion or 0)
        if current.metadata.finalizers:
            if current.metadata.deletionTimestamp is not None:
                return current
            meta = current.metadata.model_copy(update={"deletionTimestamp": _now(),
                                                       "resourceVersion": None})
            marked = current.model_copy(update={"metadata": meta})
            skey = keys.spec_key(cls, name, self.root)
            value = _encode_doc(self._doc(marked))
            new_rv = yield from self._kv_put_op(skey, value, expect=rv)
            self._remember(skey, new_rv, value)
            return marked.model_copy(update={
                "metadata": meta.model_copy(update={"resourceVersion": str(new_rv)})})
        yield from self._remove_op(cls, name, rv)
        return None

    def batch(self) -> Batch:
        """A new `Batch` of object writes for one transaction."""
        return Batch(self)

    def put_status(self, cls: type[Resource], name: str, status: Any) -> bool:
        """Write an object's status if the object exists and the status differs.

        Returns True if written, False if unchanged. NotFound if the object does not exist.
        """
        skey, tkey = keys.spec_key(cls, name, self.root), keys.status_key(cls, name, self.root)
        value = encode_status(status)
        res = self.txn([ValueIs(tkey, value)], [], [Get(skey)])
        if res.succeeded:
            return False
        if not res.gets[0]:
            raise NotFound(f"{cls.KIND} {name!r} not found")
        # Only write while the same incarnation of the object exists: no orphan status.
        out = self.txn([CreatedAt(skey, res.gets[0][0].create_revision)], [Put(tkey, value)])
        if not out.succeeded:
            raise NotFound(f"{cls.KIND} {name!r} was deleted")
        return True



def _kept_meta(given: ObjectMeta, written: dict[str, Any], rev: int | None) -> ObjectMeta:
    """The caller's metadata with the fields the store keeps or sets, as written to etcd."""

    def when(field: str) -> datetime | None:
        value = written.get(field)
        return None if value is None else datetime.fromisoformat(value)

    return given.model_copy(update={
        "uid": written.get("uid"),
        "creationTimestamp": when("creationTimestamp"),
        "deletionTimestamp": when("deletionTimestamp"),
        "generation": written["generation"],
        "resourceVersion": None if rev is None else str(rev),
    })
