"""The store translates etcd/gRPC failures into its own error tree: transient ones are Unavailable (retried)."""

from __future__ import annotations

import grpc
import pytest

from reconcile.errors import PermissionDenied, StoreError, TooLarge, Unavailable
from reconcile.etcd import _translate


class RpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


C = grpc.StatusCode


@pytest.mark.parametrize(("code", "details", "expected"), [
    (C.UNAVAILABLE, "connection refused", Unavailable),
    (C.DEADLINE_EXCEEDED, "Deadline Exceeded", Unavailable),
    (C.UNKNOWN, "context deadline exceeded", Unavailable),
    (C.UNKNOWN, "etcdserver: request timed out", Unavailable),
    (C.UNAVAILABLE, "etcdserver: leader changed", Unavailable),
    (C.RESOURCE_EXHAUSTED, "etcdserver: too many requests", Unavailable),
    (C.INVALID_ARGUMENT, "etcdserver: request is too large", TooLarge),
    (C.RESOURCE_EXHAUSTED, "etcdserver: mvcc: database space exceeded", StoreError),
    (C.PERMISSION_DENIED, "etcdserver: permission denied", PermissionDenied),
    (C.INVALID_ARGUMENT, "etcdserver: revision of auth store is old", Unavailable),
    (C.FAILED_PRECONDITION, "etcdserver: user name not found", PermissionDenied),
])
def test_grpc_errors_are_translated(code: grpc.StatusCode, details: str, expected: type[StoreError]) -> None:
    """Each etcd failure maps to one store error; only passing conditions become Unavailable."""
    err = _translate(RpcError(code, details))
    assert type(err) is expected
    assert details in str(err)
