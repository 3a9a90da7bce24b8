"""`hostplane node orphans NODE [--purge]` against a served API: lists what the node reports, requests purges."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from api.cli import main
from reconcile import keys
from reconcile.objects import Store
from specs.domain import Tombstone
from specs.kinds import Node, NodeStatus, OrphanDomain
from tests.helpers.access_env import Env, served

Run = Callable[..., Result]


@pytest.fixture
def env(store: Store, tmp_path: Path) -> Iterator[Env]:
    with served(store, tmp_path) as e:
        yield e


@pytest.fixture
def hp(env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Run:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))

    def run(*args: str, token: str | None = None) -> Result:
        return CliRunner().invoke(main, ["--server", env.url, "--token", token or env.tokens["admin"], *args])
    return run


def test_orphans_are_listed_and_purged_by_request_staff_only(store: Store, env: Env, hp: Run) -> None:
    """The table shows the node's orphans; --purge --uid writes one request; customers and gitops are refused."""
    assert "reports no orphan domains" in hp("node", "orphans", "n1").output
    store.put_status(Node, "n1", NodeStatus(orphans=[OrphanDomain(domain="hp-aa", vps="old-1", uid="aa"),
                                                     OrphanDomain(domain="hp-bb", vps="old-2", uid="bb")]))
    listed = hp("node", "orphans", "n1")
    assert listed.exit_code == 0, listed.output
    assert "hp-aa" in listed.output and "old-2" in listed.output
    for role in ("customer", "gitops"):
        refused = hp("node", "orphans", "n1", "--purge", token=env.tokens[role])
        assert refused.exit_code == 2, refused.output
    assert store.kv_range(keys.purge_prefix("n1", store.root))[0] == []
    bad = hp("node", "orphans", "n1", "--purge", "--uid", "zz")
    assert bad.exit_code == 2 and "uids" in bad.output
    done = hp("node", "orphans", "n1", "--purge", "--uid", "bb")
    assert done.exit_code == 0 and "orphan bb on n1: purge requested" in done.output, done.output
    kvs, _ = store.kv_range(keys.purge_prefix("n1", store.root))
    assert [Tombstone.model_validate_json(kv.value).vps for kv in kvs] == ["old-2"]
