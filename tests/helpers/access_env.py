"""A served API with two customers, their subscriptions and servers, and a token per role: for access tests."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from api.auth import create_token, ensure_admin_token
from api.ratelimit import LoginThrottle
from api.server import create_app, serving
from reconcile.objects import Store
from specs.kinds import Plan, PlanSpec, Price
from specs.meta import ObjectMeta
from tests.helpers import builders

ROLES = ("admin", "operator", "customer", "gitops", "billing-webhook")
ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl test@host"


@dataclass
class Env:
    url: str
    store: Store
    tokens: dict[str, str]  # role -> token ("customer" is acme's); also "globex"
    clients: dict[str, httpx.Client] = field(default_factory=dict)
    app: Any = None

    def client(self, who: str) -> httpx.Client:
        """A client with the token of a role (or "globex", the second customer)."""
        if who not in self.clients:
            self.clients[who] = httpx.Client(base_url=self.url, timeout=10,
                                             headers={"Authorization": f"Bearer {self.tokens[who]}"})
        return self.clients[who]


def plan(name: str, disk: int, *, public: bool = True, price: str = "5.00") -> Plan:
    return Plan(metadata=ObjectMeta(name=name), spec=PlanSpec(
        vcpus=1, memoryMiB=512, diskGiB=disk, price=Price(amount=price, currency="EUR"), public=public))


def seed(store: Store) -> None:
    """Plans s1 (10 GiB), s2 (20 GiB), hidden (private); image debian-12; node n1; pool pool-a;
    customers acme and globex with subscription <c>-sub and VPS <c>-web each."""
    for p in (plan("s1", 10), plan("s2", 20), plan("hidden", 40, public=False)):
        store.create(p)
    store.create(builders.image())
    store.create(builders.node())
    store.create(builders.pool())
    for cust in ("acme", "globex"):
        store.create(builders.customer(cust))
        store.create(builders.subscription(f"{cust}-sub", "s1", cust))
        store.create(builders.vps(f"{cust}-web", f"{cust}-sub"))


@contextlib.contextmanager
def served(store: Store, tmp_path: Path, *, app_store: Store | None = None, **app_kwargs: Any) -> Iterator[Env]:
    """Seed, mint a token per role, serve an API (on `app_store`, e.g. one with the `api` etcd identity,
    else on `store`); close every client afterwards."""
    seed(store)
    tokens = {"admin": ensure_admin_token(store, tmp_path)}
    for role in ROLES[1:]:
        tokens[role] = create_token(store, role, customer="acme" if role == "customer" else None)
    tokens["globex"] = create_token(store, "customer", customer="globex")
    app_kwargs.setdefault("heartbeat_seconds", 0.5)
    app_kwargs.setdefault("login_throttle", LoginThrottle(free=3, base_seconds=0.5, max_seconds=5))
    app = create_app(app_store or store, **app_kwargs)
    with serving(app) as url:
        env = Env(url, store, tokens, app=app)
        try:
            yield env
        finally:
            for c in env.clients.values():
                c.close()
