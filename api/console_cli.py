"""`hostplane vps console NAME`: the server's serial console in this terminal, like `virsh console`.

(A command of the `vps` group of `api.access_cli`.)

It asks the API for a one-time ticket (`POST /v1/vps/NAME/console`) and opens the console
WebSocket with it; the terminal is put in raw mode while attached. `Ctrl-]` leaves. When the
stream is closed by the other side, the reason is printed and the exit code is 1.
This module must never reach a node or etcd: everything goes through the API.
"""

from __future__ import annotations

import contextlib
import os
import select
import ssl
import sys
import termios
import threading
import tty
from collections.abc import Iterator
from typing import BinaryIO

import click
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.sync.client import ClientConnection, connect

from api.cli_common import SubcommandError, client_for
from api.config import resolve

ESCAPE = b"\x1d"  # Ctrl-]


def websocket_url(server: str, ticket_url: str) -> str:
    """The console's ws(s):// URL from the API's base URL and the ticket's path. Pure."""
    base = server.rstrip("/")
    if base.startswith("https://"):
        base = "wss://" + base.removeprefix("https://")
    elif base.startswith("http://"):
        base = "ws://" + base.removeprefix("http://")
    return base + ticket_url


def split_escape(data: bytes) -> tuple[bytes, bool]:
    """What to send of `data` typed by the user, and whether the escape key was among it. Pure."""
    at = data.find(ESCAPE)
    return (data, False) if at < 0 else (data[:at], True)


@contextlib.contextmanager
def _raw(stream: BinaryIO) -> Iterator[None]:
    if not os.isatty(stream.fileno()):
        yield
        return
    saved = termios.tcgetattr(stream.fileno())
    tty.setraw(stream.fileno())
    try:
        yield
    finally:
        termios.tcsetattr(stream.fileno(), termios.TCSADRAIN, saved)


def attach(ws: ClientConnection, stdin: BinaryIO, stdout: BinaryIO) -> tuple[int, str]:
    """Relay until Ctrl-] (returns 0) or the stream closes (returns 1 and the reason)."""
    done = threading.Event()
    result: list[tuple[int, str]] = []

    def output() -> None:
        try:
            for message in ws:
                stdout.write(message if isinstance(message, bytes) else message.encode())
                stdout.flush()
        except ConnectionClosed:
            pass
        rcvd = ws.protocol.close_rcvd
        result.append((1, rcvd.reason if rcvd is not None and rcvd.reason else "the console closed"))
        done.set()

    reader = threading.Thread(target=output, name="console-out", daemon=True)
    reader.start()
    fd = stdin.fileno()
    while not done.is_set():
        ready, _, _ = select.select([fd], [], [], 0.2)
        if not ready:
            continue
        data = os.read(fd, 4096)
        if not data:
            break
        send, leave = split_escape(data)
        with contextlib.suppress(ConnectionClosed):
            if send:
                ws.send(send)
        if leave:
            ws.close()
            reader.join(2)
            return 0, ""
    reader.join(2)
    return result[0] if result else (0, "")


@click.command("console")
@click.argument("name")
@click.option("--kind", type=click.Choice(["serial"]), default="serial", show_default=True, hidden=True)
@click.pass_context
def console_cmd(ctx: click.Context, name: str, kind: str) -> None:
    """Attach to server NAME's serial console (leave with Ctrl-])."""
    client = client_for(ctx)
    ticket = client.request("POST", f"/v1/vps/{name}/console", json={"kind": kind}).json()
    params = ctx.find_root().params
    cfg = resolve(params.get("server"), params.get("token"), params.get("ca"))
    url = websocket_url(client.server, ticket["url"])
    context = ssl.create_default_context(cafile=cfg.ca) if url.startswith("wss://") else None
    try:
        ws = connect(url, ssl=context, open_timeout=10, max_size=1 << 20)
    except InvalidStatus as exc:
        raise SubcommandError(f"the API refused the console: HTTP {exc.response.status_code}") from None
    except (OSError, WebSocketException, TimeoutError) as exc:
        raise SubcommandError(f"cannot open the console: {exc}") from None
    click.echo(f"Connected to {name}'s serial console; leave with Ctrl-]", err=True)
    with ws, _raw(sys.stdin.buffer):
        code, reason = attach(ws, sys.stdin.buffer, sys.stdout.buffer)
    if code:
        click.echo(f"\r\nconsole closed: {reason}", err=True)
        sys.exit(code)
