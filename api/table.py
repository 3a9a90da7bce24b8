"""Tables for `hostplane get`: columns per kind, computed from an object's JSON form. Pure.

Columns read plain dicts (not models) so the same code renders listed objects and the
partial objects a watch stream delivers. Nothing here may fail on a missing field: a
status not yet written shows as empty.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

Column = tuple[str, Callable[[dict[str, Any]], str]]


def _get(data: dict[str, Any], path: str) -> Any:
    cur: Any = data
    for part in path.split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


def _text(path: str, suffix: str = "") -> Callable[[dict[str, Any]], str]:
    def col(data: dict[str, Any]) -> str:
        v = _get(data, path)
        if v is None or v == "":
            return ""
        if isinstance(v, bool):
            return "true" if v else "false"
        return f"{v}{suffix}"

    return col


def _price(data: dict[str, Any]) -> str:
    p = _get(data, "spec.price") or {}
    return f"{p.get('amount', '')} {p.get('currency', '')}/{p.get('period', 'month')}".strip()


def _mem(data: dict[str, Any], path: str = "spec.memoryMiB") -> str:
    v = _get(data, path)
    if not isinstance(v, int):
        return ""
    return f"{v // 1024}Gi" if v % 1024 == 0 else f"{v}Mi"


def _count(path: str) -> Callable[[dict[str, Any]], str]:
    def col(data: dict[str, Any]) -> str:
        v = _get(data, path)
        return str(len(v)) if isinstance(v, list | dict) else ""

    return col


def age(data: dict[str, Any], now: datetime | None = None) -> str:
    raw = _get(data, "metadata.creationTimestamp")
    if not isinstance(raw, str):
        return ""
    try:
        created = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        return ""
    seconds = int(((now or datetime.now(UTC)) - created).total_seconds())
    if seconds < 0:
        seconds = 0
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


_NAME: Column = ("NAME", _text("metadata.name"))

COLUMNS: dict[str, tuple[list[Column], list[Column]]] = {
    # kind: (default columns, extra columns for -o wide)
    "Plan": ([("VCPUS", _text("spec.vcpus")), ("MEMORY", _mem), ("DISK", _text("spec.diskGiB", "Gi")),
              ("PRICE", _price)],
             [("TRAFFIC", _text("spec.trafficGiB", "Gi")), ("INTERVAL", _text("spec.billingInterval")),
              ("PUBLIC", _text("spec.public"))]),
    "Image": ([("OS", _text("spec.os")), ("VERSION", _text("spec.version")),
               ("MIN-DISK", _text("spec.minDiskGiB", "Gi")), ("READY", _text("status.ready"))],
              [("PATH", _text("spec.source.path")), ("URL", _text("spec.source.url"))]),
    "Node": ([("STATE", _text("status.state")), ("VCPUS", _text("spec.capacity.vcpus")),
              ("MEMORY", lambda d: _mem(d, "spec.capacity.memoryMiB")),
              ("DISK", _text("spec.capacity.diskGiB", "Gi")), ("SCHEDULABLE", _text("spec.schedulable"))],
             [("LIBVIRT", _text("spec.libvirtURI")), ("HEARTBEAT", _text("status.lastHeartbeat"))]),
    "IPPool": ([("CIDR", _text("spec.cidr")), ("GATEWAY", _text("spec.gateway")), ("USED", _text("status.used")),
                ("FREE", _text("status.free"))],
               [("RESERVED", _count("spec.reserved")), ("IPV6", _text("spec.ipv6Prefix"))]),
    "Customer": ([("EMAIL", _text("spec.email")), ("CURRENCY", _text("spec.currency")),
                  ("BALANCE", _text("status.balance")), ("STATE", _text("status.state"))],
                 [("CREDIT-LIMIT", _text("spec.creditLimit"))]),
    "Subscription": ([("CUSTOMER", _text("spec.customer")), ("PLAN", _text("spec.plan")),
                      ("STATE", _text("status.state")), ("PAID-UNTIL", _text("status.paidUntil"))],
                     [("REASON", _text("status.suspendReason")), ("AUTO-RENEW", _text("spec.autoRenew"))]),
    "VPS": ([("HOSTNAME", _text("spec.hostname")), ("PHASE", _text("status.phase")), ("NODE", _text("status.node")),
             ("IPV4", _text("status.ips.ipv4")), ("POWER", _text("spec.powerState"))],
            [("SUBSCRIPTION", _text("spec.subscription")), ("IMAGE", _text("spec.image")),
             ("GENERATION", _text("metadata.generation"))]),
}


def columns(kind: str, wide: bool) -> list[Column]:
    base, extra = COLUMNS.get(kind, ([], []))
    return [_NAME, *base, *(extra if wide else []), ("AGE", age)]


def rows(kind: str, items: Sequence[dict[str, Any]], *, wide: bool = False) -> list[list[str]]:
    cols = columns(kind, wide)
    return [[fn(item) for _, fn in cols] for item in items]


def format_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    widths = [len(h) for h in header]
    for row in body:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = ["   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *body]]
    return "\n".join(lines)


def render(kind: str, items: Sequence[dict[str, Any]], *, wide: bool = False) -> str:
    return format_table([h for h, _ in columns(kind, wide)], rows(kind, items, wide=wide))
