"""The API's console relay against a real node endpoint (a PTY pair stands in for the guest): sessions,
logout, and an endpoint that is not the VPS's node."""

from __future__ import annotations

import json
import os
import time
import tty
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from api.console import ConsoleTLS
from api.sessions import SESSION_COOKIE, set_password
from nodeagent.endpoint import Endpoint, EndpointConfig
from reconcile import keys
from reconcile.etcd_server import EtcdServer
from reconcile.store import Store
from specs.kinds import VPS, VPSStatus
from tests.helpers import access_env


@dataclass
class Rig:
    env: access_env.Env
    master: int

    def ws(self, ticket: dict[str, str]) -> ClientConnection:
        return connect(self.env.url.replace("http", "ws", 1) + ticket["url"], open_timeout=10)


def rig(store: Store, etcd_session: EtcdServer, tmp_path: Path, *, endpoint_identity: str) -> Iterator[Rig]:
    pki = etcd_session.pki
    master, slave = os.openpty()
    tty.setraw(master)
    pty = os.ttyname(slave)
    cert = pki.node_server(endpoint_identity)
    endpoint = Endpoint(EndpointConfig("127.0.0.1", 0, cert=cert.cert, key=cert.key, ca=pki.ca_cert),
                        resolve=lambda vps, kind: pty).start()
    api_pair = pki.issue("api")
    api_store = etcd_session.store("api", root=store.root)
    try:
        with access_env.served(store, tmp_path, app_store=api_store,
                               console_tls=ConsoleTLS(pki.ca_cert, api_pair.cert, api_pair.key)) as env:
            store.put_status(VPS, "acme-web", VPSStatus(node="n1"))
            store.kv_put(keys.heartbeat_key("n1", store.root), json.dumps({"node": "n1",
                                                                            "endpoint": endpoint.address}).encode())
            yield Rig(env, master)
    finally:
        endpoint.stop()
        api_store.close()
        os.close(master)
        os.close(slave)


@pytest.fixture
def good(store: Store, etcd_session: EtcdServer, tmp_path: Path) -> Iterator[Rig]:
    yield from rig(store, etcd_session, tmp_path, endpoint_identity="n1")


@pytest.fixture
def impostor(store: Store, etcd_session: EtcdServer, tmp_path: Path) -> Iterator[Rig]:
    yield from rig(store, etcd_session, tmp_path, endpoint_identity="n2")


def session(env: access_env.Env) -> httpx.Client:
    set_password(env.store, "acme", "console password")
    r = httpx.post(f"{env.url}/v1/auth/login", json={"email": "acme@example.com", "password": "console password"},
                   timeout=10)
    assert r.status_code == 200, r.text
    client = httpx.Client(base_url=env.url, timeout=10, cookies={SESSION_COOKIE: r.cookies[SESSION_COOKIE]},
                          headers={"X-Hostplane-CSRF": "1"})
    env.clients["session"] = client
    return client


def test_a_panel_session_console_ends_with_logout(good: Rig) -> None:
    """A ticket from a panel session relays bytes both ways; logging out closes the stream within a second."""
    panel = session(good.env)
    r = panel.post("/v1/vps/acme-web/console", json={"kind": "serial"})
    assert r.status_code == 201, r.text
    with good.ws(r.json()) as ws:
        ws.send(b"ping\r")
        got = b""
        while b"ping\r" not in got:
            got += os.read(good.master, 100)
        os.write(good.master, b"pong\r\n")
        seen = b""
        while b"pong" not in seen:
            msg = ws.recv(timeout=5)
            seen += msg if isinstance(msg, bytes) else msg.encode()
        assert panel.post("/v1/auth/logout").status_code == 204
        began = time.monotonic()
        with pytest.raises(ConnectionClosed) as err:
            while True:
                ws.recv(timeout=5)
        assert time.monotonic() - began < 1.0
    assert err.value.rcvd is not None and err.value.rcvd.code == 4401


def test_a_session_write_without_csrf_header_gets_no_ticket(good: Rig) -> None:
    """The ticket POST is a write: a panel cookie without the CSRF header is refused (403), no ticket."""
    panel = session(good.env)
    r = httpx.post(f"{good.env.url}/v1/vps/acme-web/console", json={"kind": "serial"}, timeout=10,
                   cookies=dict(panel.cookies))
    assert r.status_code == 403, r.text


def test_an_endpoint_with_another_nodes_certificate_is_not_trusted(impostor: Rig) -> None:
    """The heartbeat points at an endpoint whose certificate names another node: the API closes with 4502."""
    r = impostor.env.client("customer").post("/v1/vps/acme-web/console", json={"kind": "serial"})
    assert r.status_code == 201, r.text
    with impostor.ws(r.json()) as ws, pytest.raises(ConnectionClosed) as err:
        ws.recv(timeout=10)
    assert err.value.rcvd is not None and err.value.rcvd.code == 4502


def test_bad_kind_is_a_422_naming_the_field(good: Rig) -> None:
    """An unknown console kind is refused with 422 naming `kind`; no ticket is stored."""
    r = good.env.client("customer").post("/v1/vps/acme-web/console", json={"kind": "spice"})
    assert r.status_code == 422 and r.json()["errors"][0]["path"] == "kind", r.text
    kvs, _ = good.env.store.kv_range(keys.console_ticket_prefix(good.env.store.root))
    assert kvs == []
