"""The node's image policy, attacked: paths outside the image directories, symlinks, private addresses."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import pytest

from nodeagent.errors import ImageRefused, ImageUnreachable
from nodeagent.images import ImagePolicy, checked_address, confined_path, open_path, redact


@pytest.fixture
def policy(tmp_path: Path) -> ImagePolicy:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "ok.qcow2").write_bytes(b"disk")
    (tmp_path / "admin-token").write_text("hpt_secret")
    return ImagePolicy(dirs=(tmp_path / "images",))


def test_a_file_inside_an_image_directory_is_allowed(policy: ImagePolicy, tmp_path: Path) -> None:
    """The one legitimate case: a regular file under a configured directory."""
    assert confined_path(policy, str(tmp_path / "images" / "ok.qcow2"), "i") == (tmp_path / "images" / "ok.qcow2")


@pytest.mark.parametrize("path", ["admin-token", "images/../admin-token", "images", "/etc/passwd", "/etc/shadow"])
def test_paths_outside_the_image_directories_are_refused(policy: ImagePolicy, tmp_path: Path, path: str) -> None:
    """The data dir's admin token, /etc files and the directory itself are refused; the message names no path."""
    full = path if path.startswith("/") else str(tmp_path / path)
    with pytest.raises(ImageRefused) as info:
        confined_path(policy, full, "evil")
    assert "/" not in str(info.value) and "admin-token" not in str(info.value)


def test_a_symlink_out_of_the_image_directory_is_refused(policy: ImagePolicy, tmp_path: Path) -> None:
    """A link placed inside the directory pointing at a secret resolves outside it: refused."""
    link = tmp_path / "images" / "innocent.qcow2"
    link.symlink_to(tmp_path / "admin-token")
    with pytest.raises(ImageRefused):
        open_path(policy, str(link), "evil")
    (tmp_path / "images" / "dir-link").symlink_to(tmp_path)
    with pytest.raises(ImageRefused):
        confined_path(policy, str(tmp_path / "images" / "dir-link" / "admin-token"), "evil")


def test_a_symlinked_image_directory_still_confines(tmp_path: Path) -> None:
    """An image directory that is itself a link is resolved too: its own files pass, nothing beside them."""
    real = tmp_path / "real"
    real.mkdir()
    (real / "ok.qcow2").write_bytes(b"x")
    (tmp_path / "link").symlink_to(real)
    policy = ImagePolicy(dirs=(tmp_path / "link",))
    assert confined_path(policy, str(tmp_path / "link" / "ok.qcow2"), "i") == real / "ok.qcow2"
    with pytest.raises(ImageRefused):
        confined_path(policy, str(tmp_path / "link" / ".." / "real"), "i")


def test_a_fifo_or_device_is_refused(policy: ImagePolicy, tmp_path: Path) -> None:
    """Only regular files: a FIFO in the directory would hang the agent, /dev/zero would never end."""
    os.mkfifo(tmp_path / "images" / "pipe")
    with pytest.raises(ImageRefused):
        confined_path(policy, str(tmp_path / "images" / "pipe"), "i")


def test_a_missing_file_is_unreachable_not_refused(policy: ImagePolicy, tmp_path: Path) -> None:
    """A file not (yet) placed on the node is retried later, and the message names no path."""
    with pytest.raises(ImageUnreachable) as info:
        confined_path(policy, str(tmp_path / "images" / "later.qcow2"), "i")
    assert str(tmp_path) not in str(info.value)


@pytest.mark.parametrize("addresses", [
    ["127.0.0.1"], ["::1"], ["169.254.169.254"], ["10.1.2.3"], ["192.168.0.10"], ["172.16.5.5"], ["fe80::1"],
    ["fd00::5"], ["0.0.0.0"], ["100.64.0.1"], ["::ffff:127.0.0.1"], ["224.0.0.1"],
    ["93.184.215.14", "127.0.0.1"],  # one bad address among good ones is enough (DNS games)
])
def test_non_public_destinations_are_refused(addresses: list[str]) -> None:
    """Loopback, link-local (cloud metadata), private, CGNAT, multicast and mapped forms are refused by default."""
    policy = ImagePolicy(dirs=(), resolve=lambda host, port: addresses)
    with pytest.raises(ImageRefused) as info:
        checked_address(policy, "mirror.example", 80, "evil")
    assert "mirror.example" not in str(info.value)


def test_an_allowed_network_and_public_addresses_pass() -> None:
    """The operator's allow-list admits a LAN mirror; public addresses pass; the checked address is the one used."""
    lan = ImagePolicy(dirs=(), allow_networks=(ipaddress.ip_network("10.1.0.0/16"),),
                      resolve=lambda host, port: ["10.1.2.3"])
    assert checked_address(lan, "mirror.lan", 80, "i") == "10.1.2.3"
    public = ImagePolicy(dirs=(), resolve=lambda host, port: ["93.184.215.14"])
    assert checked_address(public, "example.org", 443, "i") == "93.184.215.14"


def test_redact_drops_credentials_and_query() -> None:
    """What reaches a log from a URL: scheme, host, port and path only."""
    assert redact("https://user:pw@mirror.example:8443/a/b.qcow2?token=x") == "https://mirror.example:8443/a/b.qcow2"
