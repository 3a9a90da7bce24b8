"""Compatibility re-exports for code written before the store was split in two (issue 14).

The store is `reconcile.etcd` (transport) + `reconcile.objects` (typed objects); import from
those. This module only keeps `from reconcile.store import ...` of work in flight importable and
is to be removed once nothing imports it (`grep -r "reconcile.store" --include=*.py .`).
"""

from __future__ import annotations

from reconcile.etcd import (
    KV,
    MAX_VALUE_BYTES,
    Compare,
    CreatedAt,
    Delete,
    Exists,
    Get,
    ModIs,
    Op,
    Operation,
    Put,
    Rider,
    TxnResult,
    UnchangedSince,
    ValueIs,
    Watch,
    WatchEvent,
    decode,
    encode,
)
from reconcile.objects import ListResult, Store

__all__ = [
    "KV", "MAX_VALUE_BYTES", "Compare", "CreatedAt", "Delete", "Exists", "Get", "ListResult", "ModIs", "Op",
    "Operation", "Put", "Rider", "Store", "TxnResult", "UnchangedSince", "ValueIs", "Watch", "WatchEvent", "decode",
    "encode",
]
