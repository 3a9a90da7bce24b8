"""The agent enforces the image policy even for a DomainSpec that bypassed the API's validation (defence in depth).

Each test attacks one rule with a desired entry written straight into etcd, then checks that no
domain was made, the report says ImageRefused or ImageUnavailable, and the customer-visible message
names no host path, URL or credential.
"""

from __future__ import annotations

import hashlib
import http.server
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nodeagent.domain_xml import domain_name
from nodeagent.images import ImagePolicy
from reconcile.objects import Store
from specs.domain import DomainImage, ObservedDomain
from tests.integration.test_agent import IMAGE_BYTES, Node, make_spec, ready


@pytest.fixture
def node(store: Store, tmp_path: Path) -> Iterator[Node]:
    (tmp_path / "images").mkdir()
    n = Node(store, tmp_path)
    yield n
    n.stop()


def _refused(node: Node, image: DomainImage, reason: str = "ImageRefused") -> ObservedDomain:
    spec = make_spec(image)
    node.put(spec)
    obs = node.wait("web-1", lambda o: reason in o.lastError, f"{reason} reported")
    assert obs.power == "Absent"
    assert domain_name(spec.uid) not in [d.name() for d in node.conn.listAllDomains()]
    return obs


def _clean(message: str, *secrets: str) -> None:
    for s in secrets:
        assert s not in message, (s, message)


def test_the_data_dirs_admin_token_as_image_path_is_refused(node: Node, tmp_path: Path) -> None:
    """The issue's attack: an image whose path is the data dir's admin-token file never reaches Running."""
    token = tmp_path / "admin-token"
    token.write_text("hpt_0123_secret")
    node.start()
    obs = _refused(node, DomainImage(name="evil", path=str(token),
                                     sha256=hashlib.sha256(token.read_bytes()).hexdigest()))
    _clean(obs.lastError, str(tmp_path), "admin-token")


def test_a_symlink_in_the_image_directory_to_a_secret_is_refused(node: Node, tmp_path: Path) -> None:
    """A link inside the image directory pointing outside it is resolved and refused."""
    (tmp_path / "shadow").write_text("root:$6$...")
    (tmp_path / "images" / "disk.qcow2").symlink_to(tmp_path / "shadow")
    node.start()
    obs = _refused(node, DomainImage(name="evil", path=str(tmp_path / "images" / "disk.qcow2"), sha256="0" * 64))
    _clean(obs.lastError, str(tmp_path))


def test_a_kernel_outside_the_image_directories_is_refused(node: Node, tmp_path: Path) -> None:
    """kernel and initrd paths are confined like the disk: /etc/passwd as a kernel is refused."""
    disk = tmp_path / "images" / "d.qcow2"
    disk.write_bytes(IMAGE_BYTES)
    node.start()
    obs = _refused(node, DomainImage(name="k", path=str(disk), sha256=hashlib.sha256(IMAGE_BYTES).hexdigest(),
                                     kernel="/etc/passwd"))
    _clean(obs.lastError, "/etc/passwd")


@pytest.mark.parametrize("url", ["file:///etc/shadow", "ftp://mirror.example/d.qcow2", "gopher://x/"])
def test_non_http_urls_are_refused(node: Node, url: str) -> None:
    """file://, ftp:// and friends are refused by the agent too, and the URL stays out of the message."""
    node.start()
    obs = _refused(node, DomainImage(name="u", url=url, sha256="0" * 64))
    _clean(obs.lastError, url, "/etc/shadow")


def test_an_image_without_sha256_is_refused(node: Node, tmp_path: Path) -> None:
    """A path image without a checksum (the old loophole) is refused by the agent."""
    disk = tmp_path / "images" / "d.qcow2"
    disk.write_bytes(IMAGE_BYTES)
    node.start()
    _refused(node, DomainImage(name="nosum", path=str(disk)))


class _Server:
    """A loopback HTTP server counting requests; `body(n)` decides what the n-th request gets."""

    def __init__(self, respond: Callable[[http.server.BaseHTTPRequestHandler], None]) -> None:
        self.hits: list[float] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.hits.append(time.monotonic())
                respond(self)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://user:pa55@127.0.0.1:{self.server.server_address[1]}/d.qcow2?sig=abc"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def _ok(h: http.server.BaseHTTPRequestHandler) -> None:
    h.send_response(200)
    h.send_header("Content-Length", str(len(IMAGE_BYTES)))
    h.end_headers()
    h.wfile.write(IMAGE_BYTES)


def test_loopback_download_is_refused_without_the_operators_allow_list(node: Node) -> None:
    """The issue's attack: an http://127.0.0.1 URL is never fetched, and neither URL nor credentials are shown."""
    srv = _Server(_ok)
    try:
        node.start()
        obs = _refused(node, DomainImage(name="u", url=srv.url, sha256=hashlib.sha256(IMAGE_BYTES).hexdigest()))
        assert srv.hits == []
        _clean(obs.lastError, "127.0.0.1", "pa55", "user", "sig=abc")
    finally:
        srv.close()


def test_allowed_network_downloads_within_the_size_cap(node: Node, tmp_path: Path) -> None:
    """With 127.0.0.1/32 allowed, a download above the node's cap is refused, one within it boots."""
    srv = _Server(_ok)
    try:
        small = ImagePolicy.for_data_dir(tmp_path / "agent", allow_networks=["127.0.0.1/32"],
                                         max_bytes=len(IMAGE_BYTES) - 1)
        node.start(image_policy=small)
        sha = hashlib.sha256(IMAGE_BYTES).hexdigest()
        obs = _refused(node, DomainImage(name="big", url=srv.url, sha256=sha))
        _clean(obs.lastError, "127.0.0.1", "pa55")
        node.stop()
        node.start(image_policy=ImagePolicy.for_data_dir(tmp_path / "agent", allow_networks=["127.0.0.1/32"]))
        spec = make_spec(DomainImage(name="fits", url=srv.url, sha256=sha), vps="web-2")
        node.wait("web-2", ready(node.put(spec)), "within the cap: ready")
    finally:
        srv.close()


def test_a_body_longer_than_announced_is_cut_at_the_cap(node: Node, tmp_path: Path) -> None:
    """A server that announces no length and streams on is stopped at the cap, not read to the end."""
    def endless(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.end_headers()
        try:
            for _ in range(64):
                h.wfile.write(b"\0" * 65536)
        except OSError:
            pass
    srv = _Server(endless)
    try:
        node.start(image_policy=ImagePolicy.for_data_dir(tmp_path / "agent", allow_networks=["127.0.0.1/32"],
                                                         max_bytes=100_000))
        _refused(node, DomainImage(name="endless", url=srv.url, sha256="0" * 64))
        assert not list((tmp_path / "agent" / "downloads").glob("*.partial"))
    finally:
        srv.close()


def test_failed_downloads_back_off_instead_of_hammering(node: Node, tmp_path: Path) -> None:
    """Two VPS on a failing URL: one request, then nothing until the backoff has passed (was 12 in 6 s)."""
    def fail(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(500)
        h.send_header("Content-Length", "0")
        h.end_headers()
    srv = _Server(fail)
    try:
        node.start(image_policy=ImagePolicy.for_data_dir(tmp_path / "agent", allow_networks=["127.0.0.1/32"]))
        image = DomainImage(name="flaky", url=srv.url, sha256="0" * 64)
        for vps in ("a-1", "a-2"):
            node.put(make_spec(image, vps=vps))
        node.wait("a-2", lambda o: "ImageUnavailable" in o.lastError, "failure reported")
        time.sleep(4)
        assert len(srv.hits) == 1, srv.hits
        obs = node.observed("a-1")
        assert obs is not None and "next attempt in" in obs.lastError
        _clean(obs.lastError, "127.0.0.1", "pa55")
    finally:
        srv.close()
