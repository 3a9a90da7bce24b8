"""`hostplane up` end to end: real etcd, API, controllers and agent processes; stop; restart."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import httpx
import yaml

from reconcile.etcd_server import free_port
from tests.e2e.panel_up import UpProcess, _hostplane, children_of

PLAN = """
apiVersion: hostplane.io/v1
kind: Plan
metadata: {name: up-test}
spec: {vcpus: 1, memoryMiB: 512, diskGiB: 10, price: {amount: "3.00", currency: EUR}}
"""


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _stop(up: UpProcess) -> float:
    t0 = time.monotonic()
    up.stop()
    return time.monotonic() - t0


def test_up_serves_writes_config_stops_within_10s_and_restarts_without_loss(tmp_path: Path) -> None:
    """up prints a token, writes the CLI config, runs every component; SIGTERM stops all; a restart keeps data."""
    data, port = tmp_path / "var", free_port()
    up = UpProcess(tmp_path, nodes=0, port=port)
    env = up.env
    try:
        assert up.ready.wait(90), "".join(up.output)
        token = up.token()
        cfg = yaml.safe_load((tmp_path / "cfg" / "hostplane" / "config.yaml").read_text())
        ca = str(data.resolve() / "pki" / "ca.crt")
        assert cfg == {"server": f"https://127.0.0.1:{port}", "token": token, "ca": ca}

        plan = tmp_path / "plan.yaml"
        plan.write_text(PLAN)
        deadline = time.monotonic() + 30
        while True:  # the API child may still be binding its port
            r = subprocess.run([*_hostplane(), "apply", "-f", str(plan)], env=env, capture_output=True, text=True)
            if r.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert r.returncode == 0, r.stdout + r.stderr

        # The agent's heartbeat and the controllers' node lifecycle make the local node Ready.
        headers = {"Authorization": f"Bearer {token}"}
        deadline = time.monotonic() + 45
        state = None
        while time.monotonic() < deadline:
            node = httpx.get(f"https://127.0.0.1:{port}/v1/nodes/local", headers=headers, timeout=5,
                             verify=up.verify()).json()
            state = (node.get("status") or {}).get("state")
            if state == "Ready":
                break
            time.sleep(0.5)
        assert state == "Ready", "".join(up.output)

        # up's Prometheus scrapes the agent's endpoint (mutual TLS): the node's series reach the API.
        def node_series() -> bool:
            r = httpx.get(f"https://127.0.0.1:{port}/v1/nodes/local/metrics", headers=headers, timeout=10,
                          verify=up.verify())
            return r.status_code == 200 and bool(r.json()["series"]["memoryBytes"])
        deadline = time.monotonic() + 60
        while not node_series() and time.monotonic() < deadline:
            time.sleep(1)
        assert node_series(), "".join(up.output)

        pki = data / "pki"
        certs = {f.name: f.read_bytes() for f in pki.iterdir()}
        assert {"ca.crt", "ca.key", "server.crt", "api.crt", "controllers.crt", "node-local.crt"} <= set(certs)
        assert "CA:" in "".join(up.output) and str(pki / "ca.crt") in "".join(up.output)
        children = set(children_of(up.proc.pid))
        assert len(children) >= 5  # etcd, prometheus, api, controllers, agent
        took = _stop(up)
        assert took < 10.0
        assert up.proc.returncode == 0
        assert not [c for c in children if _alive(c)]
        ports = json.loads((data / "ports.json").read_text())
        for p in (port, ports["client"]):
            try:
                httpx.get(f"http://127.0.0.1:{p}/healthz", timeout=1)
                raise AssertionError(f"port {p} still answers")
            except httpx.TransportError:
                pass
    finally:
        up.stop()

    again = UpProcess(tmp_path, nodes=0, port=port)
    try:
        assert again.ready.wait(90), "".join(again.output)
        assert again.token() == token
        assert {f.name: f.read_bytes() for f in pki.iterdir()} == certs, "a restart keeps the CA and certificates"
        r = subprocess.run([*_hostplane(), "get", "plans", "up-test", "-o", "json"], env=env,
                           capture_output=True, text=True)
        deadline = time.monotonic() + 30
        while r.returncode != 0 and time.monotonic() < deadline:
            time.sleep(0.3)
            r = subprocess.run([*_hostplane(), "get", "plans", "up-test", "-o", "json"], env=env,
                               capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
        assert json.loads(r.stdout)["spec"]["price"]["amount"] == "3.00"
        assert _stop(again) < 10.0
    finally:
        again.stop()


def test_an_explicit_libvirt_uri_that_does_not_answer_is_an_error_not_the_test_driver(tmp_path: Path) -> None:
    """`up --libvirt URI` waits (with progress) and then stops with exit 2; it never runs on test:///default."""
    import os

    uri = f"qemu+unix:///system?socket={tmp_path}/no-libvirt.sock"
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
           "HOSTPLANE_LIBVIRT_WAIT": "3"}
    r = subprocess.run([*_hostplane(), "up", "--data-dir", str(tmp_path / "var"), "--port", str(free_port()),
                        "--libvirt", uri], env=env, capture_output=True, text=True, timeout=60)
    out = r.stdout + r.stderr
    assert r.returncode == 2, out
    assert "waiting for libvirt" in out and "not falling back to the test driver" in out
    assert "test:///default" not in out.replace("not falling back to the test driver", "")
    assert not (tmp_path / "var" / "etcd").exists()  # nothing was started


def test_up_with_a_3_member_etcd_survives_killing_a_member(tmp_path: Path) -> None:
    """`up --etcd-members 3` runs three TLS etcd members; SIGKILL of one leaves the API reading and writing."""
    import os
    import signal

    port = free_port()
    up = UpProcess(tmp_path, nodes=0, port=port, extra=("--etcd-members", "3"))
    try:
        assert up.ready.wait(90), "".join(up.output)
        headers = {"Authorization": f"Bearer {up.token()}"}
        members = {pid: cmd for pid, cmd in children_of(up.proc.pid).items() if "etcd " in cmd and "--name m" in cmd}
        assert len(members) == 3, members
        assert all("--peer-client-cert-auth" in cmd and "--client-cert-auth" in cmd for cmd in members.values())
        victim = next(pid for pid, cmd in members.items() if "--name m0 " in cmd + " ")
        os.kill(victim, signal.SIGKILL)
        body = yaml.safe_load(PLAN)
        with httpx.Client(base_url=up.base, headers=headers, timeout=30, verify=up.verify()) as c:
            deadline = time.monotonic() + 30
            while True:  # the API child may still be binding its port
                try:
                    r = c.post("/v1/plans", json=body)
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline
                    time.sleep(0.3)
            assert r.status_code == 201, r.text
            assert c.get("/v1/plans/up-test").json()["spec"]["price"]["amount"] == "3.00"
        assert _stop(up) < 10.0
    finally:
        up.stop()
