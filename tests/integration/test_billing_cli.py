"""`hostplane billing …` against a served API on a real etcd."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from api.auth import ensure_admin_token
from api.cli import main
from api.server import create_app, serving
from reconcile.objects import Store
from specs.kinds import Customer, Subscription
from tests.integration.test_billing_ledger import assert_adds_up, make_customer, make_plan, make_sub

Run = Callable[..., Result]


@pytest.fixture
def hp(store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Run]:
    """Runs `hostplane --server … --token … ARGS` against an API on the test's store."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    token = ensure_admin_token(store, tmp_path)
    make_customer(store)
    make_plan(store)
    make_sub(store, "web")
    with serving(create_app(store)) as url:
        def run(*args: str) -> Result:
            return CliRunner().invoke(main, ["--server", url, "--token", token, *args])
        yield run


def test_pay_twice_with_the_same_reference_credits_once(hp: Run, store: Store) -> None:
    """`billing pay` credits a reference once; the ledger and statement show it."""
    first = hp("billing", "pay", "acme", "500.00", "--ref", "BANK-123")
    assert first.exit_code == 0, first.output
    assert "balance after it 500.00 EUR" in first.output
    assert hp("billing", "pay", "acme", "500.00", "--ref", "BANK-123").output == first.output
    assert assert_adds_up(store) == 50_000
    led = hp("billing", "ledger", "acme")
    assert led.exit_code == 0 and "BANK-123" in led.output and "balance: 500.00 EUR" in led.output
    month = f"{datetime.now(UTC):%Y-%m}"
    st = hp("billing", "statement", "acme", "--month", month, "-o", "json")
    assert json.loads(st.output)["closing"] == "500.00"


@pytest.mark.parametrize("args", [
    ("billing", "pay", "acme", "0", "--ref", "X"),
    ("billing", "pay", "--ref", "X", "acme", "--", "-1.00"),
    ("billing", "pay", "acme", "1.005", "--ref", "X"),
    ("billing", "pay", "acme", "10", "--ref", "X", "--currency", "USD"),
    ("billing", "pay", "ghost", "10", "--ref", "X"),
    ("billing", "statement", "acme", "--month", "november"),
])
def test_bad_input_exits_2_with_a_message_and_changes_nothing(hp: Run, store: Store, args: tuple[str, ...]) -> None:
    """Bad amounts, currencies, customers and months exit 2 with an error line; the ledger is untouched."""
    res = hp(*args)
    assert res.exit_code == 2 and "error:" in res.output
    assert assert_adds_up(store) == 0


def test_suspend_unsuspend_and_hold(hp: Run, store: Store) -> None:
    """suspend/unsuspend set and clear spec.suspend; hold sets suspendHoldUntil on a subscription or customer."""
    assert hp("billing", "suspend", "web", "--reason", "abuse").exit_code == 0
    assert store.get(Subscription, "web").spec.suspend == "abuse"
    assert hp("billing", "unsuspend", "web").exit_code == 0
    assert store.get(Subscription, "web").spec.suspend is None
    assert hp("billing", "hold", "web", "--until", "2026-12-01").exit_code == 0
    assert store.get(Subscription, "web").spec.suspendHoldUntil == datetime(2026, 12, 1, tzinfo=UTC)
    assert hp("billing", "hold", "--customer", "acme", "--until", "2026-12-24T10:00Z").exit_code == 0
    assert store.get(Customer, "acme").spec.suspendHoldUntil == datetime(2026, 12, 24, 10, tzinfo=UTC)
    assert hp("billing", "hold", "web", "--clear").exit_code == 0
    assert store.get(Subscription, "web").spec.suspendHoldUntil is None
    assert hp("billing", "hold", "web").exit_code == 2
    assert hp("billing", "hold", "web", "--until", "someday").exit_code == 2
    assert hp("billing", "suspend", "nosuch").exit_code == 2
