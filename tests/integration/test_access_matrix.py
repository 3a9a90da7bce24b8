"""The authorization matrix: every route of the app x every role x own/foreign object, from the route table.

ROWS holds one row per (method, path template). A route added to the app without a row
fails `test_every_route_has_a_row`; each row says, for a role and own/foreign, which
request to send and whether it must be let through ("ok": anything but 401/403/404),
refused with 403, or hidden with 404. Requests that are let through are built to stop
harmlessly after the access check (a stale resourceVersion, an invalid body), so the
matrix runs on one set of objects.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.auth import create_token
from api.server import create_app
from api.sessions import SESSION_COOKIE, set_password
from reconcile.store import Store
from specs import KINDS
from tests.helpers.access_env import ROLES, Env, served

OK = "ok"
STAFF = {"admin", "operator"}
GITOPS_KINDS = {"plans", "images", "nodes", "ippools"}
CUSTOMER_KINDS = {"customers", "subscriptions", "vps", "plans", "images"}
WEBHOOK_KINDS = {"customers", "subscriptions"}
# Each kind's object for own and foreign (for a customer: its own, and someone else's or a hidden one).
OBJECTS = {"customers": ("acme", "globex"), "subscriptions": ("acme-sub", "globex-sub"),
           "vps": ("acme-web", "globex-web"), "plans": ("s1", "hidden"), "images": ("debian-12", "debian-12"),
           "nodes": ("n1", "n1"), "ippools": ("pool-a", "pool-a")}
PLURALS = sorted(OBJECTS)


@dataclass
class Case:
    method: str
    path: str
    expect: str | int
    body: Any = None
    params: dict[str, str] = field(default_factory=dict)
    stream: bool = False


Row = Callable[[str, bool, Env], list[Case]]


def readable(role: str, plural: str) -> bool:
    return role in STAFF or (role == "gitops" and plural in GITOPS_KINDS) or \
        (role == "customer" and plural in CUSTOMER_KINDS) or (role == "billing-webhook" and plural in WEBHOOK_KINDS)


def writable(role: str, plural: str) -> bool:
    return role in STAFF or (role == "gitops" and plural in GITOPS_KINDS)


def name_of(plural: str, own: bool) -> str:
    return OBJECTS[plural][0 if own else 1]


def object_read(role: str, plural: str, own: bool) -> str | int:
    """A named read: customers see their own (and public/shared) objects, 404 for anything else."""
    if role == "customer":
        visible = readable(role, plural) and (own or plural == "images")
        return OK if visible else 404
    return OK if readable(role, plural) else 403


def object_write(role: str, plural: str, own: bool, *, patchable: bool = False) -> str | int:
    if writable(role, plural):
        return OK
    if role == "customer":
        seen = object_read(role, plural, own)
        if seen != OK:
            return 404
        return OK if patchable and plural in ("vps", "subscriptions") else 403
    return 403


def stale_doc(env: Env, plural: str, name: str) -> dict[str, Any]:
    doc: dict[str, Any] = env.client("admin").get(f"/v1/{plural}/{name}").json()
    doc.pop("status", None)
    doc["metadata"]["resourceVersion"] = "1"
    return doc


def patch_body(plural: str) -> dict[str, Any]:
    """A patch a customer may send on its own VPS/Subscription, pinned to a stale version (409 when allowed)."""
    if plural == "vps":
        return {"spec": {"powerState": "Stopped"}, "metadata": {"resourceVersion": "1"}}
    if plural == "subscriptions":
        return {"spec": {"autoRenew": True}, "metadata": {"resourceVersion": "1"}}
    return {"metadata": {"labels": {"m": "x"}, "resourceVersion": "1"}}


def per_kind(build: Callable[[str, str, bool, Env, str], Case]) -> Row:
    def row(role: str, own: bool, env: Env) -> list[Case]:
        return [build(role, p, own, env, name_of(p, own)) for p in PLURALS]
    return row


ROWS: dict[tuple[str, str], Row] = {
    ("GET", "/v1/{kind}"): per_kind(lambda r, p, o, e, n: Case(
        "GET", f"/v1/{p}", OK if readable(r, p) else 403)),
    ("POST", "/v1/{kind}"): per_kind(lambda r, p, o, e, n: Case(
        # An existing object: allowed callers get 409, so nothing is created.
        "POST", f"/v1/{p}", OK if writable(r, p) else 403, body=stale_doc(e, p, n))),
    ("GET", "/v1/{kind}/{name}"): per_kind(lambda r, p, o, e, n: Case(
        "GET", f"/v1/{p}/{n}", object_read(r, p, o))),
    ("PUT", "/v1/{kind}/{name}"): per_kind(lambda r, p, o, e, n: Case(
        "PUT", f"/v1/{p}/{n}", object_write(r, p, o), body=stale_doc(e, p, n))),
    ("PATCH", "/v1/{kind}/{name}"): per_kind(lambda r, p, o, e, n: Case(
        "PATCH", f"/v1/{p}/{n}", object_write(r, p, o, patchable=True),
        body=patch_body(p))),
    ("DELETE", "/v1/{kind}/{name}"): per_kind(lambda r, p, o, e, n: Case(
        "DELETE", f"/v1/{p}/{n}", object_write(r, p, o), params={"resourceVersion": "1"})),
    ("GET", "/v1/{kind}/{name}/status"): per_kind(lambda r, p, o, e, n: Case(
        "GET", f"/v1/{p}/{n}/status", object_read(r, p, o))),
    ("GET", "/v1/events"): per_kind(lambda r, p, o, e, n: Case(
        "GET", "/v1/events", event_read(r, p, o), params={"kind": p, "name": n})),
    ("GET", "/v1/watch"): per_kind(lambda r, p, o, e, n: Case(
        "GET", "/v1/watch", OK if readable(r, p) else 403, params={"kinds": p}, stream=True)),
    ("POST", "/v1/vps/{name}/actions/{action}"): lambda r, o, e: [Case(
        # An unknown plan: allowed callers get 422 after the access check.
        "POST", f"/v1/vps/{name_of('vps', o)}/actions/resize", object_write(r, "vps", o, patchable=True),
        body={"plan": "no-such-plan"})],
    ("POST", "/v1/vps/{name}/console"): lambda r, o, e: [Case(
        # The servers are on no node: allowed callers get 409 after the access check; no ticket is stored.
        "POST", f"/v1/vps/{name_of('vps', o)}/console", object_write(r, "vps", o, patchable=True),
        body={"kind": "serial"})],
    # An unknown range: allowed callers get 422 after the access check.
    ("GET", "/v1/vps/{name}/metrics"): lambda r, o, e: [Case(
        "GET", f"/v1/vps/{name_of('vps', o)}/metrics", object_read(r, "vps", o), params={"range": "2h"})],
    ("GET", "/v1/vps/{name}/traffic"): lambda r, o, e: [Case(
        "GET", f"/v1/vps/{name_of('vps', o)}/traffic", object_read(r, "vps", o), params={"month": "1999-13"})],
    ("GET", "/v1/nodes/{name}/metrics"): lambda r, o, e: [Case(
        "GET", "/v1/nodes/n1/metrics", OK if r in STAFF else 403, params={"range": "2h"})],
    ("POST", "/v1/orders"): lambda r, o, e: [Case(
        # Nobody has funds: allowed callers get 402 (or 422), nothing is created.
        "POST", "/v1/orders", (OK if o else 404) if r == "customer" else OK if r in STAFF else 403,
        body={"customer": "acme" if o else "globex", "plan": "s1", "image": "debian-12",
              "hostname": "m.example.com"})],
    ("GET", "/v1/tokens"): lambda r, o, e: [Case("GET", "/v1/tokens", OK if r == "admin" else 403)],
    ("POST", "/v1/tokens"): lambda r, o, e: [Case("POST", "/v1/tokens", OK if r == "admin" else 403,
                                                  body={"role": "no-such-role"})],
    ("DELETE", "/v1/tokens/{token_id}"): lambda r, o, e: [Case(
        "DELETE", f"/v1/tokens/{create_token(e.store, 'gitops').split('_')[1]}", OK if r == "admin" else 403)],
    ("POST", "/v1/auth/login"): lambda r, o, e: [Case("POST", "/v1/auth/login", OK, body={})],
    # Once per role: there is no foreign logout, and a session's logout ends it.
    ("POST", "/v1/auth/logout"): lambda r, o, e: [Case("POST", "/v1/auth/logout", OK)] if o else [],
    ("GET", "/v1/auth/whoami"): lambda r, o, e: [Case("GET", "/v1/auth/whoami", OK)],
    ("PUT", "/v1/customers/{name}/password"): lambda r, o, e: [Case(
        "PUT", f"/v1/customers/{name_of('customers', o)}/password", OK if r in STAFF else 403,
        body={"password": "short"})],
    ("GET", "/v1/audit"): lambda r, o, e: [Case("GET", "/v1/audit", OK if r in STAFF else 403)],
    # Orphan domains: staff list; admin and operator purge (an unknown uid: 422 after the access check).
    ("GET", "/v1/nodes/{name}/orphans"): lambda r, o, e: [Case(
        "GET", "/v1/nodes/n1/orphans", OK if r in STAFF else 403)] if o else [],
    ("POST", "/v1/nodes/{name}/orphans/purge"): lambda r, o, e: [Case(
        "POST", "/v1/nodes/n1/orphans/purge", OK if r in STAFF else 403, body={"uids": ["no-such-uid"]})] if o else [],
    # Billing: webhooks authenticate by signature, whatever the token (so: the same answer for all).
    ("POST", "/v1/webhooks/payments/{provider}"): lambda r, o, e: [Case(
        "POST", "/v1/webhooks/payments/webhook", 401, body={})],
    ("POST", "/v1/webhooks/external-billing"): lambda r, o, e: [Case(
        "POST", "/v1/webhooks/external-billing", 401, body={})],
    ("POST", "/v1/customers/{name}/payments"): lambda r, o, e: [Case(
        "POST", f"/v1/customers/{name_of('customers', o)}/payments", OK if r == "admin" else 403, body={})],
    ("GET", "/v1/customers/{name}/ledger"): lambda r, o, e: [Case(
        "GET", f"/v1/customers/{name_of('customers', o)}/ledger", ledger_read(r, o))],
    ("GET", "/v1/customers/{name}/statements"): lambda r, o, e: [Case(
        "GET", f"/v1/customers/{name_of('customers', o)}/statements", ledger_read(r, o))],
    ("GET", "/v1/customers/{name}/statements/{month}"): lambda r, o, e: [Case(
        "GET", f"/v1/customers/{name_of('customers', o)}/statements/2026-01", ledger_read(r, o))],
    ("PUT", "/v1/billing/webhook-secrets/{provider}"): lambda r, o, e: [Case(
        "PUT", "/v1/billing/webhook-secrets/external", OK if r == "admin" else 403)],
    # Node join authenticates by its one-time bootstrap token, whatever the bearer; this app has no join
    # PKI, so both answer 404 (joining disabled) to every role alike.
    ("GET", "/v1/join/ca"): lambda r, o, e: [Case("GET", "/v1/join/ca", 404)],
    ("POST", "/v1/join"): lambda r, o, e: [Case("POST", "/v1/join", 404, body={})],
    # Open to everyone (metrics: from loopback).
    ("GET", "/healthz"): lambda r, o, e: [Case("GET", "/healthz", OK)],
    ("GET", "/readyz"): lambda r, o, e: [Case("GET", "/readyz", OK)],
    ("GET", "/metrics"): lambda r, o, e: [Case("GET", "/metrics", OK)],
    ("GET", "/openapi.json"): lambda r, o, e: [Case("GET", "/openapi.json", OK)],
    ("GET", "/docs"): lambda r, o, e: [Case("GET", "/docs", OK)],
    ("GET", "/docs/oauth2-redirect"): lambda r, o, e: [Case("GET", "/docs/oauth2-redirect", OK)],
    ("GET", "/redoc"): lambda r, o, e: [Case("GET", "/redoc", OK)],
}


def event_read(role: str, plural: str, own: bool) -> str | int:
    """Events: a customer reads those about its own Customer, Subscriptions and VPS only."""
    if role == "customer":
        return OK if own and plural in ("customers", "subscriptions", "vps") else 404
    return object_read(role, plural, own)


def ledger_read(role: str, own: bool) -> str | int:
    if role in STAFF or role == "billing-webhook":
        return OK
    if role == "customer":
        return OK if own else 404
    return 403


def route_table(routes: list[Any]) -> set[tuple[str, str]]:
    """Every (method, path template) the app serves, included routers flattened; HEAD is implied by GET."""
    out: set[tuple[str, str]] = set()
    for r in routes:
        inner = getattr(r, "original_router", None)
        if inner is not None:
            out |= route_table(list(inner.routes))
        elif getattr(r, "methods", None):
            out |= {(m, r.path) for m in r.methods if m != "HEAD"}
    return out


def test_every_route_has_a_row() -> None:
    """The app's route table and the matrix rows are the same set: a new route cannot go unchecked."""
    served_routes = route_table(list(create_app(None).routes))  # type: ignore[arg-type]
    assert served_routes == set(ROWS), (served_routes - set(ROWS), set(ROWS) - served_routes)


@pytest.fixture
def env(store: Store, tmp_path: Path) -> Iterator[Env]:
    """Two customers with a server each, a token per role; no rate limit (the matrix is many requests)."""
    with served(store, tmp_path, rate_per_principal=0) as e:
        yield e


def send(client: httpx.Client, case: Case) -> int:
    if case.stream:
        with client.stream(case.method, case.path, params=case.params) as resp:
            return resp.status_code
    content = None if case.body is None else json.dumps(case.body)
    headers = {"Content-Type": "application/json"} if content is not None else {}
    return client.request(case.method, case.path, params=case.params, content=content, headers=headers).status_code


def session_client(env: Env) -> httpx.Client:
    """acme's panel session: the cookie and the CSRF header the panel sends, no bearer token."""
    set_password(env.store, "acme", "matrix password")
    r = httpx.post(f"{env.url}/v1/auth/login", json={"email": "acme@example.com", "password": "matrix password"},
                   timeout=10)
    assert r.status_code == 200, r.text
    client = httpx.Client(base_url=env.url, timeout=10, cookies={SESSION_COOKIE: r.cookies[SESSION_COOKIE]},
                          headers={"X-Hostplane-CSRF": "1"})
    env.clients["session"] = client  # closed with the others
    return client


@pytest.mark.parametrize("role", [*ROLES, "customer-session"])
def test_authorization_matrix(env: Env, role: str) -> None:
    """For this role, every row x own/foreign: allowed requests pass the access check, others are 403 or 404."""
    client = session_client(env) if role == "customer-session" else env.client(role)
    role = "customer" if role == "customer-session" else role
    failures: list[str] = []
    checked = 0
    # Logout last: it ends a session.
    for (method, template), row in sorted(ROWS.items(), key=lambda kv: (kv[0] == ("POST", "/v1/auth/logout"), kv[0])):
        for own in (True, False):
            for case in row(role, own, env):
                status = send(client, case)
                checked += 1
                if status >= 500:
                    failures.append(f"{method} {template} -> {case.path}: {status} (server error)")
                elif case.expect == OK and status in (401, 403, 404):
                    failures.append(f"{case.method} {case.path} {case.params} own={own}: {status}, expected through")
                elif case.expect != OK and status != case.expect:
                    failures.append(f"{case.method} {case.path} {case.params} own={own}: {status}, "
                                    f"expected {case.expect}")
    assert checked > 100
    assert not failures, "\n".join(failures)
    # Nothing the matrix let through changed an object (stale versions and invalid bodies only).
    assert env.store.get(KINDS["VPS"], "acme-web").spec.powerState == "Running"


# A billing adjustment per role: who may set a customer's creditLimit (create, replace, patch).
CREDIT_LIMIT = {"admin": OK, "operator": 403, "gitops": 403, "billing-webhook": 403, "customer": 403}


@pytest.mark.parametrize("role", ROLES)
def test_credit_limit_is_a_billing_adjustment(env: Env, role: str) -> None:
    """Only an admin sets or changes spec.creditLimit; an operator is 403 naming the field, other fields still go."""
    client = env.client(role)
    expect = CREDIT_LIMIT[role]
    current = client.get("/v1/customers/acme")
    doc = stale_doc(env, "customers", "acme")
    doc["metadata"]["resourceVersion"] = env.store.get(KINDS["Customer"], "acme").metadata.resourceVersion
    doc["spec"]["creditLimit"] = "900"
    new = {"apiVersion": "hostplane.io/v1", "kind": "Customer", "metadata": {"name": f"new-{role}"},
           "spec": {"email": "n@example.com", "currency": "EUR", "creditLimit": "250.00"}}
    answers = [client.put("/v1/customers/acme", json=doc),
               client.patch("/v1/customers/acme", json={"spec": {"creditLimit": "1000.00"}}),
               client.post("/v1/customers", json=new)]
    for resp in answers:
        if expect == OK:
            assert resp.status_code in (200, 201), resp.text
        elif role == "operator":
            assert resp.status_code == 403, resp.text
            assert resp.json()["errors"] == [{"path": "spec.creditLimit",
                                              "message": "a billing adjustment: admin only"}]
        else:
            assert resp.status_code in (403, 404), resp.text
    if role == "operator":
        assert current.status_code == 200
        assert env.store.get(KINDS["Customer"], "acme").spec.creditLimit == current.json()["spec"]["creditLimit"]
        # Everything else an operator may still change, and an unchanged limit written back is fine.
        assert client.patch("/v1/customers/acme", json={"spec": {"displayName": "Acme"}}).status_code == 200
        assert client.patch("/v1/customers/acme", json={"spec": {"creditLimit": current.json()["spec"]["creditLimit"]}}
                            ).status_code == 200
        assert client.post("/v1/customers", json={**new, "spec": {**new["spec"], "creditLimit": "0"}}
                           ).status_code == 201
