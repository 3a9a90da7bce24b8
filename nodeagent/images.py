"""Where image bytes may come from: the node's image policy, enforced before a byte is read.

An Image spec is written by an operator or a GitOps token and is readable by customers; what
the agent does with it runs as the agent's user on the host. So, whatever the spec says:

* a `path` (and a kernel or initrd) must resolve, symlinks followed, to a regular file inside one
  of the node's image directories; the data dir's tokens, /etc/shadow and the like are refused;
* a `url` must be http(s) and every address its host resolves to must be public, unless the
  operator allowed that network (a mirror on the LAN); the connection goes to the address that
  was checked, never to a second lookup (DNS rebinding), and redirects are checked the same way;
* a download stops at `max_bytes`.

Refusals raise `ImageRefused` with a message safe for customers (no host path, no URL, no
credentials); the detail goes to the agent's log. This module must never follow a source it has
not checked, and never put a source's path or URL into an exception message.
"""

from __future__ import annotations

import http.client
import ipaddress
import logging
import os
import socket
import ssl
import stat
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from nodeagent.errors import ImageRefused, ImageUnreachable

log = logging.getLogger(__name__)

DEFAULT_IMAGE_DIR = Path("/var/lib/hostplane/images")
DEFAULT_MAX_BYTES = 32 * 1024**3
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class ImagePolicy:
    """The node's rules for image sources (operator configuration, never from a spec)."""

    dirs: tuple[Path, ...]
    allow_networks: tuple[Network, ...] = ()
    max_bytes: int = DEFAULT_MAX_BYTES
    timeout: float = 30.0
    max_redirects: int = 3
    # Host resolution, replaceable so tests can point a public-looking name at a test server.
    resolve: Any = field(default=None, compare=False)

    @classmethod
    def for_data_dir(cls, data_dir: Path, *, extra_dirs: Sequence[Path] = (),
                     allow_networks: Sequence[str] = (), max_bytes: int = DEFAULT_MAX_BYTES) -> ImagePolicy:
        """`<data_dir>/images`, /var/lib/hostplane/images and `extra_dirs`; networks as CIDR strings."""
        return cls(dirs=(data_dir / "images", DEFAULT_IMAGE_DIR, *extra_dirs),
                   allow_networks=tuple(ipaddress.ip_network(n, strict=False) for n in allow_networks),
                   max_bytes=max_bytes)


def _refuse(what: str, why: str, detail: str) -> ImageRefused:
    log.warning("image %s refused: %s (%s)", what, why, detail)
    return ImageRefused(f"image {what}: {why}")


def confined_path(policy: ImagePolicy, path: str, what: str) -> Path:
    """The resolved file, if it lies inside an image directory and is a regular file."""
    real = Path(os.path.realpath(path))
    for d in policy.dirs:
        root = Path(os.path.realpath(d))
        if real != root and real.is_relative_to(root):
            break
    else:
        raise _refuse(what, "the file is outside the node's image directories",
                      f"{path} resolves to {real}; allowed: {', '.join(map(str, policy.dirs))}")
    try:
        st = real.stat()
    except OSError as exc:
        raise ImageUnreachable(f"image {what}: the file is not on this node") from exc
    if not stat.S_ISREG(st.st_mode):
        raise _refuse(what, "the source is not a regular file", str(real))
    return real


def open_path(policy: ImagePolicy, path: str, what: str) -> tuple[IO[bytes], int]:
    real = confined_path(policy, path, what)
    # O_NOFOLLOW: the resolved name must not have become a symlink since it was checked.
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise ImageUnreachable(f"image {what}: the file cannot be read on this node") from exc
    f = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        f.close()
        raise _refuse(what, "the source is not a regular file", str(real))
    return f, os.fstat(fd).st_size


def _allowed(policy: ImagePolicy, addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if any(addr in net for net in policy.allow_networks):
        return True
    return addr.is_global and not addr.is_multicast


def _addresses(policy: ImagePolicy, host: str, port: int) -> list[str]:
    if policy.resolve is not None:
        return list(policy.resolve(host, port))
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def checked_address(policy: ImagePolicy, host: str, port: int, what: str) -> str:
    """The address to connect to: every address of `host` must be allowed (one bad one refuses all)."""
    try:
        addrs = _addresses(policy, host, port)
    except OSError as exc:
        raise ImageUnreachable(f"image {what}: the download host cannot be resolved") from exc
    if not addrs:
        raise ImageUnreachable(f"image {what}: the download host cannot be resolved")
    for a in addrs:
        ip = ipaddress.ip_address(a.split("%", 1)[0])
        if not _allowed(policy, ip):
            raise _refuse(what, "the download address is not public and not allowed by the node",
                          f"{host} resolves to {ip}")
    return addrs[0]


class _PinnedHTTP(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float, context: ssl.SSLContext) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._address = address
        self._ctx = context

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._ctx.wrap_socket(sock, server_hostname=self.host)


def open_url(policy: ImagePolicy, url: str, what: str, *,
             context: ssl.SSLContext | None = None) -> tuple[IO[bytes], int]:
    """An open response for `url` (after checked redirects) and its announced length (0: unknown)."""
    for _ in range(policy.max_redirects + 1):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise _refuse(what, "only http and https downloads are allowed", parts.scheme or "no scheme")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        address = checked_address(policy, parts.hostname, port, what)
        conn: http.client.HTTPConnection
        if parts.scheme == "https":
            conn = _PinnedHTTPS(parts.hostname, port, address, policy.timeout,
                                context or ssl.create_default_context())
        else:
            conn = _PinnedHTTP(parts.hostname, port, address, policy.timeout)
        target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
        headers = {"User-Agent": "hostplane-agent"}
        if parts.username is not None:
            import base64
            cred = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
            headers["Authorization"] = "Basic " + base64.b64encode(cred.encode()).decode()
        try:
            conn.request("GET", target, headers=headers)
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise ImageUnreachable(f"image {what}: the download failed ({type(exc).__name__})") from exc
        if resp.status in (301, 302, 303, 307, 308) and resp.getheader("Location"):
            url = urllib.parse.urljoin(url, resp.getheader("Location") or "")
            conn.close()
            continue
        if resp.status != 200:
            conn.close()
            raise ImageUnreachable(f"image {what}: the download failed (HTTP {resp.status})")
        total = int(resp.getheader("Content-Length") or 0)
        if total > policy.max_bytes:
            conn.close()
            raise _refuse(what, f"the download is larger than the node's limit of {policy.max_bytes} bytes",
                          f"Content-Length {total}")
        return resp, total
    raise _refuse(what, "too many redirects", f"more than {policy.max_redirects}")


def redact(source: str) -> str:
    """For logs: a URL without its credentials and query; a path as it is (logs are not world-readable)."""
    if "://" not in source:
        return source
    parts = urllib.parse.urlsplit(source)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))
