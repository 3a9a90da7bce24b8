"""The store's key-value and object operations on asyncio, for the API's event loop.

`AsyncStore` runs exactly the operations `Store` runs (each is a generator of etcd requests,
see `Store._run`) on a grpc.aio channel, so an `async def` route reads and writes etcd without
a thread hop: under concurrency a call costs a fraction of the CPU of a blocking call in a
worker thread, and the event loop no longer competes with dozens of worker threads for the
interpreter lock. It shares the wrapped Store's root, timeouts, retry budget and remembered
values (so a read through one lets an update through the other skip its re-read).

Errors are translated and transient failures retried as in `Store`; with several endpoints a
failing one is left for the next. A channel belongs to the event loop that opened it.
Leases, watches and compaction stay with the blocking Store.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import grpc
import grpc.aio
from pyetcd import etcdrpc
from pyetcd.etcdrpc import rpc_pb2_grpc

from reconcile.errors import PermissionDenied, Unavailable
from reconcile.etcd import KV, Compare, Op, Operation, Rider, TxnResult, _translate, request_keys
from reconcile.objects import ListResult, Store
from reconcile.selector import Selector
from specs.kinds import Resource

R = TypeVar("R", bound=Resource)
T = TypeVar("T")

_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]


class AsyncStore:
    """`Store`'s operations as coroutines. Use it from event loops only; `close` on each loop's way out."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._endpoint = 0
        self._channels: dict[asyncio.AbstractEventLoop, tuple[grpc.aio.Channel, Any]] = {}

    @property
    def root(self) -> str:
        return self.store.root

    def _stub(self) -> Any:
        loop = asyncio.get_running_loop()
        hit = self._channels.get(loop)
        if hit is None:
            endpoint = self.store.endpoints[self._endpoint % len(self.store.endpoints)]
            channel = grpc.aio.secure_channel(endpoint, self.store.credentials, options=_OPTIONS)
            hit = self._channels[loop] = (channel, rpc_pb2_grpc.KVStub(channel))
        return hit[1]

    async def _fail_over(self) -> None:
        """Move this loop's channel to the next endpoint (with one endpoint: keep reconnecting)."""
        if len(self.store.endpoints) < 2:
            return
        self._endpoint += 1
        old = self._channels.pop(asyncio.get_running_loop(), None)
        if old is not None:
            with contextlib.suppress(Exception):
                await old[0].close()

    async def _send(self, request: Any) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.store.retry_seconds
        delay = 0.05
        while True:
            stub = self._stub()
            try:
                if isinstance(request, etcdrpc.TxnRequest):
                    return await stub.Txn(request, timeout=self.store.timeout)
                return await stub.Range(request, timeout=self.store.timeout)
            except grpc.RpcError as exc:
                err = _translate(exc)
                if isinstance(err, PermissionDenied):
                    raise PermissionDenied(request_keys(request), err.detail) from exc
                if not isinstance(err, Unavailable) or loop.time() + delay > deadline:
                    raise err from exc
                await self._fail_over()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _run(self, op: Operation[T]) -> T:
        try:
            request = next(op)
            while True:
                request = op.send(await self._send(request))
        except StopIteration as done:
            result: T = done.value
            return result

    async def close(self) -> None:
        """Close the channel of the running loop."""
        hit = self._channels.pop(asyncio.get_running_loop(), None)
        if hit is not None:
            await hit[0].close()

    # ------------------------------------------------------------------ operations (see Store)

    async def kv_range(self, prefix: str, *, keys_only: bool = False) -> tuple[list[KV], int]:
        return await self._run(self.store._range_op(prefix, prefix=True, keys_only=keys_only))

    async def kv_put(self, key: str, value: bytes, *, lease: int | None = None, expect: int | None = None) -> int:
        return await self._run(self.store._kv_put_op(key, value, lease=lease, expect=expect))

    async def txn(self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()) -> TxnResult:
        return await self._run(self.store._txn_op(compares, success, failure))

    async def get(self, cls: type[R], name: str) -> R:
        return await self._run(self.store._get_op(cls, name))

    async def get_spec_at(self, cls: type[R], name: str, resource_version: str | None) -> R:
        return await self._run(self.store._get_spec_at_op(cls, name, resource_version))

    async def list(self, cls: type[R], selector: Selector | str | Mapping[str, str] | None = None) -> ListResult[R]:
        return await self._run(self.store._list_op(cls, selector))

    async def create(self, obj: R, *, rider: Rider | None = None) -> R:
        """Like `Store.create`; `rider`'s puts are committed in the same transaction as the object."""
        return await self._run(self.store._create_op(obj, rider))

    async def update(self, obj: R, *, rider: Rider | None = None) -> R:
        """Like `Store.update`; `rider`'s puts are committed with the change, if it writes one."""
        return await self._run(self.store._update_op(obj, rider))

    async def delete(self, cls: type[R], name: str, *, resource_version: str | None = None) -> R | None:
        return await self._run(self.store._delete_op(cls, name, resource_version=resource_version))
