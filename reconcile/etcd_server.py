"""Run a local single-member etcd: for `hostplane up` and for tests.

It starts the `etcd` binary on loopback ports in a data directory, waits until it answers,
and stops it by its own PID (SIGTERM, then SIGKILL after a timeout). The data directory
survives a stop, so a restart on the same directory loses nothing.

etcd serves TLS only, to clients and peers, and asks every client for a certificate signed by
the PKI's CA (`--client-cert-auth`); its RBAC is on, users are certificate common names. The
PKI (by default `<data_dir>/../pki`) is created on first start and reused afterwards; every
start makes sure the root user exists and auth is enabled (the root identity is used for that
bootstrap and for granting roles, never by a running Hostplane process).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

from reconcile import keys, roles
from reconcile.connection import EtcdConnection
from reconcile.objects import Store
from reconcile.pki import PKI


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class EtcdServer:
    def __init__(self, data_dir: str | Path, *, client_port: int | None = None,
                 peer_port: int | None = None, name: str = "hostplane",
                 binary: str | None = None, log_path: str | Path | None = None,
                 pki: PKI | None = None, initial_cluster: str | None = None,
                 cluster_endpoints: list[str] | None = None) -> None:
        """`initial_cluster` ("name=https://host:peerport,...") and `cluster_endpoints` make this a
        member of a cluster (see EtcdCluster); by default it is a cluster of one."""
        self.data_dir = Path(data_dir)
        self.initial_cluster = initial_cluster
        self.cluster_endpoints = cluster_endpoints
        self.pki = pki or PKI(self.data_dir.parent / "pki")
        self._admin: Store | None = None
        self._roles_applied: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self.client_port = client_port or free_port()
        self.peer_port = peer_port or free_port()
        self.name = name
        self.binary = binary or shutil.which("etcd") or "/usr/bin/etcd"
        self.log_path = Path(log_path) if log_path else self.data_dir.parent / f"{self.data_dir.name}.etcd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def endpoints(self) -> list[str]:
        """Every client endpoint of the cluster this member belongs to."""
        return self.cluster_endpoints or [self.endpoint]

    def start(self, timeout: float = 20.0) -> EtcdServer:
        self.launch()
        self._wait_healthy(timeout)
        self.admin().enable_auth()
        return self

    def launch(self) -> None:
        """Start the process without waiting for it (a cluster member waits for its quorum)."""
        if not Path(self.binary).exists():
            raise FileNotFoundError(
                "etcd is not installed: install the Debian package etcd-server (make up does)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o700)
        self.pki.init()
        server = self.pki.server()
        self.pki.issue("root")
        client = f"https://127.0.0.1:{self.client_port}"
        peer = f"https://127.0.0.1:{self.peer_port}"
        tls = [
            "--cert-file", str(server.cert), "--key-file", str(server.key),
            "--trusted-ca-file", str(self.pki.ca_cert), "--client-cert-auth",
            "--peer-cert-file", str(server.cert), "--peer-key-file", str(server.key),
            "--peer-trusted-ca-file", str(self.pki.ca_cert), "--peer-client-cert-auth",
        ]
        args = [
            self.binary, *tls, "--name", self.name, "--data-dir", str(self.data_dir),
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", self.initial_cluster or f"{self.name}={peer}",
            "--initial-cluster-state", "new",
            "--log-level", "warn", "--logger", "zap",
            "--quota-backend-bytes", str(4 * 1024**3),
            "--auto-compaction-mode", "revision", "--auto-compaction-retention", "100000",
        ]
        env = {**os.environ, "ETCD_UNSUPPORTED_ARCH": os.environ.get("ETCD_UNSUPPORTED_ARCH", "")}
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child for its lifetime
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        log.close()

    # ------------------------------------------------------------------ identities

    def admin(self) -> Store:
        """The root identity's store (bootstrap and role grants only), kept until stop."""
        with self._lock:
            if self._admin is None:
                self._admin = Store(self.connection("root"), retry_seconds=20.0)
            return self._admin

    def connection(self, identity: str = "root", *, root: str = keys.ROOT) -> EtcdConnection:
        """The connection of `identity`: its certificate (issued if missing) and, for anyone but
        root, its role granted for keys under `root` (idempotent, remembered)."""
        conn = EtcdConnection.for_identity(self.endpoints, self.pki, identity)
        if identity != "root" and (identity, root) not in self._roles_applied:
            self.admin().apply_role(identity, roles.permissions(identity, root))
            self._roles_applied.add((identity, root))
        return conn

    def store(self, identity: str = "root", *, root: str = keys.ROOT, timeout: float = 5.0,
              retry_seconds: float = 10.0) -> Store:
        """A new Store connected as `identity` (see `connection`); the caller closes it."""
        return Store(self.connection(identity, root=root), root=root, timeout=timeout,
                     retry_seconds=retry_seconds)

    def remove_identity(self, identity: str) -> None:
        """Delete `identity`'s etcd user and role (its certificate then reaches nothing)."""
        self.admin().remove_identity(identity)
        self._roles_applied = {(i, r) for i, r in self._roles_applied if i != identity}

    def args(self, identity: str, *, root: str = keys.ROOT) -> list[str]:
        """`--etcd --etcd-ca --etcd-cert --etcd-key` flags for a child process running as `identity`."""
        return self.connection(identity, root=root).args()

    def _ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        pair = self.pki.pair("root")
        ctx.load_cert_chain(str(pair.cert), str(pair.key))
        return ctx

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        url = f"https://127.0.0.1:{self.client_port}/health"
        ctx = self._ssl_context()
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"etcd exited with {self.proc.returncode}:\n{tail}")
            try:
                with urllib.request.urlopen(url, timeout=1, context=ctx) as r:
                    if b'"health":"true"' in r.read():
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"etcd did not become healthy on {url} within {timeout}s")

    def _close_admin(self) -> None:
        with self._lock:
            admin, self._admin = self._admin, None
        if admin is not None:
            admin.close()

    def stop(self, timeout: float = 10.0) -> None:
        self._close_admin()
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def kill(self) -> None:
        """SIGKILL: a crash, for fault tests."""
        self._close_admin()
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(5)

    def restart(self, timeout: float = 20.0) -> None:
        self.stop()
        self.start(timeout)

    def wait_healthy(self, timeout: float = 20.0) -> None:
        self._wait_healthy(timeout)

    def __enter__(self) -> EtcdServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self.stop()
