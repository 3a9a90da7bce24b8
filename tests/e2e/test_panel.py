"""The web panel end to end: headless Chromium against `hostplane up --simulate-nodes 2`.

A customer signs in, orders a server and watches it reach Running, stops it; an operator in
a second browser context suspends the subscription and the customer's page says so within
2 s; the customer never sees another customer's server. Screenshots at desktop and phone
widths go to tests/e2e/artifacts/ (copies for the README live in docs/screenshots/).
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.panel_up import UpProcess, browser

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
DESKTOP = {"width": 1280, "height": 860}
PHONE = {"width": 375, "height": 812}
PASSWORD = "correct horse battery"



def _admin(up: UpProcess, token: str) -> httpx.Client:
    return httpx.Client(base_url=up.base, headers={"Authorization": f"Bearer {token}"}, timeout=10,
                        verify=up.verify())


def _ok(r: httpx.Response) -> Any:
    assert r.status_code < 300, f"{r.request.method} {r.request.url}: {r.status_code} {r.text}"
    return r.json() if r.content else None


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """`hostplane up` with two plans, an image and customers alice and bob (bob owns one server)."""
    tmp = tmp_path_factory.mktemp("panel")
    disk = tmp / "var" / "images" / "debian-12.raw"  # the image directory of `up --data-dir tmp/var`
    disk.parent.mkdir(parents=True, exist_ok=True)
    disk.write_bytes(b"\0" * 4096)
    up = UpProcess(tmp)
    try:
        token = up.wait_ready()
        with _admin(up, token) as api:
            for name, vcpus, mem, gib, amount in (("small", 1, 512, 10, "5.00"), ("large", 2, 2048, 40, "20.00"),
                                                  ("tiny", 1, 256, 5, "2.00")):
                _ok(api.post("/v1/plans", json={"metadata": {"name": name}, "spec": {
                    "vcpus": vcpus, "memoryMiB": mem, "diskGiB": gib,
                    "price": {"amount": amount, "currency": "EUR"}}}))
            _ok(api.post("/v1/images", json={"metadata": {"name": "debian-12"}, "spec": {
                "os": "Debian", "version": "12", "source": {"path": str(disk), "format": "raw",
                           "sha256": hashlib.sha256(disk.read_bytes()).hexdigest()}}}))
            _ok(api.post("/v1/ippools", json={"metadata": {"name": "public"}, "spec": {
                "cidr": "192.0.2.0/24", "gateway": "192.0.2.1", "ipv6Prefix": "2001:db8::/64"}}))
            for who in ("alice", "bob"):
                _ok(api.post("/v1/customers", json={"metadata": {"name": who}, "spec": {
                    "email": f"{who}@example.com", "displayName": who.title(), "creditLimit": "100"}}))
                _ok(api.put(f"/v1/customers/{who}/password", json={"password": PASSWORD}))
            bob = _ok(api.post("/v1/orders", json={"customer": "bob", "plan": "small", "image": "debian-12",
                                                  "hostname": "bob-secret.example.com", "name": "bob-secret"}))
        yield {"up": up, "token": token, "bob_vps": _name(bob["vps"])}
    finally:
        up.stop()


def _name(ref: Any) -> str:
    return ref if isinstance(ref, str) else ref["metadata"]["name"]


@pytest.fixture(scope="module")
def chromium(system: dict[str, Any]) -> Iterator[Any]:
    """One headless Chromium for the module, trusting up's server certificate; each test opens its own contexts."""
    with browser(pki=system["up"].pki) as b:
        yield b


def _shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.wait_for_timeout(150)  # let the last frame paint
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _sign_in_customer(page: Any, base: str, email: str) -> None:
    page.goto(base + "/")
    # Keyboard only: the e-mail field has focus, Tab moves to the password, Enter submits.
    page.wait_for_selector("form.login input[name=email]:focus")
    page.keyboard.type(email)
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    page.wait_for_selector("h1:has-text('My servers')")


def _sign_in_operator(page: Any, base: str, token: str) -> None:
    page.goto(base + "/")
    page.click("text=Sign in with an API token instead")
    page.fill("input[name=token]", token)
    page.click("form.login button[type=submit]")
    page.wait_for_selector("h1:has-text('Nodes')")


def _no_horizontal_scroll(page: Any) -> None:
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the page is {width}px wide at {PHONE['width']}px"


@pytest.mark.timeout(420)
def test_customer_orders_stops_is_suspended_live_and_sees_only_own_servers(system: dict[str, Any],
                                                                          chromium: Any) -> None:
    """Order → Running and Stop → Stopped without reload; an operator's suspension shows within 2 s; no foreign VPS."""
    up: UpProcess = system["up"]
    base, bob_vps = up.base, system["bob_vps"]
    alice_ctx = chromium.new_context(viewport=DESKTOP)
    ops_ctx = chromium.new_context(viewport=DESKTOP)
    try:
        page = alice_ctx.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        # The page runs under a strict CSP: a blocked script or style would show up here.
        page.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)
        _sign_in_customer(page, base, "alice@example.com")
        assert page.locator(f"li.server[data-name='{bob_vps}']").count() == 0
        assert "bob" not in page.inner_text("main").lower()

        # Order: the first period is the plan's monthly price; the disk-shrinking plan is offered
        # here (a new server) but the resize dialog below must not offer it.
        page.click("a:has-text('Order a server')")
        page.check("input[name=plan][value=small]")
        assert page.inner_text("[data-testid=first-period]") == "5.00 EUR"
        page.select_option("select[name=image]", "debian-12")
        page.fill("input[name=hostname]", "web1.example.com")
        page.fill("input[name=name]", "alice-web")
        _shot(page, "customer-order-desktop")
        page.evaluate("window.__sameDocument = true")  # gone if the page reloads
        page.click("form.order button[type=submit]")
        page.wait_for_url(f"{base}/servers/alice-web")
        status = page.locator("section.card .phase[data-phase]").first
        deadline = time.monotonic() + 90
        while status.get_attribute("data-phase") != "Running":
            assert time.monotonic() < deadline, page.inner_text("main") + up.log_tail()
            page.wait_for_timeout(200)
        assert page.evaluate("window.__sameDocument === true")
        _shot(page, "customer-server-desktop")

        page.click("button[data-key=stop]")
        page.wait_for_selector(".phase[data-phase=Stopped]", timeout=60_000)
        assert page.evaluate("window.__sameDocument === true")

        page.click("button[data-key=resize]")
        offered = page.locator("dialog input[name=plan]").evaluate_all("els => els.map(e => e.value)")
        assert offered == ["large"], offered  # tiny would shrink the disk
        page.check("dialog input[name=plan][value=large]")
        assert "prorated to the hour" in page.inner_text("dialog")
        page.keyboard.press("Escape")
        page.click("button[data-key=rebuild]")
        warning = page.inner_text("dialog")
        assert "Everything on its 10 GiB disk is erased" in warning and "Debian 12" in warning
        page.keyboard.press("Escape")
        page.wait_for_selector("dialog", state="detached")

        page.click("a:has-text('My servers')")
        page.wait_for_selector("li.server[data-name=alice-web]")
        _shot(page, "customer-servers-desktop")
        # Another customer's server is not found, in the page and through the API with this session.
        page.goto(f"{base}/servers/{bob_vps}")
        page.wait_for_selector("text=No such server, or it is not yours.")
        assert alice_ctx.request.get(f"{base}/v1/vps/{bob_vps}").status == 404
        listed = alice_ctx.request.get(f"{base}/v1/vps").json()["items"]
        assert [v["metadata"]["name"] for v in listed] == ["alice-web"]
        page.click("a:has-text('My servers')")
        page.wait_for_selector("li.server[data-name=alice-web]")
        page.evaluate("window.__sameDocument = true")

        # The operator suspends alice's subscription from her customer page.
        ops = ops_ctx.new_page()
        _sign_in_operator(ops, base, system["token"])
        _shot(ops, "operator-nodes-desktop")
        ops.goto(f"{base}/ops/customers/alice")
        sub = ops.locator("li.sub").first
        sub.locator("button:has-text('Suspend…')").click()
        ops.select_option("dialog select[name=reason]", "abuse")
        ops.fill("dialog textarea[name=note]", "ticket 4711: outgoing spam")
        t0 = time.monotonic()
        ops.click("dialog button:has-text('Suspend')")
        page.wait_for_selector("[data-testid=billing-banner]:has-text('Suspended')", timeout=2000)
        shown_after = time.monotonic() - t0
        assert shown_after <= 2.0, shown_after
        ops.wait_for_selector("li.sub button:has-text('Lift suspension')")
        page.wait_for_selector("li.server[data-name=alice-web] .phase[data-phase=Suspended]", timeout=30_000)
        assert page.evaluate("window.__sameDocument === true")
        _shot(page, "customer-suspended-desktop")
        _shot(ops, "operator-customer-desktop")
        ops.goto(f"{base}/ops/servers?customer=alice")
        ops.wait_for_selector("tr[data-name=alice-web]")
        assert ops.locator(f"tr[data-name='{bob_vps}']").count() == 0
        ops.goto(f"{base}/ops/servers")
        ops.wait_for_selector(f"tr[data-name='{bob_vps}']")
        _shot(ops, "operator-servers-desktop")
        ops.goto(f"{base}/ops/events?kind=VPS&name=alice-web")
        ops.wait_for_selector("td:has-text('Scheduled')")

        # Lifting the suspension clears the customer's banner, live.
        ops.goto(f"{base}/ops/customers/alice")
        ops.click("li.sub button:has-text('Lift suspension')")
        ops.wait_for_selector("li.sub button:has-text('Suspend…')")
        page.wait_for_selector("[data-testid=billing-banner]", state="detached", timeout=30_000)

        # Delete asks for the server's name before it does anything; for a customer it cancels the subscription.
        page.click("a[href='/servers/alice-web']")
        page.click("button[data-key=delete]")
        confirm = page.locator("dialog button:has-text('Delete for good')")
        assert confirm.is_disabled()
        page.fill("dialog input[name=confirm-name]", "alice-we")
        assert confirm.is_disabled()
        page.fill("dialog input[name=confirm-name]", "alice-web")
        confirm.click()
        page.wait_for_url(f"{base}/servers")
        with _admin(up, system["token"]) as api:
            vps = _ok(api.get("/v1/vps/alice-web"))
            assert _ok(api.get(f"/v1/subscriptions/{vps['spec']['subscription']}"))["spec"]["cancelled"] is True
        assert page.evaluate("window.__sameDocument === true")
        assert not errors, errors
    finally:
        alice_ctx.close()
        ops_ctx.close()


@pytest.mark.timeout(240)
def test_phone_width_and_stream_reconnects_after_api_restart(system: dict[str, Any], chromium: Any) -> None:
    """At 375 px nothing scrolls sideways; when the API process dies the stream reconnects and updates resume."""
    up: UpProcess = system["up"]
    base = up.base
    phone = chromium.new_context(viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True)
    ops_phone = chromium.new_context(viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True)
    try:
        page = phone.new_page()
        page.goto(base + "/")
        page.wait_for_selector("form.login")
        _no_horizontal_scroll(page)
        _shot(page, "login-phone")
        _sign_in_customer(page, base, "bob@example.com")
        page.wait_for_selector(f"li.server[data-name='{system['bob_vps']}']")
        _no_horizontal_scroll(page)
        _shot(page, "customer-servers-phone")
        page.click("a:has-text('Order')")
        page.wait_for_selector("form.order")
        _no_horizontal_scroll(page)
        _shot(page, "customer-order-phone")
        page.click("nav a:has-text('Billing')")
        page.wait_for_selector("[data-testid=balance]")
        _no_horizontal_scroll(page)
        _shot(page, "customer-billing-phone")
        page.click("nav a:has-text('My servers')")
        page.wait_for_selector(f"li.server[data-name='{system['bob_vps']}']")

        ops = ops_phone.new_page()
        _sign_in_operator(ops, base, system["token"])
        _no_horizontal_scroll(ops)
        _shot(ops, "operator-nodes-phone")

        # Kill the API process (its supervisor starts it again): both streams must come back by themselves.
        page.evaluate("window.__sameDocument = true")
        os.kill(up.api_pid(), signal.SIGKILL)
        page.wait_for_selector(".conn.reconnecting", timeout=10_000)
        page.wait_for_selector(".conn.live", timeout=30_000)
        ops.wait_for_selector(".conn.live", timeout=30_000)
        with _admin(up, system["token"]) as api:
            _ok(api.post(f"/v1/vps/{system['bob_vps']}/actions/stop"))
        page.wait_for_selector(f"li.server[data-name='{system['bob_vps']}'] .phase[data-phase=Stopped]",
                               timeout=60_000)
        assert page.evaluate("window.__sameDocument === true")
    finally:
        phone.close()
        ops_phone.close()
