"""Orders and VPS actions against a real etcd: one-step ordering, the 402 rule, actions as spec changes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from reconcile.errors import NotFound
from reconcile.objects import Store
from specs.kinds import VPS, Customer, Subscription
from tests.helpers.access_env import ED25519, Env, served


@pytest.fixture
def env(store: Store, tmp_path: Path) -> Iterator[Env]:
    """Two customers with a server each, a token per role, an API on loopback."""
    with served(store, tmp_path) as e:
        yield e


def problem(resp: httpx.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = resp.json()
    return body


def pay(env: Env, customer: str, amount: str, ref: str) -> None:
    r = env.client("admin").post(f"/v1/customers/{customer}/payments", json={"amount": amount, "reference": ref})
    assert r.status_code == 200, r.text


ORDER = {"plan": "s1", "image": "debian-12", "hostname": "shop.example.com", "sshKeys": [ED25519], "name": "shop"}


def test_order_without_funds_is_402_and_stores_nothing(env: Env, store: Store) -> None:
    """A zero balance and no credit do not cover the first month: 402, no Subscription, no VPS."""
    body = problem(env.client("customer").post("/v1/orders", json=ORDER), 402)
    assert "5.00 EUR" in body["detail"]
    for cls in (Subscription, VPS):
        with pytest.raises(NotFound):
            store.get(cls, "shop")


def test_order_creates_subscription_and_vps_in_one_step(env: Env, store: Store) -> None:
    """After a payment covering both subscriptions' month, the order creates both objects at one revision."""
    pay(env, "acme", "10.00", "p-1")
    r = env.client("customer").post("/v1/orders", json=ORDER)
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["firstPeriod"] == {"amount": "5.00", "currency": "EUR", "amountMinor": 500}
    assert out["subscription"]["spec"] == {**out["subscription"]["spec"], "customer": "acme", "plan": "s1"}
    assert out["vps"]["spec"]["subscription"] == "shop" and out["vps"]["spec"]["sshKeys"] == [ED25519]
    sub, vps = store.get(Subscription, "shop"), store.get(VPS, "shop")
    assert sub.metadata.resourceVersion == vps.metadata.resourceVersion == out["resourceVersion"]
    names = sorted(o["metadata"]["name"] for o in env.client("customer").get("/v1/vps").json()["items"])
    assert names == ["acme-web", "shop"]
    problem(env.client("globex").get("/v1/vps/shop"), 404)
    problem(env.client("customer").post("/v1/orders", json=ORDER), 409)


def test_credit_limit_covers_an_order(env: Env, store: Store) -> None:
    """A customer with enough credit may order with a zero balance."""
    cust = store.get(Customer, "globex")
    store.update(cust.model_copy(update={"spec": cust.spec.model_copy(update={"creditLimit": "10.00"})}))
    r = env.client("globex").post("/v1/orders", json={**ORDER, "name": "g-shop"})
    assert r.status_code == 201, r.text


@pytest.mark.parametrize(("change", "path"), [
    ({"plan": "hidden"}, "plan"), ({"plan": "nope"}, "plan"), ({"image": "nope"}, "image"),
    ({"hostname": "-bad-"}, "spec.hostname"), ({"hostname": "a" * 300}, "spec.hostname"),
    ({"sshKeys": ["ssh-rsa not-base64!"]}, "spec.sshKeys[0]"), ({"name": "../etc"}, "metadata.name"),
    ({"name": "Ünïcode"}, "metadata.name"), ({"hostname": "x.example.com\nruncmd: [reboot]"}, "spec.hostname"),
    ({"extra": "' OR 1=1 --"}, "extra"),
])
def test_bad_orders_are_422_and_store_nothing(env: Env, store: Store, change: dict[str, Any], path: str) -> None:
    """Private or unknown plans, unknown images, bad hostnames, keys or names, unknown fields: 422 with the field."""
    pay(env, "acme", "50.00", "p-bad")
    before = store.revision()
    body = problem(env.client("customer").post("/v1/orders", json={**ORDER, **change}), 422)
    assert any(e["path"] == path for e in body["errors"]), body
    kvs, _ = store.kv_range(store.root + "/specs/")
    assert all(kv.mod_revision <= before for kv in kvs)


def test_admin_orders_for_a_customer_and_customers_only_for_themselves(env: Env) -> None:
    """Staff must name the customer; a customer naming another one gets 404."""
    pay(env, "globex", "50.00", "p-2")
    problem(env.client("admin").post("/v1/orders", json=ORDER), 422)
    assert env.client("admin").post("/v1/orders", json={**ORDER, "customer": "globex"}).status_code == 201
    problem(env.client("customer").post("/v1/orders", json={**ORDER, "customer": "globex", "name": "x2"}), 404)


def test_actions_change_the_spec_and_answer_at_once(env: Env, store: Store) -> None:
    """stop/start set powerState, reboot/rebuild bump their generations, each answered 202 with a resourceVersion."""
    acme = env.client("customer")
    expected = {"stop": ("powerState", "Stopped"), "start": ("powerState", "Running"),
                "reboot": ("restartGeneration", 1), "rebuild": ("rebuildGeneration", 1)}
    for action, (field, value) in expected.items():
        r = acme.post(f"/v1/vps/acme-web/actions/{action}")
        assert r.status_code == 202, r.text
        vps = store.get(VPS, "acme-web")
        assert getattr(vps.spec, field) == value and r.json()["resourceVersion"] == vps.metadata.resourceVersion
    problem(acme.post("/v1/vps/acme-web/actions/explode"), 404)
    problem(acme.post("/v1/vps/acme-web/actions/stop", json={"force": True}), 422)
    problem(env.client("gitops").post("/v1/vps/acme-web/actions/stop"), 403)


def test_resize_moves_the_plan_and_never_shrinks_the_disk(env: Env, store: Store) -> None:
    """Resize to a bigger public plan works; back to a smaller disk or to a private plan is 422."""
    acme = env.client("customer")
    r = acme.post("/v1/vps/acme-web/actions/resize", json={"plan": "s2"})
    assert r.status_code == 202 and store.get(Subscription, "acme-sub").spec.plan == "s2"
    assert "smaller disk" in problem(acme.post("/v1/vps/acme-web/actions/resize", json={"plan": "s1"}), 422)["detail"]
    problem(acme.post("/v1/vps/acme-web/actions/resize", json={"plan": "hidden"}), 422)
    problem(acme.post("/v1/vps/acme-web/actions/resize", json={}), 422)
    assert store.get(Subscription, "acme-sub").spec.plan == "s2"
    assert env.client("admin").post("/v1/vps/acme-web/actions/resize", json={"plan": "hidden"}).status_code == 202
