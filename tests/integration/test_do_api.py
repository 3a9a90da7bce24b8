"""The /v2 DigitalOcean-compatible API against a real etcd: every answer checked against DigitalOcean's own OpenAPI."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from reconcile import keys
from reconcile.store import Store
from specs.kinds import VPS, Subscription
from tests.helpers.access_env import ED25519, Env, served
from tests.helpers.do_contract import check_contract


class DO:
    """A /v2 client with a customer's token that validates every answer against the vendored schema."""

    def __init__(self, env: Env, who: str) -> None:
        self.http = httpx.Client(base_url=env.url + "/v2", timeout=10, event_hooks={"response": [check_contract]},
                                 headers={"Authorization": f"Bearer {env.tokens[who]}"})
        env.clients[f"v2:{who}:{id(self)}"] = self.http  # closed with the env

    def __getattr__(self, name: str) -> Any:
        return getattr(self.http, name)


@pytest.fixture
def env(store: Store, tmp_path: Path) -> Iterator[Env]:
    """Two customers with a server each (acme pays for three more), an API on loopback."""
    with served(store, tmp_path) as e:
        r = e.client("admin").post("/v1/customers/acme/payments", json={"amount": "40.00", "reference": "p-1"})
        assert r.status_code == 200, r.text
        yield e


def test_catalogue_and_account_validate_against_digitalocean(env: Env) -> None:
    """account, sizes, regions and images answer in DigitalOcean's schema, with and without a trailing slash."""
    do = DO(env, "customer")
    acct = do.get("/account").json()["account"]
    assert acct["email"] == "acme@example.com" and acct["status"] == "active" and acct["droplet_limit"] >= 2
    sizes = do.get("/sizes/").json()
    assert [s["slug"] for s in sizes["sizes"]] == ["s1", "s2"] and sizes["meta"]["total"] == 2
    assert sizes["sizes"][0]["price_monthly"] == 5.0 and sizes["sizes"][0]["memory"] == 512
    assert do.get("/regions").status_code == 200
    images = do.get("/images", params={"type": "distribution"}).json()["images"]
    assert [i["slug"] for i in images] == ["debian-12"]
    assert do.get(f"/images/{images[0]['id']}").json()["image"]["slug"] == "debian-12"
    assert do.get("/images/debian-12/").json()["image"]["id"] == images[0]["id"]
    assert do.get("/images", params={"private": "true"}).json()["images"] == []
    r = do.get("/droplets", follow_redirects=False)
    assert r.status_code == 200 and r.headers["ratelimit-limit"] and int(r.headers["ratelimit-remaining"]) >= 0


def test_errors_have_digitalocean_shape(env: Env) -> None:
    """Bad token → 401 unauthorized; a missing droplet → 404 not_found; a bad create → 422; each with a request id."""
    r = httpx.get(env.url + "/v2/droplets", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401 and r.json()["id"] == "unauthorized" and r.json()["request_id"]
    do = DO(env, "customer")
    r = do.get("/droplets/999999")
    assert r.status_code == 404 and r.json()["id"] == "not_found"
    r = do.post("/droplets", json={"name": "x.example.com", "size": "nope", "image": "debian-12"})
    assert r.status_code == 422 and r.json()["id"] == "unprocessable_entity" and "size" in r.json()["message"]
    r = do.post("/droplets", json={"name": "bad_name!", "size": "s1", "image": "debian-12"})
    assert r.status_code == 422 and r.json()["id"] == "unprocessable_entity"


def test_keys_droplets_pagination_and_actions(env: Env, store: Store) -> None:
    """Keys by id and fingerprint; a 3-droplet create is three orders; pages link absolutely; actions recorded."""
    do = DO(env, "customer")
    key = do.post("/account/keys", json={"name": "laptop", "public_key": ED25519}).json()["ssh_key"]
    assert do.get(f"/account/keys/{key['fingerprint']}").json()["ssh_key"]["id"] == key["id"]
    assert do.post("/account/keys", json={"name": "again", "public_key": ED25519}).status_code == 422
    r = do.post("/droplets", json={"names": ["a1.example.com", "a2.example.com", "a3.example.com"], "size": "s1",
                                   "image": "debian-12", "ssh_keys": [key["fingerprint"]], "tags": ["web"],
                                   "vpc_uuid": None, "backups": False, "ipv6": False})
    assert r.status_code == 202, r.text
    made = r.json()
    assert len(made["droplets"]) == 3 and all(a["href"].startswith(env.url + "/v2/actions/")
                                               for a in made["links"]["actions"])
    vps = store.get(VPS, next(v.name for v in store.list(VPS).items if v.spec.hostname == "a1.example.com"))
    assert vps.spec.sshKeys == [ED25519]
    page1 = do.get("/droplets", params={"per_page": 2}).json()
    assert page1["meta"]["total"] == 4 and len(page1["droplets"]) == 2  # acme-web too
    nxt = page1["links"]["pages"]["next"]
    assert nxt.startswith(env.url + "/v2/droplets?")
    page2 = do.get(nxt.removeprefix(env.url + "/v2")).json()
    assert len(page2["droplets"]) == 2 and page2["links"]["pages"]["first"].startswith("http")
    tagged = do.get("/droplets", params={"tag_name": "web", "per_page": 200}).json()
    assert sorted(d["name"] for d in tagged["droplets"]) == ["a1.example.com", "a2.example.com", "a3.example.com"]
    first = made["droplets"][0]["id"]
    acts = do.get(f"/droplets/{first}/actions").json()["actions"]
    assert [(a["type"], a["status"]) for a in acts] == [("create", "in-progress")]
    # No node has reported the server yet: a second action waits for the first, as on DigitalOcean.
    r = do.post(f"/droplets/{first}/actions", json={"type": "power_off"})
    assert r.status_code == 422 and "pending" in r.json()["message"]
    r = do.request("DELETE", f"/droplets/{first}", json={})  # pydo sends a body
    assert r.status_code == 204
    assert do.get(f"/droplets/{first}").json()["id"] == "not_found"
    assert "a1.example.com" not in [v.spec.hostname for v in store.list(VPS).items
                                    if v.metadata.deletionTimestamp is None]
    assert store.get(Subscription, vps.spec.subscription).spec.cancelled
    assert do.get(f"/actions/{acts[0]['id']}").json()["action"]["status"] == "errored"


def test_order_rules_apply_402_in_digitalocean_shape(env: Env) -> None:
    """globex has no funds: a create is refused 402 payment_required and nothing is made."""
    do = DO(env, "globex")
    r = do.post("/droplets", json={"name": "g.example.com", "size": "s1", "image": "debian-12"})
    assert r.status_code == 402 and r.json()["id"] == "payment_required"
    assert do.get("/droplets").json()["meta"]["total"] == 1


def test_customer_b_sees_none_of_a(env: Env, store: Store) -> None:
    """globex gets 404 for acme's droplet, key and action by id, and its lists leave them out."""
    a, b = DO(env, "customer"), DO(env, "globex")
    key = a.post("/account/keys", json={"name": "k", "public_key": ED25519}).json()["ssh_key"]
    made = a.post("/droplets", json={"name": "secret.example.com", "size": "s1", "image": "debian-12"}).json()
    did, aid = made["droplet"]["id"], made["links"]["actions"][0]["id"]
    for path in (f"/droplets/{did}", f"/account/keys/{key['id']}", f"/account/keys/{key['fingerprint']}",
                 f"/actions/{aid}", f"/droplets/{did}/actions", f"/droplets/{did}/actions/{aid}"):
        r = b.get(path)
        assert r.status_code == 404 and r.json()["id"] == "not_found", path
    assert b.delete(f"/droplets/{did}").status_code == 404
    assert b.post(f"/droplets/{did}/actions", json={"type": "power_off"}).status_code == 404
    assert b.delete(f"/account/keys/{key['id']}").status_code == 404
    assert [d["name"] for d in b.get("/droplets").json()["droplets"]] == ["globex-web.example.com"]
    assert b.get("/account/keys").json()["meta"]["total"] == 0
    assert b.get("/actions").json()["meta"]["total"] == 0
    assert a.get(f"/droplets/{did}").status_code == 200
    assert store.kv_get(keys.do_droplet_key("globex", did, store.root)) is None


def test_operator_tokens_are_refused(env: Env) -> None:
    """The /v2 API serves customer tokens only: an admin token gets 403 forbidden."""
    r = httpx.get(env.url + "/v2/droplets", headers={"Authorization": f"Bearer {env.tokens['admin']}"})
    assert r.status_code == 403 and r.json()["id"] == "forbidden"


def test_rate_limit_headers_count_down_and_429_in_digitalocean_shape(store: Store, tmp_path: Path) -> None:
    """ratelimit-remaining falls with each request of the token; past the burst: 429 too_many_requests."""
    with served(store, tmp_path, rate_per_principal=0.5, burst_per_principal=3) as env:
        do = env.client("customer")
        seen = [do.get("/v2/sizes") for _ in range(4)]
        assert [r.status_code for r in seen] == [200, 200, 200, 429]
        assert [int(r.headers["ratelimit-remaining"]) for r in seen[:3]] == [2, 1, 0]
        assert all(r.headers["ratelimit-limit"] == "3" for r in seen)
        assert seen[3].json()["id"] == "too_many_requests" and int(seen[3].headers["retry-after"]) >= 1
        assert int(seen[3].headers["ratelimit-reset"]) > int(seen[0].headers["ratelimit-reset"]) - 5


def test_v2_mutations_are_audited(env: Env, store: Store) -> None:
    """A key added and a droplet destroyed through /v2 are in the audit log with the customer; reads are not."""
    from tests.integration.test_audit import records

    do = DO(env, "customer")
    before = len(records(store))
    do.post("/account/keys", json={"name": "k", "public_key": ED25519})
    droplet = do.get("/droplets").json()["droplets"][0]["id"]
    do.delete(f"/droplets/{droplet}")
    httpx.delete(f"{env.url}/v2/droplets/{droplet}", headers={"Authorization": "Bearer nope"})  # 401: not kept
    seen = [(r["actor"]["role"], r["actor"].get("customer"), r["method"], r["path"], r["status"])
            for r in records(store)[before:]]
    assert seen == [("customer", "acme", "POST", "/v2/account/keys", 201),
                    ("customer", "acme", "DELETE", f"/v2/droplets/{droplet}", 204)]
