"""A hoster's network in network namespaces, with a privileged libvirt of its own, for real-guest tests.

    router ns (the pool's gateway: 203.0.113.1, 2001:db8:7::1)
        eth0 ── veth ── vr0
                         │
    host ns  ── br-pub (the public network; the host's own 203.0.113.250, 2001:db8:7::fa)
                 │  ├── hpb… taps of bridge-mode guests (filtered by libvirt's nwfilter)
                 │  lo: 127.0.0.1 and 10.99.0.1 (another host address)
                 └─ libvirtd (root, its own /run, /etc/libvirt, /var/lib/libvirt: nothing shared with
                    the machine's libvirt), TCP listeners standing in for etcd, API and agent ports

The private daemon runs inside the host namespace and a private mount namespace, so its taps,
bridges, ebtables/iptables rules and NAT stay in namespaces this module creates and deletes.
`Sniffer` captures every frame arriving at the router; `Console` drives a guest's serial shell
through libvirt's console stream (the PTY only the hypervisor's owner can open).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import libvirt

ROUTER4, ROUTER6 = "203.0.113.1", "2001:db8:7::1"
HOST4, HOST6, HOST_OTHER4 = "203.0.113.250", "2001:db8:7::fa", "10.99.0.1"
BRIDGE = "br-pub"
# Stand-ins for the host's etcd client and peer ports and the API's (the agent opens no port).
HOST_PORTS = (2379, 2380, 8080)

_DAEMON = """set -e
B="$1"
mount -t tmpfs tmpfs /run
mkdir -p /run/libvirt /run/lock
mount --bind "$B/run" /run/libvirt
mount --bind "$B/etc" /etc/libvirt
mount --bind "$B/lib" /var/lib/libvirt
mount --bind "$B/cache" /var/cache/libvirt
mount --bind "$B/log" /var/log/libvirt
exec /usr/sbin/libvirtd
"""

_LISTEN = """
import socket, sys, threading, time
def serve(port):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port)); s.listen(16)
    while True:
        c, _ = s.accept(); c.sendall(b"host-service\\n"); c.close()
for p in sys.argv[1:]:
    threading.Thread(target=serve, args=(int(p),), daemon=True).start()
print("listening", flush=True)
time.sleep(86400)
"""

_SNIFF = r"""
import json, socket, struct, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind((sys.argv[1], 0)); s.settimeout(0.2)
print("ready", flush=True)
end = time.time() + float(sys.argv[2]); out = []
mac = lambda b: ":".join(f"{x:02x}" for x in b)
while time.time() < end:
    try: f = s.recv(65535)
    except socket.timeout: continue
    d = {"src": mac(f[6:12]), "dst": mac(f[0:6]), "type": struct.unpack("!H", f[12:14])[0]}
    p = f[14:]
    if d["type"] == 0x0800:
        ihl = (p[0] & 15) * 4
        d.update(ip_src=socket.inet_ntop(socket.AF_INET, p[12:16]), ip_dst=socket.inet_ntop(socket.AF_INET, p[16:20]),
                 proto=p[9])
        if p[9] in (6, 17):
            d.update(sport=struct.unpack("!H", p[ihl:ihl+2])[0], dport=struct.unpack("!H", p[ihl+2:ihl+4])[0])
    elif d["type"] == 0x0806:
        d.update(op=struct.unpack("!H", p[6:8])[0], arp_smac=mac(p[8:14]),
                 arp_sip=socket.inet_ntop(socket.AF_INET, p[14:18]), arp_tip=socket.inet_ntop(socket.AF_INET, p[24:28]))
    elif d["type"] == 0x86DD:
        d.update(ip_src=socket.inet_ntop(socket.AF_INET6, p[8:24]), ip_dst=socket.inet_ntop(socket.AF_INET6, p[24:40]),
                 proto=p[6])
        if p[6] == 58: d["icmp6"] = p[40]
        if p[6] == 17: d.update(sport=struct.unpack("!H", p[40:42])[0], dport=struct.unpack("!H", p[42:44])[0])
    out.append(d)
print(json.dumps(out), flush=True)
"""


def sh(*cmd: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command (in `netns`), output captured; raises with its stderr when `check` and it failed."""
    full = ["ip", "netns", "exec", netns, *cmd] if netns else list(cmd)
    proc = subprocess.run(full, capture_output=True, text=True, timeout=60, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(full)}: {proc.stderr.strip()}")
    return proc


@dataclass
class NetLab:
    host: str
    router: str
    base: Path
    uri: str
    daemon: subprocess.Popen[bytes]
    listener: subprocess.Popen[bytes] | None = None
    conns: list[libvirt.virConnect] = field(default_factory=list)

    def open(self) -> libvirt.virConnect:
        conn = libvirt.open(self.uri)
        self.conns.append(conn)
        return conn

    def neigh(self, address: str) -> str:
        """The router's neighbour entry for `address` (its MAC when known)."""
        return sh("ip", "neigh", "show", address, netns=self.router).stdout.strip()

    def connect_from_router(self, address: str, port: int) -> bool:
        """Whether the router can open a TCP connection to `address:port` (a control for the guests' attempts)."""
        code = (f"import socket; s = socket.create_connection(({address!r}, {port}), timeout=3); "
                f"print(s.recv(64))")
        return sh(sys.executable, "-c", code, netns=self.router, check=False).returncode == 0

    def sniff(self, seconds: float) -> Sniffer:
        return Sniffer(self.router, seconds)


class Sniffer:
    """Every frame arriving on the router's interface for `seconds` (start it, act, then `.frames()`)."""

    def __init__(self, netns: str, seconds: float) -> None:
        self.proc = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", _SNIFF, "eth0",
                                      str(seconds)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"sniffer did not start: {self.proc.stderr.read() if self.proc.stderr else ''}")

    def frames(self) -> list[dict[str, Any]]:
        out, err = self.proc.communicate(timeout=120)
        if self.proc.returncode != 0:
            raise RuntimeError(f"sniffer failed: {err}")
        frames: list[dict[str, Any]] = json.loads(out.strip().splitlines()[-1])
        return frames


class Console:
    """A guest's serial shell: commands go in through libvirt's console stream, output is read from its log."""

    def __init__(self, conn: libvirt.virConnect, dom: libvirt.virDomain, log: Path) -> None:
        self.conn = conn
        self.dom = dom
        self.log = log

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_for(self, needle: str, *, after: int = 0, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.text()
            if needle in text[after:]:
                return text[after:]
            time.sleep(0.2)
        raise AssertionError(f"{needle!r} not on the console within {timeout} s; it shows:\n{self.text()[-3000:]}")

    def run(self, script: str, *, timeout: float = 90) -> str:
        """Run shell commands in the guest; returns what they printed."""
        tag = uuid.uuid4().hex[:10]
        mark = len(self.text())
        stream = self.conn.newStream(0)
        try:
            self.dom.openConsole(None, stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE)
            # printf joins the tag only when it runs, so an echoed command line never looks finished.
            payload = f"{{ {script.strip()}\n}} 2>&1; printf '%s-%s\\n' DONE {tag}\n".encode()
            stream.send(payload)
            out = self.wait_for(f"DONE-{tag}", after=mark, timeout=timeout)
        finally:
            with contextlib.suppress(libvirt.libvirtError):
                stream.finish()
        return out.split(f"DONE-{tag}")[0]


def _prepare_config(base: Path) -> None:
    for d in ("run", "lib", "cache", "log"):
        (base / d).mkdir(parents=True)
    # What the libvirt packages create under /var/lib/libvirt; libvirt's network driver keeps its
    # per-network MAC lists in dnsmasq/ even when no dnsmasq runs (dnsmasq-base usually creates it).
    for sub in {"dnsmasq", *(d.name for d in Path("/var/lib/libvirt").iterdir() if d.is_dir())}:
        (base / "lib" / sub).mkdir()
    shutil.copytree("/etc/libvirt", base / "etc", symlinks=True)
    for auto in (base / "etc" / "qemu" / "networks" / "autostart").glob("*"):
        auto.unlink()
    with open(base / "etc" / "qemu.conf", "a") as f:
        f.write('\nuser = "root"\ngroup = "root"\ndynamic_ownership = 0\nremember_owner = 0\n'
                'security_driver = "none"\nstdio_handler = "file"\n')
    with open(base / "etc" / "libvirtd.conf", "a") as f:
        f.write('\nauth_unix_rw = "none"\nauth_unix_ro = "none"\n')


def _network(host: str, router: str) -> None:
    for ns in (host, router):
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "set", "lo", "up", netns=ns)
    sh("ip", "link", "add", BRIDGE, "type", "bridge", netns=host)
    sh("ip", "link", "set", BRIDGE, "up", netns=host)
    sh("sysctl", "-qw", f"net.ipv6.conf.{BRIDGE}.accept_dad=0", netns=host)
    sh("ip", "addr", "add", f"{HOST4}/24", "dev", BRIDGE, netns=host)
    sh("ip", "-6", "addr", "add", f"{HOST6}/64", "dev", BRIDGE, "nodad", netns=host)
    sh("ip", "addr", "add", f"{HOST_OTHER4}/32", "dev", "lo", netns=host)
    sh("ip", "link", "add", "vr0", "type", "veth", "peer", "name", "eth0", "netns", router, netns=host)
    sh("ip", "link", "set", "vr0", "master", BRIDGE, "up", netns=host)
    sh("sysctl", "-qw", "net.ipv6.conf.eth0.accept_dad=0", netns=router)
    sh("ip", "link", "set", "eth0", "up", netns=router)
    sh("ip", "addr", "add", f"{ROUTER4}/24", "dev", "eth0", netns=router)
    sh("ip", "-6", "addr", "add", f"{ROUTER6}/64", "dev", "eth0", "nodad", netns=router)


@contextmanager
def netlab() -> Iterator[NetLab]:
    """Namespaces, the public bridge, the router, host listeners and a private privileged libvirtd."""
    if os.geteuid() != 0:
        raise RuntimeError("the network lab needs root (network namespaces, a privileged libvirtd)")
    suffix = uuid.uuid4().hex[:6]
    host, router = f"hpgh-{suffix}", f"hpgr-{suffix}"
    # Short: libvirt's UNIX socket paths are limited to 108 bytes.
    base = Path(tempfile.mkdtemp(prefix="hpn", dir="/tmp"))
    daemon: subprocess.Popen[bytes] | None = None
    lab: NetLab | None = None
    try:
        _network(host, router)
        _prepare_config(base)
        (base / "daemon.sh").write_text(_DAEMON)
        with open(base / "libvirtd.out", "wb") as out:
            daemon = subprocess.Popen(["ip", "netns", "exec", host, "unshare", "--mount", "--propagation", "private",
                                       "sh", str(base / "daemon.sh"), str(base)],
                                      stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        uri = f"qemu:///system?socket={base}/run/libvirt-sock"
        libvirt.registerErrorHandler(lambda _c, _e: None, None)
        deadline = time.monotonic() + 30
        while True:
            try:
                libvirt.open(uri).close()
                break
            except libvirt.libvirtError:
                if daemon.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"private libvirtd: {(base / 'libvirtd.out').read_text()[-2000:]}") from None
                time.sleep(0.2)
        lab = NetLab(host, router, base, uri, daemon)
        lab.listener = subprocess.Popen(["ip", "netns", "exec", host, sys.executable, "-c", _LISTEN,
                                         *map(str, HOST_PORTS)], stdout=subprocess.PIPE, start_new_session=True)
        assert lab.listener.stdout is not None and lab.listener.stdout.readline().strip() == b"listening"
        yield lab
    finally:
        if lab is not None:
            _teardown(lab)
        if daemon is not None and daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(20)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait(5)
        for ns in (host, router):
            sh("ip", "netns", "del", ns, check=False)
        shutil.rmtree(base, ignore_errors=True)


def _teardown(lab: NetLab) -> None:
    if lab.listener is not None:
        lab.listener.kill()
        lab.listener.wait(5)
        if lab.listener.stdout is not None:
            lab.listener.stdout.close()
    with contextlib.suppress(libvirt.libvirtError):
        conn = libvirt.open(lab.uri)
        for dom in conn.listAllDomains(0):
            with contextlib.suppress(libvirt.libvirtError):
                if dom.isActive():
                    dom.destroy()
                dom.undefine()
        for net in conn.listAllNetworks(0):
            with contextlib.suppress(libvirt.libvirtError):
                if net.isActive():
                    net.destroy()
                net.undefine()
        conn.close()
    for c in lab.conns:
        with contextlib.suppress(libvirt.libvirtError):
            c.close()
