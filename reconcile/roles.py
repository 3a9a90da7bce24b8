"""Who may touch which etcd keys: the one definition the etcd roles are generated from.

Every running process connects to etcd with a client certificate whose common name is its
identity; etcd (`--client-cert-auth`, auth enabled) maps it to the user of that name, which
holds exactly one role of the same name, built by `permissions(identity, root)` from the
table below. `docs/security.md` shows the same table (`role_table()`; a test keeps them equal).

Paths are relative to the key root (`/hostplane/v1`); one ending in "/" is a prefix, anything
else one key. `{node}` is the node's name for a `node-<name>` identity. etcd compares ranges,
not patterns: "every node's desired/" cannot be expressed, so the controllers get `nodes/`.

Pure: no etcd here. `reconcile.store.Store.apply_role` writes a role into etcd.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Access = Literal["read", "write", "readwrite"]


@dataclass(frozen=True)
class Grant:
    """A permission relative to the root: `path` (prefix when it ends in "/") and the access."""

    path: str
    access: Access
    why: str


@dataclass(frozen=True)
class Permission:
    """An etcd permission on absolute keys: one key, or every key starting with `key` (prefix)."""

    key: str
    prefix: bool
    access: Access


# Every identity reads the root's own empty key: `Store.revision()` learns the current
# revision from a (keys-only) read of it. It holds nothing.
_PROBE = Grant("", "read", "current revision (an empty key)")

ROLES: dict[str, tuple[Grant, ...]] = {
    "api": (
        Grant("s", "read", "watch of specs/ and status/ in one range (the watch hub)"),
        Grant("specs/", "readwrite", "objects written through the API"),
        Grant("status/", "readwrite", "payments and ledger update customer and subscription status"),
        Grant("auth/", "readwrite", "tokens, sessions, customer passwords"),
        Grant("audit/", "readwrite", "the audit log"),
        Grant("ledger/", "readwrite", "payments append ledger entries"),
        Grant("billing/", "readwrite", "accounts, statements, webhook secrets"),
        Grant("idempotency/", "readwrite", "first results of keyed requests (payments, orders)"),
        Grant("names/", "readwrite", "which customer first used a Subscription/VPS name (api.names)"),
        Grant("events/", "read", "events shown to customers and operators"),
        Grant("purges/", "readwrite", "operators' requests to purge orphan domains (the controllers carry them out)"),
        Grant("do/", "readwrite", "DigitalOcean-compatible API: integer ids, customers' SSH keys, action records"),
        Grant("nodes/", "read", "observations (DigitalOcean-compatible actions), heartbeats (console endpoints)"),
        Grant("consoles/", "readwrite", "one-time console tickets (hashed, lease-bound)"),
    ),
    "controllers": (
        Grant("specs/", "readwrite", "finalizers, garbage collection"),
        Grant("status/", "readwrite", "status of every kind"),
        Grant("nodes/", "readwrite", "desired/ of every node; observed/ and heartbeats read"),
        Grant("alloc/", "readwrite", "capacity, IP and MAC bookings"),
        Grant("billing/", "readwrite", "charging, statements, outbox"),
        Grant("ledger/", "readwrite", "charges"),
        Grant("idempotency/", "readwrite", "charge keys"),
        Grant("events/", "readwrite", "events"),
        Grant("election/", "readwrite", "leader election and its fence"),
        Grant("meta/", "readwrite", "the cluster id, created on first start"),
        Grant("purges/", "readwrite", "orphan purge requests, turned into tombstones"),
    ),
    "node": (
        Grant("nodes/{node}/desired/", "read", "its own domains' desired state"),
        Grant("nodes/{node}/observed/", "readwrite", "its own domains' observed state"),
        Grant("nodes/{node}/heartbeat", "readwrite", "its own heartbeat (lease-bound)"),
        Grant("nodes/{node}/tombstones/", "readwrite", "orders to delete its domains; removed once carried out"),
        Grant("meta/cluster-id", "read", "the cluster id stamped on its domains and pool"),
    ),
    "fleet": (
        Grant("nodes/", "readwrite", "simulated nodes of `up --simulate-nodes` and benchmarks"),
        Grant("meta/cluster-id", "read", "the cluster id stamped on its domains and pools"),
    ),
    "operator": (
        Grant("/", "readwrite", "everything under the root (CLI commands that talk to etcd)"),
    ),
}

# Identity kinds that are no role: root is etcd's own (bootstrap only).
NOT_A_ROLE = ("root",)


def role_kind(identity: str) -> str:
    """The ROLES entry of `identity`: `node-a` → "node", `operator-bob` → "operator"."""
    kind, sep, name = identity.partition("-")
    if sep and name and kind in ("node", "operator"):
        return kind
    if identity in ROLES and identity not in ("node", "operator"):
        return identity
    raise ValueError(f"no role for identity {identity!r}")


def grants(identity: str) -> tuple[Grant, ...]:
    """The grants of `identity` with `{node}` filled in, the probe first."""
    kind = role_kind(identity)
    node = identity.partition("-")[2] if kind == "node" else ""
    return (_PROBE, *(Grant(g.path.replace("{node}", node), g.access, g.why) for g in ROLES[kind]))


def permissions(identity: str, root: str) -> list[Permission]:
    """The etcd permissions of `identity` for keys under `root` (no trailing slash)."""
    out = []
    for g in grants(identity):
        if g.path == "":
            out.append(Permission(root + "/", False, g.access))
        elif g.path == "/":
            out.append(Permission(root + "/", True, g.access))
        else:
            out.append(Permission(f"{root}/{g.path}", g.path.endswith("/") or g.path == "s", g.access))
    return out


def role_table() -> str:
    """The role table of docs/security.md, as Markdown."""
    lines = ["| identity | key (under `/hostplane/v1/`) | access | why |", "| --- | --- | --- | --- |"]
    for kind, gs in ROLES.items():
        who = {"node": "node-<name>", "operator": "operator-<name>"}.get(kind, kind)
        for g in (_PROBE, *gs):
            path = g.path.replace("{node}", "<name>")
            shown = "(the root key itself)" if path == "" else ("every key" if path == "/" else
                                                                 f"`{path}`" + ("*" if path == "s" else ""))
            lines.append(f"| `{who}` | {shown} | {g.access} | {g.why} |")
    return "\n".join(lines) + "\n"
