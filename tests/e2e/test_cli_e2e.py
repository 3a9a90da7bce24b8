"""The `hostplane` CLI end to end against a real API on a real etcd: the GitOps loop and bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner, Result

from api.apply import SOURCE_LABEL
from api.auth import ADMIN_TOKEN_FILE, ensure_admin_token
from api.cli import main
from api.client import Client
from api.config import write_cli_config
from api.server import create_app, serving
from reconcile.etcd_server import EtcdServer, free_port
from reconcile.objects import Store

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


class Cli:
    """Runs the CLI in-process against one server, with HOME pointing at a temp dir."""

    def __init__(self, url: str, token: str, home: Path) -> None:
        self.url, self.token, self.home = url, token, home
        self.runner = CliRunner()

    def __call__(self, *args: str, auth: bool = True) -> Result:
        prefix = ["--server", self.url, "--token", self.token] if auth else []
        env = {"HOME": str(self.home), "XDG_CONFIG_HOME": "", "HOSTPLANE_SERVER": "", "HOSTPLANE_TOKEN": ""}
        return self.runner.invoke(main, [*prefix, *args], env=env, catch_exceptions=False)

    def client(self) -> Client:
        return Client(self.url, self.token)


@pytest.fixture
def cli(store: Store, tmp_path: Path) -> Iterator[Cli]:
    """A CLI wired to an API served on loopback over the test's private key root."""
    token = ensure_admin_token(store, tmp_path / "data")
    with serving(create_app(store)) as url:
        yield Cli(url, token, tmp_path / "home")


@pytest.fixture
def examples(tmp_path: Path) -> Path:
    """A private copy of examples/, named like the original so its source label is `examples`."""
    dst = tmp_path / "copy" / "examples"
    shutil.copytree(EXAMPLES, dst)
    return dst


def lines(result: Result) -> list[str]:
    return result.output.strip().splitlines()


def test_apply_every_example_then_apply_again_changes_nothing(cli: Cli, examples: Path) -> None:
    """Every file in examples/ applies cleanly; a second apply says unchanged for each object."""
    first = cli("apply", "-f", str(examples))
    assert first.exit_code == 0, first.output
    out = lines(first)
    assert out and all(line.endswith(" created") for line in out), out
    assert "plan/s1 created" in out and "vps/acme-web-1 created" in out and "ippool/eu-central-v4 created" in out
    # Referenced kinds go first.
    assert out.index("plan/s2 created") < out.index("subscription/acme-web created") < out.index(
        "vps/acme-web-1 created")
    with cli.client() as c:
        before = {(o.KIND, o.name): o.metadata.resourceVersion for k in ("Plan", "VPS") for o in c.list(k)[0]}
        assert c.get("Plan", "s1").metadata.labels[SOURCE_LABEL] == "examples"
    second = cli("apply", "-f", str(examples))
    assert second.exit_code == 0
    assert len(lines(second)) == len(out) and all(line.endswith(" unchanged") for line in lines(second))
    with cli.client() as c:
        after = {(o.KIND, o.name): o.metadata.resourceVersion for k in ("Plan", "VPS") for o in c.list(k)[0]}
    assert after == before


def test_gitops_loop_diff_apply_prune(cli: Cli, examples: Path) -> None:
    """diff is clean after apply (exit 0), shows an edit (exit 1), apply converges, prune removes what left git."""
    gitops = examples / "gitops"
    assert cli("apply", "-f", str(gitops)).exit_code == 0
    clean = cli("diff", "-f", str(gitops))
    assert clean.exit_code == 0 and clean.output == ""

    plans = gitops / "plans.yaml"
    plans.write_text(plans.read_text().replace('amount: "29.90"', 'amount: "31.90"'))
    drift = cli("diff", "-f", str(gitops))
    assert drift.exit_code == 1
    assert "--- live/plan/ded-2" in drift.output and "+++ file/plan/ded-2" in drift.output
    assert "-    amount: '29.90'" in drift.output and "+    amount: '31.90'" in drift.output

    applied = cli("apply", "-f", str(gitops))
    assert "plan/ded-2 configured" in lines(applied) and "plan/ded-4 unchanged" in lines(applied)
    assert cli("diff", "-f", str(gitops)).exit_code == 0
    with cli.client() as c:
        assert c.get("Plan", "ded-2").spec.price.amount == "31.90"  # type: ignore[attr-defined]

    # A plan made by hand (no source label) and one from another source must survive a prune.
    assert cli("apply", "-f", str(examples / "plans.yaml")).exit_code == 0
    text = (examples / "customer.yaml").read_text()
    with cli.client() as c:
        from specs import load_documents

        c.create(load_documents(text)[0].obj)
    tariffs = gitops / "tariffs-usd.yaml"
    tariffs.write_text(tariffs.read_text().split("\n---\n")[0] + "\n")  # keep us-s1 only
    pruning = cli("diff", "-f", str(gitops), "--prune")
    assert pruning.exit_code == 1 and "--- live/plan/us-s3" in pruning.output
    dry = cli("apply", "-f", str(gitops), "--prune", "--dry-run")
    assert "plan/us-s2 pruned (dry run)" in lines(dry)
    with cli.client() as c:
        assert c.get_or_none("Plan", "us-s2") is not None
    pruned = cli("apply", "-f", str(gitops), "--prune", "-l", "market=us")
    assert pruned.exit_code == 0, pruned.output
    assert {"plan/us-s2 pruned", "plan/us-s3 pruned"} <= set(lines(pruned))
    with cli.client() as c:
        names = {o.name for o in c.list("Plan")[0]}
        assert c.get_or_none("Customer", "acme") is not None
    assert {"us-s1", "ded-2", "ded-4", "ded-8", "s1", "s5", "nano"} <= names
    assert not {"us-s2", "us-s3"} & names
    assert cli("diff", "-f", str(gitops), "--prune").exit_code == 0


def test_invalid_file_reports_file_line_path_and_changes_nothing(cli: Cli, tmp_path: Path) -> None:
    """One bad document among good ones: every problem as file:line: path: message, exit 2, nothing written."""
    d = tmp_path / "bad"
    d.mkdir()
    shutil.copy(EXAMPLES / "plans.yaml", d / "plans.yaml")
    (d / "vps.yaml").write_text(
        "apiVersion: hostplane.io/v1\nkind: VPS\nmetadata:\n  name: web\nspec:\n"
        "  subscription: acme-web\n  image: debian-12\n  hostname: Not A Hostname\n  cpus: 2\n")
    (d / "broken.yaml").write_text("kind: Plan\nmetadata: {name: x\n")
    result = cli("apply", "-f", str(d))
    assert result.exit_code == 2
    assert f"{d / 'vps.yaml'}:8: spec.hostname: must be an RFC 1123 hostname" in result.output
    assert f"{d / 'vps.yaml'}:9: spec.cpus: unknown field" in result.output
    assert f"{d / 'broken.yaml'}:" in result.output and "invalid YAML" in result.output
    assert "nothing was changed" in result.output
    with cli.client() as c:
        assert c.list("Plan")[0] == [] and c.list("VPS")[0] == []
    assert cli("diff", "-f", str(d)).exit_code == 2


def test_get_describe_delete(cli: Cli, examples: Path) -> None:
    """get prints tables, YAML and JSON; describe shows status and conditions; delete removes."""
    cli("apply", "-f", str(examples / "plans.yaml"), "-f", str(examples / "vps.yaml"))
    table = cli("get", "plans")
    assert table.exit_code == 0
    header, *rows = lines(table)
    assert header.split() == ["NAME", "VCPUS", "MEMORY", "DISK", "PRICE", "AGE"]
    assert any(r.split()[:5] == ["s1", "1", "1Gi", "25Gi", "4.49"] for r in rows)
    assert "TRAFFIC" in cli("get", "plan", "-o", "wide").output
    assert len(lines(cli("get", "tariffs", "-l", "line=standard,!market"))) == 7
    assert "name: s3" in cli("get", "plan", "s3", "-o", "yaml").output
    assert '"memoryMiB": 4096' in cli("get", "plan", "s3", "-o", "json").output
    described = cli("describe", "vps", "acme-web-1")
    assert described.exit_code == 0
    assert "hostname: web1.acme.example.com" in described.output
    assert "Conditions:" in described.output and "Events:" in described.output
    missing = cli("get", "plan", "nope")
    assert missing.exit_code == 2 and "not found" in missing.output
    assert cli("get", "widgets").exit_code == 2
    assert lines(cli("delete", "plan", "s1")) == ["plan/s1 deleted"]
    gone = cli("delete", "-f", str(examples / "plans.yaml"))
    assert "plan/s1 not found" in lines(gone) and "plan/s2 deleted" in lines(gone)
    assert cli("delete", "plan", "s1").exit_code == 2


def test_describe_shows_recorded_events_and_delete_can_force_orphan(cli: Cli, store: Store) -> None:
    """describe lists the object's events from <root>/events/; delete --force-orphan annotates, then deletes."""
    body = (EXAMPLES / "plans.yaml").read_text().split("\n---\n")[0]
    body = body.replace("  labels: {line: standard}", "  labels: {line: standard}\n  finalizers: [hostplane.io/x]")
    with cli.client() as c:
        from specs import load_documents

        c.create(load_documents(body)[0].obj)
    event = {"type": "Warning", "reason": "Tested", "message": "something happened", "time": "2026-01-01T00:00:00Z",
             "count": 2}
    store.kv_put(f"{store.root}/events/Plan/s1/00000000000000001", json.dumps(event).encode())
    store.kv_put(f"{store.root}/events/Plan/s10/00000000000000001", json.dumps(event | {"reason": "Other"}).encode())
    described = cli("describe", "plan", "s1")
    assert "Tested" in described.output and "something happened" in described.output
    assert "Other" not in described.output
    marked = cli("delete", "plan", "s1", "--force-orphan")
    assert lines(marked) == ["plan/s1 marked for deletion (finalizers: hostplane.io/x)"]
    with cli.client() as c:
        obj = c.get("Plan", "s1")
    assert obj.metadata.annotations == {"hostplane.io/force-orphan": "true"} and obj.metadata.deletionTimestamp


def test_schema_needs_no_server(cli: Cli) -> None:
    """schema prints the JSON Schema of a kind by any of its names, offline."""
    result = cli("schema", "vps", auth=False)
    assert result.exit_code == 0 and '"hostname"' in result.output


def test_server_and_token_from_config_file_or_environment(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without flags the CLI uses $HOSTPLANE_SERVER/$HOSTPLANE_TOKEN, else the config file under HOME."""
    no_token = cli("get", "plans", auth=False)
    assert no_token.exit_code == 2 and "no API token" in no_token.output
    with monkeypatch.context() as m:
        m.setenv("HOME", str(cli.home))
        m.delenv("XDG_CONFIG_HOME", raising=False)
        path = write_cli_config(cli.url, cli.token)
    assert path == cli.home / ".config" / "hostplane" / "config.yaml"
    assert (path.stat().st_mode & 0o777) == 0o600
    assert cli("get", "plans", auth=False).exit_code == 0
    env = {"HOME": str(tmp_home := cli.home / "nowhere"), "HOSTPLANE_SERVER": cli.url, "HOSTPLANE_TOKEN": cli.token}
    assert not tmp_home.exists()
    assert cli.runner.invoke(main, ["get", "plans"], env=env).exit_code == 0
    env["HOSTPLANE_TOKEN"] = "hpt_00_wrong"
    denied = cli.runner.invoke(main, ["get", "plans"], env=env)
    assert denied.exit_code == 2 and "HTTP 401" in denied.output


def test_unreachable_server_is_a_clear_error(tmp_path: Path) -> None:
    """A server nobody listens on gives exit 2 and says it cannot reach the API."""
    url = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(main, ["--server", url, "--token", "hpt_00_x", "get", "plans"],
                                env={"HOME": str(tmp_path)})
    assert result.exit_code == 2 and f"cannot reach the API at {url}" in result.output


def hostplane(*args: str) -> list[str]:
    return [sys.executable, "-c", "from api.cli import main; main()", *args]


def test_get_watch_prints_changes(cli: Cli, examples: Path, tmp_path: Path) -> None:
    """`get plans -w` lists, then prints a row for each later change."""
    cli("apply", "-f", str(examples / "plans.yaml"))
    env = {**os.environ, "HOME": str(tmp_path), "HOSTPLANE_SERVER": cli.url, "HOSTPLANE_TOKEN": cli.token}
    with subprocess.Popen(hostplane("get", "plans", "-w", "--max-events", "2"), env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        out, err = watch_and_change(proc, cli, examples)
    assert proc.returncode == 0, err
    assert out.splitlines()[0].startswith("nano") and out.splitlines()[0].endswith("(deleted)")
    assert out.splitlines()[1].split()[:2] == ["s5", "6"]


def watch_and_change(proc: subprocess.Popen[str], cli: Cli, examples: Path) -> tuple[str, str]:
    """Wait for the listing, make two changes, and collect what the watcher printed after."""
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("NAME")
        for _ in range(6):
            proc.stdout.readline()
        cli("delete", "plan", "nano")
        s1 = examples / "plans.yaml"
        s1.write_text(s1.read_text().replace("vcpus: 8", "vcpus: 6"))
        cli("apply", "-f", str(s1))
        return proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_api_command_serves_and_stops_on_sigterm(etcd: EtcdServer, tmp_path: Path) -> None:
    """`hostplane api` mints the admin token into --data-dir, serves with it, and exits 0 on SIGTERM."""
    port = free_port()
    data = tmp_path / "var"
    log = tmp_path / "api.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            hostplane("api", *etcd.args("api"), "--host", "127.0.0.1", "--port", str(port),
                      "--data-dir", str(data)),
            stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        token = (data / ADMIN_TOKEN_FILE).read_text().strip()
        assert (os.stat(data / ADMIN_TOKEN_FILE).st_mode & 0o777) == 0o600
        assert httpx.get(url + "/v1/plans", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        # An open watch stream must not hold up shutdown.
        with httpx.stream("GET", url + "/v1/watch", headers={"Authorization": f"Bearer {token}"}) as w:
            next(w.iter_lines())
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=10)
        assert code == 0, log.read_text()
        assert time.monotonic() - started < 5
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
