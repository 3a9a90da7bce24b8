"""Billing over HTTP on a real etcd: signed webhooks counted once, bad input refused, operator payments, reads."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.auth import ensure_admin_token
from api.server import create_app, serving
from controllers.billing import ledger, payments
from controllers.billing.payments.webhook import sign
from reconcile.objects import Store
from specs.kinds import Subscription
from tests.integration.test_billing_ledger import assert_adds_up, make_customer, make_plan, make_sub

SECRET = "s3cret-for-tests"


@pytest.fixture
def api(store: Store, tmp_path: Path) -> Iterator[httpx.Client]:
    """An admin client for an API on loopback, with webhook secrets for `webhook` and `external`."""
    token = ensure_admin_token(store, tmp_path)
    payments.set_webhook_secret(store, "webhook", SECRET)
    payments.set_webhook_secret(store, "external", SECRET)
    make_customer(store)
    app = create_app(store, max_body_bytes=64 * 1024)
    with serving(app) as url, httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"},
                                           timeout=10) as client:
        yield client


def base(client: httpx.Client) -> str:
    return str(client.base_url).rstrip("/")


def signed(body: dict[str, Any] | bytes, *, ts: int | None = None, secret: str = SECRET) -> dict[str, Any]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    stamp = int(time.time()) if ts is None else ts
    return {"content": raw, "headers": {"Hostplane-Timestamp": str(stamp),
                                        "Hostplane-Signature": sign(secret.encode(), stamp, raw),
                                        "Content-Type": "application/json"}}


def hook(client: httpx.Client, body: dict[str, Any] | bytes, **kw: Any) -> httpx.Response:
    return httpx.post(f"{base(client)}/v1/webhooks/payments/webhook", timeout=10, **signed(body, **kw))


PAYMENT = {"id": "tx_1", "customer": "acme", "amount": "500.00", "currency": "EUR"}


def test_webhook_payment_is_credited_once_and_answered_the_same(api: httpx.Client, store: Store) -> None:
    """The same signed callback twice: credited once, the same answer both times."""
    first = hook(api, PAYMENT)
    assert first.status_code == 200, first.text
    second = hook(api, PAYMENT)
    assert second.status_code == 200 and second.content == first.content
    assert first.json()["balance"] == "500.00"
    assert assert_adds_up(store) == 50_000


def test_concurrent_webhook_deliveries_credit_once(api: httpx.Client, store: Store) -> None:
    """Six simultaneous deliveries of one payment: one credit, six identical answers."""
    answers: list[bytes] = []
    barrier = threading.Barrier(6)

    def deliver() -> None:
        barrier.wait()
        answers.append(hook(api, {**PAYMENT, "id": "tx_race"}).content)

    threads = [threading.Thread(target=deliver) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(answers) == 6 and len(set(answers)) == 1
    assert assert_adds_up(store) == 50_000


@pytest.mark.parametrize(("body", "status", "field"), [
    ({**PAYMENT, "amount": "0"}, 422, "amount"),
    ({**PAYMENT, "amount": "-5.00"}, 422, "amount"),
    ({**PAYMENT, "amount": "1.005"}, 422, "amount"),
    (b'{"id": "tx_f", "customer": "acme", "amount": 1.005, "currency": "EUR"}', 422, "amount"),
    ({**PAYMENT, "currency": "XYZ"}, 422, "currency"),
    ({**PAYMENT, "currency": "USD"}, 422, "currency"),
    ({**PAYMENT, "customer": "ghost"}, 404, None),
    ({**PAYMENT, "id": ""}, 422, "id"),
    (b"not json", 422, "body"),
])
def test_bad_payments_are_refused_and_change_nothing(api: httpx.Client, store: Store, body: Any, status: int,
                                                     field: str | None) -> None:
    """Zero, negative, over-precise, unknown-currency, foreign-currency and unknown-customer payments are refused."""
    resp = hook(api, body)
    assert resp.status_code == status, resp.text
    if field is not None:
        assert resp.json()["errors"][0]["path"] == field
    assert ledger.entries(store, "acme") == [] and assert_adds_up(store) == 0


def test_bad_or_old_signatures_are_refused(api: httpx.Client, store: Store) -> None:
    """A wrong secret, a tampered body, missing headers or a timestamp over 5 minutes old get 401."""
    url = f"{base(api)}/v1/webhooks/payments/webhook"
    assert httpx.post(url, **signed(PAYMENT, secret="wrong")).status_code == 401
    req = signed(PAYMENT)
    req["content"] = json.dumps({**PAYMENT, "amount": "5000.00"}).encode()
    assert httpx.post(url, **req).status_code == 401
    assert httpx.post(url, json=PAYMENT).status_code == 401
    old = httpx.post(url, **signed(PAYMENT, ts=int(time.time()) - 301))
    assert old.status_code == 401 and "window" in old.json()["detail"]
    assert httpx.post(f"{base(api)}/v1/webhooks/payments/nosuch", **signed(PAYMENT)).status_code == 404
    assert httpx.post(f"{base(api)}/v1/webhooks/payments/manual", **signed(PAYMENT)).status_code == 404
    assert assert_adds_up(store) == 0


def test_operator_payment_and_ledger_reads(api: httpx.Client, store: Store) -> None:
    """An operator's manual payment is keyed by its reference; the ledger and statement show it."""
    r1 = api.post("/v1/customers/acme/payments", json={"amount": "500.00", "reference": "BANK-123"})
    r2 = api.post("/v1/customers/acme/payments", json={"amount": "500.00", "reference": "BANK-123"})
    assert r1.status_code == 200 and r1.json() == r2.json()
    assert api.post("/v1/customers/acme/payments", json={"amount": "500.00"}).status_code == 422
    assert api.post("/v1/customers/acme/payments", json={"amount": 5.5, "reference": "X"}).status_code == 422
    assert api.post("/v1/customers/ghost/payments", json={"amount": "1", "reference": "X"}).status_code == 404
    assert httpx.post(f"{base(api)}/v1/customers/acme/payments",
                      json={"amount": "1", "reference": "X"}).status_code == 401
    led = api.get("/v1/customers/acme/ledger").json()
    assert led["balance"] == "500.00" and [e["reference"] for e in led["entries"]] == ["BANK-123"]
    month = f"{datetime.now(UTC):%Y-%m}"
    st = api.get(f"/v1/customers/acme/statements/{month}").json()
    assert st["closing"] == "500.00" and st["final"] is False
    assert api.get("/v1/customers/acme/statements/2026-13").status_code == 422
    assert api.get("/v1/customers/acme/statements").json()["months"] == []


def test_external_billing_sets_state_once(api: httpx.Client, store: Store) -> None:
    """A signed external-billing event sets an external subscription's state; repeats and internal subs are handled."""
    make_plan(store)
    make_sub(store, "web")
    store.create(Subscription.model_validate({"metadata": {"name": "ext"}, "spec": {
        "customer": "acme", "plan": "small", "billingMode": "external"}}))
    url = f"{base(api)}/v1/webhooks/external-billing"
    ev = {"id": "evt-1", "subscription": "ext", "state": "suspended", "reason": "nonpayment"}
    a, b = httpx.post(url, **signed(ev)), httpx.post(url, **signed(ev))
    assert a.status_code == 200 and a.content == b.content
    status = store.get(Subscription, "ext").status
    assert status is not None and (status.state, status.suspendReason) == ("Suspended", "nonpayment")
    assert httpx.post(url, **signed({**ev, "id": "evt-2", "state": "active"})).json()["state"] == "Active"
    assert httpx.post(url, **signed({**ev, "id": "evt-3", "subscription": "web"})).status_code == 422
    assert httpx.post(url, **signed({**ev, "id": "evt-1", "state": "active"})).status_code == 409
    assert httpx.post(url, **signed({**ev, "id": "evt-4", "state": "paused"})).status_code == 422


def test_webhook_secret_rotation_is_admin_only(api: httpx.Client) -> None:
    """An operator can rotate a provider's secret; without a token it is refused."""
    resp = api.put("/v1/billing/webhook-secrets/webhook")
    assert resp.status_code == 200 and len(resp.json()["secret"]) > 20
    assert httpx.put(f"{base(api)}/v1/billing/webhook-secrets/webhook").status_code == 401
    assert hook(api, PAYMENT).status_code == 401  # the old secret no longer works
