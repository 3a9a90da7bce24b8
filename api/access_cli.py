"""`hostplane token|customer|vps|order|audit`: principals, server actions, orders and the audit log.

    hostplane token create --role customer --customer acme [--expires 2027-01-01T00:00:00Z] [--name ci]
    hostplane token list | hostplane token revoke ID
    hostplane customer set-password NAME            (reads the password from the terminal or stdin)
    hostplane vps start|stop|reboot NAME | rebuild NAME [--image I] | resize NAME --plan P
    hostplane order --customer acme --plan s1 --image debian-12 --hostname web.example.com [--ssh-key K]
    hostplane audit [--since ISO] [--role R] [--customer C] [--limit N] [-o json]

Everything goes through the API; errors exit with 2 and one line on stderr. A minted token
is printed once and never again. This module must never talk to etcd.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from api.cli_common import ClientErrorsGroup, SubcommandError, client_for
from api.client import ClientError

AccessCliError = SubcommandError
_Group = ClientErrorsGroup
_client = client_for


def _table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


_output = click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)

# ------------------------------------------------------------------ tokens


@click.group("token", cls=_Group)
def token() -> None:
    """Mint, list and revoke API tokens (admin)."""


@token.command("create")
@click.option("--role", required=True, type=click.Choice(["admin", "operator", "customer", "gitops",
                                                          "billing-webhook"]))
@click.option("--customer", help="the customer a `customer` token acts for")
@click.option("--expires", help="ISO 8601 time with zone after which the token stops working")
@click.option("--name", help="a note saying what the token is for")
@click.pass_context
def token_create(ctx: click.Context, role: str, customer: str | None, expires: str | None,
                 name: str | None) -> None:
    """Mint a token; it is printed once (stdout), its id and role on stderr."""
    body = {k: v for k, v in {"role": role, "customer": customer, "expires": expires, "name": name}.items()
            if v is not None}
    out = _client(ctx).request("POST", "/v1/tokens", json=body).json()
    click.echo(f"token {out['id']} ({out['role']}{', customer ' + out['customer'] if out.get('customer') else ''}) "
               "created; it is shown only now:", err=True)
    click.echo(out["token"])


@token.command("list")
@_output
@click.pass_context
def token_list(ctx: click.Context, output: str) -> None:
    """Every token's id, role, customer, expiry and name (never secrets)."""
    items = _client(ctx).request("GET", "/v1/tokens").json()["items"]
    if output == "json":
        click.echo(json.dumps(items, indent=2, sort_keys=True))
        return
    _table([[t.get("id", ""), t.get("role", ""), t.get("customer") or "-", t.get("expires") or "never",
             t.get("created", "")[:19], t.get("name") or ""] for t in items],
           ["ID", "ROLE", "CUSTOMER", "EXPIRES", "CREATED", "NAME"])


@token.command("revoke")
@click.argument("token_id")
@click.pass_context
def token_revoke(ctx: click.Context, token_id: str) -> None:
    """Revoke a token by id: it stops working at once."""
    _client(ctx).request("DELETE", f"/v1/tokens/{token_id}")
    click.echo(f"token {token_id} revoked")


# ------------------------------------------------------------------ customers


@click.group("customer", cls=_Group)
def customer() -> None:
    """Customer accounts: panel passwords."""


@customer.command("set-password")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="read the password from stdin instead of prompting")
@click.pass_context
def set_password(ctx: click.Context, name: str, password_stdin: bool) -> None:
    """Set the panel password of customer NAME (at least 10 characters)."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("new password", hide_input=True, confirmation_prompt=True)
    _client(ctx).request("PUT", f"/v1/customers/{name}/password", json={"password": password})
    click.echo(f"password of customer {name} set")


# ------------------------------------------------------------------ server actions


@click.group("vps", cls=_Group)
def vps() -> None:
    """Start, stop, reboot, rebuild or resize a server."""


def _act(ctx: click.Context, name: str, action: str, body: dict[str, Any] | None = None) -> None:
    out = _client(ctx).request("POST", f"/v1/vps/{name}/actions/{action}", json=body).json()
    click.echo(f"vps/{name} {action} requested (resourceVersion {out.get('resourceVersion')})")


for _action, _help in (("start", "Power the server on."), ("stop", "Power the server off."),
                       ("reboot", "Restart the server.")):
    def _make(action: str, help_text: str) -> None:
        @vps.command(action, help=help_text)
        @click.argument("name")
        @click.pass_context
        def _cmd(ctx: click.Context, name: str) -> None:
            _act(ctx, name, action)

    _make(_action, _help)


@vps.command("rebuild")
@click.argument("name")
@click.option("--image", help="rebuild from this image instead of the current one")
@click.pass_context
def rebuild(ctx: click.Context, name: str, image: str | None) -> None:
    """Reinstall the server from its image (the disk is wiped)."""
    _act(ctx, name, "rebuild", {"image": image} if image else None)


@vps.command("resize")
@click.argument("name")
@click.option("--plan", required=True, help="the new plan; its disk may not be smaller")
@click.pass_context
def resize(ctx: click.Context, name: str, plan: str) -> None:
    """Move the server's subscription to another plan."""
    _act(ctx, name, "resize", {"plan": plan})


# ------------------------------------------------------------------ orders


@click.command("order")
@click.option("--customer", help="the customer (implied for a customer token)")
@click.option("--plan", required=True)
@click.option("--image", required=True)
@click.option("--hostname", required=True)
@click.option("--ssh-key", "ssh_keys", multiple=True, help="an SSH public key line; repeatable")
@click.option("--name", help="name of the Subscription and VPS (default: generated)")
@click.pass_context
def order(ctx: click.Context, customer: str | None, plan: str, image: str, hostname: str,
          ssh_keys: tuple[str, ...], name: str | None) -> None:
    """Order a server: a Subscription and its VPS in one step."""
    body: dict[str, Any] = {"plan": plan, "image": image, "hostname": hostname}
    if customer:
        body["customer"] = customer
    if ssh_keys:
        body["sshKeys"] = list(ssh_keys)
    if name:
        body["name"] = name
    try:
        out = _client(ctx).request("POST", "/v1/orders", json=body).json()
    except ClientError as exc:
        raise AccessCliError(str(exc)) from None
    first = out["firstPeriod"]
    click.echo(f"ordered vps/{out['vps']['metadata']['name']} (subscription {out['subscription']['metadata']['name']}, "
               f"first period {first['amount']} {first['currency']})")


# ------------------------------------------------------------------ audit


@click.command("audit")
@click.option("--since", help="ISO time; records at or after it")
@click.option("--role", help="only this actor role")
@click.option("--customer", help="only this actor customer")
@click.option("--limit", type=int, default=100, show_default=True, help="the newest N records")
@_output
@click.pass_context
def audit(ctx: click.Context, since: str | None, role: str | None, customer: str | None, limit: int,
          output: str) -> None:
    """Who changed what, when and from where (oldest first)."""
    params: dict[str, Any] = {"limit": limit}
    for key, value in (("since", since), ("role", role), ("customer", customer)):
        if value:
            params[key] = value
    try:
        items = _client(ctx).request("GET", "/v1/audit", params=params).json()["items"]
    except ClientError as exc:
        raise AccessCliError(str(exc)) from None
    if output == "json":
        click.echo(json.dumps(items, indent=2, sort_keys=True))
        return
    rows = []
    for rec in items:
        actor = rec.get("actor") or {}
        who = actor.get("role", "?") + (f":{actor['customer']}" if actor.get("customer") else "") + \
            (f" ({actor['id']})" if actor.get("id") else "")
        rows.append([str(rec.get("time", ""))[:23], who, rec.get("method", ""), rec.get("path", ""),
                     str(rec.get("status", "")), rec.get("ip") or ""])
    _table(rows, ["TIME", "ACTOR", "METHOD", "PATH", "STATUS", "FROM"])


COMMANDS = (token, customer, vps, order, audit)
