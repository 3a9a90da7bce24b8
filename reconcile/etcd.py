"""The etcd transport — the only synchronous module that talks to etcd.

Connection and failover over the cluster's members, retries of transient failures (tenacity,
bounded in time), raw keys (`kv_get`, `kv_range`, `kv_put`, `kv_delete`), transactions with
small typed compare and operation values (`ModIs`, `ValueIs`, `Put`, `Delete`, `Get`, ...),
leases, watches and the auth administration of the bootstrap identity.

Every etcd or gRPC exception is translated here into the tree of `reconcile.errors`. A write
that may have been applied before the connection dropped is checked on retry, so a retried
compare-and-swap reports success, not a false conflict.

Typed objects (specs, status, metadata, batches) live in `reconcile.objects` on top of this.
This module must never decide anything about hosting: it stores and watches.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import uuid
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Self, TypeVar

import grpc
import pyetcd
import pyetcd.exceptions as etcd_exc
from pyetcd import etcdrpc
from pyetcd.etcdrpc import auth_pb2 as authpb
from tenacity import (
    Retrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential,
)

from reconcile import keys
from reconcile.connection import EtcdConnection
from reconcile.errors import (
    AlreadyExists,
    Compacted,
    Conflict,
    NotFound,
    PermissionDenied,
    StoreError,
    TooLarge,
    Unavailable,
)
from reconcile.roles import Permission

log = logging.getLogger(__name__)

T = TypeVar("T")
# An etcd operation as a generator: yields requests, is sent their responses, returns T.
Operation = Generator[Any, Any, T]

# etcd refuses requests over 1.5 MiB by default; keep a margin for the key and framing.
MAX_VALUE_BYTES = 1_400_000



# ------------------------------------------------------------------ values


@dataclass(frozen=True)
class KV:
    key: str
    value: bytes
    mod_revision: int
    create_revision: int
    version: int
    lease: int = 0


@dataclass(frozen=True)
class ModIs:
    """Compare: the key's mod_revision equals `revision` (0 means: the key does not exist)."""

    key: str
    revision: int


@dataclass(frozen=True)
class Exists:
    """Compare: the key exists."""

    key: str


@dataclass(frozen=True)
class CreatedAt:
    """Compare: the key exists and was created at `revision` (the same incarnation)."""

    key: str
    revision: int


@dataclass(frozen=True)
class UnchangedSince:
    """Compare: no key under `prefix` was created or modified after `revision` (deletions are not seen)."""

    prefix: str
    revision: int


@dataclass(frozen=True)
class ValueIs:
    key: str
    value: bytes


@dataclass(frozen=True)
class Put:
    key: str
    value: bytes
    lease: int | None = None


@dataclass(frozen=True)
class Delete:
    key: str
    prefix: bool = False


@dataclass(frozen=True)
class Get:
    key: str
    prefix: bool = False


Compare = ModIs | Exists | CreatedAt | UnchangedSince | ValueIs
Op = Put | Delete | Get


@dataclass
class Rider:
    """Puts that ride along with an operation's write, in the same transaction (an audit record).

    `written` tells afterwards whether they were committed: only an operation that writes takes
    them (an unchanged object is not rewritten), and then they land together with the change
    or not at all. Their keys must be new and unique: they are put, not compared.
    """

    puts: list[Put]
    written: bool = False


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    revision: int
    # One entry per Get operation of the branch that ran, in order.
    gets: list[list[KV]] = field(default_factory=list)


@dataclass(frozen=True)
class WatchEvent:
    type: str  # "PUT" or "DELETE"
    key: str
    value: bytes
    mod_revision: int



def encode(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), sort_keys=True, default=str).encode()


def decode(raw: bytes) -> Any:
    return json.loads(raw)


def _prefix_end(prefix: str) -> bytes:
    b = bytearray(prefix.encode())
    for i in range(len(b) - 1, -1, -1):
        if b[i] < 0xFF:
            b[i] += 1
            return bytes(b[: i + 1])
    return b"\0"


_TRANSIENT_CODES = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
# etcd reports some passing conditions under other codes (a server-side timeout comes back as
# UNKNOWN "context deadline exceeded", throttling as RESOURCE_EXHAUSTED): retry those too.
_TRANSIENT_MESSAGES = (
    "context deadline exceeded", "request timed out", "leader changed", "no leader",
    "too many requests", "not capable",
    # The auth store changed (a role grant, a new leader replaying it) between the permission
    # check and the apply: the request was not applied; etcd's own client retries it.
    "revision of auth store is old",
)


def _translate(exc: BaseException) -> StoreError:
    """Map a backend exception to the store's error tree (cause kept by the caller)."""
    if isinstance(exc, StoreError):
        return exc
    if isinstance(
        exc,
        etcd_exc.ConnectionFailedError
        | etcd_exc.ConnectionTimeoutError
        | etcd_exc.NoServerAvailableError
        | etcd_exc.InternalServerError,
    ):
        return Unavailable(f"etcd unavailable: {exc}")
    if isinstance(exc, etcd_exc.RevisionCompactedError):
        return Compacted(exc.compacted_revision)
    if isinstance(exc, grpc.RpcError):
        code = exc.code() if hasattr(exc, "code") else None
        details = exc.details() if hasattr(exc, "details") else str(exc)
        if code in _TRANSIENT_CODES or any(m in str(details) for m in _TRANSIENT_MESSAGES):
            return Unavailable(f"etcd unavailable: {details}")
        if (code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)
                or any(m in str(details) for m in ("permission denied", "user name not found"))):
            return PermissionDenied("?", str(details))
        if code == grpc.StatusCode.NOT_FOUND:
            return NotFound(str(details))
        if code == grpc.StatusCode.INVALID_ARGUMENT and "too large" in str(details):
            return TooLarge(str(details))
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            if "space exceeded" in str(details):
                return StoreError(f"etcd is out of space (alarm NOSPACE): {details}")
            return TooLarge(str(details))
        return StoreError(f"etcd error {code}: {details}")
    if isinstance(exc, ValueError) and "failed node" in str(exc):
        return Unavailable("etcd unavailable: endpoint marked failed")
    return StoreError(f"etcd error: {exc!r}")


def request_keys(request: Any) -> str:
    """The key (or keys, for a transaction) a request touches: named in a PermissionDenied."""
    if isinstance(request, etcdrpc.TxnRequest):
        found: list[str] = []
        for op in [*request.success, *request.failure]:
            for field_name in ("request_range", "request_put", "request_delete_range"):
                if op.HasField(field_name):
                    found.append(getattr(op, field_name).key.decode(errors="replace"))
        for c in request.compare:
            found.append(c.key.decode(errors="replace"))
        return ", ".join(dict.fromkeys(found)) or "?"
    key = getattr(request, "key", b"")
    return key.decode(errors="replace") if isinstance(key, bytes) else str(key)


_ACCESS = {"read": 0, "write": 1, "readwrite": 2}  # etcd's authpb.Permission.Type


class Etcd:
    """The etcd transport. Thread-safe; one per process is plenty."""

    def __init__(
        self,
        conn: EtcdConnection,
        *,
        root: str = keys.ROOT,
        timeout: float = 5.0,
        retry_seconds: float = 10.0,
    ) -> None:
        eps = list(conn.endpoints)
        ca, cert, key = conn.read()
        self.conn = conn
        self.credentials = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key,
                                                        certificate_chain=cert)
        opts = [
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ]
        endpoints_objs = []
        # With one endpoint there is nowhere to fail over to: never mark it failed, reconnect.
        # With several, a failed member is skipped for a while so calls go to the others.
        time_retry = 0.0 if len(eps) < 2 else 2.0
        for ep in eps:
            host, _, port = ep.rpartition(":")
            endpoints_objs.append(pyetcd.Endpoint(host, int(port), secure=True, creds=self.credentials,
                                                  time_retry=time_retry, opts=opts))
        self.endpoints = eps
        self.root = root
        self.timeout = timeout
        self.retry_seconds = retry_seconds
        self._client = pyetcd.MultiEndpointEtcd3Client(
            endpoints=endpoints_objs, timeout=timeout, failover=True
        )
        self._closed = False
        self._init_layer()

    def _init_layer(self) -> None:
        """State of a layer built on the transport (`reconcile.objects.Store`'s cache); none here."""

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(Exception):
            self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------- plumbing

    def _call(self, fn: Callable[[], T], *, retry: bool = True) -> T:
        """Run one etcd call, translating errors; retry transient ones within the budget."""

        def once() -> T:
            try:
                return fn()
            except StoreError:
                raise
            except Exception as exc:
                err = _translate(exc)
                if isinstance(err, Unavailable) and isinstance(exc, grpc.RpcError):
                    self._fail_over()
                raise err from exc

        # The first attempt runs outside tenacity: its setup costs more than a fast etcd call.
        try:
            return once()
        except Unavailable:
            if not retry or self.retry_seconds <= 0:
                raise
        for attempt in Retrying(
            retry=retry_if_exception_type(Unavailable),
            stop=stop_after_delay(self.retry_seconds),
            wait=wait_exponential(multiplier=0.05, max=1.0),
            reraise=True,
        ):
            with attempt:
                return once()
        raise AssertionError("unreachable")  # pragma: no cover

    def _fail_over(self) -> None:
        """Mark the endpoint in use as failed so the next call tries another member."""
        if len(self.endpoints) < 2:
            return  # nothing to fail over to; keep reconnecting to the one we have
        with contextlib.suppress(Exception):
            self._client.endpoint_in_use.fail()
            self._client._clear_old_stubs()

    @staticmethod
    def _kv(kv: Any) -> KV:
        return KV(
            key=kv.key.decode(),
            value=bytes(kv.value),
            mod_revision=int(kv.mod_revision),
            create_revision=int(kv.create_revision),
            version=int(kv.version),
            lease=int(kv.lease),
        )

    # Key-value and object operations are written once, as generators that yield etcd requests
    # (RangeRequest or TxnRequest) and are sent back the responses: `_run` drives them with
    # blocking calls, `reconcile.aio.AsyncStore` with asyncio ones. Their logic (compares,
    # retried-write checks, the remembered values) is therefore the same for both.

    def _run(self, op: Operation[T]) -> T:
        """Drive an operation with blocking etcd calls."""
        try:
            request = next(op)
            while True:
                request = op.send(self._send(request))
        except StopIteration as done:
            result: T = done.value
            return result

    def _send(self, request: Any) -> Any:
        try:
            if isinstance(request, etcdrpc.TxnRequest):
                return self._call(
                    lambda: self._client.kvstub.Txn(request, self.timeout, metadata=self._client.metadata))
            return self._call(
                lambda: self._client.kvstub.Range(request, self.timeout, metadata=self._client.metadata))
        except PermissionDenied as exc:
            raise PermissionDenied(request_keys(request), exc.detail) from exc

    def _range_op(self, key: str, *, prefix: bool, limit: int = 0, keys_only: bool = False,
                  revision: int = 0) -> Operation[tuple[list[KV], int]]:
        req = etcdrpc.RangeRequest(key=key.encode(), limit=limit, keys_only=keys_only,
                                   revision=revision)
        if prefix:
            req.range_end = _prefix_end(key)
        resp = yield req
        return [self._kv(kv) for kv in resp.kvs], int(resp.header.revision)

    def _range(self, key: str, *, prefix: bool, limit: int = 0, keys_only: bool = False,
               revision: int = 0) -> tuple[list[KV], int]:
        return self._run(self._range_op(key, prefix=prefix, limit=limit, keys_only=keys_only, revision=revision))

    # ----------------------------------------------------------- raw keys

    def revision(self) -> int:
        _, rev = self._range(keys.root_prefix(self.root), prefix=False, limit=1, keys_only=True)
        return rev

    def kv_get(self, key: str) -> KV | None:
        return self._run(self._kv_get_op(key))

    def _kv_get_op(self, key: str) -> Operation[KV | None]:
        kvs, _ = yield from self._range_op(key, prefix=False)
        return kvs[0] if kvs else None

    def kv_range(self, prefix: str, *, keys_only: bool = False) -> tuple[list[KV], int]:
        """Every key under `prefix`, sorted by key, with the read's revision."""
        return self._range(prefix, prefix=True, keys_only=keys_only)

    def kv_put(self, key: str, value: bytes, *, lease: int | None = None,
               expect: int | None = None) -> int:
        """Put a value; with `expect` (a mod_revision, 0 = absent) as a compare-and-swap.

        Returns the new revision. Raises Conflict (or AlreadyExists when expect=0).
        """
        return self._run(self._kv_put_op(key, value, lease=lease, expect=expect))

    def _kv_put_op(self, key: str, value: bytes, *, lease: int | None = None,
                   expect: int | None = None, rider: Rider | None = None) -> Operation[int]:
        riding = rider.puts if rider is not None else []
        if expect is None:
            res = yield from self._txn_op([], [Put(key, value, lease), *riding])
            _rode(rider)
            return res.revision
        res = yield from self._txn_op([ModIs(key, expect)], [Put(key, value, lease), *riding], [Get(key)])
        if res.succeeded:
            _rode(rider)
            return res.revision
        current = res.gets[0][0] if res.gets and res.gets[0] else None
        if current is not None and current.value == value:
            # A retried write whose first attempt landed: the same value is there.
            yield from self._rider_landed_op(rider)
            return current.mod_revision
        if expect == 0:
            raise AlreadyExists(key)
        raise Conflict(key)

    def kv_delete(self, key: str, *, expect: int | None = None, prefix: bool = False) -> bool:
        """Delete a key (or prefix); with `expect` only if unchanged. True if it existed."""
        compares: list[Compare] = [] if expect is None else [ModIs(key, expect)]
        res = self.txn(compares, [Get(key, prefix=prefix), Delete(key, prefix=prefix)], [Get(key)])
        if not res.succeeded:
            if not res.gets[0]:
                return False  # already gone (a retried delete whose first attempt landed, or another deleter)
            raise Conflict(key)
        return bool(res.gets and res.gets[0])

    # Requests are filled in place as protobuf messages: the client library's helpers, and even
    # protobuf constructors taking sub-messages (which copy them), cost more CPU than the rest
    # of a store call together.
    @staticmethod
    def _fill_compare(msg: Any, c: Compare) -> None:
        if isinstance(c, UnchangedSince):
            # A range compare: every key in [prefix, prefix_end) has mod_revision <= revision.
            msg.key = c.prefix.encode()
            msg.range_end = _prefix_end(c.prefix)
            msg.result = etcdrpc.Compare.LESS
            msg.target = etcdrpc.Compare.MOD
            msg.mod_revision = c.revision + 1
            return
        msg.key = c.key.encode()
        if isinstance(c, ModIs):
            msg.target = etcdrpc.Compare.MOD
            msg.mod_revision = c.revision
        elif isinstance(c, Exists):
            msg.result = etcdrpc.Compare.GREATER
            msg.target = etcdrpc.Compare.VERSION
            msg.version = 0
        elif isinstance(c, CreatedAt):
            msg.target = etcdrpc.Compare.CREATE
            msg.create_revision = c.revision
        else:
            msg.target = etcdrpc.Compare.VALUE
            msg.value = c.value

    @staticmethod
    def _fill_op(msg: Any, op: Op) -> None:
        if isinstance(op, Put):
            put = msg.request_put
            put.key = op.key.encode()
            put.value = op.value
            if op.lease:
                put.lease = op.lease
            return
        req = msg.request_delete_range if isinstance(op, Delete) else msg.request_range
        req.SetInParent()
        req.key = op.key.encode()
        if op.prefix:
            req.range_end = _prefix_end(op.key)

    def txn(self, compares: Sequence[Compare], success: Sequence[Op],
            failure: Sequence[Op] = ()) -> TxnResult:
        """One etcd transaction: if every compare holds run `success`, else `failure`."""
        return self._run(self._txn_op(compares, success, failure))

    def _txn_op(self, compares: Sequence[Compare], success: Sequence[Op],
                failure: Sequence[Op] = ()) -> Operation[TxnResult]:
        resp = yield from self._txn_raw_op(compares, success, failure)
        gets: list[list[KV]] = []
        for r in resp.responses:
            if r.WhichOneof("response") == "response_range":
                gets.append([self._kv(kv) for kv in r.response_range.kvs])
        return TxnResult(bool(resp.succeeded), int(resp.header.revision), gets)

    def _txn_raw_op(self, compares: Sequence[Compare], success: Sequence[Op],
                    failure: Sequence[Op] = ()) -> Operation[Any]:
        """The raw TxnResponse, for readers of many keys that skip the KV copies."""
        for op in (*success, *failure):
            if isinstance(op, Put) and len(op.value) > MAX_VALUE_BYTES:
                raise TooLarge(f"{op.key}: value of {len(op.value)} bytes exceeds {MAX_VALUE_BYTES}")
        request = etcdrpc.TxnRequest()
        for c in compares:
            self._fill_compare(request.compare.add(), c)
        for o in success:
            self._fill_op(request.success.add(), o)
        for o in failure:
            self._fill_op(request.failure.add(), o)
        return (yield request)

    # ----------------------------------------------------------- leases

    def grant_lease(self, ttl: int) -> int:
        def run() -> int:
            resp = self._client.leasestub.LeaseGrant(
                etcdrpc.LeaseGrantRequest(TTL=ttl, ID=0), self.timeout,
                metadata=self._client.metadata)
            return int(resp.ID)

        return self._call(run)

    def refresh_lease(self, lease_id: int) -> int:
        """Keep a lease alive once; return its remaining TTL. NotFound if it has expired."""

        def run() -> int:
            req = iter([etcdrpc.LeaseKeepAliveRequest(ID=lease_id)])
            for resp in self._client.leasestub.LeaseKeepAlive(
                req, self.timeout, metadata=self._client.metadata
            ):
                if int(resp.TTL) <= 0:
                    raise NotFound(f"lease {lease_id:x} expired")
                return int(resp.TTL)
            raise Unavailable("lease keep-alive stream closed")

        return self._call(run, retry=False)

    def revoke_lease(self, lease_id: int) -> None:
        def run() -> None:
            with contextlib.suppress(grpc.RpcError):
                self._client.leasestub.LeaseRevoke(
                    etcdrpc.LeaseRevokeRequest(ID=lease_id), self.timeout,
                    metadata=self._client.metadata)

        self._call(run, retry=False)

    def compact(self, revision: int) -> None:
        def run() -> None:
            self._client.kvstub.Compact(
                etcdrpc.CompactionRequest(revision=revision, physical=True), self.timeout,
                metadata=self._client.metadata)

        self._call(run)

    def member_status(self) -> tuple[int, int]:
        """(member id, leader's member id) as the member in use sees them (cluster tests, tools)."""
        def run() -> tuple[int, int]:
            resp = self._client.maintenancestub.Status(etcdrpc.StatusRequest(), self.timeout,
                                                       metadata=self._client.metadata)
            return int(resp.header.member_id), int(resp.leader)

        return self._call(run, retry=False)

    # ----------------------------------------------------------- auth administration
    # Only the bootstrap (root identity) calls these: `hostplane up`, `EtcdServer`, tests.

    def _auth(self, method: str, request: Any, *, exists_ok: str = "") -> Any:
        def run() -> Any:
            try:
                return getattr(self._client.authstub, method)(request, self.timeout,
                                                              metadata=self._client.metadata)
            except grpc.RpcError as exc:
                details = exc.details() if hasattr(exc, "details") else ""
                if exists_ok and exists_ok in str(details):
                    return None
                raise

        return self._call(run)

    def enable_auth(self) -> None:
        """Create etcd's root user (a random password never kept: root logs in by certificate)
        and turn authentication on. Idempotent."""
        self._auth("UserAdd", etcdrpc.AuthUserAddRequest(name="root", password=uuid.uuid4().hex * 2),
                   exists_ok="already exists")
        self._auth("UserGrantRole", etcdrpc.AuthUserGrantRoleRequest(user="root", role="root"))
        self._auth("AuthEnable", etcdrpc.AuthEnableRequest())

    def apply_role(self, name: str, permissions: Sequence[Permission]) -> None:
        """Make role `name` hold `permissions` (added to what it has) and user `name` hold the
        role. Idempotent: a repeat changes nothing."""
        self._auth("RoleAdd", etcdrpc.AuthRoleAddRequest(name=name), exists_ok="already exists")
        held = self._auth("RoleGet", etcdrpc.AuthRoleGetRequest(role=name))
        have = {(bytes(p.key), bytes(p.range_end), int(p.permType)) for p in held.perm}
        for perm in permissions:
            key = perm.key.encode()
            end = _prefix_end(perm.key) if perm.prefix else b""
            ptype = _ACCESS[perm.access]
            if (key, end, ptype) in have:
                continue
            self._auth("RoleGrantPermission", etcdrpc.AuthRoleGrantPermissionRequest(
                name=name, perm=authpb.Permission(permType=ptype, key=key, range_end=end)))
        self._auth("UserAdd", etcdrpc.AuthUserAddRequest(name=name, password=uuid.uuid4().hex * 2),
                   exists_ok="already exists")
        self._auth("UserGrantRole", etcdrpc.AuthUserGrantRoleRequest(user=name, role=name))

    def remove_identity(self, name: str) -> None:
        """Delete user and role `name`: its certificate no longer reaches any key. Idempotent."""
        self._auth("UserDelete", etcdrpc.AuthUserDeleteRequest(name=name), exists_ok="not found")
        self._auth("RoleDelete", etcdrpc.AuthRoleDeleteRequest(role=name), exists_ok="not found")

    def users(self) -> list[str]:
        return sorted(self._auth("UserList", etcdrpc.AuthUserListRequest()).users)

    # ----------------------------------------------------------- watch

    def watch(
        self,
        prefix: str,
        *,
        start_revision: int,
        on_events: Callable[[list[WatchEvent], int], None],
        on_compacted: Callable[[int], None] | None = None,
        progress: bool = True,
    ) -> Watch:
        """Watch keys under `prefix` from `start_revision` on a background thread.

        `on_events(events, revision)` is called for each batch, in revision order. A dropped
        connection is resumed from the last delivered revision + 1, so no event is lost or
        repeated. If etcd has compacted past the resume point, the watch stops and calls
        `on_compacted(compact_revision)`: the caller must re-list and watch again.
        """
        w = Watch(self, prefix, start_revision, on_events, on_compacted, progress)
        w.start()
        return w

    def _rider_landed_op(self, rider: Rider | None) -> Operation[None]:
        """After a write recognised as an earlier attempt of ours: did the rider land with it?"""
        if rider is not None and rider.puts:
            rider.written = (yield from self._kv_get_op(rider.puts[0].key)) is not None


def _rode(rider: Rider | None) -> None:
    if rider is not None:
        rider.written = True


class Watch:
    """A resumable etcd watch on a prefix. Stop it with `stop()`."""

    def __init__(self, store: Etcd, prefix: str, start_revision: int,
                 on_events: Callable[[list[WatchEvent], int], None],
                 on_compacted: Callable[[int], None] | None, progress: bool) -> None:
        self._store = store
        self.prefix = prefix
        self.next_revision = start_revision
        self._on_events = on_events
        self._on_compacted = on_compacted
        self._progress = progress
        self._stop = threading.Event()
        self._call: Any = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"watch {prefix}", daemon=True)
        self.connected = threading.Event()
        self.reconnects = 0
        self.handler_errors = 0
        # Set when etcd refused the range (RBAC): the watch has stopped for good.
        self.error: PermissionDenied | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._lock:
            if self._call is not None:
                self._call.cancel()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _requests(self, q: queue.Queue[Any]) -> Iterator[Any]:
        create = etcdrpc.WatchCreateRequest(
            key=self.prefix.encode(), range_end=_prefix_end(self.prefix),
            start_revision=self.next_revision, progress_notify=self._progress)
        yield etcdrpc.WatchRequest(create_request=create)
        while True:
            item = q.get()
            if item is None:
                return
            yield item

    def _run(self) -> None:
        backoff = 0.05
        while not self._stop.is_set():
            q: queue.Queue[Any] = queue.Queue()
            try:
                stub = etcdrpc.WatchStub(self._store._client.channel)
                with self._lock:
                    if self._stop.is_set():
                        return
                    self._call = stub.Watch(self._requests(q),
                                            metadata=self._store._client.metadata)
                for rs in self._call:
                    if rs.compact_revision:
                        log.info("watch %s: compacted at %d", self.prefix, rs.compact_revision)
                        self._stop.set()
                        if self._on_compacted is not None:
                            self._on_compacted(int(rs.compact_revision))
                        return
                    if rs.created:
                        self.connected.set()
                        backoff = 0.05
                    if rs.canceled:
                        if "permission denied" in rs.cancel_reason:
                            # Not transient: etcd's RBAC refuses this range. Stop, never retry.
                            self.error = PermissionDenied(self.prefix)
                            log.error("watch %s: %s", self.prefix, self.error)
                            self._stop.set()
                            return
                        raise _Canceled(rs.cancel_reason)
                    evs = [
                        WatchEvent(
                            "DELETE" if ev.type == 1 else "PUT",
                            ev.kv.key.decode(), bytes(ev.kv.value), int(ev.kv.mod_revision))
                        for ev in rs.events
                    ]
                    rev = int(rs.header.revision)
                    if evs:
                        try:
                            self._on_events(evs, rev)
                        except Exception:
                            # Not acknowledged: resume from this batch so no event is skipped.
                            log.exception("watch %s: handler failed; redelivering from %d",
                                          self.prefix, evs[0].mod_revision)
                            self.handler_errors += 1
                            raise _Canceled("handler failed") from None
                        self.next_revision = evs[-1].mod_revision + 1
                    elif rev >= self.next_revision and not rs.created:
                        # A progress notification: nothing under the prefix up to `rev`.
                        self.next_revision = rev + 1
            except (grpc.RpcError, _Canceled, etcd_exc.Etcd3Exception, ValueError) as exc:
                if self._stop.is_set():
                    return
                if isinstance(exc, grpc.RpcError) and isinstance(_translate(exc), Unavailable):
                    self._store._fail_over()
                log.info("watch %s dropped (%r); resuming at %d", self.prefix, exc,
                         self.next_revision)
            finally:
                q.put(None)
                self.connected.clear()
            if self._stop.wait(backoff):
                return
            self.reconnects += 1
            backoff = min(backoff * 2, 1.0)


class _Canceled(Exception):
    pass
