"""Regressions from the security review (issue 13): each test replays the attack that once worked.

Bad input that was a 500, an operator changing a credit limit, a subscription name taken over,
orders past the credit limit, login throttling, stream and session floods, and watch resumes
that showed history under today's owners.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.ratelimit import LoginThrottle
from api.sessions import SESSION_COOKIE, set_password
from controllers import events
from controllers.billing import payments
from controllers.billing.payments.webhook import sign
from reconcile.etcd_server import EtcdServer
from reconcile.objects import Store
from specs.kinds import VPS, Subscription
from tests.helpers import builders
from tests.helpers.access_env import ED25519, Env, served
from tests.helpers.wait import wait_for

PROBLEM = "application/problem+json"
SECRET = "s3cret-for-regressions"


@pytest.fixture
def env(store: Store, etcd_session: EtcdServer, tmp_path: Path) -> Iterator[Env]:
    """Two customers with a server each, a token per role; no rate limit; the API as the `api` etcd identity."""
    payments.set_webhook_secret(store, "webhook", SECRET)
    with etcd_session.store("api", root=store.root) as api_store, \
            served(store, tmp_path, app_store=api_store, rate_per_principal=0) as e:
        yield e


def problem(resp: httpx.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith(PROBLEM), resp.headers
    body: dict[str, Any] = resp.json()
    return body


def plan_doc(name: str) -> dict[str, Any]:
    return {"apiVersion": "hostplane.io/v1", "kind": "Plan", "metadata": {"name": name},
            "spec": {"vcpus": 1, "memoryMiB": 512, "diskGiB": 10, "price": {"amount": "1.00", "currency": "EUR"}}}


def spec_keys(store: Store) -> set[str]:
    return {kv.key for kv in store.kv_range(store.root + "/specs/")[0]}


# ------------------------------------------------------------------ 8: bad input is a 4xx naming the field


def test_a_5000_digit_integer_in_json_is_a_422_naming_the_field(env: Env) -> None:
    """A 5,000-digit integer (past Python's conversion limit) is refused with its field's path, nothing stored."""
    before = spec_keys(env.store)
    raw = json.dumps(plan_doc("huge")).replace('"vcpus": 1', '"vcpus": ' + "9" * 5000)
    body = problem(env.client("admin").post("/v1/plans", content=raw, headers={"Content-Type": "application/json"}),
                   422)
    assert [e["path"] for e in body["errors"]] == ["spec.vcpus"]
    assert spec_keys(env.store) == before


def test_a_5000_digit_integer_in_yaml_is_a_422_naming_the_field(env: Env) -> None:
    """The same in a YAML body (the conversion limit hit PyYAML's int constructor): 422 with the path."""
    text = ("apiVersion: hostplane.io/v1\nkind: Plan\nmetadata: {name: huge}\n"
            "spec:\n  vcpus: 1\n  memoryMiB: " + "7" * 5000 + "\n  diskGiB: 10\n"
            "  price: {amount: '1.00', currency: EUR}\n")
    body = problem(env.client("admin").post("/v1/plans", content=text,
                                            headers={"Content-Type": "application/yaml"}), 422)
    assert [e["path"] for e in body["errors"]] == ["spec.memoryMiB"]


def test_yaml_duplicate_keys_are_a_422_naming_the_key(env: Env) -> None:
    """A YAML body repeating a key (YAML would keep the last silently) is refused, naming path and line."""
    before = spec_keys(env.store)
    text = ("apiVersion: hostplane.io/v1\nkind: Plan\nmetadata: {name: dup}\n"
            "spec:\n  vcpus: 1\n  memoryMiB: 512\n  vcpus: 64\n  diskGiB: 10\n"
            "  price: {amount: '1.00', currency: EUR}\n")
    body = problem(env.client("admin").post("/v1/plans", content=text,
                                            headers={"Content-Type": "application/yaml"}), 422)
    assert body["errors"] == [{"path": "spec.vcpus", "message": "duplicate key (line 7)"}]
    assert spec_keys(env.store) == before


def test_a_signed_webhook_from_the_far_future_is_a_401_naming_the_timestamp(env: Env) -> None:
    """Timestamp 999999999999 with a valid signature: refused as outside the window (was a 500 in datetime)."""
    raw = json.dumps({"id": "tx_far", "customer": "acme", "amount": "5.00", "currency": "EUR"}).encode()
    stamp = 999999999999
    resp = httpx.post(f"{env.url}/v1/webhooks/payments/webhook", content=raw, timeout=10, headers={
        "Hostplane-Timestamp": str(stamp), "Hostplane-Signature": sign(SECRET.encode(), stamp, raw),
        "Content-Type": "application/json"})
    body = problem(resp, 401)
    assert "Hostplane-Timestamp" in body["detail"]


# ------------------------------------------------------------------ 1: a reused subscription name takes nothing over


def pay(env: Env, customer: str, amount: str, ref: str) -> None:
    r = env.client("admin").post(f"/v1/customers/{customer}/payments", json={"amount": amount, "reference": ref})
    assert r.status_code == 200, r.text


def record_event(store: Store, kind: str, name: str, reason: str, when: datetime) -> None:
    """An event as the controllers record it (controllers.events' key and value)."""
    store.kv_put(events.event_key(store.root, kind, name, when), events.encode_event("Normal", reason, reason, when, 1))


def test_subscription_name_takeover_is_refused_at_every_step(env: Env) -> None:
    """Issue 13 item 1: acme's subscription deleted under its server, its name ordered by globex: nothing passes."""
    admin, globex = env.client("admin"), env.client("globex")
    sub = {"metadata": {"name": "acme-old"}, "spec": {"customer": "acme", "plan": "s1"}}
    assert admin.post("/v1/subscriptions", json=sub).status_code == 201
    server = {"metadata": {"name": "acme-old-1"}, "spec": {"subscription": "acme-old", "image": "debian-12",
                                                           "hostname": "old.example.com"}}
    created = admin.post("/v1/vps", json=server)
    assert created.status_code == 201, created.text
    old_uid = env.store.get(Subscription, "acme-old").metadata.uid
    assert created.json()["spec"]["subscriptionUID"] == old_uid
    # acme's history (a minute old: events the controllers recorded while acme had the name).
    record_event(env.store, "Subscription", "acme-old", "AcmeHistory", datetime.now(UTC) - timedelta(minutes=1))
    record_event(env.store, "VPS", "acme-old-1", "AcmeServerHistory", datetime.now(UTC) - timedelta(minutes=1))
    # Deleting a subscription that still has a server is refused, naming the server.
    body = problem(admin.delete("/v1/subscriptions/acme-old"), 409)
    assert "acme-old-1" in body["detail"]
    # Suppose it is gone anyway (a script, a restore): globex orders under the old name.
    env.store.delete(Subscription, "acme-old")
    pay(env, "globex", "50.00", "p-takeover")
    order = {"plan": "s1", "image": "debian-12", "hostname": "g.example.com", "name": "acme-old"}
    problem(globex.post("/v1/orders", json=order), 409)
    assert globex.post("/v1/orders", json={**order, "name": "acme-old-1"}).status_code == 409
    # Staff may reuse the name deliberately; the server and its history still do not follow it.
    assert admin.post("/v1/subscriptions", json={**sub, "spec": {"customer": "globex", "plan": "s1"}}
                      ).status_code == 201
    problem(globex.get("/v1/vps/acme-old-1"), 404)
    problem(globex.patch("/v1/vps/acme-old-1", json={"spec": {"sshKeys": [ED25519]}}), 404)
    problem(globex.post("/v1/vps/acme-old-1/actions/rebuild"), 404)
    assert "acme-old-1" not in [v["metadata"]["name"] for v in globex.get("/v1/vps").json()["items"]]
    problem(globex.get("/v1/events", params={"kind": "VPS", "name": "acme-old-1"}), 404)
    reasons = [e["reason"] for e in globex.get("/v1/events").json()["items"]]
    assert "AcmeHistory" not in reasons and "AcmeServerHistory" not in reasons
    assert globex.get("/v1/events", params={"kind": "Subscription", "name": "acme-old"}).json()["items"] == []
    # Staff resizing the old server cannot change the plan of the subscription that now has its name.
    resize = admin.post("/v1/vps/acme-old-1/actions/resize", json={"plan": "s2"})
    assert problem(resize, 422)["errors"][0]["path"] == "plan"
    assert env.store.get(Subscription, "acme-old").spec.plan == "s1"
    # The server is nobody's now, not even acme's (its subscription is gone): staff decide.
    problem(env.client("customer").get("/v1/vps/acme-old-1"), 404)
    assert env.store.get(VPS, "acme-old-1").spec.sshKeys == []


def test_a_customer_order_cannot_take_a_name_another_customers_objects_used(env: Env) -> None:
    """A name once ordered by acme stays acme's after its objects are deleted; acme itself may reuse it."""
    pay(env, "acme", "20.00", "p-a")
    pay(env, "globex", "20.00", "p-g")
    order = {"plan": "s1", "image": "debian-12", "hostname": "n.example.com", "name": "shop"}
    assert env.client("customer").post("/v1/orders", json=order).status_code == 201
    admin = env.client("admin")
    assert admin.delete("/v1/vps/shop").status_code in (202, 204)
    env.store.kv_delete(env.store.root + "/specs/vps/shop")  # the finalizer's work, done here at once
    assert admin.delete("/v1/subscriptions/shop").status_code == 204
    problem(env.client("globex").post("/v1/orders", json=order), 409)
    assert env.client("customer").post("/v1/orders", json=order).status_code == 201


# ------------------------------------------------------------------ 6: orders check the whole monthly commitment


def priced_plan(env: Env) -> None:
    doc = plan_doc("p1724")
    doc["spec"]["price"]["amount"] = "17.24"
    assert env.client("admin").post("/v1/plans", json=doc).status_code == 201
    assert env.client("admin").patch("/v1/customers/globex", json={"spec": {"creditLimit": "50.00"}}
                                      ).status_code == 200
    pay(env, "globex", "11.10", "p-11")


def test_orders_in_parallel_stay_within_balance_and_credit(env: Env) -> None:
    """11.10 balance + 50 credit, 5.00/month already: of ten parallel 17.24 orders at most three are accepted."""
    priced_plan(env)
    url, token = env.url, env.tokens["globex"]

    def order(i: int) -> int:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as c:
            return c.post("/v1/orders", json={"plan": "p1724", "image": "debian-12", "hostname": f"h{i}.example.com",
                                              "name": f"g-par-{i}"}).status_code

    with ThreadPoolExecutor(10) as pool:
        codes = list(pool.map(order, range(10)))
    accepted = codes.count(201)
    assert 1 <= accepted <= 3 and set(codes) <= {201, 402, 409}, codes
    subs = [s for s in env.store.list(Subscription).items if s.spec.customer == "globex"]
    monthly = sum({"s1": 500, "p1724": 1724}[s.spec.plan] for s in subs)
    assert monthly <= 1110 + 5000, (monthly, codes)


def test_orders_one_after_another_count_every_subscription(env: Env) -> None:
    """Sequential orders: three fit (5.00 + 3 x 17.24 <= 61.10), the fourth is 402 naming the monthly total."""
    priced_plan(env)
    globex = env.client("globex")
    codes = [globex.post("/v1/orders", json={"plan": "p1724", "image": "debian-12", "hostname": f"s{i}.example.com"}
                         ).status_code for i in range(4)]
    assert codes == [201, 201, 201, 402], codes
    assert "56.72 + 17.24 EUR" in problem(globex.post("/v1/orders", json={
        "plan": "p1724", "image": "debian-12", "hostname": "s9.example.com"}), 402)["detail"]


# ------------------------------------------------------------------ 4: login throttle


def login_from(url: str, source: str, password: str) -> httpx.Response:
    """A login from another loopback address (127.0.0.0/8 all reaches the API): another client IP."""
    with httpx.Client(transport=httpx.HTTPTransport(local_address=source), timeout=30) as c:
        return c.post(f"{url}/v1/auth/login", json={"email": "acme@example.com", "password": password})


def test_parallel_wrong_passwords_are_counted_before_they_are_checked(store: Store, tmp_path: Path) -> None:
    """40 wrong passwords at once from one address: at most free + 1 are checked (401), the rest are 429."""
    with served(store, tmp_path, login_throttle=LoginThrottle(free=3, base_seconds=60, max_seconds=900)) as env:
        set_password(store, "acme", "correct horse battery")
        with ThreadPoolExecutor(40) as pool:
            codes = list(pool.map(lambda i: login_from(env.url, "127.0.0.5", f"wrong-{i}-xxxx").status_code,
                                  range(40)))
        assert codes.count(401) <= 4 and codes.count(401) + codes.count(429) == 40, codes


def test_many_guessing_sources_do_not_lock_the_owner_out(store: Store, tmp_path: Path) -> None:
    """Six addresses guess until each is locked for 15 minutes; the owner, from a fresh address, still logs in."""
    throttle = LoginThrottle(free=3, base_seconds=900, max_seconds=900, account_free=5, account_interval=0.25)
    with served(store, tmp_path, login_throttle=throttle) as env:
        set_password(store, "acme", "correct horse battery")
        for n in range(6):
            codes = [login_from(env.url, f"127.0.0.{20 + n}", f"guess-{i}-xxxxx").status_code for i in range(5)]
            assert codes.count(401) <= 4 and 429 in codes, codes
        # The guessing addresses stay locked out...
        problem(login_from(env.url, "127.0.0.20", "correct horse battery"), 429)
        # ...the owner is slowed by at most the account's pace, not locked out.
        started = time.monotonic()
        assert login_from(env.url, "127.0.0.2", "correct horse battery").status_code == 200
        assert time.monotonic() - started < 2.0


# ------------------------------------------------------------------ 5: streams and sessions per principal


def session(url: str) -> httpx.Client:
    r = httpx.post(f"{url}/v1/auth/login", json={"email": "acme@example.com", "password": "correct horse battery"},
                   timeout=10)
    assert r.status_code == 200, r.text
    return httpx.Client(base_url=url, timeout=10, cookies={SESSION_COOKIE: r.cookies[SESSION_COOKIE]},
                        headers={"X-Hostplane-CSRF": "1"})


def test_watch_streams_are_capped_per_principal(store: Store, tmp_path: Path) -> None:
    """Three streams open for acme: the fourth is 429 with Retry-After; globex is unaffected; closing frees one."""
    with served(store, tmp_path, rate_per_principal=0, streams_per_principal=3) as env, \
            contextlib.ExitStack() as streams:
        acme = env.client("customer")
        for _ in range(3):
            assert streams.enter_context(acme.stream("GET", "/v1/watch")).status_code == 200
        refused = acme.get("/v1/watch")
        problem(refused, 429)
        assert int(refused.headers["retry-after"]) >= 1
        with env.client("globex").stream("GET", "/v1/watch") as other:
            assert other.status_code == 200
        streams.close()
        wait_for(lambda: env.app.state.hostplane.streams.open(env.tokens["customer"].split("_")[1]) == 0,
                 timeout=10, interval=0.1, what="the closed streams to give their slots back")
        with acme.stream("GET", "/v1/watch") as again:
            assert again.status_code == 200


def test_sessions_are_capped_and_share_one_rate_limit(store: Store, tmp_path: Path) -> None:
    """Two sessions at most (the third login is 429); a second session does not buy a fresh rate limit."""
    with served(store, tmp_path, rate_per_principal=0.01, burst_per_principal=5, sessions_per_customer=2) as env:
        set_password(store, "acme", "correct horse battery")
        first = session(env.url)
        assert [first.get("/v1/vps").status_code for _ in range(5)] == [200] * 5
        second = session(env.url)
        refused = second.get("/v1/vps")
        problem(refused, 429)
        third = httpx.post(f"{env.url}/v1/auth/login", timeout=10,
                           json={"email": "acme@example.com", "password": "correct horse battery"})
        problem(third, 429)
        assert int(third.headers["retry-after"]) > 3600
        assert second.post("/v1/auth/logout").status_code in (204, 429)
        first.post("/v1/auth/logout")
        for c in (first, second):
            c.close()


# ------------------------------------------------------------------ 3: a watch resume shows no one else's history


def read_stream(client: httpx.Client, params: dict[str, str], seconds: float) -> str:
    """The text a watch stream sends within `seconds` (or until it ends)."""
    out = ""
    deadline = time.monotonic() + seconds
    with client.stream("GET", "/v1/watch", params=params) as resp:
        assert resp.status_code == 200, resp.read()
        for chunk in resp.iter_text():
            out += chunk
            if "event: relist" in out or time.monotonic() > deadline:
                break
    return out


def test_a_customer_resuming_from_old_history_relists_instead_of_seeing_it(env: Env) -> None:
    """globex owns acme's old subscription name today; resuming from revision 1 shows no acme history: relist."""
    store = env.store
    store.create(builders.subscription("handed-over", "s1", "acme"))
    store.delete(Subscription, "handed-over")
    store.create(builders.subscription("handed-over", "s1", "globex"))
    text = read_stream(env.client("globex"), {"resourceVersion": "1"}, 5)
    assert "event: relist" in text and "acme" not in text, text
    # Staff still resume from anywhere (they may see every owner's history).
    staff = read_stream(env.client("operator"), {"resourceVersion": "1", "kinds": "subscriptions"}, 1.5)
    assert '"customer":"acme"' in staff and "event: relist" not in staff
    # A resume within the hub's history is served, each event with the owner it had then.
    since = str(store.revision())
    store.delete(Subscription, "handed-over")
    store.create(builders.subscription("handed-over", "s1", "acme"))
    store.delete(Subscription, "handed-over")
    store.create(builders.subscription("handed-over", "s1", "globex"))
    recent = read_stream(env.client("globex"), {"resourceVersion": since, "kinds": "subscriptions"}, 1.5)
    assert '"customer":"globex"' in recent and '"customer":"acme"' not in recent, recent


def test_customer_events_are_one_scoped_query(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """Events about 20 of globex's objects and 20 of acme's: globex gets its 20 from one etcd transaction."""
    store = env.store
    when = datetime.now(UTC) + timedelta(seconds=5)
    for i in range(20):
        for cust in ("globex", "acme"):
            store.create(builders.subscription(f"{cust}-s{i}", "s1", cust))
            record_event(store, "Subscription", f"{cust}-s{i}", f"{cust}-{i}", when)
    assert env.client("globex").get("/v1/auth/whoami").status_code == 200  # the token is verified and cached
    api_store = env.app.state.hostplane.store
    calls: list[str] = []
    for method in ("get", "list", "kv_get", "kv_range", "txn"):
        real = getattr(api_store, method)
        monkeypatch.setattr(api_store, method, lambda *a, _real=real, _m=method, **kw: (calls.append(_m),
                                                                                         _real(*a, **kw))[1])
    items = env.client("globex").get("/v1/events").json()["items"]
    assert sorted(e["reason"] for e in items) == sorted(f"globex-{i}" for i in range(20))
    assert calls == ["txn"], calls


def test_parallel_logins_cannot_pass_the_session_cap_together(store: Store, tmp_path: Path) -> None:
    """Six right passwords at once with room for two sessions: exactly two sessions, the others 429."""
    with served(store, tmp_path, sessions_per_customer=2) as env:
        set_password(store, "acme", "correct horse battery")
        with ThreadPoolExecutor(6) as pool:
            codes = list(pool.map(lambda n: login_from(env.url, f"127.0.0.{40 + n}", "correct horse battery"
                                                       ).status_code, range(6)))
        assert sorted(codes) == [200, 200, 429, 429, 429, 429], codes
        assert len(store.kv_range(store.root + "/auth/session-index/acme/")[0]) == 2


def test_a_recreated_customer_name_is_not_reachable_with_the_old_credentials(env: Env) -> None:
    """A customer with subscriptions cannot be deleted (409); once deleted, its tokens and sessions end for good."""
    admin = env.client("admin")
    set_password(env.store, "globex", "correct horse battery")
    login = httpx.post(f"{env.url}/v1/auth/login", timeout=10,
                       json={"email": "globex@example.com", "password": "correct horse battery"})
    assert login.status_code == 200
    cookie = {SESSION_COOKIE: login.cookies[SESSION_COOKIE]}
    assert "globex-sub" in problem(admin.delete("/v1/customers/globex"), 409)["detail"]
    env.store.delete(VPS, "globex-web")
    assert admin.delete("/v1/subscriptions/globex-sub").status_code == 204
    assert admin.delete("/v1/customers/globex").status_code == 204
    doc = {"metadata": {"name": "globex"}, "spec": {"email": "new-owner@example.com", "currency": "EUR"}}
    assert admin.post("/v1/customers", json=doc).status_code == 201  # globex never paid: no ledger kept
    wait_for(lambda: env.client("globex").get("/v1/customers/globex").status_code == 401, timeout=5,
             what="the old token to stop working")
    assert httpx.get(f"{env.url}/v1/customers/globex", cookies=cookie, timeout=10).status_code == 401
    old_password = httpx.post(f"{env.url}/v1/auth/login", timeout=10,
                              json={"email": "new-owner@example.com", "password": "correct horse battery"})
    assert old_password.status_code == 401


def test_a_new_customer_cannot_inherit_an_earlier_namesakes_ledger(env: Env) -> None:
    """acme paid 30.00, then was deleted; a new customer named acme would start with that balance: 409."""
    pay(env, "acme", "30.00", "p-kept")
    admin = env.client("admin")
    env.store.delete(VPS, "acme-web")
    assert admin.delete("/v1/subscriptions/acme-sub").status_code == 204
    assert admin.delete("/v1/customers/acme").status_code == 204
    doc = {"metadata": {"name": "acme"}, "spec": {"email": "someone-else@example.com", "currency": "EUR"}}
    assert "ledger" in problem(admin.post("/v1/customers", json=doc), 409)["detail"]
