"""The system under the panel's browser tests and benchmark: `hostplane up --simulate-nodes 2` and Chromium.

`UpProcess` runs `hostplane up` as a child process (test driver libvirt, two simulated
nodes, a private data dir and port) and stops it by PID with SIGTERM; `browser()` launches
the Debian `chromium` through Playwright without downloading any browser.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from reconcile.etcd_server import free_port

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def _hostplane() -> list[str]:
    script = Path(sys.executable).parent / "hostplane"
    return [str(script)] if script.exists() else [sys.executable, "-m", "api.cli"]


def children_of(pid: int) -> dict[int, str]:
    """Every descendant of `pid` with its command line, read from /proc."""
    parents: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parents[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    out: dict[int, str] = {}
    frontier = {pid}
    while frontier:
        frontier = {c for c, p in parents.items() if p in frontier}
        for c in frontier:
            with contextlib.suppress(OSError):
                out[c] = (Path(f"/proc/{c}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
    return out


class UpProcess:
    """`hostplane up --simulate-nodes N` on a free port; `.stop()` sends SIGTERM to its PID."""

    def __init__(self, data_dir: Path, *, nodes: int = 2, port: int | None = None,
                 libvirt: str | None = "test:///default", extra: tuple[str, ...] = ()) -> None:
        self.port = port or free_port()
        self.env: dict[str, str] = {}
        self.base = f"https://127.0.0.1:{self.port}"
        self.pki = data_dir / "var" / "pki"
        home = data_dir / "home"
        env = {k: v for k, v in os.environ.items() if not k.startswith("HOSTPLANE_")}
        env |= {"HOME": str(home), "XDG_CONFIG_HOME": str(data_dir / "cfg")}
        self.env = env
        self.proc = subprocess.Popen(
            [*_hostplane(), "up", "--simulate-nodes", str(nodes), *(["--libvirt", libvirt] if libvirt else []),
             "--data-dir", str(data_dir / "var"), "--port", str(self.port), *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
        self.output: list[str] = []
        self.ready = threading.Event()
        self.logs = data_dir / "var" / "logs"
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)
            if "Press Ctrl-C" in line:
                self.ready.set()

    def verify(self) -> ssl.SSLContext:
        """An SSL context trusting up's CA (made on its first start): for httpx's `verify`."""
        return ssl.create_default_context(cafile=str(self.pki / "ca.crt"))

    def token(self) -> str:
        for line in self.output:
            if "admin token:" in line:
                return line.split("admin token:")[1].strip()
        raise AssertionError("no token printed:\n" + "".join(self.output))

    def wait_ready(self, timeout: float = 90) -> str:
        """Wait until the API answers with the admin token and every node is Ready; return the token."""
        assert self.ready.wait(timeout), "".join(self.output)
        token = self.token()
        headers = {"Authorization": f"Bearer {token}"}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError, ValueError):
                nodes = httpx.get(f"{self.base}/v1/nodes", headers=headers, timeout=5,
                                  verify=self.verify()).json()["items"]
                if len(nodes) >= 3 and all((n.get("status") or {}).get("state") == "Ready" for n in nodes):
                    return token
            time.sleep(0.3)
        raise AssertionError("nodes did not become Ready:\n" + "".join(self.output) + self.log_tail())

    def log_tail(self, lines: int = 40) -> str:
        out = []
        for name in ("api.log", "controllers.log", "fleet.log", "agent.log"):
            with contextlib.suppress(OSError):
                text = (self.logs / name).read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {name}\n" + "\n".join(text))
        return "\n".join(out)

    def api_pid(self) -> int:
        for pid, cmd in children_of(self.proc.pid).items():
            if " api --etcd " in f" {cmd} ":
                return pid
        raise AssertionError("no API child process")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                for pid in children_of(self.proc.pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def spki_pin(cert: Path) -> str:
    """Base64 SHA-256 of a certificate's public key: Chromium's per-key trust flag takes these."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    key = x509.load_pem_x509_certificate(cert.read_bytes()).public_key()
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


@contextlib.contextmanager
def browser(pki: Path | None = None) -> Iterator[Any]:
    """Headless Debian Chromium through Playwright (never a downloaded browser).

    `pki`: up's PKI directory. The browser then accepts up's server certificate, by its key only
    (every other certificate error still fails), and Playwright's own HTTP client (`context.request`,
    run by its Node driver) trusts up's CA.
    """
    from playwright.sync_api import sync_playwright

    args = list(CHROMIUM_ARGS)
    env_before = os.environ.get("NODE_EXTRA_CA_CERTS")
    if pki is not None:
        args.append(f"--ignore-certificate-errors-spki-list={spki_pin(pki / 'server.crt')}")
        os.environ["NODE_EXTRA_CA_CERTS"] = str(pki / "ca.crt")  # read by the driver when it starts
    try:
        with sync_playwright() as pw:
            b = pw.chromium.launch(executable_path=CHROMIUM, args=args)
            try:
                yield b
            finally:
                b.close()
    finally:
        if env_before is None:
            os.environ.pop("NODE_EXTRA_CA_CERTS", None)
        else:
            os.environ["NODE_EXTRA_CA_CERTS"] = env_before
