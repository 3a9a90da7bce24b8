"""`hostplane node token create|join|revoke`: adding and removing hypervisors.

On the control plane (with its PKI in `--data-dir`; these use etcd's root identity, for
bootstrapping the node's identity only):

    hostplane node token create NAME [--ttl 15] [--server URL]   make node-NAME's etcd user and role,
                                                                 print a one-time token and the join command
    hostplane node revoke NAME                                   delete node-NAME's etcd user and role
                                                                 and its outstanding tokens (at once)

On the new hypervisor:

    hostplane node join --server URL --token T --ca-hash sha256:... [--data-dir DIR] [--libvirt URI] [--no-start]

`join` makes its key here (it never leaves the host), sends a CSR with the token, writes
`<data-dir>/pki/` and `<data-dir>/etcd.toml`, and runs `hostplane agent` with them (unless
--no-start; a systemd unit would run the agent instead: deploy/systemd/). A refusal exits 2
with the server's reason and leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import ssl
import sys
from datetime import timedelta
from pathlib import Path
from typing import NoReturn

import click
import httpx

from api.node_join import JoinRefused, create_node_token, delete_node_tokens, token_node
from reconcile import keys, roles
from reconcile.connection import EtcdConnection
from reconcile.errors import StoreError
from reconcile.objects import Store
from reconcile.pki import PKI, PKIError, ca_hash, identity_for, new_key_and_csr, write_private


def _fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def _default_endpoints(data_dir: Path) -> str:
    """`hostplane up`'s etcd (from its ports files) when nothing else is given."""
    with contextlib.suppress(OSError, ValueError, KeyError):
        cluster = data_dir / "cluster-ports.json"
        if cluster.exists():
            return ",".join(f"127.0.0.1:{c}" for c, _ in json.loads(cluster.read_text())["members"])
        return f"127.0.0.1:{json.loads((data_dir / 'ports.json').read_text())['client']}"
    return os.environ.get("HOSTPLANE_ETCD", "127.0.0.1:2379")


def _root_store(data_dir: Path, etcd: str | None) -> Store:
    pki = PKI(data_dir / "pki")
    pair = pki.pair("root")
    if not pki.exists() or not pair.cert.exists():
        _fail(f"no PKI with a root certificate in {pki.dir}: run this on the control plane (see `hostplane pki`)")
    conn = EtcdConnection.make(etcd or _default_endpoints(data_dir), ca=pki.ca_cert, cert=pair.cert, key=pair.key)
    return Store(conn, retry_seconds=5.0)


_data_dir = click.option("--data-dir", type=click.Path(path_type=Path), default=Path("var"), show_default=True)
_etcd = click.option("--etcd", default=None, help="etcd endpoints (default: hostplane up's in --data-dir)")


@click.group("node")
def node() -> None:
    """Add hypervisors with a one-time token, or revoke them."""


@node.group("token")
def token() -> None:
    """One-time bootstrap tokens for joining hypervisors."""


@token.command("create")
@click.argument("name")
@click.option("--ttl", type=click.IntRange(1, 24 * 60), default=15, show_default=True, help="minutes")
@click.option("--server", default="https://<this-host>:8080", help="the API URL to print in the join command")
@_data_dir
@_etcd
def token_create(name: str, ttl: int, server: str, data_dir: Path, etcd: str | None) -> None:
    """Make node NAME's etcd identity and print a one-time token (shown once)."""
    try:
        identity = identity_for("node", name)
    except PKIError as exc:
        _fail(str(exc))
    with _root_store(data_dir, etcd) as store:
        try:
            store.apply_role(identity, roles.permissions(identity, keys.ROOT))
            tok = create_node_token(store, name, ttl=timedelta(minutes=ttl))
        except StoreError as exc:
            _fail(f"etcd: {exc}")
    pin = ca_hash(PKI(data_dir / "pki").ca_cert.read_bytes())
    click.echo(f"token (valid {ttl} min, once): {tok}\n"
               f"on the new host:\n  hostplane node join --server {server} --token {tok} --ca-hash {pin}")


@node.command("revoke")
@click.argument("name")
@_data_dir
@_etcd
def revoke(name: str, data_dir: Path, etcd: str | None) -> None:
    """Delete node NAME's etcd user and role (its certificate reaches nothing from now) and its tokens."""
    try:
        identity = identity_for("node", name)
    except PKIError as exc:
        _fail(str(exc))
    with _root_store(data_dir, etcd) as store:
        try:
            store.remove_identity(identity)
            n = delete_node_tokens(store, name)
        except StoreError as exc:
            _fail(f"etcd: {exc}")
    click.echo(f"revoked {identity}" + (f" and {n} outstanding token(s)" if n else ""))


def _host_capacity(data_dir: Path) -> dict[str, int]:
    from api.up import _host_capacity as capacity

    return capacity(data_dir).model_dump()


@node.command("join")
@click.option("--server", required=True, help="the control plane's API URL (https)")
@click.option("--token", "tok", required=True, help="the one-time token from `hostplane node token create`")
@click.option("--ca-hash", "ca_hash_pin", default=None,
              help="sha256:... of the control plane's CA (printed with the token)")
@click.option("--ca", "ca_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="or the CA certificate itself")
@click.option("--libvirt", "libvirt_uri", default="qemu:///system", show_default=True)
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="a label of the Node (repeatable)")
@click.option("--etcd", default=None, help="etcd endpoints as this host reaches them (default: the API's)")
@click.option("--start/--no-start", default=True, show_default=True, help="run `hostplane agent` afterwards")
@_data_dir
def join(server: str, tok: str, ca_hash_pin: str | None, ca_file: Path | None, libvirt_uri: str,
         labels: tuple[str, ...], etcd: str | None, start: bool, data_dir: Path) -> None:
    """Join this host: get its node certificate with the token, write its config, run the agent."""
    try:
        name = token_node(tok)
    except JoinRefused as exc:
        _fail(str(exc))
    if not server.startswith("https://"):
        _fail("--server must be an https:// URL")
    if (ca_hash_pin is None) == (ca_file is None):
        _fail("give exactly one of --ca-hash (printed with the token) or --ca FILE")
    label_map: dict[str, str] = {}
    for item in labels:
        k, sep, v = item.partition("=")
        if not sep:
            _fail(f"--label {item!r}: expected KEY=VALUE")
        label_map[k] = v
    if ca_file is not None:
        ca_pem = ca_file.read_bytes()
    else:
        # Only to learn the CA: nothing is sent, and the CA is used only if its hash is the pinned one.
        try:
            r = httpx.get(server.rstrip("/") + "/v1/join/ca", verify=False, timeout=15)  # only the CA, checked below
            r.raise_for_status()
            ca_pem = str(r.json()["ca"]).encode()
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            _fail(f"cannot fetch the CA from {server}: {exc}")
        if ca_hash(ca_pem) != ca_hash_pin:
            _fail(f"the server's CA is not the one pinned (--ca-hash): it is {ca_hash(ca_pem)}; not joining")
    identity = identity_for("node", name)
    pki_dir = data_dir / "pki"
    existed = pki_dir.exists()
    key_pem, csr_pem = new_key_and_csr(identity)
    capacity = _host_capacity(data_dir if data_dir.exists() else Path("."))
    body = {"token": tok, "csr": csr_pem.decode(), "labels": label_map,
            "node": {"libvirtURI": libvirt_uri, "capacity": capacity}}
    try:
        ctx = ssl.create_default_context(cadata=ca_pem.decode())
        r = httpx.post(server.rstrip("/") + "/v1/join", json=body, verify=ctx, timeout=30)
    except (httpx.HTTPError, ssl.SSLError) as exc:
        _fail(f"join failed: {exc}")
    if r.status_code != 200:
        try:
            detail = r.json().get("detail") or r.text
        except ValueError:
            detail = r.text
        _fail(f"the control plane refused the join ({r.status_code}): {detail}")
    answer = r.json()
    pki = PKI(pki_dir)
    try:
        pki_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(pki_dir, 0o700)
        pair = pki.pair(identity)
        write_private(pair.key, key_pem)
        write_private(pair.cert, answer["certificate"].encode())
        write_private(pki.ca_cert, ca_pem)
        conn = EtcdConnection.make(etcd or answer["etcd"]["endpoints"], ca=pki.ca_cert.resolve(),
                                   cert=pair.cert.resolve(), key=pair.key.resolve())
        config = data_dir / "etcd.toml"
        write_private(config, conn.to_toml().encode())
    except OSError as exc:
        if not existed:
            shutil.rmtree(pki_dir, ignore_errors=True)
        _fail(f"cannot write the node's files: {exc}")
    click.echo(f"joined as {identity}: certificate {pair.cert}, etcd config {config}")
    if start:
        argv = [sys.executable, "-m", "api.cli", "agent", "--etcd-config", str(config), "--node", name,
                "--libvirt", libvirt_uri, "--data-dir", str(data_dir / "agent")]
        sys.stdout.flush()
        os.execv(sys.executable, argv)

