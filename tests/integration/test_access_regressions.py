"""Regressions from the security review (issue 13): each test replays the attack that once worked.

Bad input that was a 500, an operator changing a credit limit, a subscription name taken over,
orders past the credit limit, login throttling, stream and session floods, and watch resumes
that showed history under today's owners.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from controllers import payments
from controllers.payments.webhook import sign
from reconcile.store import Store
from tests.helpers.access_env import Env, served

PROBLEM = "application/problem+json"
SECRET = "s3cret-for-regressions"


@pytest.fixture
def env(store: Store, tmp_path: Path) -> Iterator[Env]:
    """Two customers with a server each, a token per role; no rate limit."""
    payments.set_webhook_secret(store, "webhook", SECRET)
    with served(store, tmp_path, rate_per_principal=0) as e:
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
