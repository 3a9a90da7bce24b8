"""pydo, unchanged, runs a droplet's life on real QEMU under `hostplane up` (the test guest, TCG, 128→256 MiB)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.up import TEST_GUEST, run_down
from tests.e2e.panel_up import UpProcess
from tests.e2e.test_do_clients import _ok, _wait_action

pydo = pytest.importorskip("pydo")
pytestmark = pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs QEMU")


@pytest.fixture
def qemu_up() -> Iterator[dict[str, Any]]:
    """`hostplane up` on QEMU (no --libvirt): plans q128/q256, a pool, customer quinn with funds and a token."""
    # A directory QEMU's user can reach (pytest's tmp is 0700), like the quick-start test.
    base = Path(tempfile.mkdtemp(prefix="hostplane-do-"))
    base.chmod(0o755)
    up = UpProcess(base, nodes=0, libvirt=None)
    try:
        assert up.ready.wait(300), "".join(up.output)
        assert not (base / "var" / "libvirt-uri").read_text().startswith("test:"), "".join(up.output)
        with httpx.Client(base_url=up.base, headers={"Authorization": f"Bearer {up.token()}"}, timeout=10,
                          verify=up.verify()) as api:
            from tests.helpers.wait import wait_for
            wait_for(lambda: api.get(f"/v1/images/{TEST_GUEST}").status_code == 200, timeout=240,
                     what="the test guest to be registered")
            for name, mem in (("q128", 128), ("q256", 256)):
                _ok(api.post("/v1/plans", json={"metadata": {"name": name}, "spec": {
                    "vcpus": 1, "memoryMiB": mem, "diskGiB": 1, "price": {"amount": "1.00", "currency": "EUR"}}}))
            _ok(api.post("/v1/ippools", json={"metadata": {"name": "public"}, "spec": {
                # A range no host interface or other test's NAT network uses (libvirt refuses overlaps).
                "cidr": "10.217.83.0/24", "gateway": "10.217.83.1"}}))
            _ok(api.post("/v1/customers", json={"metadata": {"name": "quinn"}, "spec": {"email": "q@example.com"}}))
            _ok(api.post("/v1/customers/quinn/payments", json={"amount": "10.00", "reference": "p-1"}))
            token = _ok(api.post("/v1/tokens", json={"role": "customer", "customer": "quinn"}))["token"]
        yield {"up": up, "token": token, "ca": str(up.pki / "ca.crt")}
    finally:
        up.stop()
        # A destroy is acknowledged before the agent has removed the guest, and `up` leaves guests
        # running when it stops: remove this instance's guests and volumes as an operator would.
        run_down(base / "var", purge=True, out=lambda _line: None)
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.timeout(900)
def test_pydo_lifecycle_on_qemu(qemu_up: dict[str, Any]) -> None:
    """create → active on QEMU; power_off → off; resize → q256; power_on; rebuild; rename; destroy → not_found."""
    client = pydo.Client(token=qemu_up["token"], endpoint=qemu_up["up"].base, connection_verify=qemu_up["ca"],
                         retry_total=0)
    image_id = client.images.get(TEST_GUEST)["image"]["id"]
    made = client.droplets.create(body={"name": "q.example.com", "size": "q128", "image": TEST_GUEST})
    droplet_id = made["droplet"]["id"]
    try:
        _wait_action(client, made["links"]["actions"][0]["id"], timeout=240)
    except AssertionError as exc:
        up = qemu_up["up"]
        servers = httpx.get(f"{up.base}/v1/vps", headers={"Authorization": f"Bearer {up.token()}"},
                            verify=up.verify(), timeout=10).json()
        raise AssertionError(f"{exc}\n{servers}\n{up.log_tail()}") from None
    assert client.droplets.get(droplet_id)["droplet"]["status"] == "active"

    def act(body: dict[str, Any]) -> None:
        _wait_action(client, client.droplet_actions.post(droplet_id, body=body)["action"]["id"])

    act({"type": "power_off"})
    assert client.droplets.get(droplet_id)["droplet"]["status"] == "off"
    act({"type": "resize", "size": "q256", "disk": "true"})
    droplet = client.droplets.get(droplet_id)["droplet"]
    assert droplet["size_slug"] == "q256" and droplet["memory"] == 256
    act({"type": "power_on"})
    assert client.droplets.get(droplet_id)["droplet"]["status"] == "active"
    act({"type": "rebuild", "image": image_id})
    act({"type": "rename", "name": "renamed.example.com"})
    assert client.droplets.get(droplet_id)["droplet"]["name"] == "renamed.example.com"
    client.droplets.destroy(droplet_id)
    assert client.droplets.get(droplet_id)["id"] == "not_found"
