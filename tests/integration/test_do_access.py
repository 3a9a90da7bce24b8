"""The /v2 authorization matrix: every route of the mounted DigitalOcean API x every role x own/foreign object.

Only customer tokens (and a customer's panel session) are served; every other role is 403. A
customer reaches its own droplets, keys and actions, and gets 404 for another customer's. A
route added under /v2 without a row fails `test_every_v2_route_has_a_row`. Allowed requests stop
harmlessly (an invalid body, a spare server of acme's that may be destroyed).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.routing import Mount

from api.server import create_app
from api.sessions import SESSION_COOKIE, set_password
from reconcile.store import Store
from specs.kinds import VPS
from tests.helpers import builders
from tests.helpers.access_env import ED25519, ROLES, Env, served

OK = "ok"


@dataclass
class Case:
    method: str
    path: str
    expect: str | int
    body: Any = None


@dataclass
class Ids:
    """acme's (own) and globex's (foreign) droplet, key and action ids, and acme's spare droplet."""

    droplet: dict[bool, int]
    key: dict[bool, int]
    action: dict[bool, int]
    spare: int


def _ids(env: Env) -> Ids:
    out: dict[str, dict[bool, int]] = {"droplet": {}, "key": {}, "action": {}}
    for own, who in ((True, "customer"), (False, "globex")):
        v2 = env.clients.get(f"v2-{who}") or httpx.Client(
            base_url=env.url + "/v2", timeout=10, headers={"Authorization": f"Bearer {env.tokens[who]}"})
        env.clients[f"v2-{who}"] = v2  # closed with the env
        name = f"{'acme' if own else 'globex'}-web.example.com"
        out["droplet"][own] = v2.get("/droplets", params={"name": name}).json()["droplets"][0]["id"]
        keys = v2.get("/account/keys").json()["ssh_keys"]
        out["key"][own] = keys[0]["id"] if keys else v2.post(
            "/account/keys", json={"name": "k", "public_key": ED25519}).json()["ssh_key"]["id"]
        acts = v2.get(f"/droplets/{out['droplet'][own]}/actions").json()["actions"]
        out["action"][own] = acts[0]["id"] if acts else v2.post(
            f"/droplets/{out['droplet'][own]}/actions", json={"type": "rename", "name": name}).json()["action"]["id"]
    spare = env.clients["v2-customer"].get("/droplets", params={"name": "acme-spare.example.com"}).json()
    return Ids(out["droplet"], out["key"], out["action"], spare["droplets"][0]["id"] if spare["droplets"] else 0)


def mine(role: str, own: bool) -> str | int:
    if role != "customer":
        return 403
    return OK if own else 404


def anyone(role: str, own: bool) -> str | int:
    return OK if role == "customer" else 403


Row = Callable[[str, bool, Ids], list[Case]]
ROWS: dict[tuple[str, str], Row] = {
    ("GET", "/account"): lambda r, o, i: [Case("GET", "/account", anyone(r, o))],
    ("GET", "/regions"): lambda r, o, i: [Case("GET", "/regions", anyone(r, o))],
    ("GET", "/sizes"): lambda r, o, i: [Case("GET", "/sizes", anyone(r, o))],
    ("GET", "/images"): lambda r, o, i: [Case("GET", "/images", anyone(r, o))],
    ("GET", "/images/{ref}"): lambda r, o, i: [Case("GET", "/images/debian-12", anyone(r, o))],
    ("GET", "/account/keys"): lambda r, o, i: [Case("GET", "/account/keys", anyone(r, o))],
    ("POST", "/account/keys"): lambda r, o, i: [Case("POST", "/account/keys", anyone(r, o), body={})],
    ("GET", "/account/keys/{ref}"): lambda r, o, i: [Case("GET", f"/account/keys/{i.key[o]}", mine(r, o))],
    # Deleting acme's own key is allowed; it is recreated by the next _ids.
    ("DELETE", "/account/keys/{ref}"): lambda r, o, i: [Case("DELETE", f"/account/keys/{i.key[o]}", mine(r, o))],
    ("GET", "/droplets"): lambda r, o, i: [Case("GET", "/droplets", anyone(r, o))],
    ("POST", "/droplets"): lambda r, o, i: [Case("POST", "/droplets", anyone(r, o), body={})],
    ("DELETE", "/droplets"): lambda r, o, i: [Case("DELETE", "/droplets", anyone(r, o))],  # no tag_name: 422
    ("GET", "/droplets/{droplet_id}"): lambda r, o, i: [Case("GET", f"/droplets/{i.droplet[o]}", mine(r, o))],
    ("DELETE", "/droplets/{droplet_id}"): lambda r, o, i: [Case(
        "DELETE", f"/droplets/{i.spare if o else i.droplet[o]}", mine(r, o) if i.spare or not o else 404)],
    ("GET", "/droplets/{droplet_id}/actions"): lambda r, o, i: [Case(
        "GET", f"/droplets/{i.droplet[o]}/actions", mine(r, o))],
    ("POST", "/droplets/{droplet_id}/actions"): lambda r, o, i: [Case(
        "POST", f"/droplets/{i.droplet[o]}/actions", mine(r, o), body={"type": "nope"})],
    ("GET", "/droplets/{droplet_id}/actions/{action_id}"): lambda r, o, i: [Case(
        "GET", f"/droplets/{i.droplet[o]}/actions/{i.action[o]}", mine(r, o))],
    ("GET", "/actions"): lambda r, o, i: [Case("GET", "/actions", anyone(r, o))],
    ("GET", "/actions/{action_id}"): lambda r, o, i: [Case("GET", f"/actions/{i.action[o]}", mine(r, o))],
}


def v2_routes() -> set[tuple[str, str]]:
    """(method, path) of every route of the /v2 mount, the trailing-slash twins folded into one."""
    mount = next(r for r in create_app(None).routes  # type: ignore[arg-type]
                 if isinstance(r, Mount) and r.path == "/v2")
    return {(m, getattr(r, "path", "").rstrip("/")) for r in mount.routes for m in getattr(r, "methods", ())
            if m != "HEAD"}


def test_every_v2_route_has_a_row() -> None:
    """The mounted /v2 routes and the rows are the same set, and each path also answers with a trailing slash."""
    assert v2_routes() == set(ROWS), (v2_routes() - set(ROWS), set(ROWS) - v2_routes())
    mount = next(r for r in create_app(None).routes if isinstance(r, Mount))  # type: ignore[arg-type]
    paths = {getattr(r, "path", "") for r in mount.routes if hasattr(r, "methods")}
    assert all(p + "/" in paths for p in paths if not p.endswith("/"))


@pytest.fixture
def env(store: Store, tmp_path: Path) -> Iterator[Env]:
    """Two customers with a server each, a token per role; no rate limit (the matrix is many requests)."""
    with served(store, tmp_path, rate_per_principal=0) as e:
        store.create(builders.subscription("acme-spare", "s1", "acme"))
        store.create(builders.vps("acme-spare", "acme-spare"))  # the one a customer's matrix may destroy
        yield e


@pytest.mark.parametrize("role", [*ROLES, "customer-session"])
def test_v2_authorization_matrix(env: Env, role: str) -> None:
    """For this role, every /v2 row x own/foreign: customers reach their own only (404 otherwise); others 403."""
    if role == "customer-session":
        set_password(env.store, "acme", "matrix password")
        r = httpx.post(f"{env.url}/v1/auth/login", json={"email": "acme@example.com", "password": "matrix password"})
        client = httpx.Client(base_url=env.url, timeout=10, headers={"X-Hostplane-CSRF": "1"},
                              cookies={SESSION_COOKIE: r.cookies[SESSION_COOKIE]})
        env.clients["session"] = client
    else:
        client = env.client(role)
    who = "customer" if role == "customer-session" else role
    failures = []
    for (method, template), row in sorted(ROWS.items()):
        for own in (True, False):
            for case in row(who, own, _ids(env)):
                content = None if case.body is None else json.dumps(case.body)
                status = client.request(case.method, "/v2" + case.path, content=content,
                                        headers={"Content-Type": "application/json"} if content else {}).status_code
                if status >= 500 or (case.expect == OK and status in (401, 403, 404)) or \
                        (case.expect != OK and status != case.expect):
                    failures.append(f"{method} {template} own={own} -> {case.path}: {status}, expected {case.expect}")
    assert not failures, "\n".join(failures)
    assert env.store.get(VPS, "acme-web").spec.powerState == "Running"
    assert env.store.get(VPS, "globex-web").metadata.deletionTimestamp is None
