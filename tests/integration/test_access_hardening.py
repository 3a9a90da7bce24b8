"""Hostile input over HTTP: oversized, malformed, deep, traversal, unicode and injection strings in every field.

Every string field of every kind is tried with each payload. A field that reaches a name,
a path, libvirt XML or cloud-init must refuse it (4xx, nothing stored); free text may keep
it, stored and returned byte for byte (it is escaped where it is rendered, never interpreted).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from reconcile.keys import audit_prefix
from reconcile.objects import Store
from tests.helpers.access_env import ED25519, Env, served

PAYLOADS = [
    "' OR 1=1 --", "'; DROP TABLE vps; --",
    "<?xml version='1.0'?><!DOCTYPE x [<!ENTITY e SYSTEM 'file:///etc/passwd'>]><x>&e;</x>",
    "</name><devices><disk type='file'/></devices>", "!!python/object/apply:os.system ['id']",
    "#cloud-config\nruncmd: [[sh, -c, id]]", "x\n- ssh-rsa AAAA attacker", "${jndi:ldap://127.0.0.1/x}",
    "../../etc/passwd", "a\u202eb", "\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45", "nul\x00byte", "{{7*7}}",
]
# Free text: never a name, path, XML attribute or cloud-init key; may hold any printable text.
# Annotation values are opaque to Hostplane (tools keep JSON there); no controller renders them.
FREE_TEXT = {"spec.description", "spec.displayName", "spec.os", "spec.version", "spec.cmdline",
             "metadata.annotations.note"}

BODIES: dict[str, dict[str, Any]] = {
    "plans": {"metadata": {"name": "p"}, "spec": {"vcpus": 1, "memoryMiB": 512, "diskGiB": 10, "description": "d",
                                                   "price": {"amount": "1.00", "currency": "EUR"}}},
    "images": {"metadata": {"name": "i"}, "spec": {"os": "debian", "version": "12", "cmdline": "console=ttyS0",
                                                    "source": {"path": "/var/lib/images/d.qcow2", "sha256": "0" * 64},
                                                    "kernel": "/boot/vmlinuz"}},
    "customers": {"metadata": {"name": "c", "labels": {"tier": "gold"}},
                  "spec": {"email": "c@example.com", "displayName": "C", "currency": "EUR", "creditLimit": "0"}},
    "vps": {"metadata": {"name": "v", "annotations": {"note": "x"}},
            "spec": {"subscription": "acme-sub", "image": "debian-12", "hostname": "v.example.com",
                     "sshKeys": [ED25519], "node": "n1", "nodeSelector": {"zone": "a"}}},
}


@pytest.fixture
def env(store: Store, tmp_path: Path) -> Iterator[Env]:
    """An API with seeded objects and a small body limit; no rate limit."""
    with served(store, tmp_path, rate_per_principal=0, max_body_bytes=64 * 1024) as e:
        yield e


def string_paths(doc: Any, prefix: str = "") -> list[str]:
    if isinstance(doc, dict):
        return [p for k, v in doc.items() for p in string_paths(v, f"{prefix}.{k}" if prefix else k)]
    if isinstance(doc, list):
        return [p for i, v in enumerate(doc) for p in string_paths(v, f"{prefix}[{i}]")]
    return [prefix] if isinstance(doc, str) else []


def set_path(doc: dict[str, Any], path: str, value: str) -> None:
    parts = path.replace("[", ".[").split(".")
    node: Any = doc
    for part in parts[:-1]:
        node = node[int(part[1:-1])] if part.startswith("[") else node[part]
    last = parts[-1]
    if last.startswith("["):
        node[int(last[1:-1])] = value
    else:
        node[last] = value


def get_path(doc: Any, path: str) -> Any:
    for part in path.replace("[", ".[").split("."):
        doc = doc[int(part[1:-1])] if part.startswith("[") else doc[part]
    return doc


def spec_keys(store: Store) -> set[str]:
    return {kv.key for kv in store.kv_range(store.root + "/specs/")[0]}


def test_injection_strings_in_every_field(env: Env, store: Store) -> None:
    """Each payload in each string field: refused with 4xx and nothing stored, or (free text) kept verbatim."""
    admin = env.client("admin")
    problems: list[str] = []
    for plural, body in BODIES.items():
        # Labels and annotations are maps: their keys and values are strings too.
        maps = [f"metadata.{m}" for m in ("labels", "annotations") if m in body["metadata"]]
        for path in string_paths(body):
            for n, payload in enumerate(PAYLOADS):
                doc = copy.deepcopy(body)
                name = f"h{n}-{abs(hash(path)) % 10_000}"
                doc["metadata"]["name"] = name
                set_path(doc, path, payload)
                before = spec_keys(store)
                r = admin.post(f"/v1/{plural}", content=json.dumps(doc), headers={"Content-Type": "application/json"})
                if r.status_code >= 500:
                    problems.append(f"{plural} {path} {payload!r}: {r.status_code}")
                elif r.status_code >= 400:
                    if not r.headers["content-type"].startswith("application/problem+json"):
                        problems.append(f"{plural} {path}: {r.status_code} not a problem document")
                    if spec_keys(store) != before:
                        problems.append(f"{plural} {path} {payload!r}: refused but stored")
                elif path not in FREE_TEXT:
                    problems.append(f"{plural} {path} {payload!r}: accepted ({r.status_code})")
                else:
                    stored = admin.get(f"/v1/{plural}/{name}").json()
                    if get_path(stored, path) != payload:
                        problems.append(f"{plural} {path} {payload!r}: stored as {get_path(stored, path)!r}")
                    admin.delete(f"/v1/{plural}/{name}")
        for mapping in maps:
            for payload in PAYLOADS:
                doc = copy.deepcopy(body)
                doc["metadata"]["name"] = "m"
                set_path(doc, mapping, {payload: "x"})  # type: ignore[arg-type]
                r = admin.post(f"/v1/{plural}", json=doc)
                if r.status_code != 422:
                    problems.append(f"{plural} {mapping} key {payload!r}: {r.status_code}")
    assert not problems, "\n".join(problems)


def test_malformed_oversized_and_deep_bodies_are_4xx(env: Env, store: Store) -> None:
    """Bad JSON 400, too deep 400, too big 413, wrong type 400, YAML alias bombs 400; nothing stored."""
    admin, before = env.client("admin"), spec_keys(store)
    cases = [(b"{", "application/json", 400), (b"[" * 100_000 + b"]" * 100_000, "application/json", 413),
             (b"[" * 20_000 + b"]" * 20_000, "application/json", 400), (b"x" * 70_000, "application/json", 413),
             (b"a: &a [1]\nb: *a\n", "application/yaml", 400), (b"<plan/>", "application/xml", 400),
             (b"\xff\xfe", "application/json", 400), (b"", "application/json", 400)]
    for raw, ctype, status in cases:
        r = admin.post("/v1/plans", content=raw, headers={"Content-Type": ctype})
        assert r.status_code == status, (raw[:20], r.status_code, r.text[:200])
        assert r.headers["content-type"].startswith("application/problem+json") and "Traceback" not in r.text
    for path in ("/v1/orders", "/v1/tokens", "/v1/auth/login", "/v1/vps/acme-web/actions/resize"):
        assert admin.post(path, content=b"{", headers={"Content-Type": "application/json"}).status_code == 400
        assert admin.post(path, content=b"x" * 70_000,
                          headers={"Content-Type": "application/json"}).status_code == 413
    assert spec_keys(store) == before


@pytest.mark.parametrize("name", ["..%2F..%2Fetc", "%2e%2e", "a%00b", "ACME-WEB", "acme-web%20", "%E2%80%AEbew-emca",
                                  "acme\u2010web", "a" * 300])
def test_hostile_names_in_paths_are_404_for_everyone(env: Env, name: str) -> None:
    """Traversal, NUL, case, spaces, bidi and look-alike names in a path name nothing: 404 (or 405), never 5xx."""
    for who in ("admin", "customer"):
        r = env.client(who).get(f"/v1/vps/{name}")
        assert r.status_code in (404, 405), (who, name, r.status_code)
        assert r.headers["content-type"].startswith("application/problem+json")


def test_no_cors_headers_and_preflight_refused(env: Env) -> None:
    """A cross-origin request gets no Access-Control-* headers; a preflight is not allowed."""
    r = httpx.get(f"{env.url}/v1/plans", headers={"Origin": "https://evil.example",
                                                  "Authorization": f"Bearer {env.tokens['admin']}"})
    assert r.status_code == 200 and not any(h.lower().startswith("access-control") for h in r.headers)
    pre = httpx.options(f"{env.url}/v1/plans", headers={"Origin": "https://evil.example",
                                                        "Access-Control-Request-Method": "DELETE"})
    assert pre.status_code == 405 and not any(h.lower().startswith("access-control") for h in pre.headers)


def test_rate_limit_per_token(store: Store, tmp_path: Path) -> None:
    """A customer token beyond its burst gets 429 with Retry-After; the admin token is not limited."""
    with served(store, tmp_path, rate_per_principal=1.0, burst_per_principal=5) as e:
        statuses = [e.client("customer").get("/v1/plans").status_code for _ in range(10)]
        assert statuses[:5] == [200] * 5 and statuses[-1] == 429
        r = e.client("customer").get("/v1/plans")
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert r.headers["content-type"].startswith("application/problem+json")
        assert all(e.client("admin").get("/v1/plans").status_code == 200 for _ in range(20))
        assert e.client("globex").get("/v1/plans").status_code == 200  # per token, not global
        # Writes refused by the limit leave no audit record (a flood must not become etcd writes).
        posts = [e.client("globex").post("/v1/vps/globex-web/actions/reboot").status_code for _ in range(10)]
        audited = [kv for kv in store.kv_range(audit_prefix(store.root))[0] if b"globex-web" in kv.value]
        assert 429 in posts and len(audited) == posts.count(202)
