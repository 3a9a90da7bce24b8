"""DigitalOcean's own clients, unchanged from PyPI, against `hostplane up --simulate-nodes 2` over HTTPS.

pydo (the official client) and python-digitalocean run a droplet's whole life: create, wait for
the create action, list by tag, power off, resize, power on, rebuild, rename, destroy. Each action
completes only when the simulated node has reported the change.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.panel_up import UpProcess
from tests.helpers.access_env import ED25519
from tests.helpers.do_contract import check_contract
from tests.helpers.wait import wait_for

pydo = pytest.importorskip("pydo")
digitalocean = pytest.importorskip("digitalocean")


def _ok(r: httpx.Response) -> Any:
    assert r.status_code < 300, f"{r.request.method} {r.request.url}: {r.status_code} {r.text}"
    return r.json() if r.content else None


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """`hostplane up` with plans small/large, images debian-12/debian-13, a pool, and customer dora's token."""
    tmp = tmp_path_factory.mktemp("doclients")
    images = tmp / "var" / "images"
    images.mkdir(parents=True)
    up = UpProcess(tmp)
    try:
        token = up.wait_ready()
        with httpx.Client(base_url=up.base, headers={"Authorization": f"Bearer {token}"}, timeout=10,
                          verify=up.verify()) as api:
            for name, vcpus, mem, gib, amount in (("small", 1, 512, 10, "5.00"), ("large", 2, 1024, 20, "10.00")):
                _ok(api.post("/v1/plans", json={"metadata": {"name": name}, "spec": {
                    "vcpus": vcpus, "memoryMiB": mem, "diskGiB": gib, "price": {"amount": amount, "currency": "EUR"}}}))
            for img in ("debian-12", "debian-13"):
                disk = images / f"{img}.raw"
                disk.write_bytes(img.encode().ljust(4096, b"\0"))
                _ok(api.post("/v1/images", json={"metadata": {"name": img}, "spec": {
                    "os": "Debian", "version": img.split("-")[1], "source": {
                        "path": str(disk), "format": "raw", "sha256": hashlib.sha256(disk.read_bytes()).hexdigest()}}}))
            _ok(api.post("/v1/ippools", json={"metadata": {"name": "public"}, "spec": {
                "cidr": "192.0.2.0/24", "gateway": "192.0.2.1"}}))
            _ok(api.post("/v1/customers", json={"metadata": {"name": "dora"}, "spec": {
                "email": "dora@example.com", "creditLimit": "0"}}))
            _ok(api.post("/v1/customers/dora/payments", json={"amount": "100.00", "reference": "p-1"}))
            customer = _ok(api.post("/v1/tokens", json={"role": "customer", "customer": "dora"}))["token"]
        yield {"up": up, "token": customer, "ca": str(up.pki / "ca.crt")}
    finally:
        up.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def _client(system: dict[str, Any], token: str | None = None) -> Any:
    return pydo.Client(token=token or system["token"], endpoint=system["up"].base,
                       connection_verify=system["ca"], retry_total=0)


def _wait_action(client: Any, action_id: int, timeout: float = 90) -> dict[str, Any]:
    def done() -> dict[str, Any]:
        action: dict[str, Any] = client.actions.get(action_id)["action"]
        assert action["status"] != "errored", action
        return action if action["status"] == "completed" else {}
    return wait_for(done, timeout=timeout, interval=0.5, what=f"action {action_id} to complete")


def test_pydo_droplet_lifecycle(system: dict[str, Any]) -> None:
    """pydo: create → active; tag list; power_off → off; resize → large; power_on; rebuild; rename; destroy → 404."""
    client = _client(system)
    key = client.ssh_keys.create(body={"name": "laptop", "public_key": ED25519})["ssh_key"]
    images = {i["slug"]: i["id"] for i in client.images.list(type="distribution", per_page=200)["images"]}
    made = client.droplets.create(body={"name": "life.example.com", "region": "sim", "size": "small",
                                        "image": "debian-12", "ssh_keys": [key["fingerprint"]], "tags": ["life"],
                                        "backups": False, "ipv6": False, "vpc_uuid": None})
    droplet_id = made["droplet"]["id"]
    _wait_action(client, made["links"]["actions"][0]["id"])
    droplet = client.droplets.get(droplet_id)["droplet"]
    assert droplet["status"] == "active" and droplet["region"]["slug"] == "sim"
    assert droplet["networks"]["v4"][0]["ip_address"].startswith("192.0.2.")
    assert droplet["networks"]["v4"][0]["gateway"] == "192.0.2.1" and droplet["vpc_uuid"]  # the pool's uid
    assert [d["id"] for d in client.droplets.list(tag_name="life", per_page=200)["droplets"]] == [droplet_id]

    checked = httpx.Client(base_url=system["up"].base + "/v2", verify=system["up"].verify(), timeout=10,
                           headers={"Authorization": f"Bearer {system['token']}"},
                           event_hooks={"response": [check_contract]})

    def act(body: dict[str, Any]) -> None:
        action_id = client.droplet_actions.post(droplet_id, body=body)["action"]["id"]
        _wait_action(client, action_id)
        # The same answers, read again and checked against DigitalOcean's schema (statuses off, completed …).
        checked.get(f"/droplets/{droplet_id}")
        checked.get(f"/droplets/{droplet_id}/actions/{action_id}")

    act({"type": "power_off"})
    assert client.droplets.get(droplet_id)["droplet"]["status"] == "off"
    act({"type": "resize", "size": "large", "disk": True})
    assert client.droplets.get(droplet_id)["droplet"]["size_slug"] == "large"
    act({"type": "power_on"})
    assert client.droplets.get(droplet_id)["droplet"]["status"] == "active"
    act({"type": "rebuild", "image": images["debian-13"]})
    assert client.droplets.get(droplet_id)["droplet"]["image"]["slug"] == "debian-13"
    act({"type": "rename", "name": "renamed.example.com"})
    assert client.droplets.get(droplet_id)["droplet"]["name"] == "renamed.example.com"
    checked.get("/actions", params={"per_page": 200})
    checked.close()
    client.droplets.destroy(droplet_id)
    assert client.droplets.get(droplet_id)["id"] == "not_found"  # pydo hands a 404's body back


def test_pydo_names_create_pagination_and_bad_token(system: dict[str, Any]) -> None:
    """pydo: three droplets in one create, paged two at a time; a wrong token raises ClientAuthenticationError."""
    from azure.core.exceptions import ClientAuthenticationError

    client = _client(system)
    made = client.droplets.create(body={"names": ["p1.example.com", "p2.example.com", "p3.example.com"],
                                        "region": "sim", "size": "small", "image": "debian-12", "tags": ["page"]})
    assert len(made["droplets"]) == 3
    first = client.droplets.list(tag_name="page", per_page=2)
    assert first["meta"]["total"] == 3 and len(first["droplets"]) == 2 and "next" in first["links"]["pages"]
    second = client.droplets.list(tag_name="page", per_page=2, page=2)
    assert len(second["droplets"]) == 1
    ids = {d["id"] for d in first["droplets"] + second["droplets"]}
    assert ids == {d["id"] for d in made["droplets"]}
    client.droplets.destroy_by_tag(tag_name="page")
    assert client.droplets.list(tag_name="page")["meta"]["total"] == 0
    with pytest.raises(ClientAuthenticationError):
        _client(system, "hp_not_a_token").droplets.list()


def test_python_digitalocean_lifecycle(system: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """python-digitalocean: Droplet.create, each action's wait(), Manager.get_all_droplets, destroy."""
    monkeypatch.setenv("DIGITALOCEAN_END_POINT", system["up"].base + "/v2/")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", system["ca"])
    token = system["token"]
    droplet = digitalocean.Droplet(token=token, name="old.example.com", region="sim", image="debian-12",
                                   size_slug="small", tags=["old"])
    droplet.create()
    assert all(a.wait(update_every_seconds=0.5) for a in droplet.get_actions())
    droplet.load()
    assert droplet.status == "active" and droplet.ip_address.startswith("192.0.2.")
    mine = digitalocean.Manager(token=token).get_all_droplets(tag_name="old")
    assert [d.id for d in mine] == [droplet.id]
    action = droplet.power_off(return_dict=False)
    assert action.wait(update_every_seconds=0.5), action.status
    action = droplet.resize("large", disk=True, return_dict=False)
    assert action.wait(update_every_seconds=0.5), action.status
    action = droplet.power_on(return_dict=False)
    assert action.wait(update_every_seconds=0.5), action.status
    droplet.load()
    assert droplet.size_slug == "large" and droplet.status == "active"
    droplet.destroy()
    assert digitalocean.Manager(token=token).get_all_droplets(tag_name="old") == []
