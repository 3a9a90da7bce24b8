"""Hypervisors that join: token create → join → agent, for two hosts (separate data dirs on one
machine); replayed, expired, forged tokens and a wrong CA are refused leaving nothing; revoke is immediate."""

from __future__ import annotations

import functools
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from api.cli import main
from api.node_join import create_node_token
from api.server import TLSFiles, create_app, serving
from nodeagent.main import simulated_node_xml
from reconcile import keys
from reconcile.cluster import ensure_cluster_id
from reconcile.connection import EtcdConnection
from reconcile.errors import PermissionDenied
from reconcile.etcd_server import EtcdServer
from reconcile.objects import Store
from reconcile.pki import PKI, ca_hash
from specs.kinds import Node
from tests.helpers.wait import wait_for

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def control(etcd: EtcdServer) -> Iterator[dict[str, Any]]:
    """The control plane: etcd (TLS, RBAC) and an HTTPS API that may sign joining nodes' certificates."""
    api_store = etcd.store("api")
    ensure_cluster_id(etcd.admin())  # what the controllers or `up` do first; agents wait for it
    pair = etcd.pki.server()
    with serving(create_app(api_store, join_pki=etcd.pki), tls=TLSFiles(pair.cert, pair.key)) as url:
        yield {"url": url, "data": etcd.data_dir.parent, "etcd": etcd, "pin": ca_hash(etcd.pki.ca_cert.read_bytes())}
    api_store.close()


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def make_token(control: dict[str, Any], name: str) -> str:
    out = cli("node", "token", "create", name, "--data-dir", str(control["data"]),
              "--etcd", control["etcd"].endpoint, "--server", control["url"])
    assert out.exit_code == 0, out.output
    assert f"--ca-hash {control['pin']}" in out.output
    return next(w for w in out.output.split() if w.startswith("hpn_"))


def join(control: dict[str, Any], token: str, host: Path, *extra: str) -> Result:
    return cli("node", "join", "--server", control["url"], "--token", token, "--data-dir", str(host),
               "--ca-hash", control["pin"], "--libvirt", simulated_node_xml(host.parent / f"{host.name}-node.xml"),
               "--no-start", *extra)


def agent(host: Path, name: str) -> subprocess.Popen[bytes]:
    uri = simulated_node_xml(host.parent / f"{host.name}-node.xml")
    with (host.parent / f"{host.name}-agent.log").open("wb") as log:
        return subprocess.Popen([sys.executable, "-m", "api.cli", "agent", "--etcd-config", str(host / "etcd.toml"),
                                 "--node", name, "--libvirt", uri, "--data-dir", str(host / "agent")],
                                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def nothing_written(host: Path) -> bool:
    return not (host / "pki").exists() and not (host / "etcd.toml").exists()


def test_two_hosts_join_and_run_their_agents(control: dict[str, Any], tmp_path: Path) -> None:
    """Two hosts join with their own tokens; their agents heartbeat; each reaches only its own node's keys."""
    etcd: EtcdServer = control["etcd"]
    admin = etcd.admin()
    hosts = {"hv1": tmp_path / "host1", "hv2": tmp_path / "host2"}
    procs = []
    try:
        for name, host in hosts.items():
            out = join(control, make_token(control, name), host, "--label", "hostplane.io/region=r1")
            assert out.exit_code == 0, out.output
            assert admin.get(Node, name).metadata.labels == {"hostplane.io/region": "r1"}
            conn = EtcdConnection.from_file(host / "etcd.toml")
            assert conn.identity == f"node-{name}"
            assert {f.name: f.stat().st_mode & 0o777 for f in (host / "pki").iterdir()} == {
                "ca.crt": 0o600, f"node-{name}.crt": 0o600, f"node-{name}.key": 0o600}
            procs.append(agent(host, name))

        def beating(name: str) -> bool:
            return admin.kv_get(keys.heartbeat_key(name)) is not None

        for name in hosts:
            wait_for(functools.partial(beating, name), timeout=30, what=f"{name}'s heartbeat")
        with Store(EtcdConnection.from_file(hosts["hv1"] / "etcd.toml"), retry_seconds=0) as hv1:
            with pytest.raises(PermissionDenied):
                hv1.kv_get(keys.desired_key("hv2", "x"))
            with pytest.raises(PermissionDenied):
                hv1.kv_range(keys.ROOT + "/auth/")
    finally:
        for p in procs:
            p.terminate()
            p.wait(20)


def test_replayed_expired_forged_tokens_and_a_wrong_ca_are_refused(control: dict[str, Any], tmp_path: Path) -> None:
    """A used, expired or forged token, and a server whose CA is not the pinned one: exit 2, nothing written."""
    tok = make_token(control, "hv3")
    assert join(control, tok, tmp_path / "first").exit_code == 0
    again = join(control, tok, tmp_path / "replay")
    assert again.exit_code == 2 and "already used" in again.output and nothing_written(tmp_path / "replay")

    etcd: EtcdServer = control["etcd"]
    expired = create_node_token(etcd.admin(), "hv4", ttl=timedelta(seconds=-1))
    out = join(control, expired, tmp_path / "expired")
    assert out.exit_code == 2 and "expired" in out.output and nothing_written(tmp_path / "expired")

    good = make_token(control, "hv5")
    forged = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
    out = join(control, forged, tmp_path / "forged")
    assert out.exit_code == 2 and "unknown" in out.output and nothing_written(tmp_path / "forged")

    other = PKI(tmp_path / "other-ca")
    other.init()
    out = cli("node", "join", "--server", control["url"], "--token", good, "--data-dir", str(tmp_path / "mitm"),
              "--ca-hash", ca_hash(other.ca_cert.read_bytes()), "--no-start")
    assert out.exit_code == 2 and "not the one pinned" in out.output and nothing_written(tmp_path / "mitm")
    # the refused joins spent nothing: the genuine token still works once
    assert join(control, good, tmp_path / "good").exit_code == 0
    assert etcd.admin().kv_get(keys.spec_key(Node, "hv4")) is None, "a refused join registers no Node"


def test_revoke_makes_the_node_certificate_useless_at_once(control: dict[str, Any], tmp_path: Path) -> None:
    """After `node revoke`, the joined node's still-valid certificate reaches none of its own keys."""
    host = tmp_path / "host"
    assert join(control, make_token(control, "hv6"), host).exit_code == 0
    with Store(EtcdConnection.from_file(host / "etcd.toml"), retry_seconds=0) as node:
        node.kv_put(keys.observed_key("hv6", "v"), b"{}")
        out = cli("node", "revoke", "hv6", "--data-dir", str(control["data"]), "--etcd", control["etcd"].endpoint)
        assert out.exit_code == 0, out.output
        t0 = time.monotonic()
        with pytest.raises(PermissionDenied):
            node.kv_put(keys.observed_key("hv6", "v"), b"{}")
        assert time.monotonic() - t0 < 5


def test_join_without_no_start_becomes_the_agent(control: dict[str, Any], tmp_path: Path) -> None:
    """`hostplane node join` (default --start) turns into the node's agent: its heartbeat appears; SIGTERM stops it."""
    host = tmp_path / "host"
    tok = make_token(control, "hv8")
    uri = simulated_node_xml(tmp_path / "host-node.xml")
    with (tmp_path / "join.log").open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "api.cli", "node", "join", "--server", control["url"],
                                 "--token", tok, "--ca-hash", control["pin"], "--data-dir", str(host),
                                 "--libvirt", uri], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        admin = control["etcd"].admin()
        wait_for(lambda: admin.kv_get(keys.heartbeat_key("hv8")) is not None, timeout=40,
                 what="the joined agent's heartbeat")
    finally:
        proc.terminate()
        assert proc.wait(20) == 0, (tmp_path / "join.log").read_text()[-2000:]


def test_bad_node_names_and_missing_pki_exit_2(control: dict[str, Any], tmp_path: Path) -> None:
    """A node name outside the scheme, or no PKI in --data-dir, is one line on stderr and exit 2."""
    for args in (["node", "token", "create", "Bad_Name", "--data-dir", str(control["data"])],
                 ["node", "revoke", "../x", "--data-dir", str(control["data"])],
                 ["node", "token", "create", "hv9", "--data-dir", str(tmp_path / "empty")]):
        out = cli(*args)
        assert out.exit_code == 2 and out.output.startswith("error: "), (args, out.output)
