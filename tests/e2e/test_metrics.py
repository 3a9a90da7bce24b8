"""Load graphs end to end on real QEMU: agent bulk stats → node endpoint → Prometheus → GET /v1/vps/{name}/metrics."""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import libvirt
import pytest

from api import prometheus
from api.console import ConsoleTLS
from api.sessions import SESSION_COOKIE, set_password
from nodeagent.agent import Agent
from nodeagent.domain_xml import domain_name
from nodeagent.endpoint import EndpointConfig
from reconcile import keys
from reconcile.etcd_server import EtcdServer, free_port
from reconcile.store import Store
from specs.domain import DomainImage, DomainNetwork, DomainSpec
from specs.kinds import VPS, VPSStatus
from tests.e2e.guest.build import GuestImage
from tests.e2e.guest.session import Session, make_workdir, qemu_session
from tests.helpers import access_env, builders
from tests.helpers.wait import wait_for

pytestmark = pytest.mark.qemu

BUSY = "#!/bin/sh\nwhile :; do :; done\n"


@dataclass
class Rig:
    env: access_env.Env
    make_agent: object
    agent: Agent


@pytest.fixture(scope="module")
def qemu() -> Iterator[Session]:
    """A private libvirt daemon (as `nobody`): the shared root session may be stopped by other tests."""
    with qemu_session(private=True) as session:
        yield session


def cpu(env: access_env.Env, who: str, vps: str) -> list[float]:
    r = env.client(who).get(f"/v1/vps/{vps}/metrics", params={"range": "1h"})
    assert r.status_code == 200, r.text
    return [v for _, v in r.json()["series"]["cpuPercent"]]


@pytest.fixture
def rig(store: Store, etcd_session: EtcdServer, qemu: Session, guest_image: GuestImage,
        tmp_path: Path) -> Iterator[Rig]:
    agent_dir = make_workdir(qemu)
    pki = etcd_session.pki
    node = "qemu-" + uuid.uuid4().hex[:6]
    server = pki.node_server(node)
    api_pair = pki.issue("api")
    port = free_port("127.0.0.1")
    store.create(builders.node(node))
    endpoint = EndpointConfig("127.0.0.1", port, cert=server.cert, key=server.key, ca=pki.ca_cert)

    def make_agent() -> Agent:
        return Agent(store, node, qemu.uri, agent_dir, resync=5.0, heartbeat_ttl=6, debounce_seconds=0.5,
                     pool_name=f"hp-{node}", endpoint=endpoint, stats_interval=2.0)

    prom = prometheus.PrometheusProcess(tmp_path / "prometheus", free_port("127.0.0.1"), prometheus.config(
        agents=[f"127.0.0.1:{port}"], api=None, ca=pki.ca_cert, cert=api_pair.cert, key=api_pair.key,
        scrape_seconds=2)).start()
    api_store = etcd_session.store("api", root=store.root)
    conn = libvirt.open(qemu.uri)
    uids: list[str] = []
    agent = make_agent()
    try:
        with access_env.served(store, tmp_path, app_store=api_store, prometheus_url=prom.url,
                               console_tls=ConsoleTLS(pki.ca_cert, api_pair.cert, api_pair.key)) as env:
            image = DomainImage(name="test-guest", path=guest_image.disk, sha256=guest_image.disk_sha256,
                                format="qcow2", kernel=guest_image.kernel, initrd=guest_image.initrd,
                                cmdline=guest_image.cmdline)
            for i, (name, script) in enumerate((("acme-web", BUSY), ("globex-web", None))):
                uid = store.get(VPS, name).metadata.uid
                uids.append(uid)
                spec = DomainSpec.model_validate({
                    "vps": name, "uid": uid, "vcpus": 1, "memoryMiB": 96, "diskGiB": 1, "maxVcpus": 1,
                    "maxMemoryMiB": 96, "image": image, "hostname": name, "userScript": script,
                    "network": DomainNetwork(mac=f"52:54:00:12:35:{i:02x}"), "shutdownGraceSeconds": 5})
                store.kv_put(keys.desired_key(node, name, store.root), spec.model_dump_json().encode())
                store.put_status(VPS, name, VPSStatus(node=node))
            agent.start()
            rig = Rig(env, make_agent, agent)
            yield rig
            agent = rig.agent
    finally:
        agent.stop()
        prom.stop()
        api_store.close()
        for dom in conn.listAllDomains(0):
            if dom.name() in {domain_name(u) for u in uids}:
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


def test_busy_and_idle_guests_and_scoping(rig: Rig) -> None:
    """A guest in a busy loop shows > 50 % CPU within 60 s, an idle one < 10 %; customer B cannot read
    A's series; an agent restart leaves no spike."""
    began = time.monotonic()
    wait_for(lambda: (lambda s: s and s[-1] > 50)(cpu(rig.env, "customer", "acme-web")), timeout=60, interval=2,
             what="the busy guest above 50 % CPU")
    busy_after = time.monotonic() - began
    # The idle guest settles once booted (boot under TCG is busy for a few seconds).
    wait_for(lambda: (lambda s: s and s[-1] < 10)(cpu(rig.env, "globex", "globex-web")), timeout=60, interval=2,
             what="the idle guest below 10 % CPU")
    assert rig.env.client("globex").get("/v1/vps/acme-web/metrics").status_code == 404
    assert rig.env.client("customer").get("/v1/vps/globex-web/metrics").status_code == 404
    assert rig.env.client("customer").get("/v1/vps/acme-web/metrics", params={"range": "2h"}).status_code == 422
    month = rig.env.client("customer").get("/v1/vps/acme-web/traffic")
    assert month.status_code == 200 and month.json()["rxBytes"] >= 0, month.text
    assert rig.env.client("globex").get("/v1/vps/acme-web/traffic").status_code == 404

    rig.agent.stop()
    rig.agent = rig.make_agent()  # type: ignore[operator]
    rig.agent.start()
    time.sleep(12)
    series = cpu(rig.env, "admin", "acme-web")
    assert max(series) <= 110, series  # the counters are libvirt's: no jump across the restart
    assert series[-1] > 50, series
    print(f"busy guest > 50 % after {busy_after:.1f} s")
    panel_graphs(rig)


SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
HAS_DATA = "(sel) => { const el = document.querySelector(sel); return !!el && Number(el.dataset.points) > 1 " \
           "&& !!el.querySelector('canvas'); }"


def panel_graphs(rig: Rig) -> None:
    """The panel draws the server's graphs with data at 375 px and desktop width, and the operator's customer
    page shows each server's CPU beside its node's (screenshots into docs/screenshots/)."""
    from tests.e2e.panel_up import browser

    set_password(rig.env.store, "acme", "graphs password")
    r = httpx.post(f"{rig.env.url}/v1/auth/login", json={"email": "acme@example.com", "password": "graphs password"},
                   timeout=10)
    assert r.status_code == 200, r.text
    cookie = {"name": SESSION_COOKIE, "value": r.cookies[SESSION_COOKIE], "url": rig.env.url}
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with browser() as b:
        for label, viewport in (("375", {"width": 375, "height": 1400}), ("desktop", {"width": 1280, "height": 1300})):
            ctx = b.new_context(viewport=viewport)
            ctx.add_cookies([cookie])
            page = ctx.new_page()
            page.goto(f"{rig.env.url}/servers/acme-web")
            for chart in ("cpu", "memory", "disk", "network"):
                page.wait_for_function(HAS_DATA, arg=f'[data-chart="{chart}"]', timeout=30_000)
            page.wait_for_selector('[data-key="traffic"]:has-text("Traffic in")', timeout=10_000)
            page.locator(".load").scroll_into_view_if_needed()
            page.screenshot(path=str(SCREENSHOTS / f"graphs-{label}.png"), full_page=True)
            if label == "375":
                assert page.evaluate("() => document.documentElement.scrollWidth") <= 376
            ctx.close()
        ops = b.new_context(viewport={"width": 1280, "height": 1100})
        ops.add_init_script(f"sessionStorage.setItem('hostplane.token', {rig.env.tokens['admin']!r})")
        page = ops.new_page()
        logs: list[str] = []
        page.on("console", lambda m: logs.append(f"{m.type}: {m.text}"))
        page.goto(f"{rig.env.url}/ops/customers/acme")
        try:
            page.wait_for_function(HAS_DATA, arg='[data-chart="vps-acme-web"]', timeout=30_000)
        except Exception:
            page.screenshot(path="/tmp/console-ops-fail.png", full_page=True)
            raise AssertionError(f"{logs}\n{page.inner_html('#app')[-3000:]}") from None
        page.wait_for_function(HAS_DATA, arg=f'[data-chart="node-{rig.agent.node}"]', timeout=30_000)
        page.locator(".load").scroll_into_view_if_needed()
        page.screenshot(path=str(SCREENSHOTS / "ops-customer-load.png"), full_page=True)
        ops.close()
