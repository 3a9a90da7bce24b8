"""Panel benchmark: first-load bytes and time to interactive; status change in etcd to the change on screen.

Starts a private etcd and `hostplane api` (a separate process, as deployed) on loopback, with
20 servers of one customer and no controllers (so the statuses written here are the only
ones). Headless Debian Chromium loads the panel in fresh contexts (empty cache):

* first load: bytes transferred for the document and every asset (Resource Timing
  `transferSize`: compressed bodies plus headers) and the time from navigation start to the
  first page drawn (`hostplane:route` mark): the sign-in form, and the server list of a
  signed-in customer (whoami, every list and the watch request included);
* live update: the bench writes a VPS status straight to etcd (`Store.put_status`) and the
  page records `Date.now()` when the server's badge shows the new phase (a MutationObserver);
  the same clock on both sides. Once with a customer's cookie session (EventSource), once
  with an operator token (fetch stream).
"""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from reconcile.etcd_server import EtcdServer, free_port
from reconcile.objects import Store
from specs.kinds import VPS, Subscription, SubscriptionSpec, VPSIPs, VPSSpec, VPSStatus
from specs.meta import ObjectMeta

SERVERS = 20
FLEET = 2000
LOADS = 8
UPDATES = 60
PASSWORD = "benchmark password 1"
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]

OBSERVER = """
(() => {
  window.__want = {}; window.__seen = {};
  const check = () => {
    for (const el of document.querySelectorAll('li.server[data-name]')) {
      const name = el.dataset.name, want = window.__want[name];
      const phase = el.querySelector('[data-phase]');
      if (want && phase && phase.dataset.phase === want && !window.__seen[name + ':' + want]) {
        window.__seen[name + ':' + want] = Date.now();
      }
    }
  };
  new MutationObserver(check).observe(document.body, {subtree: true, childList: true, attributes: true});
})();
"""

LOAD_FIGURES = """
(() => {
  const nav = performance.getEntriesByType('navigation')[0];
  const res = performance.getEntriesByType('resource').filter((r) => !r.name.includes('/v1/'));
  const mark = performance.getEntriesByName('hostplane:route')[0];
  return {
    transfer: nav.transferSize + res.reduce((a, r) => a + r.transferSize, 0),
    decoded: nav.decodedBodySize + res.reduce((a, r) => a + r.decodedBodySize, 0),
    files: res.length + 1,
    interactive: mark ? mark.startTime : null,
  };
})()
"""


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@contextlib.contextmanager
def _api(tmp: Path) -> Iterator[tuple[str, str, EtcdServer]]:
    etcd = EtcdServer(tmp / "etcd").start()
    port = free_port()
    data = tmp / "var"
    log = open(tmp / "api.log", "wb")  # noqa: SIM115 - closed below, after the child exits
    proc = subprocess.Popen(
        [sys.executable, "-c", "from api.cli import main; main()", "api", *etcd.args("api"),
         "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data)], stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the API did not start: " + (tmp / "api.log").read_text()[-2000:])
            time.sleep(0.1)
        yield url, (data / "admin-token").read_text().strip(), etcd
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        etcd.stop()


def _seed(url: str, token: str, store: Store) -> bool:
    """One customer with SERVERS running servers; returns whether the customer can sign in with a password."""
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=10) as api:
        def post(kind: str, body: dict[str, Any]) -> None:
            r = api.post(f"/v1/{kind}", json=body)
            r.raise_for_status()
        post("plans", {"metadata": {"name": "small"}, "spec": {"vcpus": 1, "memoryMiB": 1024, "diskGiB": 25,
                                                               "price": {"amount": "4.49", "currency": "EUR"}}})
        post("images", {"metadata": {"name": "debian-12"}, "spec": {"os": "Debian", "version": "12",
                                                                    "source": {"path": "/srv/debian-12.qcow2",
                                                                               "sha256": "0" * 64}}})
        post("customers", {"metadata": {"name": "carol"}, "spec": {"email": "carol@example.com"}})
        for i in range(SERVERS):
            post("subscriptions", {"metadata": {"name": f"sub-{i}"}, "spec": {"customer": "carol", "plan": "small"}})
            post("vps", {"metadata": {"name": f"web-{i:02d}"}, "spec": {"subscription": f"sub-{i}",
                                                                        "image": "debian-12",
                                                                        "hostname": f"web-{i}.example.com"}})
            store.put_status(VPS, f"web-{i:02d}", VPSStatus(phase="Running", node="sim-0",
                                                           ips=VPSIPs(ipv4=f"192.0.2.{10 + i}")))
        return api.put("/v1/customers/carol/password", json={"password": PASSWORD}).status_code < 300


def _sign_in(page: Any, url: str, token: str | None) -> None:
    page.goto(url + "/")
    page.wait_for_selector("form.login")
    if token is None:
        page.fill("input[name=email]", "carol@example.com")
        page.fill("input[name=password]", PASSWORD)
    else:
        page.click("text=Sign in with an API token instead")
        page.fill("input[name=token]", token)
    page.click("form.login button[type=submit]")


def _first_loads(browser: Any, url: str, token: str | None) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"bytes": [], "decoded": [], "files": [], "login_ms": [], "list_ms": []}
    for _ in range(LOADS):
        ctx = browser.new_context(viewport={"width": 1280, "height": 800})
        page = ctx.new_page()
        page.goto(url + "/")
        page.wait_for_selector("form.login")
        fig = page.evaluate(LOAD_FIGURES)
        out["bytes"].append(fig["transfer"])
        out["decoded"].append(fig["decoded"])
        out["files"].append(fig["files"])
        out["login_ms"].append(fig["interactive"])
        # Signed in: a reload lands on the live server list (session cookie or the tab's token).
        _sign_in(page, url, token)
        page.wait_for_selector(f"li.server[data-name=web-{SERVERS - 1:02d}]")
        page.reload()
        page.wait_for_selector(f"li.server[data-name=web-{SERVERS - 1:02d}]")
        out["list_ms"].append(page.evaluate(LOAD_FIGURES)["interactive"])
        ctx.close()
    return out


def _updates(browser: Any, url: str, token: str | None, store: Store, phases: dict[str, str]) -> list[float]:
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    page = ctx.new_page()
    _sign_in(page, url, token)
    if token is not None:
        page.goto(url + "/ops/servers")  # operators see every server as a table; the list view is the customer's
        page.wait_for_selector("tr[data-name]")
    page.wait_for_selector(".conn.live")
    page.evaluate(OBSERVER.replace("li.server[data-name]", "[data-name]"))
    samples = []
    for n in range(UPDATES):
        name = f"web-{n % SERVERS:02d}"
        phases[name] = "Stopped" if phases[name] == "Running" else "Running"
        page.evaluate("([n, p]) => { window.__want[n] = p; delete window.__seen[n + ':' + p]; }", [name, phases[name]])
        t0 = time.time() * 1000
        store.put_status(VPS, name, VPSStatus(phase=phases[name], node="sim-0",  # type: ignore[arg-type]
                                              ips=VPSIPs(ipv4="192.0.2.1")))
        seen = page.wait_for_function("(k) => window.__seen[k]", arg=f"{name}:{phases[name]}", timeout=10_000)
        samples.append(float(seen.json_value()) - t0)
        time.sleep(0.05)
    ctx.close()
    return samples


def _grow_fleet(store: Store) -> None:
    """FLEET more servers of other customers, named to sort after the measured ones."""
    for i in range(FLEET):
        name = f"zz-fleet-{i:04d}"
        store.create(Subscription(metadata=ObjectMeta(name=name), spec=SubscriptionSpec(customer=f"c{i % 200}",
                                                                                         plan="small")))
        store.create(VPS(metadata=ObjectMeta(name=name), spec=VPSSpec(subscription=name, image="debian-12",
                                                                      hostname=f"h{i}.example.com")))
        store.put_status(VPS, name, VPSStatus(phase="Running", node=f"sim-{i % 20}",
                                              ips=VPSIPs(ipv4=f"10.{i // 250}.{i % 250}.1")))


def _fleet_load(browser: Any, url: str, token: str) -> list[float]:
    """Navigation start to the operator's server table drawn, with the whole fleet listed."""
    out = []
    for _ in range(3):
        ctx = browser.new_context(viewport={"width": 1280, "height": 800})
        page = ctx.new_page()
        _sign_in(page, url, token)
        page.wait_for_selector("h1:has-text('Nodes')")
        page.goto(url + "/ops/servers")
        page.wait_for_selector("tr[data-name=web-00]")
        out.append(float(page.evaluate(LOAD_FIGURES)["interactive"]))
        ctx.close()
    return out


def run() -> str:
    from playwright.sync_api import sync_playwright

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-panel-") as tmp, _api(Path(tmp)) as (url, token, etcd):
        store = etcd.store()
        try:
            customer_login = _seed(url, token, store)
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                try:
                    who = None if customer_login else token
                    loads = _first_loads(browser, url, who)
                    live: dict[str, list[float]] = {}
                    # The phase each server has in etcd now (put_status writes only a change).
                    phases = {f"web-{i:02d}": "Running" for i in range(SERVERS)}
                    if customer_login:
                        live["customer session (EventSource)"] = _updates(browser, url, None, store, phases)
                    live["operator token (fetch stream)"] = _updates(browser, url, token, store, phases)
                    _grow_fleet(store)
                    fleet_ms = _fleet_load(browser, url, token)
                    live[f"operator token, {FLEET + SERVERS} servers listed (500 rows drawn)"] = _updates(
                        browser, url, token, store, phases)
                finally:
                    browser.close()
        finally:
            store.close()
    kb = [b / 1024 for b in loads["bytes"]]
    rows = "\n".join(
        f"| {how} | {len(s)} | {statistics.median(s):.0f} | {pct(s, 0.95):.0f} | {max(s):.0f} |"
        for how, s in live.items())
    signed = "a customer's cookie session" if customer_login else "an operator token (no customer passwords yet)"
    return (
        "## Panel\n\n"
        "`tests/bench/bench_panel.py`: one `hostplane api` process and a single-member etcd on loopback,\n"
        f"headless Debian Chromium, {os.cpu_count()} cores shared by all three; {SERVERS} servers of one customer,\n"
        f"no controllers. Load average {load_before:.1f} before the run, {os.getloadavg()[0]:.1f} after.\n"
        f"First load: {LOADS} fresh browser contexts (empty cache). Bytes are Resource Timing `transferSize`\n"
        "(gzip bodies plus headers) of the document and every asset; interactive is navigation start to the\n"
        "first page drawn (`hostplane:route` mark).\n\n"
        "| first load | median | max |\n| --- | ---: | ---: |\n"
        f"| transferred (target < 300 KB) | {statistics.median(kb):.1f} KB | {max(kb):.1f} KB |\n"
        f"| uncompressed | {statistics.median(loads['decoded']) / 1024:.1f} KB | |\n"
        f"| files (document + assets) | {statistics.median(loads['files']):.0f} | |\n"
        f"| sign-in form interactive | {statistics.median(loads['login_ms']):.0f} ms "
        f"| {max(loads['login_ms']):.0f} ms |\n"
        f"| signed in, server list drawn from live data ({signed}) | "
        f"{statistics.median(loads['list_ms']):.0f} ms | {max(loads['list_ms']):.0f} ms |\n"
        f"| operator's server table with {FLEET + SERVERS} servers (listing all, drawing 500) | "
        f"{statistics.median(fleet_ms):.0f} ms | {max(fleet_ms):.0f} ms |\n\n"
        f"Status change written to etcd → new phase on screen, {UPDATES} changes each (target p95 < 1 s):\n\n"
        "| stream | changes | p50 ms | p95 ms | max ms |\n| --- | ---: | ---: | ---: | ---: |\n"
        f"{rows}\n"
    )


if __name__ == "__main__":
    print(run())
