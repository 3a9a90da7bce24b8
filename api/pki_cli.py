"""`hostplane pki init|issue`: the control plane's CA and per-identity certificates.

    hostplane pki init [--data-dir var]
    hostplane pki issue api|controllers|fleet [--data-dir var]
    hostplane pki issue node NAME | operator NAME
    hostplane pki issue server [--name HOST ...]
    hostplane pki issue node-endpoint NAME [--name HOST ...]   a node endpoint's server certificate (consoles)

Files go to `<data-dir>/pki/` with mode 0600; an existing certificate is kept (printed, not
replaced) unless `--force`. Errors exit with 2 and one line on stderr.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from reconcile.pki import PKI, PKIError, identity_for


def _pki(data_dir: Path) -> PKI:
    return PKI(data_dir / "pki")


_data_dir = click.option("--data-dir", type=click.Path(path_type=Path), default=Path("var"), show_default=True)


@click.group("pki")
def pki() -> None:
    """The CA and the certificates of the control plane's identities."""


@pki.command("init")
@_data_dir
def init_cmd(data_dir: Path) -> None:
    """Create the CA under DATA_DIR/pki (kept if it exists)."""
    p = _pki(data_dir)
    made = p.init()
    click.echo(f"{'created' if made else 'kept'} CA {p.ca_cert}")


@pki.command("issue")
@click.argument("kind", type=click.Choice(["api", "controllers", "fleet", "node", "operator", "server",
                                           "node-endpoint"]))
@click.argument("name", required=False)
@click.option("--name", "server_names", multiple=True,
              help="server, node-endpoint: an extra DNS name or IP address (the address others connect to)")
@click.option("--force", is_flag=True, help="replace an existing certificate")
@_data_dir
def issue_cmd(kind: str, name: str | None, server_names: tuple[str, ...], force: bool, data_dir: Path) -> None:
    """Issue a client certificate whose CN is the identity (or the server certificate)."""
    p = _pki(data_dir)
    try:
        if kind == "server":
            if name:
                raise PKIError("server takes no NAME (use --name HOST)")
            pair = p.server(list(server_names), force=force)
        elif kind == "node-endpoint":
            # CN node-NAME: the API accepts this endpoint only for that node's servers (ADR 010).
            pair = p.node_server(name or "", list(server_names), force=force)
        else:
            pair = p.issue(identity_for(kind, name), force=force)
    except PKIError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    click.echo(f"certificate {pair.cert}\nkey         {pair.key}\nCA          {p.ca_cert}")
