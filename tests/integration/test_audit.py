"""The audit log and the access CLI against a real etcd: every mutation recorded once, read by staff only."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

from api.cli import main
from reconcile.keys import audit_prefix
from reconcile.objects import Store
from specs.kinds import VPS, Subscription
from tests.helpers.access_env import Env, served

Run = Callable[..., Result]


@pytest.fixture
def env(store: Store, tmp_path: Path) -> Iterator[Env]:
    """Two customers with a server each, a token per role, an API on loopback."""
    with served(store, tmp_path) as e:
        yield e


@pytest.fixture
def hp(env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Run:
    """Runs `hostplane --server … --token <admin> ARGS` against the served API."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))

    def run(*args: str, token: str | None = None, stdin: str | None = None) -> Result:
        return CliRunner().invoke(main, ["--server", env.url, "--token", token or env.tokens["admin"], *args],
                                  input=stdin)
    return run


def records(store: Store) -> list[dict[str, Any]]:
    kvs, _ = store.kv_range(audit_prefix(store.root))
    return [json.loads(kv.value) for kv in kvs]


def test_mutations_are_recorded_with_who_what_when_and_where(env: Env, store: Store) -> None:
    """Writes by staff and customers, refused writes and login attempts are recorded; reads and 401s are not."""
    env.client("admin").patch("/v1/plans/s1", json={"spec": {"description": "x"}})
    env.client("customer").post("/v1/vps/acme-web/actions/stop")
    env.client("customer").patch("/v1/vps/acme-web", json={"spec": {"node": "n1"}})  # 403, still recorded
    env.client("customer").get("/v1/vps")
    httpx.post(f"{env.url}/v1/plans", json={}, timeout=10)  # no token: 401, not recorded
    httpx.post(f"{env.url}/v1/auth/login", json={"email": "acme@example.com", "password": "nope-nope-nope"},
               timeout=10)
    recs = records(store)
    seen = [(r["actor"]["role"], r["method"], r["path"], r["status"]) for r in recs]
    assert seen == [("admin", "PATCH", "/v1/plans/s1", 200), ("customer", "POST", "/v1/vps/acme-web/actions/stop", 202),
                    ("customer", "PATCH", "/v1/vps/acme-web", 403), ("anonymous", "POST", "/v1/auth/login", 401)]
    assert all(r["ip"] == "127.0.0.1" and r["time"] for r in recs)
    assert recs[1]["actor"]["customer"] == "acme" and recs[1]["route"] == "/v1/vps/{name}/actions/{action}"
    text = json.dumps(recs)
    assert "nope-nope-nope" not in text and all(t.split("_", 2)[2] not in text for t in env.tokens.values())


def test_audit_is_read_by_staff_only_and_never_deleted_through_the_api(env: Env) -> None:
    """Admins and operators read the log (filtered by role); customers get 403; no route removes records."""
    env.client("customer").post("/v1/vps/acme-web/actions/reboot")
    env.client("globex").post("/v1/vps/globex-web/actions/reboot")
    items = env.client("operator").get("/v1/audit", params={"customer": "acme"}).json()["items"]
    assert [i["path"] for i in items] == ["/v1/vps/acme-web/actions/reboot"]
    assert env.client("customer").get("/v1/audit").status_code == 403
    assert env.client("admin").delete("/v1/audit").status_code == 405
    assert env.client("admin").get("/v1/audit", params={"since": "yesterday"}).status_code == 400


def test_cli_tokens_passwords_actions_orders_and_audit(env: Env, hp: Run, store: Store) -> None:
    """`token create|list|revoke`, `customer set-password`, `vps stop|resize`, `order` and `audit` via the API."""
    created = hp("token", "create", "--role", "customer", "--customer", "acme", "--name", "cli")
    assert created.exit_code == 0, created.output
    token = created.stdout.strip().splitlines()[-1]
    assert token.startswith("hpt_")
    listed = hp("token", "list")
    token_id = token.split("_")[1]
    assert token_id in listed.output and token.split("_", 2)[2] not in listed.output
    assert hp("vps", "stop", "acme-web", token=token).exit_code == 0
    assert store.get(VPS, "acme-web").spec.powerState == "Stopped"
    assert hp("vps", "resize", "acme-web", "--plan", "s2", token=token).exit_code == 0
    assert store.get(Subscription, "acme-sub").spec.plan == "s2"
    refused = hp("vps", "stop", "globex-web", token=token)
    assert refused.exit_code == 2 and "not found" in refused.output
    assert hp("customer", "set-password", "acme", "--password-stdin", stdin="a long password\n").exit_code == 0
    no_money = hp("order", "--plan", "s1", "--image", "debian-12", "--hostname", "a.example.com", token=token)
    assert no_money.exit_code == 2 and "monthly cost of your subscriptions" in no_money.output
    env.client("admin").post("/v1/customers/acme/payments", json={"amount": "10.00", "reference": "cli"})
    ordered = hp("order", "--plan", "s1", "--image", "debian-12", "--hostname", "a.example.com", "--name", "cli-1",
                 token=token)
    assert ordered.exit_code == 0 and "ordered vps/cli-1" in ordered.output
    assert hp("token", "revoke", token_id).exit_code == 0
    assert hp("vps", "start", "acme-web", token=token).exit_code == 2
    log = hp("audit", "--customer", "acme")
    assert log.exit_code == 0 and "/v1/vps/acme-web/actions/stop" in log.output and "customer:acme" in log.output
    as_json = json.loads(hp("audit", "-o", "json", "--limit", "2").output)
    assert len(as_json) == 2


def test_concurrent_mutations_each_get_exactly_one_record(env: Env, store: Store) -> None:
    """Forty writes at once (records batched into shared transactions): forty records, one per write."""
    import concurrent.futures

    admin = env.client("admin")  # made once, before the threads share it

    def stop_start(i: int) -> int:
        action = "stop" if i % 2 else "start"
        return admin.post(f"/v1/vps/acme-web/actions/{action}").status_code

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(stop_start, range(40)))
    assert statuses == [202] * 40
    recs = [r for r in records(store) if r["path"].startswith("/v1/vps/acme-web/actions/")]
    assert len(recs) == 40 and sum(r["path"].endswith("/stop") for r in recs) == 20
    kvs, _ = store.kv_range(audit_prefix(store.root))
    assert len({kv.key for kv in kvs}) == len(kvs)


def test_successful_login_is_recorded_with_the_customer(env: Env, store: Store) -> None:
    """A login that succeeds is recorded as that customer's; the session id is not in the record."""
    from api.sessions import set_password

    set_password(store, "acme", "a long password")
    r = httpx.post(f"{env.url}/v1/auth/login", json={"email": "acme@example.com", "password": "a long password"},
                   timeout=10)
    assert r.status_code == 200
    rec = [x for x in records(store) if x["path"] == "/v1/auth/login"][-1]
    assert rec["actor"] == {"role": "customer", "customer": "acme", "via": "login"} and rec["status"] == 200
    assert r.cookies["hostplane_session"] not in json.dumps(records(store))


def test_a_write_and_its_record_commit_in_one_transaction(env: Env, store: Store) -> None:
    """Object writes carry their audit record in the same etcd transaction (same revision); writes
    that change nothing or are refused are still recorded once, by the middleware."""
    admin = env.client("admin")
    before = len(store.kv_range(audit_prefix(store.root))[0])
    created = admin.post("/v1/plans", json={"kind": "Plan", "metadata": {"name": "atomic"},
                                            "spec": {"vcpus": 1, "memoryMiB": 512, "diskGiB": 10,
                                                     "price": {"amount": "1.00", "currency": "EUR"}}})
    assert created.status_code == 201
    body = created.json()
    body["spec"]["vcpus"] = 2
    replaced = admin.put("/v1/plans/atomic", json=body)
    assert replaced.status_code == 200
    assert admin.put("/v1/plans/atomic", json=replaced.json()).status_code == 200  # unchanged: no write
    assert admin.put("/v1/plans/atomic", json=body).status_code == 409  # stale resourceVersion
    kvs, _ = store.kv_range(audit_prefix(store.root))
    mine = [(json.loads(kv.value), kv.mod_revision) for kv in kvs[before:]]
    assert [(r["method"], r["status"]) for r, _ in mine] == [("POST", 201), ("PUT", 200), ("PUT", 200), ("PUT", 409)]
    assert mine[0][1] == int(body["metadata"]["resourceVersion"])  # the create's record: the create's revision
    assert mine[1][1] == int(replaced.json()["metadata"]["resourceVersion"])  # the replace's: the replace's


def test_an_action_and_its_record_commit_in_one_transaction(env: Env, store: Store) -> None:
    """A reboot is one spec change; its audit record lands in the same revision, once."""
    before = len(store.kv_range(audit_prefix(store.root))[0])
    answer = env.client("customer").post("/v1/vps/acme-web/actions/reboot")
    assert answer.status_code == 202
    kvs, _ = store.kv_range(audit_prefix(store.root))
    mine = [(json.loads(kv.value), kv.mod_revision) for kv in kvs[before:]]
    assert [(r["actor"]["role"], r["path"], r["status"]) for r, _ in mine] == [
        ("customer", "/v1/vps/acme-web/actions/reboot", 202)]
    assert mine[0][1] == int(answer.json()["resourceVersion"])
