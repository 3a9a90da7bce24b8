"""The node's own TLS endpoint: the consoles of its domains, relayed to the API.

    wss://<node endpoint>/console/<vps>/serial   the guest's serial console (its PTY), binary frames
    wss://<node endpoint>/console/<vps>/vnc      the guest's VNC socket, binary frames (RFB as is)

Mutual TLS only: the endpoint presents the node's server certificate (CN `node-<name>`), and a
client must present a certificate of the cluster CA whose common name is in `allowed_clients`
(by default only `api`): another node's certificate, or none, is refused during the handshake
or with 403 before any console is touched. There is no VNC password and no TCP listener of
QEMU's: the endpoint opens the PTY and the per-domain UNIX socket itself. One serial session per
VPS: a new one takes over from the old (which is closed), like `virsh console --force`.

This module must never decide who may see a console: the API does (tickets, roles, ownership);
the endpoint only trusts the API's certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import ssl
import threading
import tty
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

log = logging.getLogger(__name__)

KINDS = ("serial", "vnc")
_PATH = re.compile(r"^/console/([a-z0-9][a-z0-9.-]{0,62})/(serial|vnc)$")
# Close codes (4000-4999 are the application's): the API passes them on to its client.
CLOSE_UNAVAILABLE = 4404
CLOSE_TAKEN_OVER = 4409
CLOSE_GUEST_GONE = 4410


class ConsoleUnavailable(Exception):
    """The console cannot be opened now (the VPS is not on this node, not running, no graphics)."""


@dataclass(frozen=True)
class EndpointConfig:
    """Where the endpoint listens and with which certificates (PEM files of the cluster PKI)."""

    host: str
    port: int  # 0: a free port, chosen when it starts
    cert: Path
    key: Path
    ca: Path
    advertise: str = ""  # host the API reaches it at (default: `host`)
    allowed_clients: tuple[str, ...] = ("api",)


def server_context(config: EndpointConfig) -> ssl.SSLContext:
    """TLS server context that requires a client certificate signed by the cluster CA."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(config.ca))
    ctx.load_cert_chain(str(config.cert), str(config.key))
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def peer_common_name(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> str:
    """The CN of the verified peer certificate ("" if there is none)."""
    cert: Any = ssl_object.getpeercert() if ssl_object is not None else None
    for rdn in (cert or {}).get("subject", ()):
        for pair in rdn:
            if pair[0] == "commonName":
                return str(pair[1])
    return ""


class Endpoint:
    """The endpoint on a thread of its own with its own event loop. `start()` returns once it listens.

    `resolve(vps, kind)` (blocking: it may call libvirt) returns the PTY path or VNC socket path, or
    raises ConsoleUnavailable. `metrics()`, if given, is served as Prometheus text at /metrics.
    """

    def __init__(self, config: EndpointConfig, *, resolve: Callable[[str, str], str],
                 metrics: Callable[[], str] | None = None) -> None:
        self.config = config
        self.resolve = resolve
        self.metrics = metrics
        self.port = config.port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Server | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._serial: dict[str, ServerConnection] = {}

    @property
    def address(self) -> str:
        """host:port the API connects to (published in the node's heartbeat)."""
        host = self.config.advertise or self.config.host
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    def start(self) -> Endpoint:
        self._thread = threading.Thread(target=self._run, name="node-endpoint", daemon=True)
        self._thread.start()
        self._started.wait(15)
        if self._error is not None:
            raise RuntimeError(f"the node endpoint did not start: {self._error}") from self._error
        if not self._started.is_set():
            raise RuntimeError("the node endpoint did not start within 15 s")
        return self

    def stop(self) -> None:
        loop, server = self._loop, self._server
        if loop is not None and server is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(server.close)
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported to `start` (a port in use, a bad certificate)
            self._error = exc
            self._started.set()
        finally:
            loop.close()

    async def _serve(self) -> None:
        async with serve(self._handle, self.config.host, self.config.port, ssl=server_context(self.config),
                         process_request=self._check, max_size=1 << 20, ping_interval=20) as server:
            self._server = server
            self.port = int(next(iter(server.sockets)).getsockname()[1])
            self._started.set()
            await server.wait_closed()

    # ------------------------------------------------------------------ requests

    def _check(self, conn: ServerConnection, request: Request) -> Response | None:
        """Before the WebSocket handshake: only an allowed client identity, only known paths."""
        who = peer_common_name(conn.transport.get_extra_info("ssl_object"))
        if who not in self.config.allowed_clients:
            return conn.respond(HTTPStatus.FORBIDDEN, f"identity {who!r} may not use this endpoint\n")
        if request.path.split("?", 1)[0] == "/metrics" and self.metrics is not None:
            response = conn.respond(HTTPStatus.OK, self.metrics())
            response.headers["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8"
            return response
        if _PATH.match(request.path) is None:
            return conn.respond(HTTPStatus.NOT_FOUND, "no such console\n")
        return None

    async def _handle(self, conn: ServerConnection) -> None:
        match = _PATH.match(conn.request.path if conn.request is not None else "")
        if match is None:  # pragma: no cover - `_check` answered already
            return
        vps, kind = match.group(1), match.group(2)
        try:
            source = await asyncio.to_thread(self.resolve, vps, kind)
        except ConsoleUnavailable as exc:
            await conn.close(CLOSE_UNAVAILABLE, str(exc)[:120])
            return
        try:
            if kind == "serial":
                await self._relay_serial(conn, vps, source)
            else:
                await self._relay_vnc(conn, source)
        except ConnectionClosed:
            pass

    async def _relay_serial(self, conn: ServerConnection, vps: str, pty: str) -> None:
        previous = self._serial.get(vps)
        self._serial[vps] = conn
        if previous is not None:
            await previous.close(CLOSE_TAKEN_OVER, "another console session took over")
        loop = asyncio.get_running_loop()
        try:
            fd = os.open(pty, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError as exc:
            await conn.close(CLOSE_UNAVAILABLE, f"cannot open the serial console: {exc.strerror}"[:120])
            return
        out: asyncio.Queue[bytes | None] = asyncio.Queue()

        def readable() -> None:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                return
            except OSError:  # EIO: QEMU closed its side (the guest stopped)
                data = b""
            if not data:
                loop.remove_reader(fd)
            out.put_nowait(data or None)

        try:
            # Raw: no echo, no line editing, no CR/LF translation on our side of the PTY.
            tty.setraw(fd)
            loop.add_reader(fd, readable)
            await _first_done(self._pump_pty_out(conn, out), self._pump_pty_in(conn, fd))
        finally:
            loop.remove_reader(fd)
            os.close(fd)
            if self._serial.get(vps) is conn:
                del self._serial[vps]
        if conn.close_code is None:
            await conn.close(CLOSE_GUEST_GONE, "the guest's console closed")

    @staticmethod
    async def _pump_pty_out(conn: ServerConnection, out: asyncio.Queue[bytes | None]) -> None:
        while (data := await out.get()) is not None:
            # Coalesce what is already queued into one frame.
            while not out.empty() and (more := out.get_nowait()) is not None:
                data += more
            await conn.send(data)

    @staticmethod
    async def _pump_pty_in(conn: ServerConnection, fd: int) -> None:
        async for message in conn:
            data = message.encode() if isinstance(message, str) else bytes(message)
            while data:
                try:
                    n = os.write(fd, data)
                except BlockingIOError:
                    await asyncio.sleep(0.01)
                    continue
                data = data[n:]

    async def _relay_vnc(self, conn: ServerConnection, path: str) -> None:
        try:
            reader, writer = await asyncio.open_unix_connection(path)
        except OSError as exc:
            await conn.close(CLOSE_UNAVAILABLE, f"cannot open the graphical console: {exc.strerror}"[:120])
            return

        async def out() -> None:
            while data := await reader.read(65536):
                await conn.send(data)

        async def into() -> None:
            async for message in conn:
                writer.write(message.encode() if isinstance(message, str) else bytes(message))
                await writer.drain()

        try:
            await _first_done(out(), into())
        finally:
            writer.close()
        if conn.close_code is None:
            await conn.close(CLOSE_GUEST_GONE, "the guest's graphical console closed")


async def _first_done(*coros: Coroutine[Any, Any, None]) -> None:
    """Run the coroutines until the first one ends, then cancel the rest; errors are logged, not raised."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    for r in results:
        if isinstance(r, Exception) and not isinstance(r, ConnectionClosed):
            log.warning("console relay failed: %s", r)
