"""No acknowledged write is lost when etcd or the API process is killed mid-apply."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from api.auth import ADMIN_TOKEN_FILE
from reconcile.etcd_server import EtcdServer, free_port
from specs.kinds import Plan


def _api(etcd: EtcdServer, port: int, data: Path, log: Path) -> subprocess.Popen[bytes]:
    script = Path(sys.executable).parent / "hostplane"
    with log.open("ab") as out:
        return subprocess.Popen([str(script), "api", *etcd.args("api"), "--host", "127.0.0.1",
                                 "--port", str(port), "--data-dir", str(data)], stdout=out, stderr=subprocess.STDOUT)


def _wait_healthy(url: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise AssertionError("API did not come up")


def test_killing_etcd_and_the_api_mid_apply_loses_no_acknowledged_write(etcd: EtcdServer, tmp_path: Path) -> None:
    """A writer creating plans through SIGKILLs of etcd and of the API: every 201 it got is stored."""
    port, data = free_port(), tmp_path / "var"
    url = f"http://127.0.0.1:{port}"
    api = _api(etcd, port, data, tmp_path / "api.log")
    acknowledged: list[str] = []
    stop = threading.Event()
    try:
        _wait_healthy(url)
        token = (data / ADMIN_TOKEN_FILE).read_text().strip()

        def writer() -> None:
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=5) as c:
                n = 0
                while not stop.is_set():
                    name = f"p{n}"
                    body = {"kind": "Plan", "metadata": {"name": name},
                            "spec": {"vcpus": 1, "memoryMiB": 512, "diskGiB": 10,
                                     "price": {"amount": "1.00", "currency": "EUR"}}}
                    try:
                        r = c.post("/v1/plans", json=body)
                    except httpx.HTTPError:
                        time.sleep(0.05)
                        continue  # not acknowledged: the same name is retried
                    if r.status_code in (201, 409):  # 409: an earlier, unacknowledged try landed
                        if r.status_code == 201:
                            acknowledged.append(name)
                        n += 1
                    else:
                        time.sleep(0.05)

        t = threading.Thread(target=writer)
        t.start()
        time.sleep(1.0)
        etcd.kill()
        time.sleep(0.5)
        etcd.start()
        time.sleep(1.0)
        api.send_signal(signal.SIGKILL)
        api.wait(5)
        api = _api(etcd, port, data, tmp_path / "api.log")
        _wait_healthy(url)
        time.sleep(1.0)
        stop.set()
        t.join(15)
        assert len(acknowledged) > 20
        with etcd.store() as store:
            stored = {p.name for p in store.list(Plan).items}
        assert set(acknowledged) <= stored
    finally:
        stop.set()
        api.kill()
        api.wait(5)
