"""What the `hostplane` sub-command groups share: one error type, API errors as CLI errors, the client.

The main CLI maps its own errors to exit codes in `api.cli`; groups that live in their own modules
(billing, access) use these so an API problem prints one line and exits 2 everywhere.
"""

from __future__ import annotations

from typing import Any

import click

from api.client import Client, ClientError
from api.config import resolve


class SubcommandError(click.ClickException):
    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.message}", err=True)


class ClientErrorsGroup(click.Group):
    """A click group whose commands' API errors become one-line CLI errors."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ClientError as exc:
            raise SubcommandError(str(exc)) from None


def client_for(ctx: click.Context) -> Client:
    """The main CLI's client when there is one, else one from --server/--token, env or config."""
    obj = ctx.find_root().obj
    if obj is not None and callable(getattr(obj, "client", None)):
        client: Client = obj.client()
        return client
    params = ctx.find_root().params
    cfg = resolve(params.get("server"), params.get("token"), params.get("ca"))
    if cfg.token is None:
        raise SubcommandError("no API token: pass --token, set HOSTPLANE_TOKEN, or run `hostplane up`")
    client = Client(cfg.server, cfg.token, ca=cfg.ca)
    ctx.call_on_close(client.close)
    return client
