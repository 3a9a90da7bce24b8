"""A QEMU libvirt connection for tests and benchmarks, with a private daemon when needed.

`qemu:///session` is used as is when it answers. As root it maps to the system daemon, which a
test host need not run; then a private session daemon is started as the unprivileged `nobody`
user with its runtime in a temp dir, reached through its socket (`qemu:///session?socket=...`).
That daemon, and every domain and pool on it, is stopped at the end. Guests run under TCG when
/dev/kvm is not usable, with user-mode NICs and VNC on 127.0.0.1 only.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import libvirt


@dataclass
class Session:
    uri: str
    # A directory the hypervisor's user may write (pools and logs live under it).
    workdir: Path
    daemon: subprocess.Popen[bytes] | None = None


def _try_open(uri: str) -> bool:
    libvirt.registerErrorHandler(lambda _c, _e: None, None)
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError:
        return False
    conn.close()
    return True


def _start_private_daemon(base: Path) -> tuple[str, subprocess.Popen[bytes]]:
    user = pwd.getpwnam("nobody")
    # Short paths: libvirt puts UNIX sockets under the config dir and their paths are limited to 108 bytes.
    for d in ("run", "home", "c", "home/.cache"):
        (base / d).mkdir(parents=True, exist_ok=True)
    for p in [base, *base.rglob("*")]:
        os.chown(p, user.pw_uid, user.pw_gid)
    os.chmod(base / "run", 0o700)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(base / "home"),
           "XDG_RUNTIME_DIR": str(base / "run"), "XDG_CONFIG_HOME": str(base / "c"),
           "XDG_CACHE_HOME": str(base / "home/.cache")}
    # setpriv drops to `nobody` rather than Popen(user=...): that forces a plain fork, and a fork of a
    # process with gRPC threads (the etcd client) can abort in the child before it execs.
    cmd = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", "libvirtd"]
    with open(base / "libvirtd.log", "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    sock = base / "run" / "libvirt" / "libvirt-sock"
    uri = f"qemu:///session?socket={sock}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if sock.exists() and _try_open(uri):
            return uri, proc
        if proc.poll() is not None:
            raise RuntimeError(f"private libvirtd exited: {(base / 'libvirtd.log').read_text()[-2000:]}")
        time.sleep(0.1)
    proc.kill()
    proc.wait(10)
    raise RuntimeError("private libvirtd did not answer within 20 s")


@contextmanager
def qemu_session(*, private: bool = False) -> Iterator[Session]:
    """A working QEMU libvirt connection URI; a private daemon is started (and stopped) if needed,
    or always with `private` (a test that must not share a daemon others may stop)."""
    base = Path(tempfile.mkdtemp(prefix="hpq", dir="/tmp"))
    os.chmod(base, 0o755)
    if not private and _try_open("qemu:///session"):
        yield Session("qemu:///session", base)
        shutil.rmtree(base, ignore_errors=True)
        return
    if os.geteuid() != 0:
        raise RuntimeError("qemu:///session is not reachable and a private daemon needs root to drop to 'nobody'")
    uri, proc = _start_private_daemon(base)
    work = base / "work"
    work.mkdir()
    user = pwd.getpwnam("nobody")
    os.chown(work, user.pw_uid, user.pw_gid)
    session = Session(uri, work, proc)
    try:
        yield session
    finally:
        _cleanup(uri)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        shutil.rmtree(base, ignore_errors=True)


def _cleanup(uri: str) -> None:
    """Nothing a test started may outlive the session: destroy and undefine every domain."""
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError:
        return
    for dom in conn.listAllDomains(0):
        try:
            if dom.isActive():
                dom.destroy()
            dom.undefine()
        except libvirt.libvirtError:
            pass
    for pool in conn.listAllStoragePools(0):
        try:
            if pool.isActive():
                pool.destroy()
            pool.undefine()
        except libvirt.libvirtError:
            pass
    conn.close()


def make_workdir(session: Session) -> Path:
    """A fresh directory the hypervisor's user can write (for an agent's data dir)."""
    d = Path(tempfile.mkdtemp(dir=session.workdir))
    os.chmod(d, 0o755)
    st = session.workdir.stat()
    os.chown(d, st.st_uid, st.st_gid)
    return d


def qemu_pids(name_prefix: str) -> list[int]:
    """PIDs of QEMU processes running guests whose libvirt name starts with `name_prefix`."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if b"qemu-system" in cmd and f"guest={name_prefix}".encode() in cmd:
            pids.append(int(entry))
    return pids
