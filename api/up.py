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

from api import prometheus
from reconcile.cluster import ensure_cluster_id
from reconcile.errors import AlreadyExists, NotFound, StoreError
from reconcile.etcd_cluster import EtcdCluster
from reconcile.etcd_server import EtcdServer, free_port
from reconcile.store import Store
from specs.domain import NetworkMode
from specs.kinds import Capacity, Image, ImageSource, ImageSpec, Node, NodeNetwork, NodeSpec
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


class UpError(Exception):
    """A reason `hostplane up` cannot start (printed, exit 2); the message says what to do."""


LIBVIRT_WAIT = 180.0


def _ensure_libvirt(uri: str, logs: Path, say: Any, *, explicit: bool = False,
                    wait: float = LIBVIRT_WAIT) -> tuple[str, list[Child]]:
    """Make sure the agent's libvirt answers; start the host's daemons if installed but not running.

    As root, `qemu:///session` is the system daemon, which a machine without an init system (a
    container, a fresh CI host) does not run: then `up` runs libvirtd and virtlogd (which keeps
    the guests' serial logs) as its own children, and stops them on exit; the guests keep
    running, as on any hypervisor whose management restarts. A URI the user gave (`explicit`) is
    never swapped: `up` waits for it with progress, then stops with an error (a VPS shown Running
    with no QEMU behind it would be worse). Only the implicit default falls back to the test
    driver, said out loud.
    """
    if uri.startswith("test:") or _libvirt_answers(uri):
        return uri, []
    libvirtd = shutil.which("libvirtd") or "/usr/sbin/libvirtd"
    virtlogd = shutil.which("virtlogd") or "/usr/sbin/virtlogd"
    started: list[Child] = []
    if uri in ("qemu:///session", "qemu:///system") and os.geteuid() == 0 and Path(libvirtd).exists():
        _ensure_network_state_dir(say)
        if Path(virtlogd).exists() and not Path("/run/libvirt/virtlogd-sock").exists():
            started.append(Child("virtlogd", [virtlogd], logs / "virtlogd.log"))
        started.append(Child("libvirtd", [libvirtd], logs / "libvirtd.log"))
        for c in started:
            c.start()
        # A freshly started daemon can take minutes (probing QEMU). We started it, so QEMU is there:
        # wait for it with progress (explicit or not) rather than quietly run on the test driver.
        began = time.monotonic()
        said = began
        while time.monotonic() - began < max(wait, 30.0) and all(c.alive() for c in started):
            if _libvirt_answers(uri):
                say(f"started {' and '.join(c.name for c in started)} for {uri} (not running) in "
                    f"{time.monotonic() - began:.0f} s")
                return uri, started
            if time.monotonic() - said >= 10:
                said = time.monotonic()
                say(f"waiting for libvirt at {uri} ({said - began:.0f} s of {max(wait, 30.0):.0f} s) ...")
            time.sleep(0.5)
        for c in started:
            if not c.alive():
                with contextlib.suppress(OSError, IndexError):
                    last = c.log_path.read_text(errors="replace").strip().splitlines()[-1]
                    say(f"{c.name} exited: {last}")
            c.terminate()
            c.wait_or_kill(time.monotonic() + 5)
    elif explicit:
        began = time.monotonic()
        while time.monotonic() - began < wait:
            say(f"waiting for libvirt at {uri} ({time.monotonic() - began:.0f} s of {wait:.0f} s) ...")
            time.sleep(min(5.0, max(0.0, wait - (time.monotonic() - began))))
            if _libvirt_answers(uri):
                return uri, []
    if explicit:
        raise UpError(f"libvirt at {uri} does not answer (see {logs}/libvirtd.log if up started it); not "
                      "falling back to the test driver because --libvirt was given. Start libvirt, or run "
                      "`hostplane up` without --libvirt to let it choose.")
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
        log = open_private_log(self.log_path)
        self.proc = subprocess.Popen(
            self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **self.env}, start_new_session=True,
        )
        log.close()
        self.started_at = time.monotonic()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate_group(self) -> None:
        """SIGTERM to the child's whole session (it was started in one of its own), grandchildren included."""
        if self.alive():
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)

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


def open_private_log(path: Path) -> Any:
    """Append to a log only its owner can read (0600), tightening one made before: logs can name hosts and paths."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "ab")


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
    (data_dir / "logs").chmod(0o700)
    # The agents take image files from here (and /var/lib/hostplane/images) only.
    (data_dir / "images").mkdir(exist_ok=True)
    uri = libvirt_uri or default_libvirt_uri()

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())

    children: list[Child] = []
    daemons: list[Child] = []
    builder: list[Child] = []  # the test guest's build, while it runs
    try:
        uri, daemons = _ensure_libvirt(uri, data_dir / "logs", say, explicit=libvirt_uri is not None,
                                       wait=float(os.environ.get("HOSTPLANE_LIBVIRT_WAIT", LIBVIRT_WAIT)))
    except UpError as exc:
        say(f"error: {exc}")
        return 2
    children += daemons
    blocked = _closed_ancestor(data_dir) if uri.startswith("qemu:") and os.geteuid() == 0 else None
    if blocked is not None:
        say(f"warning: {blocked} is not searchable by other users: QEMU runs guests as its own user "
            f"(libvirt-qemu) and will fail with 'Permission denied' on disks under {data_dir}. Use a "
            f"--data-dir under a searchable path (e.g. /var/lib/hostplane) or `chmod o+x {blocked}`.")
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
        # The cluster id is the controllers' to create; `down` finds this instance's guests by it.
        with etcd.store("controllers") as cstore:
            cluster_id = ensure_cluster_id(cstore)
        (data_dir / "cluster-id").write_text(cluster_id + "\n")
        (data_dir / "libvirt-uri").write_text(uri + "\n")
        (data_dir / "up.pid").write_text(f"{os.getpid()}\n")

        logs = data_dir / "logs"
        # Prometheus (Debian `prometheus`) keeps the load series: own data dir, loopback, stopped with up.
        agent_port = free_port("127.0.0.1")
        prometheus_url = None
        if prometheus.available():
            prom_dir = data_dir / "prometheus"
            prom_dir.mkdir(parents=True, exist_ok=True)
            api_pair = etcd.pki.issue("api")
            (prom_dir / "prometheus.yml").write_text(prometheus.config(
                agents=[f"127.0.0.1:{agent_port}"], api=f"127.0.0.1:{port}", ca=etcd.pki.ca_cert,
                cert=api_pair.cert, key=api_pair.key))
            prom_port = free_port("127.0.0.1")
            prometheus_url = f"http://127.0.0.1:{prom_port}"
            children.append(Child("prometheus", prometheus.argv(prom_dir / "prometheus.yml", prom_dir / "data",
                                                                prom_port), logs / "prometheus.log"))
        else:
            say("note: Prometheus is not installed (Debian package `prometheus`): no load graphs")
        children.append(Child("api", _hostplane_argv(
            "api", *etcd.args("api"), "--host", "127.0.0.1", "--port", str(port),
            "--tls-cert", str(server_cert.cert), "--tls-key", str(server_cert.key), "--join-pki", str(etcd.pki.dir),
            "--data-dir", str(data_dir), *(["--prometheus", prometheus_url] if prometheus_url else [])),
            logs / "api.log"))
        children.append(Child("controllers", _hostplane_argv(
            "controllers", *etcd.args("controllers"), "--identity", f"up-{os.getpid()}"),
            logs / "controllers.log"))
        # The agent's console endpoint: loopback, mutual TLS with the node's own server certificate.
        node_cert = etcd.pki.node_server("local")
        children.append(Child("agent", _hostplane_argv(
            "agent", *etcd.args("node-local"), "--node", "local", "--libvirt", uri,
            "--data-dir", str(data_dir / "agent"), "--image-dir", str(data_dir / "images"),
            "--endpoint", f"127.0.0.1:{agent_port}", "--endpoint-cert", str(node_cert.cert),
            "--endpoint-key", str(node_cert.key)), logs / "agent.log"))
        if simulate_nodes:
            children.append(Child("fleet", [
                sys.executable, "-m", "api.up", *etcd.args("fleet"), "--nodes", str(simulate_nodes),
                "--data-dir", str(data_dir / "fleet"), "--image-dir", str(data_dir / "images")],
            logs / "fleet.log"))
        for c in children:
            if not c.alive():
                c.start()
        # The first VPS must boot: the tiny test guest, built once into the data dir, as Image test-guest.
        threading.Thread(target=prepare_test_guest, args=(data_dir, etcd, say, stop, builder), name="test-guest",
                         daemon=True).start()

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
        # Nothing here may skip the cleanup after it (a closed terminal makes `say` raise).
        def quiet(line: str) -> None:
            with contextlib.suppress(Exception):
                say(line)
        deadline = time.monotonic() + STOP_TIMEOUT
        ours = [c for c in children if c not in daemons]
        for c in builder:
            c.terminate_group()
        for c in ours:
            c.terminate()
        for c in [*builder, *ours]:
            c.wait_or_kill(deadline)
        # The daemons `up` started still answer: list what stays running before stopping them.
        with contextlib.suppress(Exception):
            _say_leftovers(data_dir, quiet)
        for c in daemons:
            c.terminate()
        for c in daemons:
            c.wait_or_kill(time.monotonic() + 5)
        with contextlib.suppress(OSError):
            (data_dir / "up.pid").unlink()
        etcd.stop(timeout=max(1.0, deadline + 2 - time.monotonic()))
        quiet("Hostplane stopped.")


TEST_GUEST = "test-guest"


def registered_test_guest(img: Any) -> Image:
    """The Image `up` registers for the guest built at `img` (an `api.testguest.GuestImage`)."""
    return Image(
        metadata=ObjectMeta(name=TEST_GUEST, labels={"family": "test", "hostplane.io/made-by": "up"}),
        spec=ImageSpec(os="busybox", version="1.35", minDiskGiB=1, cloudInit=True,
                       source=ImageSource(path=img.disk, sha256=img.disk_sha256, format="qcow2"),
                       kernel=img.kernel, initrd=img.initrd, cmdline=img.cmdline))


def prepare_test_guest(data_dir: Path, etcd: EtcdServer | EtcdCluster, say: Any, stop: threading.Event,
                       builder: list[Child]) -> None:
    """Build the test guest into `<data dir>/images/test-guest/` unless it is there, then (re)register it.

    The build (apt-get download, dpkg-deb, qemu-img) runs as a child process in a session of its own,
    appended to `builder`, so stopping `up` stops all of it.
    """
    from api.testguest import GuestImage

    root = data_dir / "images" / TEST_GUEST
    manifest = root / "image.json"
    if not manifest.exists():
        say(f"building the test guest into {root} (once; apt-get download of a kernel and busybox) ...")
        child = Child("test-guest", [sys.executable, "-m", "api.testguest", str(root)],
                      data_dir / "logs" / "test-guest.log")
        child.start()
        builder.append(child)
        assert child.proc is not None
        while child.proc.poll() is None:
            if stop.wait(0.5):
                return
        if child.proc.returncode != 0 or not manifest.exists():
            say(f"warning: could not build the test guest (see {child.log_path}); VPS on image {TEST_GUEST} "
                "stay Pending. A distribution image works too (examples/images.yaml)")
            return
    img = GuestImage(**json.loads(manifest.read_text()))
    want = registered_test_guest(img)
    try:
        with etcd.store("api") as store:
            try:
                have = store.get(Image, TEST_GUEST)
            except NotFound:
                store.create(want)
            else:
                if have.spec != want.spec:
                    store.update(have.model_copy(update={"spec": want.spec}))
    except StoreError as exc:
        say(f"warning: could not register Image {TEST_GUEST}: {exc}")
        return
    say(f"test guest ready: Image {TEST_GUEST} ({root})")


def _ensure_network_state_dir(say: Any) -> None:
    """libvirt's network driver keeps each NAT network's MAC list in /var/lib/libvirt/dnsmasq/, which
    the dnsmasq-base package creates; without it every guest on an isolated-nat network fails to
    start ("Failed to create file .../dnsmasq/...macs.new"). `make up` installs the package; a
    machine without it gets the (empty) directory here."""
    d = Path("/var/lib/libvirt/dnsmasq")
    if d.parent.is_dir() and not d.exists():
        with contextlib.suppress(OSError):
            d.mkdir(mode=0o755)
            say(f"created {d} (libvirt's NAT networks need it; the dnsmasq-base package makes it)")
    if shutil.which("dnsmasq") is None and not Path("/usr/sbin/dnsmasq").exists():
        say("warning: dnsmasq is not installed (package dnsmasq-base; `make up` installs it). libvirt 9 "
            "crashes at start while a NAT network is active without it: a restarted libvirtd will not come up.")


def _closed_ancestor(path: Path) -> Path | None:
    """The first directory on the way to `path` that other users cannot search (o+x), if any."""
    for d in [*reversed(path.parents), path]:
        with contextlib.suppress(OSError):
            if not d.stat().st_mode & 0o001:
                return d
    return None


def _instance(data_dir: Path) -> tuple[str, str] | None:
    """(cluster id, libvirt URI) an `up` on this data dir recorded, if it ever started."""
    try:
        return (data_dir / "cluster-id").read_text().strip(), (data_dir / "libvirt-uri").read_text().strip()
    except OSError:
        return None


def _bounded(fn: Any, timeout: float) -> Any:
    """`fn()` in a daemon thread, given up after `timeout` seconds (a libvirt call cannot be interrupted)."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except Exception as exc:  # handed to the caller
            box["error"] = exc
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise TimeoutError(f"no answer within {timeout:.0f} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _say_leftovers(data_dir: Path, say: Any) -> None:
    """Guests keep running when `up` stops (as on any hypervisor); say which, and how to remove them."""
    inst = _instance(data_dir)
    if inst is None or inst[1].startswith("test:"):
        return
    try:
        from nodeagent.leftovers import cluster_domains

        left = _bounded(lambda: cluster_domains(inst[1], inst[0]), 15.0)
    except Exception as exc:  # a report on the way out must not mask the shutdown
        say(f"could not list the guests left on {inst[1]}: {exc}")
        return
    if not left:
        return
    say(f"Left on {inst[1]} (guests outlive `up` by design):")
    for x in left:
        say(f"  {x.domain}  VPS {x.vps}  {x.state}")
    say(f"Remove them and their disks with: hostplane down --purge {data_dir}")


def run_down(data_dir: Path, *, purge: bool, out: Any = None) -> int:
    """`hostplane down [--purge] DATA_DIR`: list (or remove) the guests and volumes an `up` left behind."""
    say = out or (lambda s: print(s, flush=True))
    data_dir = data_dir.resolve()
    inst = _instance(data_dir)
    if inst is None:
        say(f"error: {data_dir} holds no `hostplane up` instance (no cluster-id / libvirt-uri file)")
        return 2
    pid_file = data_dir / "up.pid"
    with contextlib.suppress(OSError, ValueError):
        pid = int(pid_file.read_text())
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            pass
        else:
            say(f"error: `hostplane up` (pid {pid}) is still running on {data_dir}; stop it first")
            return 2
    cluster_id, uri = inst
    if uri.startswith("test:"):
        say(f"{data_dir} ran on {uri}: nothing outlives it")
        return 0
    try:
        uri, daemons = _ensure_libvirt(uri, data_dir / "logs", say, explicit=True,
                                       wait=float(os.environ.get("HOSTPLANE_LIBVIRT_WAIT", LIBVIRT_WAIT)))
    except UpError:
        say(f"error: libvirt at {uri} (where this instance ran) does not answer; start it and run "
            f"`hostplane down` again. Nothing was changed.")
        return 2
    try:
        from nodeagent.leftovers import cluster_domains, purge_cluster

        if not purge:
            left = cluster_domains(uri, cluster_id)
            for x in left:
                say(f"{x.domain}  VPS {x.vps}  {x.state}")
            if not left:
                say("no guests of this instance are left")
            return 0
        domains, volumes = purge_cluster(uri, cluster_id)
        say(f"removed {len(domains)} domain(s) and {len(volumes)} volume(s) of cluster {cluster_id} on {uri}"
            + "".join(f"\n  {d}" for d in domains))
        say(f"the data dir is left as it is: rm -rf {data_dir} to remove it too")
        return 0
    finally:
        for c in daemons:
            c.terminate()
            c.wait_or_kill(time.monotonic() + 5)


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
    p.add_argument("--image-dir", type=Path, action="append", default=[])
    a = p.parse_args(argv)
    from nodeagent.main import run_simulated_fleet

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    from reconcile.connection import EtcdConnection

    conn = EtcdConnection.make(a.etcd, ca=a.etcd_ca, cert=a.etcd_cert, key=a.etcd_key)
    run_simulated_fleet(etcd=conn, nodes=a.nodes, data_dir=a.data_dir, stop=stop, image_dirs=tuple(a.image_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
