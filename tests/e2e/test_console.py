"""Serial console end to end on real QEMU: API ticket → API WebSocket → node endpoint (mutual TLS) → guest PTY."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import libvirt
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from api.auth import parse_token, revoke_token
from api.console import ConsoleTLS
from api.sessions import SESSION_COOKIE, set_password
from nodeagent.agent import Agent
from nodeagent.domain_xml import domain_name
from nodeagent.endpoint import EndpointConfig
from reconcile import keys
from reconcile.etcd_server import EtcdServer
from reconcile.store import Store
from specs.domain import DomainImage, DomainNetwork, DomainSpec
from specs.kinds import VPS, Subscription, SubscriptionStatus, VPSStatus
from tests.e2e.guest.build import GuestImage
from tests.e2e.guest.session import Session, make_workdir, qemu_session
from tests.helpers import access_env
from tests.helpers.wait import wait_for

pytestmark = pytest.mark.qemu


@dataclass
class Console:
    env: access_env.Env
    agent: Agent
    spec: DomainSpec
    log: Path

    def ticket(self, who: str = "customer", vps: str = "acme-web") -> str:
        r = self.env.client(who).post(f"/v1/vps/{vps}/console", json={"kind": "serial"})
        assert r.status_code == 201, r.text
        return str(r.json()["ticket"])

    def open(self, ticket: str) -> ClientConnection:
        return connect(self.env.url.replace("http", "ws", 1) + f"/v1/console?ticket={ticket}", open_timeout=10)


def read_until(ws: ClientConnection, marker: bytes, timeout: float = 30) -> bytes:
    out, deadline = b"", time.monotonic() + timeout
    while marker not in out:
        msg = ws.recv(timeout=max(0.1, deadline - time.monotonic()))
        out += msg if isinstance(msg, bytes) else msg.encode()
    return out


@pytest.fixture(scope="module")
def qemu() -> Iterator[Session]:
    """A private libvirt daemon (as `nobody`): the shared root session may be stopped by other tests."""
    with qemu_session(private=True) as session:
        yield session


@pytest.fixture
def console(store: Store, etcd_session: EtcdServer, qemu: Session, guest_image: GuestImage,
            tmp_path: Path) -> Iterator[Console]:
    agent_dir = make_workdir(qemu)
    pki = etcd_session.pki
    node = "qemu-" + uuid.uuid4().hex[:6]
    server = pki.node_server(node)
    api_pair = pki.issue("api")
    agent = Agent(store, node, qemu.uri, agent_dir, resync=5.0, heartbeat_ttl=6, debounce_seconds=0.5,
                  pool_name=f"hp-{node}",
                  endpoint=EndpointConfig("127.0.0.1", 0, cert=server.cert, key=server.key, ca=pki.ca_cert))
    api_store = etcd_session.store("api", root=store.root)
    conn = libvirt.open(qemu.uri)
    try:
        with access_env.served(store, tmp_path, app_store=api_store,
                               console_tls=ConsoleTLS(pki.ca_cert, api_pair.cert, api_pair.key)) as env:
            vps = store.get(VPS, "acme-web")
            image = DomainImage(name="test-guest", path=guest_image.disk, sha256=guest_image.disk_sha256,
                                format="qcow2", kernel=guest_image.kernel, initrd=guest_image.initrd,
                                cmdline=guest_image.cmdline)
            spec = DomainSpec.model_validate({
                "vps": "acme-web", "uid": vps.metadata.uid, "vcpus": 1, "memoryMiB": 128, "diskGiB": 1,
                "maxVcpus": 1, "maxMemoryMiB": 128, "image": image, "hostname": "acme-web",
                "network": DomainNetwork(mac="52:54:00:12:34:57"), "shutdownGraceSeconds": 5})
            store.kv_put(keys.desired_key(node, "acme-web", store.root), spec.model_dump_json().encode())
            store.put_status(VPS, "acme-web", VPSStatus(node=node))
            agent.start()
            log = agent_dir / "logs" / f"{domain_name(spec.uid)}.log"
            wait_for(lambda: log.exists() and "hostplane-guest: ready" in log.read_text(errors="replace"),
                     timeout=120, interval=0.3, what="the guest to boot")
            yield Console(env, agent, spec, log)
    finally:
        agent.stop()
        api_store.close()
        for dom in conn.listAllDomains(0):
            if dom.name() == domain_name(vps.metadata.uid):
                if dom.isActive():
                    dom.destroy()
                dom.undefine()
        try:
            pool = conn.storagePoolLookupByName(f"hp-{node}")
            for vol in pool.listAllVolumes(0):
                vol.delete(0)
            pool.destroy()
            pool.undefine()
        except libvirt.libvirtError:
            pass
        conn.close()
        shutil.rmtree(agent_dir, ignore_errors=True)


def test_serial_console_through_the_api(console: Console) -> None:
    """Typed into the API WebSocket, a command runs in the guest's serial shell and its answer comes back;
    the ticket works once, another customer gets 404, a suspended server is refused, revoking closes it."""
    with console.open(console.ticket()) as ws:
        ws.send(b"\recho hp-$((6*7))-ok\r")
        assert b"hp-42-ok" in read_until(ws, b"hp-42-ok")

    ticket = console.ticket()
    with console.open(ticket) as ws:
        ws.send(b"\r")
        read_until(ws, b"#")
    with console.open(ticket) as replay, pytest.raises(ConnectionClosed) as err:
        replay.recv(timeout=10)
    assert err.value.rcvd is not None and err.value.rcvd.code == 4401

    r = console.env.client("globex").post("/v1/vps/acme-web/console", json={"kind": "serial"})
    assert r.status_code == 404, r.text

    # The CLI attaches the same console in a terminal; Ctrl-] leaves with exit code 0.
    cli = subprocess.Popen([sys.executable, "-m", "api.cli", "--server", console.env.url, "--token",
                            console.env.tokens["customer"], "vps", "console", "acme-web"],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert cli.stdin is not None
    cli.stdin.write(b"\recho hp-$((5*5))-cli\r")
    cli.stdin.flush()
    time.sleep(4)
    out, err = cli.communicate(b"\x1d", timeout=30)
    assert cli.returncode == 0, err
    assert b"hp-25-cli" in out

    # Revoking the customer's token closes its open console within a second.
    with console.open(console.ticket()) as ws:
        ws.send(b"\r")
        read_until(ws, b"#")
        revoke_token(console.env.store, parse_token(console.env.tokens["customer"])[0])  # type: ignore[index]
        began = time.monotonic()
        with pytest.raises(ConnectionClosed) as err:
            while True:
                ws.recv(timeout=5)
        assert time.monotonic() - began < 1.0
    assert err.value.rcvd is not None and err.value.rcvd.code == 4401

    console.env.store.put_status(Subscription, "acme-sub", SubscriptionStatus(state="Suspended",
                                                                              suspendReason="nonpayment"))
    r = console.env.client("admin").post("/v1/vps/acme-web/console", json={"kind": "serial"})
    assert r.status_code == 409 and "suspended" in r.json()["detail"], r.text


SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"

# Whether noVNC's canvas shows anything but one flat colour (the guest's screen was drawn).
CANVAS_DRAWN = """() => {
  const c = document.querySelector('.console-screen canvas');
  if (!c || !c.width || !c.height) return false;
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  for (let i = 4; i < d.length; i += 4) {
    if (d[i] !== d[0] || d[i + 1] !== d[1] || d[i + 2] !== d[2]) return true;
  }
  return false;
}"""


def test_panel_serial_and_graphical_console(console: Console) -> None:
    """In headless Chromium the customer's panel types into the serial console (xterm.js) at 375 px and
    noVNC draws the guest's screen (a non-blank canvas) at desktop width."""
    from tests.e2e.panel_up import browser

    set_password(console.env.store, "acme", "console password")
    r = httpx.post(f"{console.env.url}/v1/auth/login", json={"email": "acme@example.com",
                                                             "password": "console password"}, timeout=10)
    assert r.status_code == 200, r.text
    cookie = {"name": SESSION_COOKIE, "value": r.cookies[SESSION_COOKIE], "url": console.env.url}
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with browser() as b:
        phone = b.new_context(viewport={"width": 375, "height": 812})
        phone.add_cookies([cookie])
        page = phone.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(f"{console.env.url}/servers/acme-web/console")
        page.wait_for_selector(".xterm-screen", timeout=20_000)
        page.wait_for_selector("text=Connected", timeout=20_000)
        page.click(".xterm-screen")
        page.keyboard.type("echo hp-$((7*6))-web")
        page.keyboard.press("Enter")
        page.wait_for_function("() => document.querySelector('.xterm-rows').textContent.includes('hp-42-web')",
                               timeout=30_000)
        # The terminal's theme applies although the CSP refuses inline <style> (views/console.js).
        color = page.evaluate("() => getComputedStyle(document.querySelector('.xterm-rows')).color")
        assert color not in ("rgb(0, 0, 0)", ""), color
        page.screenshot(path=str(SCREENSHOTS / "console-serial-375.png"))
        assert page.evaluate("() => document.documentElement.scrollWidth") <= 375 + 1
        phone.close()

        desk = b.new_context(viewport={"width": 1280, "height": 860})
        desk.add_cookies([cookie])
        page = desk.new_page()
        page.goto(f"{console.env.url}/servers/acme-web/console?kind=vnc")
        page.wait_for_selector(".console-screen canvas", timeout=20_000)
        page.wait_for_function(CANVAS_DRAWN, timeout=30_000)
        page.screenshot(path=str(SCREENSHOTS / "console-vnc-desktop.png"))
        desk.close()
    # Only xterm's own <style> elements are refused by the CSP (their text is applied as CSSOM sheets).
    assert all("inline style" in e for e in errors if "Content Security Policy" in e), errors
