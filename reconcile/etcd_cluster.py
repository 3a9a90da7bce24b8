"""A local etcd cluster of N members on loopback (TLS peers and clients, RBAC on): for
`hostplane up --etcd-members 3` and for failover tests.

The members share one PKI (`<base>/pki`); member i keeps its data in `<base>/etcd-<i>`. All
members are launched before any is waited for (each needs a quorum to answer). Stores made
here list every member's endpoint, so they fail over when one dies.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from reconcile import keys
from reconcile.connection import EtcdConnection
from reconcile.errors import StoreError
from reconcile.etcd_server import EtcdServer, free_port
from reconcile.objects import Store
from reconcile.pki import PKI


class EtcdCluster:
    def __init__(self, base: str | Path, members: int = 3, *, ports: list[tuple[int, int]] | None = None,
                 log_dir: str | Path | None = None) -> None:
        self.base = Path(base)
        self.pki = PKI(self.base / "pki")
        ports = ports or [(free_port(), free_port()) for _ in range(members)]
        names = [f"m{i}" for i in range(members)]
        initial = ",".join(f"{n}=https://127.0.0.1:{peer}" for n, (_, peer) in zip(names, ports, strict=True))
        endpoints = [f"127.0.0.1:{client}" for client, _ in ports]
        logs = Path(log_dir) if log_dir else self.base
        self.members = [
            EtcdServer(self.base / f"etcd-{i}", client_port=c, peer_port=p, name=names[i], pki=self.pki,
                       initial_cluster=initial, cluster_endpoints=endpoints, log_path=logs / f"etcd-{i}.log")
            for i, (c, p) in enumerate(ports)
        ]

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def start(self, timeout: float = 30.0) -> EtcdCluster:
        for m in self.members:
            if m.proc is None:
                m.launch()
        for m in self.members:
            m.wait_healthy(timeout)
        self._live().admin().enable_auth()
        return self

    def _live(self) -> EtcdServer:
        for m in self.members:
            if m.proc is not None and m.proc.poll() is None:
                return m
        raise RuntimeError("no etcd member is running")

    def admin(self) -> Store:
        return self._live().admin()

    def connection(self, identity: str = "root", *, root: str = keys.ROOT) -> EtcdConnection:
        return self._live().connection(identity, root=root)

    def store(self, identity: str = "root", *, root: str = keys.ROOT, timeout: float = 5.0,
              retry_seconds: float = 10.0) -> Store:
        return self._live().store(identity, root=root, timeout=timeout, retry_seconds=retry_seconds)

    def args(self, identity: str, *, root: str = keys.ROOT) -> list[str]:
        return self.connection(identity, root=root).args()

    def leader(self) -> int:
        """The index of the member that leads now (asks every running member)."""
        root = self.pki.pair("root")
        ids: dict[int, int] = {}
        leaders: set[int] = set()
        for i, m in enumerate(self.members):
            if m.proc is None or m.proc.poll() is not None:
                continue
            conn = EtcdConnection.make(m.endpoint, ca=self.pki.ca_cert, cert=root.cert, key=root.key)
            with Store(conn, retry_seconds=0) as s, contextlib.suppress(StoreError):
                member, leader = s.member_status()
                ids[i] = member
                if leader:
                    leaders.add(leader)
        for i, member in ids.items():
            if member in leaders:
                return i
        raise RuntimeError("no running member is the leader")

    def kill(self, i: int) -> None:
        """SIGKILL member i (a crash)."""
        self.members[i].kill()

    def restart(self, i: int, timeout: float = 30.0) -> None:
        m = self.members[i]
        m.stop()
        m.launch()
        m.wait_healthy(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        for m in self.members:
            m.stop(timeout)

    def __enter__(self) -> EtcdCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
