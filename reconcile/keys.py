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
