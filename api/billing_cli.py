"""`hostplane billing …`: record payments, read ledgers and statements, suspend, unsuspend and hold.

    hostplane billing pay CUSTOMER 500.00 --ref BANK-123      credit once per reference
    hostplane billing ledger CUSTOMER                          balance and live entries
    hostplane billing statement CUSTOMER --month 2026-11       one month, closed or running
    hostplane billing suspend SUBSCRIPTION --reason abuse      an operator's suspension (lifted only by unsuspend)
    hostplane billing unsuspend SUBSCRIPTION
    hostplane billing hold SUBSCRIPTION --until 2026-12-01     do not suspend for non-payment until then
    hostplane billing webhook-secret PROVIDER                  set a provider's webhook secret (printed once)

Everything goes through the API. Errors exit with 2 and one line on stderr.
This module must never talk to etcd or compute money itself.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import click

from api.cli_common import ClientErrorsGroup, SubcommandError, client_for

BillingCliError = SubcommandError
_Group = ClientErrorsGroup
_client = client_for


def _print(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def _table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


_output = click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)


@click.group("billing", cls=_Group)
def billing() -> None:
    """Payments, ledgers, statements and operator suspensions."""


@billing.command("pay")
@click.argument("customer")
@click.argument("amount")
@click.option("--ref", "reference", required=True, help="the payment's reference (bank transaction id); "
              "the same reference is credited once")
@click.option("--currency", help="default: the customer's currency (must match it)")
@click.option("--refund", is_flag=True, help="record a refund (money returned) instead of a payment")
@click.pass_context
def pay(ctx: click.Context, customer: str, amount: str, reference: str, currency: str | None, refund: bool) -> None:
    """Record a payment received by other means (the `manual` provider)."""
    body: dict[str, Any] = {"amount": amount, "reference": reference, "type": "refund" if refund else "payment"}
    if currency:
        body["currency"] = currency
    res = _client(ctx).request("POST", f"/v1/customers/{customer}/payments", json=body).json()
    click.echo(f"{res['type']} {reference}: {res['amount']} {res['currency']} for {customer} "
               f"(entry {res['seq']}); balance after it {res['balance']} {res['currency']}")


@billing.command("ledger")
@click.argument("customer")
@_output
@click.pass_context
def ledger_cmd(ctx: click.Context, customer: str, output: str) -> None:
    """A customer's balance and the ledger entries since the last closed statement."""
    data = _client(ctx).request("GET", f"/v1/customers/{customer}/ledger").json()
    if output == "json":
        _print(data)
        return
    rows = [[str(e["seq"]), e["time"][:19].replace("T", " "), e["type"], e["amount"],
             e.get("subscription") or e.get("reference") or "", e.get("description", "")] for e in data["entries"]]
    _table(rows, ["SEQ", "TIME (UTC)", "TYPE", "AMOUNT", "SUBSCRIPTION/REF", "DESCRIPTION"])
    closed = ", ".join(data["statements"]) or "none"
    click.echo(f"balance: {data['balance']} {data['currency']}   closed statements: {closed}")


@billing.command("statement")
@click.argument("customer")
@click.option("--month", required=True, help="YYYY-MM")
@_output
@click.pass_context
def statement_cmd(ctx: click.Context, customer: str, month: str, output: str) -> None:
    """One month's statement: opening and closing balance, payments, charges per subscription."""
    data = _client(ctx).request("GET", f"/v1/customers/{customer}/statements/{month}").json()
    if output == "json":
        _print(data)
        return
    cur = data["currency"]
    click.echo(f"statement {customer} {month} ({'closed' if data['final'] else 'running'}), {cur}")
    click.echo(f"opening balance: {data['opening']}")
    rows = [[line["type"], line.get("subscription") or line.get("reference") or "",
             str(line.get("hours", "")) if line["type"] == "charge" else "", line["amount"]] for line in data["lines"]]
    _table(rows, ["TYPE", "SUBSCRIPTION/REF", "HOURS", "AMOUNT"])
    click.echo(f"closing balance: {data['closing']}")


@billing.command("suspend")
@click.argument("subscription")
@click.option("--reason", type=click.Choice(["abuse", "admin", "customer"]), default="admin", show_default=True)
@click.pass_context
def suspend(ctx: click.Context, subscription: str, reason: str) -> None:
    """Suspend a subscription's servers now; only `unsuspend` lifts it."""
    _client(ctx).patch("subscription", subscription, {"spec": {"suspend": reason}})
    click.echo(f"subscription/{subscription} suspended ({reason})")


@billing.command("unsuspend")
@click.argument("subscription")
@click.pass_context
def unsuspend(ctx: click.Context, subscription: str) -> None:
    """Lift an operator's suspension (a non-payment suspension lifts by itself on payment)."""
    _client(ctx).patch("subscription", subscription, {"spec": {"suspend": None}})
    click.echo(f"subscription/{subscription} unsuspended")


def _parse_until(value: str) -> str:
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BillingCliError(f"--until: {value!r} is not an ISO 8601 date or time (like 2026-12-01)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).isoformat()


@billing.command("hold")
@click.argument("subscription", required=False)
@click.option("--customer", help="hold every subscription of this customer instead")
@click.option("--until", help="ISO 8601 date or time (UTC unless it says otherwise)")
@click.option("--clear", is_flag=True, help="remove the hold")
@click.pass_context
def hold(ctx: click.Context, subscription: str | None, customer: str | None, until: str | None, clear: bool) -> None:
    """Do not suspend for non-payment until a date (suspendHoldUntil)."""
    if (subscription is None) == (customer is None):
        raise BillingCliError("name a SUBSCRIPTION or --customer, not both")
    if clear == (until is not None):
        raise BillingCliError("give --until DATE or --clear")
    value = None if clear else _parse_until(str(until))
    kind, name = ("customer", customer) if customer else ("subscription", subscription)
    _client(ctx).patch(kind, str(name), {"spec": {"suspendHoldUntil": value}})
    click.echo(f"{kind}/{name} " + ("hold cleared" if clear else f"held until {value}"))


@billing.command("webhook-secret")
@click.argument("provider")
@click.pass_context
def webhook_secret(ctx: click.Context, provider: str) -> None:
    """Set (or rotate) a payment provider's webhook secret and print it once (`external` for external billing)."""
    res = _client(ctx).request("PUT", f"/v1/billing/webhook-secrets/{provider}").json()
    click.echo(res["secret"])
