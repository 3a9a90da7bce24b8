"""Hypervisors that join: one-time bootstrap tokens and the API routes that turn one into a node
certificate.

    GET  /v1/join/ca   the CA certificate (public; a joining host checks its hash first)
    POST /v1/join      {token, csr, node: {libvirtURI, capacity, ...}, labels?}
                       -> {certificate, ca, etcd: {endpoints}, node}

A bootstrap token `hpn_<node>_<id>_<secret>` names one node (the joining host learns its name
from it); `<root>/auth/node-tokens/<id>` holds
{id, node, salt, sha256, expires} (never the secret), bound to a lease that ends with it.
`hostplane node token create NAME` (on the control plane, with the root certificate) makes the
node's etcd user and role and the token. A join checks everything first (token, expiry, the
CSR's CN and key, the Node spec), then consumes the token in one compare-and-delete, signs the
CSR (the host's private key never leaves it) and registers the Node. A used, expired or forged
token is refused with a 401 saying which, and nothing is written.

Joining needs the CA key in the API process (`hostplane api --join-pki DIR`; `hostplane up`
passes its PKI); without it these routes answer 404. Whoever holds that key can mint any
identity, so run a joining API only where the CA lives.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from api.deps import Body, State
from api.errors import ApiError, BadRequest, Invalid, Unauthorized
from reconcile import keys
from reconcile.errors import AlreadyExists
from reconcile.etcd import Delete, ModIs
from reconcile.keys import node_token_key as token_key
from reconcile.objects import Store
from reconcile.pki import PKIError, identity_for
from specs.kinds import Node

router = APIRouter(prefix="/v1", tags=["nodes"])

PREFIX = "hpn_"
DEFAULT_TTL = timedelta(minutes=15)


class JoinDisabled(ApiError):
    status, title, slug = 404, "Not found", "not-found"


class JoinRefused(Exception):
    """A bootstrap token that cannot be used; the message says why (never the secret)."""


def _digest(salt: str, secret: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt) + secret.encode()).hexdigest()


def create_node_token(store: Store, node: str, *, ttl: timedelta = DEFAULT_TTL,
                      now: datetime | None = None) -> str:
    """Store a one-time token for `node` (hashed, lease-bound); return it (shown once)."""
    identity_for("node", node)
    now = now or datetime.now(UTC)
    token_id, secret, salt = secrets.token_hex(8), secrets.token_urlsafe(32), secrets.token_hex(16)
    rec = {"id": token_id, "node": node, "salt": salt, "sha256": _digest(salt, secret),
           "expires": (now + ttl).isoformat()}
    lease = store.grant_lease(max(1, int(ttl.total_seconds())) + 60)
    store.kv_put(token_key(store.root, token_id), json.dumps(rec).encode(), lease=lease, expect=0)
    return f"{PREFIX}{node}_{token_id}_{secret}"


def token_node(token: str) -> str:
    """The node a bootstrap token is for (as the token says; checked against the record on use)."""
    if not token.startswith(PREFIX) or token.count("_") < 3:
        raise JoinRefused("not a node bootstrap token")
    node = token[len(PREFIX):].split("_", 1)[0]
    try:
        identity_for("node", node)
    except PKIError:
        raise JoinRefused("not a node bootstrap token") from None
    return node


def delete_node_tokens(store: Store, node: str) -> int:
    """Remove every outstanding token of `node` (a revoke); returns how many."""
    kvs, _ = store.kv_range(keys.node_tokens_prefix(store.root))
    n = 0
    for kv in kvs:
        if json.loads(kv.value).get("node") == node:
            n += bool(store.kv_delete(kv.key))
    return n


@dataclass(frozen=True)
class _Checked:
    node: str
    key: str
    mod_revision: int


def check_node_token(store: Store, token: str, now: datetime) -> _Checked:
    """The token's node if it is genuine, unused and unexpired; JoinRefused otherwise. Reads only."""
    node = token_node(token)
    token_id, _, secret = token[len(PREFIX) + len(node) + 1:].partition("_")
    if not token_id or len(token_id) > 32 or not all(c in "0123456789abcdef" for c in token_id):
        raise JoinRefused("not a node bootstrap token")
    kv = store.kv_get(token_key(store.root, token_id))
    if kv is None:
        raise JoinRefused("unknown or already used token")
    rec = json.loads(kv.value)
    if rec.get("node") != node or not hmac.compare_digest(_digest(rec["salt"], secret), str(rec["sha256"])):
        raise JoinRefused("unknown or already used token")
    if datetime.fromisoformat(rec["expires"]) <= now:
        raise JoinRefused("the token has expired")
    return _Checked(str(rec["node"]), kv.key, kv.mod_revision)


def consume(store: Store, checked: _Checked) -> None:
    """Delete the token if it is still the one checked; a concurrent join loses here."""
    if not store.txn([ModIs(checked.key, checked.mod_revision)], [Delete(checked.key)]).succeeded:
        raise JoinRefused("unknown or already used token")


@router.get("/join/ca", summary="The CA certificate a joining node pins (by hash) and then trusts")
async def join_ca(state: State) -> dict[str, str]:
    if state.join_pki is None:
        raise JoinDisabled("joining is not enabled on this API")
    return {"ca": state.join_pki.ca_cert.read_text()}


@router.post("/join", summary="Join a hypervisor: bootstrap token + CSR -> node certificate, Node registered")
async def join(body: Body, state: State) -> dict[str, Any]:
    pki = state.join_pki
    if pki is None:
        raise JoinDisabled("joining is not enabled on this API")
    if not isinstance(body, dict):
        raise Invalid("the body must be an object", [{"path": "", "message": "must be a mapping"}])
    unknown = sorted(set(body) - {"token", "csr", "node", "labels"})
    missing = sorted({"token", "csr", "node"} - set(body))
    errors = [{"path": f, "message": "unknown field"} for f in unknown]
    errors += [{"path": f, "message": "is required"} for f in missing]
    if errors:
        raise Invalid("; ".join(f"{e['path']}: {e['message']}" for e in errors), errors)
    token, csr, spec, labels = body["token"], body["csr"], body["node"], body.get("labels") or {}
    if not isinstance(token, str) or not isinstance(csr, str) or not isinstance(spec, dict):
        raise BadRequest("token and csr must be strings, node an object (the Node's spec)")
    if not isinstance(labels, dict):
        raise BadRequest("labels must be an object")
    store = state.store

    def run() -> dict[str, Any]:
        try:
            checked = check_node_token(store, token, datetime.now(UTC))
        except JoinRefused as exc:
            raise Unauthorized(str(exc)) from None
        try:
            node = Node.model_validate({"apiVersion": "hostplane.io/v1", "kind": "Node",
                                        "metadata": {"name": checked.node, "labels": labels}, "spec": spec})
        except ValidationError as exc:
            errs = [{"path": ".".join(str(p) for p in e["loc"]).replace("spec.", "node.", 1), "message": e["msg"]}
                    for e in exc.errors()]
            raise Invalid("the node's spec is not valid", errs) from None
        identity = identity_for("node", checked.node)
        try:
            cert = pki.sign_csr(csr.encode(), identity)  # checks CN and key before the token is spent
        except PKIError as exc:
            raise Invalid(str(exc), [{"path": "csr", "message": str(exc)}]) from None
        try:
            consume(store, checked)
        except JoinRefused as exc:
            raise Unauthorized(str(exc)) from None
        with contextlib.suppress(AlreadyExists):  # registered beforehand by an operator: kept as it is
            store.create(node)
        return {"certificate": cert.decode(), "ca": pki.ca_cert.read_text(),
                "etcd": {"endpoints": list(store.conn.endpoints)}, "node": checked.node}

    return await run_in_threadpool(run)
