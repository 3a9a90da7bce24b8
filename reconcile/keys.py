"""The etcd key layout of DESIGN.md, in one place. Pure string functions."""

from __future__ import annotations

from specs.kinds import Resource

ROOT = "/hostplane/v1"


def kind_segment(cls: type[Resource]) -> str:
    return cls.PLURAL


def spec_prefix(cls: type[Resource], root: str = ROOT) -> str:
    return f"{root}/specs/{kind_segment(cls)}/"


def spec_key(cls: type[Resource], name: str, root: str = ROOT) -> str:
    return f"{spec_prefix(cls, root)}{name}"


def status_prefix(cls: type[Resource], root: str = ROOT) -> str:
    return f"{root}/status/{kind_segment(cls)}/"


def status_key(cls: type[Resource], name: str, root: str = ROOT) -> str:
    return f"{status_prefix(cls, root)}{name}"


def nodes_prefix(root: str = ROOT) -> str:
    """Every node's keys (desired, observed, tombstones, heartbeats)."""
    return f"{root}/nodes/"


def node_entry(node: str, part: str, name: str | None = None) -> str:
    """A key's name relative to `nodes_prefix`: `<node>/<part>[/<name>]` (how the nodes informer names it)."""
    return f"{node}/{part}" if name is None else f"{node}/{part}/{name}"


def node_prefix(node: str, root: str = ROOT) -> str:
    return f"{root}/nodes/{node}/"


def desired_prefix(node: str, root: str = ROOT) -> str:
    return f"{root}/nodes/{node}/desired/"


def desired_key(node: str, vps: str, root: str = ROOT) -> str:
    return f"{desired_prefix(node, root)}{vps}"


def observed_prefix(node: str, root: str = ROOT) -> str:
    return f"{root}/nodes/{node}/observed/"


def observed_key(node: str, vps: str, root: str = ROOT) -> str:
    return f"{observed_prefix(node, root)}{vps}"


def tombstone_prefix(node: str, root: str = ROOT) -> str:
    return f"{root}/nodes/{node}/tombstones/"


def tombstone_key(node: str, uid: str, root: str = ROOT) -> str:
    """The explicit order to delete one incarnation's domain and volumes; bound to its uid."""
    return f"{tombstone_prefix(node, root)}{uid}"


def purge_prefix(node: str, root: str = ROOT) -> str:
    return f"{root}/purges/{node}/"


def purge_key(node: str, uid: str, root: str = ROOT) -> str:
    """An operator's request to delete the orphan domain `uid` on `node` (the controllers write its tombstone)."""
    return f"{purge_prefix(node, root)}{uid}"


def cluster_id_key(root: str = ROOT) -> str:
    """The cluster's id, created once; stamped on every domain and pool so no other cluster touches them."""
    return f"{root}/meta/cluster-id"


def heartbeat_key(node: str, root: str = ROOT) -> str:
    return f"{root}/nodes/{node}/heartbeat"


def ledger_prefix(customer: str, root: str = ROOT) -> str:
    return f"{root}/ledger/{customer}/"


def idempotency_key(scope: str, key: str, root: str = ROOT) -> str:
    return f"{root}/idempotency/{scope}/{key}"


def election_key(name: str, root: str = ROOT) -> str:
    return f"{root}/election/{name}"


def events_prefix(root: str = ROOT) -> str:
    return f"{root}/events/"


def last_segment(key: str) -> str:
    return key.rsplit("/", 1)[-1]


def name_claim_key(name: str, root: str = ROOT) -> str:
    """Who first used a Subscription/VPS name (api.names): kept after the objects are deleted."""
    return f"{root}/names/{name}"


# ------------------------------------------------------------------ the whole tree


def root_prefix(root: str = ROOT) -> str:
    """Every key of the installation (`<root>/`)."""
    return f"{root}/"


def specs_prefix(root: str = ROOT) -> str:
    """Every spec key, of every kind."""
    return f"{root}/specs/"


def objects_prefix(root: str = ROOT) -> str:
    """Every spec and status key (`<root>/s`: `specs/` and `status/` together), for one watch."""
    return f"{root}/s"


def under(root: str, path: str) -> str:
    """`<root>/<path>` for a path of the role table (reconcile.roles), which names ranges of this layout."""
    return f"{root}/{path}"


# ------------------------------------------------------------------ allocation (controllers.layout)


def alloc_prefix(root: str = ROOT) -> str:
    return f"{root}/alloc/"


def booking_prefix(root: str = ROOT) -> str:
    return f"{root}/alloc/vps/"


def booking_key(vps: str, root: str = ROOT) -> str:
    return f"{booking_prefix(root)}{vps}"


def node_alloc_prefix(root: str = ROOT) -> str:
    return f"{root}/alloc/nodes/"


def node_alloc_key(node: str, root: str = ROOT) -> str:
    return f"{node_alloc_prefix(root)}{node}"


def ip_prefix(root: str = ROOT, pool: str | None = None) -> str:
    return f"{root}/alloc/ips/" if pool is None else f"{root}/alloc/ips/{pool}/"


def ip_key(pool: str, address: str, root: str = ROOT) -> str:
    return f"{ip_prefix(root, pool)}{address}"


def mac_prefix(root: str = ROOT) -> str:
    return f"{root}/alloc/macs/"


def mac_key(mac: str, root: str = ROOT) -> str:
    return f"{mac_prefix(root)}{mac}"


# ------------------------------------------------------------------ billing


def account_key(customer: str, root: str = ROOT) -> str:
    return f"{root}/billing/accounts/{customer}"


def accounts_prefix(root: str = ROOT) -> str:
    return f"{root}/billing/accounts/"


def entry_key(customer: str, seq: int, root: str = ROOT) -> str:
    return f"{ledger_prefix(customer, root)}{seq:012d}"


def statements_prefix(customer: str, root: str = ROOT) -> str:
    return f"{root}/billing/statements/{customer}/"


def statement_key(customer: str, month: str, root: str = ROOT) -> str:
    return f"{statements_prefix(customer, root)}{month}"


def cursors_prefix(root: str = ROOT) -> str:
    return f"{root}/billing/charged/"


def cursor_key(sub: str, root: str = ROOT) -> str:
    return f"{cursors_prefix(root)}{sub}"


def outbox_prefix(root: str = ROOT) -> str:
    return f"{root}/billing/outbox/"


def outbox_key(customer: str, sub: str, warning_key: str, root: str = ROOT) -> str:
    return f"{outbox_prefix(root)}{customer}/{sub}.{warning_key}"


def webhook_secret_key(provider_name: str, root: str = ROOT) -> str:
    return f"{root}/billing/webhook-secrets/{provider_name}"


# ------------------------------------------------------------------ access (api)


def auth_prefix(root: str = ROOT) -> str:
    return f"{root}/auth/"


def tokens_prefix(root: str = ROOT) -> str:
    return f"{root}/auth/tokens/"


def token_key(root: str, token_id: str) -> str:
    return tokens_prefix(root) + token_id


def node_tokens_prefix(root: str = ROOT) -> str:
    return f"{root}/auth/node-tokens/"


def node_token_key(root: str, token_id: str) -> str:
    return node_tokens_prefix(root) + token_id


def passwords_prefix(root: str = ROOT) -> str:
    return f"{root}/auth/passwords/"


def password_key(root: str, customer: str) -> str:
    return passwords_prefix(root) + customer


def sessions_prefix(root: str = ROOT) -> str:
    return f"{root}/auth/sessions/"


def session_key(root: str, digest: str) -> str:
    """A session's key by the digest of its id (the id itself is never stored)."""
    return sessions_prefix(root) + digest


def session_index_prefix(root: str, customer: str) -> str:
    return f"{root}/auth/session-index/{customer}/"


def audit_prefix(root: str = ROOT) -> str:
    return f"{root}/audit/"


def audit_key(root: str, record: str) -> str:
    return audit_prefix(root) + record


# The DigitalOcean-compatible API (api/do): integer ids, customers' SSH keys, action records.
def do_counter_key(root: str = ROOT) -> str:
    """The last integer id handed out (droplets, images, keys and actions share one sequence)."""
    return f"{root}/do/next-id"


def do_id_key(uid: str, root: str = ROOT) -> str:
    """An object's integer id, by its uid: stable for that incarnation's life."""
    return f"{root}/do/ids/{uid}"


def do_droplet_prefix(customer: str, root: str = ROOT) -> str:
    return f"{root}/do/droplets/{customer}/"


def do_droplet_key(customer: str, droplet_id: int, root: str = ROOT) -> str:
    """Which VPS (name and uid) a customer's droplet id is, with its tags and requested region."""
    return f"{do_droplet_prefix(customer, root)}{droplet_id:012d}"


def do_ssh_key_prefix(customer: str, root: str = ROOT) -> str:
    return f"{root}/do/keys/{customer}/"


def do_ssh_key_key(customer: str, key_id: int, root: str = ROOT) -> str:
    return f"{do_ssh_key_prefix(customer, root)}{key_id:012d}"


def do_action_prefix(customer: str, root: str = ROOT) -> str:
    return f"{root}/do/actions/{customer}/"


def do_action_key(customer: str, action_id: int, root: str = ROOT) -> str:
    return f"{do_action_prefix(customer, root)}{action_id:012d}"


def console_ticket_prefix(root: str = ROOT) -> str:
    return f"{root}/consoles/"


def console_ticket_key(digest: str, root: str = ROOT) -> str:
    """A one-time console ticket, stored under the sha256 of its secret (never the secret); lease-bound."""
    return f"{console_ticket_prefix(root)}{digest}"
