"""The HTTP API against a real etcd: CRUD, conflicts, validation, limits, auth, watch, metrics."""

from __future__ import annotations

import copy
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.auth import ADMIN_TOKEN_FILE, create_token, ensure_admin_token
from api.server import create_app, serving
from reconcile.keys import token_key
from reconcile.objects import Store
from specs import Plan

PLAN: dict[str, Any] = {
    "apiVersion": "hostplane.io/v1",
    "kind": "Plan",
    "metadata": {"name": "s1", "labels": {"line": "standard"}},
    "spec": {"vcpus": 1, "memoryMiB": 1024, "diskGiB": 25, "price": {"amount": "4.49", "currency": "EUR"}},
}


def plan(name: str = "s1", **spec: Any) -> dict[str, Any]:
    body = copy.deepcopy(PLAN)
    body["metadata"]["name"] = name
    body["spec"].update(spec)
    return body


@pytest.fixture
def api(store: Store, tmp_path: Path) -> Iterator[httpx.Client]:
    """A client with the admin token for an API served on loopback over the test's store."""
    token = ensure_admin_token(store, tmp_path)
    app = create_app(store, heartbeat_seconds=0.5, max_body_bytes=256 * 1024)
    with serving(app) as url, httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"},
                                           timeout=10) as client:
        yield client


def problem(resp: httpx.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = resp.json()
    assert body["status"] == status and body["title"] and "type" in body
    assert "Traceback" not in resp.text
    return body


def test_crud_round_trip(api: httpx.Client) -> None:
    """Create, read (by plural, singular and alias), list by label, replace, delete."""
    r = api.post("/v1/plans", json=plan())
    assert r.status_code == 201 and r.headers["location"] == "/v1/plans/s1"
    created = r.json()
    assert created["metadata"]["generation"] == 1 and created["metadata"]["uid"]
    for path in ("/v1/plans/s1", "/v1/plan/s1", "/v1/tariffs/s1", "/v1/Plan/s1"):
        assert api.get(path).json()["spec"]["price"] == {"amount": "4.49", "currency": "EUR", "period": "month"}
    api.post("/v1/plans", json=plan("s2") | {"metadata": {"name": "s2", "labels": {"line": "dedicated"}}})
    listed = api.get("/v1/plans", params={"labelSelector": "line=standard"}).json()
    assert [o["metadata"]["name"] for o in listed["items"]] == ["s1"]
    assert int(listed["metadata"]["resourceVersion"]) >= int(created["metadata"]["resourceVersion"])

    body = plan(vcpus=2)
    body["metadata"]["resourceVersion"] = created["metadata"]["resourceVersion"]
    r = api.put("/v1/plans/s1", json=body)
    assert r.status_code == 200 and r.json()["metadata"]["generation"] == 2
    assert api.delete("/v1/plans/s1").status_code == 204
    problem(api.get("/v1/plans/s1"), 404)


def test_stale_resource_version_is_409_and_changes_nothing(api: httpx.Client) -> None:
    """A PUT carrying an old resourceVersion is refused with 409; the stored object stays."""
    old = api.post("/v1/plans", json=plan()).json()["metadata"]["resourceVersion"]
    newer = plan(vcpus=2)
    newer["metadata"]["resourceVersion"] = old
    assert api.put("/v1/plans/s1", json=newer).status_code == 200
    stale = plan(vcpus=4)
    stale["metadata"]["resourceVersion"] = old
    body = problem(api.put("/v1/plans/s1", json=stale), 409)
    assert "resourceVersion" in body["detail"]
    assert api.get("/v1/plans/s1").json()["spec"]["vcpus"] == 2


def test_duplicate_name_is_409(api: httpx.Client) -> None:
    """Creating a name that exists is 409 and names the object, not an etcd key."""
    api.post("/v1/plans", json=plan())
    body = problem(api.post("/v1/plans", json=plan(vcpus=8)), 409)
    assert body["detail"] == "Plan 's1' already exists"
    assert api.get("/v1/plans/s1").json()["spec"]["vcpus"] == 1


@pytest.mark.parametrize(
    ("mutate", "path"),
    [
        (lambda b: b["spec"].update(cpus=1), "spec.cpus"),
        (lambda b: b["spec"].update(vcpus="many"), "spec.vcpus"),
        (lambda b: b["spec"].update(memoryMiB=0), "spec.memoryMiB"),
        (lambda b: b["spec"]["price"].update(amount="4.499"), "spec.price.amount"),
        (lambda b: b["metadata"].update(name="Not_A_Name"), "metadata.name"),
        (lambda b: b.update(kind="Image"), "kind"),
    ],
)
def test_invalid_object_is_422_with_field_path(api: httpx.Client, mutate: Any, path: str) -> None:
    """Unknown fields, wrong types and bad values are 422 naming the field; nothing is created."""
    body = plan()
    mutate(body)
    errors = problem(api.post("/v1/plans", json=body), 422)["errors"]
    assert any(e["path"] == path for e in errors), errors
    assert api.get("/v1/plans").json()["items"] == []


def test_unknown_kind_is_404(api: httpx.Client) -> None:
    """A path naming no kind is 404 listing the known kinds."""
    body = problem(api.get("/v1/widgets"), 404)
    assert "Plan" in body["detail"]
    problem(api.post("/v1/widgets", json=plan()), 404)


def test_too_large_body_is_413(api: httpx.Client) -> None:
    """A body over the limit is refused before parsing; nothing is created."""
    body = plan()
    body["spec"]["description"] = "x" * (300 * 1024)
    problem(api.post("/v1/plans", json=body), 413)
    problem(api.post("/v1/plans", content=b"{" * (300 * 1024),
                     headers={"content-type": "application/json"}), 413)
    assert api.get("/v1/plans").json()["items"] == []


def test_bad_json_and_yaml_are_400_and_yaml_is_accepted(api: httpx.Client) -> None:
    """Malformed bodies are 400 saying where; a YAML body with the YAML content type works."""
    assert "line 1" in problem(api.post("/v1/plans", content=b'{"kind": ', headers={
        "content-type": "application/json"}), 400)["detail"]
    problem(api.post("/v1/plans", content=b"a: [", headers={"content-type": "application/yaml"}), 400)
    problem(api.post("/v1/plans", content=b"a: &x [1]\nb: *x\n", headers={"content-type": "application/yaml"}),
            400)
    yaml_body = (b"kind: Plan\nmetadata: {name: y1}\n"
                 b"spec: {vcpus: 1, memoryMiB: 512, diskGiB: 10, price: {amount: 2.5, currency: EUR}}\n")
    r = api.post("/v1/plans", content=yaml_body, headers={"content-type": "application/yaml"})
    assert r.status_code == 201 and r.json()["spec"]["price"]["amount"] == "2.50"


def test_auth_is_required_except_health(api: httpx.Client) -> None:
    """Every object route needs a valid bearer token; health checks do not."""
    anon = httpx.Client(base_url=str(api.base_url), timeout=10)
    with anon:
        body = problem(anon.get("/v1/plans"), 401)
        assert "Bearer" in body["detail"]
        assert anon.get("/v1/plans").headers["www-authenticate"] == "Bearer"
        problem(anon.get("/v1/plans", headers={"Authorization": "Bearer hpt_0123_nope"}), 401)
        problem(anon.post("/v1/plans", json=plan(), headers={"Authorization": "Basic eDp5"}), 401)
        problem(anon.get("/v1/watch"), 401)
        assert anon.get("/healthz").json() == {"status": "ok"}
        assert anon.get("/readyz").status_code == 200
        assert anon.get("/openapi.json").status_code == 200
    assert api.get("/v1/plans").status_code == 200


def test_role_without_a_kind_is_403_on_its_object_watch_and_events_routes(api: httpx.Client, store: Store) -> None:
    """A valid token whose role may not read a kind gets 403 on that kind's list, watch and events."""
    webhook = create_token(store, "billing-webhook")
    headers = {"Authorization": f"Bearer {webhook}"}
    for path in ("/v1/plans", "/v1/watch?kinds=plans", "/v1/events?kind=Plan"):
        assert "role 'billing-webhook'" in problem(api.get(path, headers=headers), 403)["detail"]


def test_status_is_read_only_and_ignored_in_bodies(api: httpx.Client, store: Store) -> None:
    """Clients cannot write status: it is dropped from bodies and the status route is GET only."""
    body = plan() | {"status": {"forged": True}}
    assert "status" not in api.post("/v1/plans", json=body).json()
    assert api.get("/v1/plans/s1/status").json()["status"] == {}
    assert api.put("/v1/plans/s1/status", json={"status": {}}).status_code == 405
    store.put_status(Plan, "s1", {"observed": 1})
    assert api.get("/v1/plans/s1/status").json()["status"] == {"observed": 1}
    api.put("/v1/plans/s1", json=plan(vcpus=2) | {"status": {"observed": 99}})
    assert api.get("/v1/plans/s1").json()["status"] == {"observed": 1}


def test_merge_patch(api: httpx.Client) -> None:
    """PATCH merges objects, null removes a key, and a pinned stale resourceVersion is 409."""
    rv = api.post("/v1/plans", json=plan()).json()["metadata"]["resourceVersion"]
    r = api.patch("/v1/plans/s1", json={"metadata": {"labels": {"tier": "a", "line": None}}, "spec": {"vcpus": 2}},
                  headers={"content-type": "application/merge-patch+json"})
    assert r.status_code == 200
    got = r.json()
    assert got["metadata"]["labels"] == {"tier": "a"} and got["spec"]["vcpus"] == 2
    assert got["spec"]["memoryMiB"] == 1024
    problem(api.patch("/v1/plans/s1", json={"metadata": {"resourceVersion": rv}, "spec": {"vcpus": 3}}), 409)
    errors = problem(api.patch("/v1/plans/s1", json={"spec": {"vcpus": -1}}), 422)["errors"]
    assert errors[0]["path"] == "spec.vcpus"
    problem(api.patch("/v1/plans/s1", json={"metadata": {"name": "other"}}), 422)


def test_delete_with_finalizers_marks_then_removal_of_finalizer_deletes(api: httpx.Client) -> None:
    """DELETE of an object with finalizers is 202 with deletionTimestamp; clearing them deletes it."""
    body = plan()
    body["metadata"]["finalizers"] = ["hostplane.io/cleanup"]
    api.post("/v1/plans", json=body)
    r = api.delete("/v1/plans/s1")
    assert r.status_code == 202 and r.json()["metadata"]["deletionTimestamp"]
    assert api.delete("/v1/plans/s1").status_code == 202
    # A PUT that does not mention finalizers keeps them; only an explicit list changes them.
    assert api.put("/v1/plans/s1", json=plan(vcpus=3)).json()["metadata"]["finalizers"] == ["hostplane.io/cleanup"]
    marked = api.get("/v1/plans/s1").json()
    marked["metadata"]["finalizers"] = []
    api.put("/v1/plans/s1", json=marked)
    problem(api.get("/v1/plans/s1"), 404)
    problem(api.delete("/v1/plans/s1"), 404)


def read_events(client: httpx.Client, params: dict[str, str], count: int, timeout: float = 10.0,
                ) -> list[dict[str, Any]]:
    """Read `count` change events (with their SSE ids) from /v1/watch."""
    out: list[dict[str, Any]] = []
    event_id = None
    with client.stream("GET", "/v1/watch", params=params, timeout=httpx.Timeout(timeout)) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        for line in resp.iter_lines():
            if line.startswith("id: "):
                event_id = line[4:]
            elif line.startswith("data: "):
                ev = json.loads(line[6:]) | {"_id": event_id}
                event_id = None
                out.append(ev)
                if len(out) == count:
                    break
    return out


def test_watch_delivers_spec_and_status_and_resumes_from_id(api: httpx.Client, store: Store) -> None:
    """The SSE stream carries spec and status changes with revision ids; resuming skips what was seen."""
    start = api.get("/v1/plans").json()["metadata"]["resourceVersion"]
    api.post("/v1/plans", json=plan())
    store.put_status(Plan, "s1", {"seen": True})
    api.post("/v1/images", json={"kind": "Image", "metadata": {"name": "deb"},
                                 "spec": {"os": "debian", "version": "12",
                                          "source": {"path": "/i/d.qcow2", "sha256": "0" * 64}}})
    events = read_events(api, {"kinds": "plans", "resourceVersion": start}, 2)
    assert [(e["part"], e["type"], e["kind"], e["name"]) for e in events] == [
        ("spec", "PUT", "Plan", "s1"), ("status", "PUT", "Plan", "s1")]
    assert events[0]["object"]["spec"]["vcpus"] == 1
    assert events[1]["object"] == {"seen": True}
    assert int(events[0]["_id"]) < int(events[1]["_id"])

    api.delete("/v1/plans/s1")
    resumed = read_events(api, {"kinds": "plan", "resourceVersion": events[1]["_id"]}, 2)
    assert {(e["part"], e["type"]) for e in resumed} == {("spec", "DELETE"), ("status", "DELETE")}
    # Both keys go in one revision: only the last event of it carries the resume id.
    assert [e["_id"] is not None for e in resumed] == [False, True]


def test_watch_resumes_from_last_event_id_header_and_sends_heartbeats(api: httpx.Client) -> None:
    """Last-Event-ID resumes like resourceVersion; an idle stream still gets heartbeat comments."""
    first = api.post("/v1/plans", json=plan()).json()["metadata"]["resourceVersion"]
    api.post("/v1/plans", json=plan("s2"))
    with api.stream("GET", "/v1/watch", params={"kinds": "plans"}, headers={"Last-Event-ID": first}) as resp:
        lines = resp.iter_lines()
        got = None
        heartbeat = False
        for line in lines:
            if line.startswith("data: "):
                got = json.loads(line[6:])["name"]
            if line == ": heartbeat":
                heartbeat = True
            if got and heartbeat:
                break
    assert got == "s2" and heartbeat


def test_bad_label_selector_is_400_naming_the_parameter(api: httpx.Client) -> None:
    """A malformed labelSelector is a 400 whose error path is the query parameter."""
    errors = problem(api.get("/v1/plans", params={"labelSelector": "a b=c"}), 400)["errors"]
    assert errors[0]["path"] == "labelSelector"


def test_watch_rejects_unknown_kind_and_bad_revision(api: httpx.Client) -> None:
    """A watch on an unknown kind is 404; a non-numeric resourceVersion is 400."""
    problem(api.get("/v1/watch", params={"kinds": "widgets"}), 404)
    problem(api.get("/v1/watch", params={"resourceVersion": "abc"}), 400)


def test_watch_that_falls_behind_is_told_to_relist(api: httpx.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stream whose backlog passes the limit ends with a `relist` event instead of growing without bound."""
    monkeypatch.setattr("api.watch._MAX_PENDING_BYTES", 0)
    start = api.get("/v1/plans").json()["metadata"]["resourceVersion"]
    api.post("/v1/plans", json=plan())
    with api.stream("GET", "/v1/watch", params={"kinds": "plans", "resourceVersion": start}) as resp:
        lines = list(resp.iter_lines())
    assert "event: relist" in lines and not any('"part"' in line for line in lines)


def test_metrics_count_requests_by_route(api: httpx.Client) -> None:
    """/metrics reports requests by route template and status, open to loopback without a token."""
    api.get("/v1/plans/nope")
    api.get("/v1/plans")
    text = httpx.get(str(api.base_url) + "/metrics").text
    assert 'hostplane_api_requests_total{code="404",method="GET",route="/v1/{kind}/{name}"} 1.0' in text
    assert 'route="/v1/{kind}"' in text
    assert "hostplane_api_request_duration_seconds_bucket" in text


def test_metrics_need_a_token_off_loopback(store: Store) -> None:
    """With the loopback exemption off, /metrics needs the bearer token like any other route."""
    app = create_app(store, open_metrics_on_loopback=False)
    with serving(app) as url:
        assert httpx.get(url + "/metrics").status_code == 401


def test_admin_token_is_minted_once_and_stored_hashed(store: Store, tmp_path: Path) -> None:
    """The first start mints a token (file 0600, only a hash in etcd); later starts reuse it."""
    token = ensure_admin_token(store, tmp_path)
    path = tmp_path / ADMIN_TOKEN_FILE
    assert path.read_text().strip() == token
    assert (os.stat(path).st_mode & 0o777) == 0o600
    assert ensure_admin_token(store, tmp_path) == token
    kvs, _ = store.kv_range(store.root + "/auth/")
    assert len(kvs) == 1
    secret = token.split("_", 2)[2]
    assert secret.encode() not in kvs[0].value and b"sha256" in kvs[0].value

    path.unlink()
    fresh = ensure_admin_token(store, tmp_path)
    assert fresh != token and path.read_text().strip() == fresh


def test_admin_token_file_is_registered_again_on_a_fresh_store(store: Store, tmp_path: Path) -> None:
    """A token file from an earlier etcd is registered again (the file is the credential)."""
    token = ensure_admin_token(store, tmp_path)
    token_id = token.split("_")[1]
    store.kv_delete(token_key(store.root, token_id))
    assert ensure_admin_token(store, tmp_path) == token
    assert store.kv_get(token_key(store.root, token_id)) is not None


def test_concurrent_writers_one_wins(api: httpx.Client) -> None:
    """Two PUTs from the same resourceVersion race: exactly one succeeds, the other gets 409."""
    rv = api.post("/v1/plans", json=plan()).json()["metadata"]["resourceVersion"]
    codes: list[int] = []

    def put(vcpus: int) -> None:
        body = plan(vcpus=vcpus)
        body["metadata"]["resourceVersion"] = rv
        codes.append(httpx.put(str(api.base_url) + "/v1/plans/s1", json=body, headers=dict(api.headers)).status_code)

    threads = [threading.Thread(target=put, args=(n,)) for n in (2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) == [200, 409]


def test_disk_shrink_is_refused(api: httpx.Client) -> None:
    """A subscription cannot move to a plan with a smaller disk, nor a used plan lose disk; both 422 by path."""
    api.post("/v1/plans", json=plan("big", diskGiB=80))
    api.post("/v1/plans", json=plan("small", diskGiB=25))
    api.post("/v1/plans", json=plan("bigger", diskGiB=160))
    api.post("/v1/customers", json={"kind": "Customer", "metadata": {"name": "acme"},
                                    "spec": {"email": "a@acme.example.com"}})
    sub = {"kind": "Subscription", "metadata": {"name": "s"}, "spec": {"customer": "acme", "plan": "big"}}
    api.post("/v1/subscriptions", json=sub)
    errors = problem(api.patch("/v1/subscriptions/s", json={"spec": {"plan": "small"}}), 422)["errors"]
    assert errors[0]["path"] == "spec.plan" and "never shrink" in errors[0]["message"]
    problem(api.put("/v1/subscriptions/s", json=sub | {"spec": {"customer": "acme", "plan": "small"}}), 422)
    assert api.patch("/v1/subscriptions/s", json={"spec": {"plan": "bigger"}}).status_code == 200
    errors = problem(api.patch("/v1/plans/bigger", json={"spec": {"diskGiB": 100}}), 422)["errors"]
    assert errors[0]["path"] == "spec.diskGiB" and "use this plan (s)" in errors[0]["message"]
    assert api.patch("/v1/plans/big", json={"spec": {"diskGiB": 40}}).status_code == 200  # unused now
    assert api.get("/v1/subscriptions/s").json()["spec"]["plan"] == "bigger"


def test_plan_patch_cannot_change_the_currency(api: httpx.Client) -> None:
    """A plain PATCH or PUT of a subscription's plan to one priced in another currency is 422 on spec.plan."""
    api.post("/v1/plans", json=plan("eur"))
    api.post("/v1/plans", json=plan("usd", price={"amount": "5.00", "currency": "USD"}))
    api.post("/v1/customers", json={"kind": "Customer", "metadata": {"name": "acme"},
                                    "spec": {"email": "a@acme.example.com"}})
    sub = {"kind": "Subscription", "metadata": {"name": "s"}, "spec": {"customer": "acme", "plan": "eur"}}
    api.post("/v1/subscriptions", json=sub)
    errors = problem(api.patch("/v1/subscriptions/s", json={"spec": {"plan": "usd"}}), 422)["errors"]
    assert errors[0]["path"] == "spec.plan" and "USD" in errors[0]["message"]
    problem(api.put("/v1/subscriptions/s", json=sub | {"spec": {"customer": "acme", "plan": "usd"}}), 422)
    assert api.get("/v1/subscriptions/s").json()["spec"]["plan"] == "eur"
