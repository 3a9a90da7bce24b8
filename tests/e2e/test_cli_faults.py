"""Faults under the CLI: a killed API or a killed etcd loses no acknowledged write, and apply recovers."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner, Result

from api.auth import ADMIN_TOKEN_FILE, ensure_admin_token
from api.cli import main
from api.server import create_app, serving
from reconcile.etcd_server import EtcdServer, free_port

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_cli(url: str, token: str, home: Path, *args: str) -> Result:
    env = {"HOME": str(home), "XDG_CONFIG_HOME": "", "HOSTPLANE_SERVER": "", "HOSTPLANE_TOKEN": ""}
    return CliRunner().invoke(main, ["--server", url, "--token", token, *args], env=env, catch_exceptions=False)


@pytest.fixture
def api_process(etcd: EtcdServer, tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Room for `hostplane api` processes; any still running at the end are killed."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def start_api(etcd: EtcdServer, data: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from api.cli import main; main()", "api", *etcd.args("api"),
             "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data)],
            stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("the API did not start: " + log.read_text()[-2000:])


def test_killed_api_loses_no_acknowledged_write(etcd: EtcdServer, tmp_path: Path,
                                                api_process: list[subprocess.Popen[bytes]]) -> None:
    """After apply, SIGKILL the API; a new API on the same etcd and data dir shows no drift and keeps the token."""
    data = tmp_path / "var"
    proc, url = start_api(etcd, data, tmp_path / "api.log")
    api_process.append(proc)
    token = (data / ADMIN_TOKEN_FILE).read_text().strip()
    assert run_cli(url, token, tmp_path, "apply", "-f", str(EXAMPLES)).exit_code == 0
    proc.send_signal(signal.SIGKILL)
    proc.wait(5)
    again, url2 = start_api(etcd, data, tmp_path / "api.log")
    api_process.append(again)
    assert (data / ADMIN_TOKEN_FILE).read_text().strip() == token
    diff = run_cli(url2, token, tmp_path, "diff", "-f", str(EXAMPLES))
    assert diff.exit_code == 0, diff.output


def test_killed_etcd_fails_apply_clearly_and_loses_nothing(etcd: EtcdServer, tmp_path: Path) -> None:
    """With etcd killed, apply exits 2 saying the store is unreachable; after a restart nothing acknowledged is lost."""
    store = etcd.store(timeout=1.0, retry_seconds=1.0)
    token = ensure_admin_token(store, tmp_path / "var")
    try:
        with serving(create_app(store, token_cache_seconds=60)) as url:
            plans = str(EXAMPLES / "plans.yaml")
            assert run_cli(url, token, tmp_path, "apply", "-f", plans, "--source", "examples").exit_code == 0
            etcd.kill()
            failed = run_cli(url, token, tmp_path, "apply", "-f", str(EXAMPLES))
            assert failed.exit_code == 2
            assert "unreachable" in failed.output and "HTTP 503" in failed.output
            etcd.start()
            assert run_cli(url, token, tmp_path, "diff", "-f", plans, "--source", "examples").exit_code == 0
            applied = run_cli(url, token, tmp_path, "apply", "-f", str(EXAMPLES))
            assert applied.exit_code == 0
            out = applied.output.splitlines()
            assert "vps/acme-web-1 created" in out and "plan/s1 unchanged" in out
    finally:
        store.close()
