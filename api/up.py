"""`hostplane up`: the embedded default — etcd, API, controllers and a node agent on one machine.

It starts a single-member etcd in the data directory on loopback ports (kept in
`<data-dir>/ports.json` so a restart finds the same cluster), makes sure the local node is
registered, then runs the API, the controller manager and the node agent(s) as child
processes exactly as production runs them, restarting a child that dies (with backoff).
SIGINT or SIGTERM stops every child by its PID, then etcd, within 10 seconds. Nothing here
holds state: everything lives in etcd and the data directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconcile.errors import AlreadyExists
from reconcile.etcd_cluster import EtcdCluster
from reconcile.etcd_server import EtcdServer, free_port
from reconcile.store import Store
from specs.domain import NetworkMode
from specs.kinds import Capacity, Node, NodeNetwork, NodeSpec
from specs.meta import ObjectMeta

STOP_TIMEOUT = 8.0


def default_libvirt_uri() -> str:
    """qemu:///session when QEMU and libvirt's QEMU driver are installed, else the test driver."""
    qemu = shutil.which("qemu-system-x86_64") is not None
    daemon = Path("/usr/sbin/libvirtd").exists() or Path("/usr/sbin/virtqemud").exists()
    if qemu and daemon:
        return "qemu:///session"
    return "test:///default"


def _libvirt_answers(uri: str) -> bool:
    try:
        r = subprocess.run(["virsh", "-c", uri, "version"], capture_output=True, timeout=15,
                           stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def _ensure_libvirt(uri: str, logs: Path, say: Any) -> tuple[str, list[Child]]:
    """Make sure the agent's libvirt answers; start the host's daemons if installed but not running.

    As root, `qemu:///session` is the system daemon, which a machine without an init system (a
    container, a fresh CI host) does not run: then `up` runs libvirtd and virtlogd (which keeps
    the guests' serial logs) as its own children, and stops them on exit; the guests keep
    running, as on any hypervisor whose management restarts. Anything else that does not answer
    falls back to the test driver, said out loud.
    """
    if uri.startswith("test:") or _libvirt_answers(uri):
        return uri, []
    libvirtd = shutil.which("libvirtd") or "/usr/sbin/libvirtd"
    virtlogd = shutil.which("virtlogd") or "/usr/sbin/virtlogd"
    started: list[Child] = []
    if uri in ("qemu:///session", "qemu:///system") and os.geteuid() == 0 and Path(libvirtd).exists():
        if Path(virtlogd).exists() and not Path("/run/libvirt/virtlogd-sock").exists():
            started.append(Child("virtlogd", [virtlogd], logs / "virtlogd.log"))
        started.append(Child("libvirtd", [libvirtd], logs / "libvirtd.log"))
        for c in started:
            c.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and all(c.alive() for c in started):
            if _libvirt_answers(uri):
                say(f"started {' and '.join(c.name for c in started)} for {uri} (not running)")
                return uri, started
            time.sleep(0.3)
        for c in started:
            c.terminate()
            c.wait_or_kill(time.monotonic() + 5)
    say(f"warning: libvirt at {uri} does not answer; the local node runs on test:///default instead")
    return "test:///default", []


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _etcd_ports(data_dir: Path) -> tuple[int, int]:
    """Reuse the ports of the last run (the member's peer URL is stored in its data)."""
    f = data_dir / "ports.json"
    if f.exists():
        with contextlib.suppress(ValueError, KeyError, OSError):
            d = json.loads(f.read_text())
            if _port_free(d["client"]) and _port_free(d["peer"]):
                return int(d["client"]), int(d["peer"])
    client, peer = free_port(), free_port()
    f.write_text(json.dumps({"client": client, "peer": peer}))
    return client, peer


def _cluster_ports(data_dir: Path, members: int) -> list[tuple[int, int]]:
    """The (client, peer) ports of each member, kept across restarts: the peer URLs are in the
    members' data, so a cluster restarts on the ports it was made with."""
    f = data_dir / "cluster-ports.json"
    if f.exists():
        with contextlib.suppress(ValueError, KeyError, OSError, TypeError):
            saved = [(int(c), int(p)) for c, p in json.loads(f.read_text())["members"]]
            if len(saved) != members:
                raise UpError(f"{data_dir} holds a {len(saved)}-member etcd; start with --etcd-members {len(saved)}")
            return saved
    ports = [(free_port(), free_port()) for _ in range(members)]
    f.write_text(json.dumps({"members": ports}))
    return ports


class UpError(Exception):
    """A reason `hostplane up` cannot start (printed, exit 2)."""


def _host_capacity(data_dir: Path) -> Capacity:
    mem_kib = 1024 * 1024
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    st = os.statvfs(data_dir)
    disk_gib = max(1, st.f_blocks * st.f_frsize // 1024**3)
    return Capacity(vcpus=os.cpu_count() or 1, memoryMiB=max(1, mem_kib // 1024), diskGiB=disk_gib)


def default_network_mode(libvirt_uri: str, *, euid: int | None = None) -> NetworkMode:
    """The embedded default's VPS network: isolated NAT wherever libvirt may build it.

    A privileged libvirt (qemu:///system, or any qemu URI as root, which reaches the system daemon)
    and the test driver get `isolated-nat`; an unprivileged session daemon cannot create bridges,
    NAT or filters, so there the only choice is user-mode networking, and `up` says so.
    """
    root = (os.geteuid() if euid is None else euid) == 0
    if libvirt_uri.startswith("test:") or libvirt_uri.startswith("qemu:///system") or root:
        return "isolated-nat"
    return "user"


def ensure_node(store: Store, name: str, capacity: Capacity, libvirt_uri: str,
                labels: dict[str, str] | None = None, *, network: NetworkMode = "isolated-nat") -> None:
    """Register a node if it does not exist (an operator's later edits are kept)."""
    node = Node(
        metadata=ObjectMeta(name=name, labels=labels or {"hostplane.io/region": "local"}),
        spec=NodeSpec(libvirtURI=libvirt_uri, capacity=capacity, network=NodeNetwork(mode=network)),
    )
    with contextlib.suppress(AlreadyExists):
        store.create(node)


@dataclass
class Child:
    name: str
    argv: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = 0.0
    env: dict[str, str] = field(default_factory=dict)

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child process
        self.proc = subprocess.Popen(
            self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **self.env}, start_new_session=True,
        )
        log.close()
        self.started_at = time.monotonic()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)

    def wait_or_kill(self, deadline: float) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def _hostplane_argv(*args: str) -> list[str]:
    script = Path(sys.executable).parent / "hostplane"
    if script.exists():
        return [str(script), *args]
    return [sys.executable, "-c", "import sys; from api.cli import main; sys.exit(main())", *args]


def run_up(data_dir: Path, port: int = 8080, libvirt_uri: str | None = None,
           simulate_nodes: int = 0, *, stop: threading.Event | None = None,
           out: Any = None, etcd_members: int = 1) -> int:
    """Run everything until SIGINT/SIGTERM (or `stop`); returns the exit code."""
    from api.auth import ensure_admin_token
    from api.config import write_cli_config

    say = out or (lambda s: print(s, flush=True))
    stop = stop or threading.Event()
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "logs").mkdir(exist_ok=True)
    uri = libvirt_uri or default_libvirt_uri()

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())

    children: list[Child] = []
    uri, daemons = _ensure_libvirt(uri, data_dir / "logs", say)
    children += daemons
    etcd: EtcdServer | EtcdCluster
    if etcd_members > 1:
        if (data_dir / "etcd").exists():
            say(f"error: {data_dir} holds a single-member etcd; start without --etcd-members")
            return 2
        try:
            etcd = EtcdCluster(data_dir, etcd_members, ports=_cluster_ports(data_dir, etcd_members),
                               log_dir=data_dir / "logs")
        except UpError as exc:
            say(f"error: {exc}")
            return 2
    else:
        if (data_dir / "cluster-ports.json").exists():
            say(f"error: {data_dir} holds a multi-member etcd; start with --etcd-members")
            return 2
        client_port, peer_port = _etcd_ports(data_dir)
        etcd = EtcdServer(data_dir / "etcd", client_port=client_port, peer_port=peer_port,
                          log_path=data_dir / "logs" / "etcd.log")
    try:
        made = not etcd.pki.exists()
        etcd.start()
        say(f"{'created' if made else 'reusing'} the PKI in {etcd.pki.dir} (CA: {etcd.pki.ca_cert})")
        # Seeding (admin token, the local Node) runs as the api identity: root only bootstraps.
        store = etcd.store("api")
        server_cert = etcd.pki.server()
        token = ensure_admin_token(store, data_dir)
        mode = default_network_mode(uri)
        if mode == "user":
            say(f"warning: {uri} is an unprivileged libvirt: VPS NICs use user-mode networking, which "
                "reaches this host's loopback (etcd, API); run as root for the isolated NAT network")
        ensure_node(store, "local", _host_capacity(data_dir), uri, network=mode)
        for i in range(simulate_nodes):
            ensure_node(store, f"sim-{i}", Capacity(vcpus=64, memoryMiB=262144, diskGiB=4096),
                        "test:///default", {"hostplane.io/region": "sim"})
        store.close()

        logs = data_dir / "logs"
        children.append(Child("api", _hostplane_argv(
            "api", *etcd.args("api"), "--host", "127.0.0.1", "--port", str(port),
            "--tls-cert", str(server_cert.cert), "--tls-key", str(server_cert.key), "--join-pki", str(etcd.pki.dir),
            "--data-dir", str(data_dir)), logs / "api.log"))
        children.append(Child("controllers", _hostplane_argv(
            "controllers", *etcd.args("controllers"), "--identity", f"up-{os.getpid()}"),
            logs / "controllers.log"))
        children.append(Child("agent", _hostplane_argv(
            "agent", *etcd.args("node-local"), "--node", "local", "--libvirt", uri,
            "--data-dir", str(data_dir / "agent")), logs / "agent.log"))
        if simulate_nodes:
            children.append(Child("fleet", [
                sys.executable, "-m", "api.up", *etcd.args("fleet"), "--nodes", str(simulate_nodes),
                "--data-dir", str(data_dir / "fleet")], logs / "fleet.log"))
        for c in children:
            if not c.alive():
                c.start()

        server = f"https://127.0.0.1:{port}"
        config_path = write_cli_config(server, token, etcd.pki.ca_cert)
        say(f"Hostplane is up.\n"
            f"  panel and API: {server}/   (API docs: {server}/docs)\n"
            f"  admin token:   {token}\n"
            f"  CLI config:    {config_path}  (try: hostplane get nodes)\n"
            f"  etcd:          {', '.join('https://' + e for e in etcd.endpoints)}   data: {data_dir}\n"
            f"  CA:            {etcd.pki.ca_cert}\n"
            f"  libvirt:       {uri}" + (f"  + {simulate_nodes} simulated nodes" if simulate_nodes else "")
            + f"\n  logs:          {logs}/\nPress Ctrl-C to stop.")
        _supervise(children, stop, say)
        return 0
    finally:
        deadline = time.monotonic() + STOP_TIMEOUT
        for c in children:
            c.terminate()
        for c in children:
            c.wait_or_kill(deadline)
        etcd.stop(timeout=max(1.0, deadline + 2 - time.monotonic()))
        say("Hostplane stopped.")


def _supervise(children: list[Child], stop: threading.Event, say: Any) -> None:
    """Restart a child that exits on its own, with backoff (restarts squared seconds, capped at 30 s)."""
    due: dict[str, float] = {}
    while not stop.wait(0.5):
        now = time.monotonic()
        for c in children:
            if c.alive():
                if now - c.started_at > 60:
                    c.restarts = 0
                continue
            if c.name not in due:
                c.restarts += 1
                delay = min(30.0, float(c.restarts**2))
                code = c.proc.returncode if c.proc is not None else None
                say(f"{c.name} exited ({code}); restarting in {delay:.0f}s (see {c.log_path})")
                due[c.name] = now + delay
            elif now >= due[c.name]:
                del due[c.name]
                c.start()


def main(argv: list[str] | None = None) -> int:
    """`python -m api.up fleet ...`: run a simulated fleet (used by `hostplane up --simulate-nodes`)."""
    import argparse

    p = argparse.ArgumentParser(prog="hostplane-fleet")
    p.add_argument("--etcd", required=True)
    p.add_argument("--etcd-ca", required=True)
    p.add_argument("--etcd-cert", required=True)
    p.add_argument("--etcd-key", required=True)
    p.add_argument("--nodes", type=int, required=True)
    p.add_argument("--data-dir", type=Path, required=True)
    a = p.parse_args(argv)
    from nodeagent.main import run_simulated_fleet

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    from reconcile.connection import EtcdConnection

    conn = EtcdConnection.make(a.etcd, ca=a.etcd_ca, cert=a.etcd_cert, key=a.etcd_key)
    run_simulated_fleet(etcd=conn, nodes=a.nodes, data_dir=a.data_dir, stop=stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
