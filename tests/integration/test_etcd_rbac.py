"""etcd itself enforces the roles of reconcile/roles.py: identity x key prefix x read/write.

The expected answer of every cell comes from the role definition; the answer checked is etcd's
(a PermissionDenied from the server), not our client's. The guest-escape reproduction of issue 11
is here too: without a certificate signed by the CA nothing reaches etcd at all.
"""

from __future__ import annotations

import json
import socket
import ssl
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from pyetcd import etcdrpc
from pyetcd.etcdrpc import rpc_pb2_grpc

from reconcile import roles
from reconcile.errors import PermissionDenied
from reconcile.etcd_server import EtcdServer
from reconcile.objects import Store
from reconcile.pki import PKI

IDENTITIES = ["api", "controllers", "fleet", "node-a", "operator-ops"]
# One key in every area of the layout (docs/CONTRACTS.md), relative to the root.
KEYS = [
    "specs/plans/p", "specs/customers/c", "status/vps/v", "nodes/a/desired/v", "nodes/a/observed/v",
    "nodes/a/heartbeat", "nodes/b/desired/v", "nodes/b/observed/v", "nodes/b/heartbeat",
    "ledger/c/000000000001", "auth/tokens/t", "auth/sessions/s", "audit/20260101T000000.000000Z-x",
    "billing/accounts/c", "idempotency/charge/k", "events/VPS/v/1", "election/controllers",
    "alloc/vps/v", "alloc/nodes/a", "meta/cluster-id", "purges/a/u", "nodes/a/tombstones/u",
    "nodes/b/tombstones/u", "names/vps/x",
]


def allowed(identity: str, root: str, key: str, op: str) -> bool:
    """What the role definition says etcd must answer (a pure reading of roles.permissions)."""
    for p in roles.permissions(identity, root):
        hit = key.startswith(p.key) if p.prefix else key == p.key
        if hit and (p.access == "readwrite" or p.access == op):
            return True
    return False


@pytest.fixture
def root(store: Store) -> str:
    return store.root


@pytest.fixture
def stores(etcd_session: EtcdServer, root: str) -> Iterator[dict[str, Store]]:
    opened = {i: etcd_session.store(i, root=root, retry_seconds=0) for i in IDENTITIES}
    yield opened
    for s in opened.values():
        s.close()


@pytest.mark.parametrize("identity", IDENTITIES)
def test_authorization_matrix(identity: str, stores: dict[str, Store], root: str) -> None:
    """Every identity x key x read/write is allowed or denied by etcd exactly as the role definition says."""
    s = stores[identity]
    wrong: list[str] = []
    for rel in KEYS:
        key = f"{root}/{rel}"
        for op in ("read", "write"):
            try:
                if op == "read":
                    s.kv_get(key)
                else:
                    s.kv_put(key, b"{}")
                got = True
            except PermissionDenied as exc:
                assert key in exc.prefix
                got = False
            if got != allowed(identity, root, key, op):
                wrong.append(f"{op} {rel}: etcd {'allowed' if got else 'denied'}")
    assert not wrong, f"{identity}: {wrong}"


def test_matrix_holds_the_issue_claims(root: str) -> None:
    """The definition itself denies a node other nodes, specs, auth and the ledger, and the controllers auth."""
    for rel in ("nodes/b/desired/v", "specs/plans/p", "auth/tokens/t", "ledger/c/1", "status/vps/v",
                "billing/accounts/c", "election/controllers"):
        assert not allowed("node-a", root, f"{root}/{rel}", "read"), rel
    assert not allowed("node-a", root, f"{root}/nodes/a/desired/v", "write")
    assert allowed("node-a", root, f"{root}/nodes/a/observed/v", "write")
    assert not allowed("controllers", root, f"{root}/auth/tokens/t", "read")
    assert not allowed("api", root, f"{root}/election/controllers", "write")


def test_node_cannot_list_auth_or_forge_a_token(stores: dict[str, Store], root: str) -> None:
    """Issue 11's escape, with a node certificate: listing auth/tokens and writing a fake admin token fail."""
    node = stores["node-a"]
    with pytest.raises(PermissionDenied, match="auth/tokens"):
        node.kv_range(f"{root}/auth/tokens/")
    fake = {"id": "x", "role": "admin", "salt": "", "sha256": "0" * 64, "created": "2026-01-01T00:00:00Z"}
    with pytest.raises(PermissionDenied):
        node.kv_put(f"{root}/auth/tokens/x", json.dumps(fake).encode())
    with pytest.raises(PermissionDenied):
        node.kv_range(f"{root}/nodes/b/desired/")
    with pytest.raises(PermissionDenied):
        node.kv_range(f"{root}/", keys_only=True)


def test_node_watch_on_another_node_stops_with_permission_denied(stores: dict[str, Store], root: str) -> None:
    """A watch etcd refuses ends with PermissionDenied instead of reconnecting for ever."""
    w = stores["node-a"].watch(f"{root}/nodes/b/", start_revision=1, on_events=lambda evs, rev: None)
    try:
        w._thread.join(10)
        assert isinstance(w.error, PermissionDenied) and w.reconnects == 0
    finally:
        w.stop()


def test_root_never_granted_to_a_role() -> None:
    """No role in the definition is etcd's root, and no grant reaches outside the root prefix."""
    root = "/hostplane/v1"
    for kind in roles.ROLES:
        ident = f"{kind}-x" if kind in ("node", "operator") else kind
        for p in roles.permissions(ident, root):
            assert p.key.startswith(root + "/") or (p.key == root + "/s"), p
    with pytest.raises(ValueError):
        roles.grants("root")


# ------------------------------------------------------------------ no certificate, no etcd


def _range_body(key: str) -> bytes:
    import base64

    return json.dumps({"key": base64.b64encode(key.encode()).decode()}).encode()


def test_plaintext_http_and_grpc_fail(etcd_session: EtcdServer) -> None:
    """The guest's view: plain HTTP and an insecure gRPC channel to etcd's client port get nothing."""
    url = f"http://{etcd_session.endpoint}/v3/kv/range"
    with pytest.raises((urllib.error.URLError, ConnectionError, http_errors())):
        urllib.request.urlopen(urllib.request.Request(url, data=_range_body("/hostplane/v1/auth/")), timeout=3)
    channel = grpc.insecure_channel(etcd_session.endpoint)
    try:
        stub = rpc_pb2_grpc.KVStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Range(etcdrpc.RangeRequest(key=b"/hostplane/v1/auth/", range_end=b"/hostplane/v1/auth0"), timeout=3)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        channel.close()


def http_errors() -> type[Exception]:
    import http.client

    return http.client.HTTPException


def test_tls_without_client_certificate_fails(etcd_session: EtcdServer) -> None:
    """TLS that trusts etcd's CA but shows no client certificate is refused in the handshake."""
    ctx = ssl.create_default_context(cafile=str(etcd_session.pki.ca_cert))
    url = f"https://{etcd_session.endpoint}/v3/kv/range"
    with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
        urllib.request.urlopen(urllib.request.Request(url, data=_range_body("/hostplane/v1/auth/")),
                               timeout=3, context=ctx)
    creds = grpc.ssl_channel_credentials(root_certificates=etcd_session.pki.ca_cert.read_bytes())
    channel = grpc.secure_channel(etcd_session.endpoint, creds)
    try:
        with pytest.raises(grpc.RpcError):
            rpc_pb2_grpc.KVStub(channel).Range(etcdrpc.RangeRequest(key=b"/hostplane/v1/auth/"), timeout=3)
    finally:
        channel.close()


def test_certificate_from_another_ca_fails(etcd_session: EtcdServer, tmp_path: Path) -> None:
    """A self-made CA's certificate with CN=root (a forged identity) does not get through the handshake."""
    forged = PKI(tmp_path / "forged")
    forged.init()
    pair = forged.issue("root")
    ctx = ssl.create_default_context(cafile=str(etcd_session.pki.ca_cert))
    ctx.load_cert_chain(str(pair.cert), str(pair.key))
    with (pytest.raises((ssl.SSLError, ConnectionError, OSError)),
          socket.create_connection(("127.0.0.1", etcd_session.client_port), timeout=3) as raw,
          ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls):
        tls.sendall(b"POST /v3/kv/range HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        if not tls.recv(1024):
            raise ConnectionError("closed")


def test_revoked_identity_reaches_nothing(etcd_session: EtcdServer, root: str) -> None:
    """Removing a node's user and role makes its still-valid certificate useless at once."""
    name = f"node-rv{uuid.uuid4().hex[:6]}"
    s = etcd_session.store(name, root=root, retry_seconds=0)
    try:
        s.kv_put(f"{root}/nodes/{name[5:]}/observed/v", b"{}")
        etcd_session.remove_identity(name)
        with pytest.raises(PermissionDenied):
            s.kv_put(f"{root}/nodes/{name[5:]}/observed/v", b"{}")
    finally:
        s.close()
