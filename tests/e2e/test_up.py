"""`hostplane up` end to end: real etcd, API, controllers and agent processes; stop; restart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import yaml

from reconcile.etcd_server import free_port

ROOT = Path(__file__).resolve().parents[2]
PLAN = """
apiVersion: hostplane.io/v1
kind: Plan
metadata: {name: up-test}
spec: {vcpus: 1, memoryMiB: 512, diskGiB: 10, price: {amount: "3.00", currency: EUR}}
"""


def _hostplane() -> list[str]:
    script = Path(sys.executable).parent / "hostplane"
    return [str(script)] if script.exists() else [sys.executable, "-m", "api.cli"]


def _children(pid: int) -> set[int]:
    """Every descendant of `pid`, read from /proc."""
    parents: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            parents[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    out: set[int] = set()
    frontier = {pid}
    while frontier:
        nxt = {c for c, p in parents.items() if p in frontier}
        out |= nxt
        frontier = nxt
    return out


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class Up:
    def __init__(self, data_dir: Path, port: int, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [*_hostplane(), "up", "--data-dir", str(data_dir), "--port", str(port), "--libvirt", "test:///default"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
        self.output: list[str] = []
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)
            if "Press Ctrl-C" in line:
                self.ready.set()

    def token(self) -> str:
        for line in self.output:
            if "admin token:" in line:
                return line.split("admin token:")[1].strip()
        raise AssertionError("no token printed:\n" + "".join(self.output))

    def stop(self) -> float:
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(15)
        return time.monotonic() - t0

    def kill(self) -> None:
        if self.proc.poll() is None:
            for c in _children(self.proc.pid):
                os.kill(c, signal.SIGKILL)
            self.proc.kill()
            self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def test_up_serves_writes_config_stops_within_10s_and_restarts_without_loss(tmp_path: Path) -> None:
    """up prints a token, writes the CLI config, runs every component; SIGTERM stops all; a restart keeps data."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOSTPLANE_")}
    env |= {"HOME": str(tmp_path / "home"), "XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    data, port = tmp_path / "var", free_port()
    up = Up(data, port, env)
    try:
        assert up.ready.wait(90), "".join(up.output)
        token = up.token()
        cfg = yaml.safe_load((tmp_path / "cfg" / "hostplane" / "config.yaml").read_text())
        assert cfg == {"server": f"http://127.0.0.1:{port}", "token": token}

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
            node = httpx.get(f"http://127.0.0.1:{port}/v1/nodes/local", headers=headers, timeout=5).json()
            state = (node.get("status") or {}).get("state")
            if state == "Ready":
                break
            time.sleep(0.5)
        assert state == "Ready", "".join(up.output)

        children = _children(up.proc.pid)
        assert len(children) >= 4  # etcd, api, controllers, agent
        took = up.stop()
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
        up.kill()

    again = Up(data, port, env)
    try:
        assert again.ready.wait(90), "".join(again.output)
        assert again.token() == token
        r = subprocess.run([*_hostplane(), "get", "plans", "up-test", "-o", "json"], env=env,
                           capture_output=True, text=True)
        deadline = time.monotonic() + 30
        while r.returncode != 0 and time.monotonic() < deadline:
            time.sleep(0.3)
            r = subprocess.run([*_hostplane(), "get", "plans", "up-test", "-o", "json"], env=env,
                               capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
        assert json.loads(r.stdout)["spec"]["price"]["amount"] == "3.00"
        assert again.stop() < 10.0
    finally:
        again.kill()
