"""The panel's billing views in Chromium: banners and what to pay, payments in the ledger, resize price, escaping.

The API runs in this process over the test's store, without controllers: the test writes
the billing statuses itself (as the billing controller would), so each state is shown on
demand and the banner's arithmetic is checked against known numbers.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from api.auth import create_token
from api.server import create_app, serving
from controllers.billing.charging import HOURS_PER_MONTH
from reconcile.objects import Store
from specs.kinds import VPS, Customer, CustomerStatus, Subscription, SubscriptionStatus, VPSStatus
from specs.money import format_minor
from tests.e2e.panel_up import browser

PASSWORD = "carol's long password"
XSS = '<img src=x onerror="window.__xss = 1"><b>bold</b>'



@pytest.fixture
def panel(store: Store) -> Iterator[tuple[str, str]]:
    """The API with the panel over the test's store, seeded with customer carol and one server."""
    token = create_token(store, "admin")
    with serving(create_app(store)) as base, \
            httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=10) as api:
        def ok(r: httpx.Response) -> None:
            assert r.status_code < 300, r.text
        ok(api.post("/v1/plans", json={"metadata": {"name": "small"}, "spec": {
            "vcpus": 1, "memoryMiB": 1024, "diskGiB": 20, "description": XSS,
            "price": {"amount": "6.72", "currency": "EUR"}}}))
        ok(api.post("/v1/plans", json={"metadata": {"name": "big"}, "spec": {
            "vcpus": 4, "memoryMiB": 8192, "diskGiB": 80, "price": {"amount": "40.32", "currency": "EUR"}}}))
        ok(api.post("/v1/images", json={"metadata": {"name": "debian-12"}, "spec": {
            "os": "Debian", "version": "12", "source": {"path": "/srv/images/debian-12.raw", "format": "raw",
                                                     "sha256": "0" * 64}}}))
        ok(api.post("/v1/customers", json={"metadata": {"name": "carol"}, "spec": {
            "email": "carol@example.com", "creditLimit": "10"}}))
        ok(api.put("/v1/customers/carol/password", json={"password": PASSWORD}))
        ok(api.post("/v1/subscriptions", json={"metadata": {"name": "carol-web"}, "spec": {
            "customer": "carol", "plan": "small"}}))
        ok(api.post("/v1/vps", json={"metadata": {"name": "carol-web"}, "spec": {
            "subscription": "carol-web", "image": "debian-12", "hostname": "web.example.com"}}))
        store.put_status(VPS, "carol-web", VPSStatus(phase="Running", node="n1"))
        yield base, token


@pytest.fixture
def page(panel: tuple[str, str]) -> Iterator[Any]:
    """Carol signed in, on her server list."""
    base, _ = panel
    with browser() as b:
        ctx = b.new_context(viewport={"width": 1280, "height": 860})
        p = ctx.new_page()
        p.goto(base + "/")
        p.fill("input[name=email]", "carol@example.com")
        p.fill("input[name=password]", PASSWORD)
        p.click("form.login button[type=submit]")
        p.wait_for_selector("li.server[data-name=carol-web]")
        yield p
        ctx.close()


def _owe(store: Store, balance_minor: int, state: str) -> None:
    store.put_status(Customer, "carol", CustomerStatus(balance=format_minor(balance_minor, "EUR"),
                                                       balanceMinor=balance_minor, state=state))


def test_overdue_then_suspended_banners_say_what_to_pay(store: Store, page: Any) -> None:
    """Overdue and non-payment suspension show a banner with the balance and the least payment that restores service."""
    assert page.locator("[data-testid=billing-banner]").count() == 0
    _owe(store, -2500, "Overdue")
    store.put_status(Subscription, "carol-web", SubscriptionStatus(
        state="Overdue", overdueSince=datetime(2026, 1, 2, tzinfo=UTC)))
    banner = page.wait_for_selector("[data-testid=billing-banner]:has-text('Overdue')", timeout=5000)
    text = banner.inner_text()
    assert "Balance: -25.00 EUR" in text and "Pay at least 15.00 EUR" in text, text  # 25 owed, 10 of credit

    store.put_status(Subscription, "carol-web", SubscriptionStatus(
        state="Suspended", suspendReason="nonpayment", suspendedAt=datetime(2026, 1, 5, tzinfo=UTC)))
    store.put_status(VPS, "carol-web", VPSStatus(phase="Suspended", node="n1"))
    banner = page.wait_for_selector("[data-testid=billing-banner]:has-text('non-payment')", timeout=5000)
    assert "Pay at least 15.00 EUR" in banner.inner_text()
    page.click("a[href='/servers/carol-web']")
    assert page.locator("button[data-key=start]").is_disabled()
    assert "cannot be started" in page.inner_text("main")

    store.put_status(Subscription, "carol-web", SubscriptionStatus(state="Active"))
    store.put_status(VPS, "carol-web", VPSStatus(phase="Running", node="n1"))
    _owe(store, 0, "Active")
    page.wait_for_selector("[data-testid=billing-banner]", state="detached", timeout=5000)


def test_a_payment_appears_in_the_ledger_and_statement(panel: tuple[str, str], page: Any) -> None:
    """An operator's payment shows in the customer's balance, entries and this month's statement."""
    base, token = panel
    page.click("nav a:has-text('Billing')")
    page.wait_for_selector("[data-testid=balance]:has-text('0.00 EUR')")
    r = httpx.post(f"{base}/v1/customers/carol/payments", headers={"Authorization": f"Bearer {token}"},
                   json={"amount": "12.50", "reference": "bank-4711"})
    assert r.status_code < 300, r.text
    page.reload()
    page.wait_for_selector("[data-testid=balance]:has-text('12.50 EUR')")
    assert "12.50 EUR" in page.inner_text("table")
    page.click("button:has-text('This month so far')")
    statement = page.wait_for_selector(".statement h3")
    assert "Statement" in statement.inner_text()
    assert "12.50 EUR" in page.inner_text(".statement")


def test_resize_shows_the_prorated_price_billing_charges(page: Any) -> None:
    """The resize dialog's extra for the rest of the month matches hourly charging from the next hour on."""
    page.click("a[href='/servers/carol-web']")
    page.click("button[data-key=resize]")
    page.check("dialog input[name=plan][value=big]")
    text = page.inner_text("dialog")
    now = datetime.now(UTC)
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    k = min(HOURS_PER_MONTH, int((now - start).total_seconds() // 3600) + 1)
    expected = set()
    for first in (k - 1, k):  # the hour may have turned since the page computed it
        big, small = (p - p * max(0, first) // HOURS_PER_MONTH for p in (4032, 672))
        expected.add(format_minor(big - small, "EUR"))
    assert any(f"Extra for the rest of this month: {e} EUR" in text for e in expected), (text, expected)
    assert "40.32 EUR / month" in text


def test_text_from_the_api_is_shown_as_text_never_run(page: Any) -> None:
    """A plan description holding HTML is displayed literally; no element or script from it exists."""
    page.click("a:has-text('Order a server')")
    page.wait_for_selector("form.order")
    assert XSS in page.inner_text("form.order")
    assert page.locator("form.order img").count() == 0 and page.locator("form.order b").count() == 0
    assert page.evaluate("window.__xss === undefined")


def test_an_order_the_balance_cannot_cover_fails_with_a_clear_message(page: Any) -> None:
    """Ordering a plan above balance plus credit shows the server's reason next to the form and creates nothing."""
    page.click("a:has-text('Order a server')")
    page.check("input[name=plan][value=big]")
    assert page.inner_text("[data-testid=first-period]") == "40.32 EUR"
    page.fill("input[name=hostname]", "big.example.com")
    page.click("form.order button[type=submit]")
    error = page.wait_for_selector("form.order .form-error [role=alert]")
    assert "Not enough funds" in error.inner_text()
    assert page.url.endswith("/order")
    assert page.locator("form.order button[type=submit]").is_enabled()  # progress ended with the answer
    page.fill("input[name=hostname]", "Not A Hostname")
    page.click("form.order button[type=submit]")
    page.wait_for_selector("form.order .form-error [role=alert]:has-text('Hostname')")
    page.click("nav a:has-text('My servers')")
    page.wait_for_selector("li.server[data-name=carol-web]")
    assert page.locator("li.server").count() == 1
