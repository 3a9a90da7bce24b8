"""The node endpoint: mutual TLS with the cluster PKI, only the `api` identity, PTY relay both ways."""

from __future__ import annotations

import os
import ssl
import tty
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed, InvalidMessage, InvalidStatus
from websockets.sync.client import connect

from nodeagent.endpoint import ConsoleUnavailable, Endpoint, EndpointConfig
from reconcile.pki import PKI


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    p = PKI(tmp_path / "pki")
    p.init()
    return p


class Guest:
    """A PTY pair standing in for QEMU: the test holds the master, the endpoint opens the slave."""

    def __init__(self) -> None:
        self.master, slave = os.openpty()
        tty.setraw(self.master)
        self.path = os.ttyname(slave)
        self._slave = slave  # kept open so the master never sees a hang-up between sessions

    def read_until(self, marker: bytes, limit: int = 50) -> bytes:
        out = b""
        for _ in range(limit):
            out += os.read(self.master, 4096)
            if marker in out:
                return out
        raise AssertionError(f"{marker!r} not seen in {out!r}")

    def close(self) -> None:
        os.close(self.master)
        os.close(self._slave)


@pytest.fixture
def guest() -> Iterator[Guest]:
    g = Guest()
    yield g
    g.close()


@pytest.fixture
def endpoint(pki: PKI, guest: Guest) -> Iterator[Endpoint]:
    server = pki.node_server("n1")

    def resolve(vps: str, kind: str) -> str:
        if vps != "web-1" or kind != "serial":
            raise ConsoleUnavailable("the server is not on this node")
        return guest.path

    ep = Endpoint(EndpointConfig("127.0.0.1", 0, cert=server.cert, key=server.key, ca=pki.ca_cert),
                  resolve=resolve, metrics=lambda: "hostplane_up 1\n").start()
    yield ep
    ep.stop()


def client_context(pki: PKI, identity: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
    if identity is not None:
        pair = pki.issue(identity)
        ctx.load_cert_chain(str(pair.cert), str(pair.key))
    return ctx


def test_api_identity_relays_the_serial_console_both_ways(endpoint: Endpoint, pki: PKI, guest: Guest) -> None:
    """With the api certificate, bytes typed reach the guest's PTY and its answer comes back."""
    with connect(f"wss://{endpoint.address}/console/web-1/serial", ssl=client_context(pki, "api")) as ws:
        ws.send(b"echo hi\r")
        assert guest.read_until(b"\r") == b"echo hi\r"
        os.write(guest.master, b"hi from the guest\r\n")
        got = b""
        while b"hi from the guest" not in got:
            msg = ws.recv(timeout=20)
            got += msg if isinstance(msg, bytes) else msg.encode()


def test_another_nodes_certificate_is_refused(endpoint: Endpoint, pki: PKI) -> None:
    """A valid cluster certificate of another identity (a node's) gets 403, no console."""
    with pytest.raises(InvalidStatus) as err:
        connect(f"wss://{endpoint.address}/console/web-1/serial", ssl=client_context(pki, "node-n2"))
    assert err.value.response.status_code == 403


def test_no_client_certificate_no_connection(endpoint: Endpoint, pki: PKI) -> None:
    """Without a client certificate the TLS layer refuses (not merely an HTTP 403 after it)."""
    with pytest.raises((ssl.SSLError, ConnectionError, ConnectionClosed, InvalidMessage)), \
            connect(f"wss://{endpoint.address}/console/web-1/serial", ssl=client_context(pki, None)) as ws:
        ws.recv(timeout=2)


def test_a_certificate_of_another_ca_is_refused(endpoint: Endpoint, pki: PKI, tmp_path: Path) -> None:
    """An `api` certificate from a different CA does not get in."""
    other = PKI(tmp_path / "other")
    other.init()
    pair = other.issue("api")
    ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
    ctx.load_cert_chain(str(pair.cert), str(pair.key))
    with pytest.raises((ssl.SSLError, ConnectionError, ConnectionClosed, InvalidMessage)), \
            connect(f"wss://{endpoint.address}/console/web-1/serial", ssl=ctx) as ws:
        ws.recv(timeout=2)


def test_unknown_console_closes_with_the_reason(endpoint: Endpoint, pki: PKI) -> None:
    """A VPS not on this node: the stream closes with 4404 and says why."""
    with connect(f"wss://{endpoint.address}/console/other/serial", ssl=client_context(pki, "api")) as ws, \
            pytest.raises(ConnectionClosed) as err:
        ws.recv(timeout=5)
    assert err.value.rcvd is not None and err.value.rcvd.code == 4404
    assert "not on this node" in err.value.rcvd.reason


def test_a_new_session_takes_over_the_serial_console(endpoint: Endpoint, pki: PKI) -> None:
    """One serial session per VPS: the second closes the first with 4409."""
    url = f"wss://{endpoint.address}/console/web-1/serial"
    with connect(url, ssl=client_context(pki, "api")) as first:
        first.send(b"x")
        with connect(url, ssl=client_context(pki, "api")), pytest.raises(ConnectionClosed) as err:
            while True:
                first.recv(timeout=20)
    assert err.value.rcvd is not None and err.value.rcvd.code == 4409
