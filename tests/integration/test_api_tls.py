"""The API over HTTPS with the PKI's server certificate, and behind a TLS-terminating proxy.

The API here runs as the `api` etcd identity (its role, not root), so these tests also show the
role is enough for tokens, logins and sessions.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from api.auth import ensure_admin_token
from api.cli import main
from api.server import TLSFiles, create_app, serving
from api.sessions import SESSION_COOKIE, set_password
from reconcile.etcd_server import EtcdServer
from reconcile.objects import Store
from reconcile.pki import PKI
from tests.helpers.access_env import seed

PASSWORD = "correct horse battery"


@pytest.fixture
def api_store(etcd_session: EtcdServer, store: Store) -> Iterator[Store]:
    seed(store)
    set_password(store, "acme", PASSWORD)
    s = etcd_session.store("api", root=store.root)
    yield s
    s.close()


def _tls(etcd: EtcdServer) -> TLSFiles:
    pair = etcd.pki.server()
    return TLSFiles(pair.cert, pair.key)


def _login(client: httpx.Client) -> httpx.Response:
    return client.post("/v1/auth/login", json={"email": "acme@example.com", "password": PASSWORD})


def test_https_with_the_pki_certificate(api_store: Store, etcd_session: EtcdServer, tmp_path: Path) -> None:
    """Over HTTPS a client trusting the CA gets through and the session cookie is Secure."""
    token = ensure_admin_token(api_store, tmp_path)
    ctx = ssl.create_default_context(cafile=str(etcd_session.pki.ca_cert))
    with serving(create_app(api_store), tls=_tls(etcd_session)) as url:
        assert url.startswith("https://")
        with httpx.Client(base_url=url, verify=ctx, timeout=10) as c:
            assert c.get("/v1/plans", headers={"Authorization": f"Bearer {token}"}).status_code == 200
            r = _login(c)
            assert r.status_code == 200
            cookie = r.headers["set-cookie"]
            assert f"{SESSION_COOKIE}=" in cookie and "Secure" in cookie


def test_https_refuses_untrusting_and_plaintext_clients(api_store: Store, etcd_session: EtcdServer,
                                                        tmp_path: Path) -> None:
    """A client that does not trust the CA fails verification; plain HTTP to the HTTPS port gets no answer."""
    with serving(create_app(api_store), tls=_tls(etcd_session)) as url:
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "/healthz", timeout=5)
        other = PKI(tmp_path / "other")
        other.init()
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "/healthz", timeout=5, verify=ssl.create_default_context(cafile=str(other.ca_cert)))
        with pytest.raises(httpx.HTTPError):
            httpx.get(url.replace("https://", "http://") + "/healthz", timeout=5)


def test_forwarded_proto_believed_only_from_a_trusted_proxy(api_store: Store) -> None:
    """X-Forwarded-Proto: https makes the cookie Secure only when the peer is a configured proxy."""
    spoof = {"X-Forwarded-Proto": "https"}
    with serving(create_app(api_store)) as url, httpx.Client(base_url=url, headers=spoof, timeout=10) as c:
        cookie = _login(c).headers["set-cookie"]
        assert "Secure" not in cookie, "a client's own header is not believed"
    with (serving(create_app(api_store), trusted_proxies=["127.0.0.1"]) as url,
          httpx.Client(base_url=url, headers=spoof, timeout=10) as c):
        cookie = _login(c).headers["set-cookie"]
        assert "Secure" in cookie, "the proxy said the client came over https"


def test_forwarded_for_believed_only_from_a_trusted_proxy(api_store: Store) -> None:
    """A spoofed X-Forwarded-For changes nothing without a trusted proxy; from one, the client is who it names."""
    far = {"X-Forwarded-For": "203.0.113.9"}
    with serving(create_app(api_store)) as url:
        assert httpx.get(url + "/metrics", headers=far, timeout=10).status_code == 200  # still loopback
    with serving(create_app(api_store), trusted_proxies=["127.0.0.1"]) as url:
        assert httpx.get(url + "/metrics", headers=far, timeout=10).status_code == 401  # off-loopback client
        assert httpx.get(url + "/metrics", timeout=10).status_code == 200


def test_cli_trusts_the_ca_from_flag_env_or_config(api_store: Store, etcd_session: EtcdServer, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """`hostplane get` over HTTPS works with --ca, with $HOSTPLANE_CA and with the config file's ca; not without."""
    token = ensure_admin_token(api_store, tmp_path)
    ca = str(etcd_session.pki.ca_cert)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    monkeypatch.delenv("HOSTPLANE_CA", raising=False)
    r = CliRunner()
    with serving(create_app(api_store), tls=_tls(etcd_session)) as url:
        base = ["--server", url, "--token", token]
        failed = r.invoke(main, [*base, "get", "plans"])
        assert failed.exit_code != 0 and "certificate" in failed.output.lower()
        assert r.invoke(main, [*base, "--ca", ca, "get", "plans"]).exit_code == 0
        assert r.invoke(main, [*base, "get", "plans"], env={"HOSTPLANE_CA": ca}).exit_code == 0
        from api.config import write_cli_config

        write_cli_config(url, token, ca)
        out = r.invoke(main, ["get", "plans"])
        assert out.exit_code == 0, out.output
