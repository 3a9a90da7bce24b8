"""`hostplane up`'s files: logs only their owner reads; a data dir QEMU's user cannot reach is named."""

from __future__ import annotations

import shutil
import stat
import tempfile
from pathlib import Path

from api.testguest import GuestImage
from api.up import _closed_ancestor, open_private_log, registered_test_guest


def test_logs_are_0600_even_when_they_existed_world_readable(tmp_path: Path) -> None:
    """A log up appends to is created 0600, and one left 0644 by an older version is tightened."""
    fresh = tmp_path / "agent.log"
    with open_private_log(fresh) as f:
        f.write(b"image x: reading /secret/path failed\n")
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600
    old = tmp_path / "api.log"
    old.write_text("before\n")
    old.chmod(0o644)
    with open_private_log(old) as f:
        f.write(b"after\n")
    assert stat.S_IMODE(old.stat().st_mode) == 0o600 and old.read_text() == "before\nafter\n"


def test_the_first_closed_directory_on_the_way_is_named() -> None:
    """A 0700 directory above the data dir is what QEMU's user would trip over; none when all are searchable."""
    base = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        closed = base / "home"
        (closed / "me" / "var").mkdir(parents=True)
        for d in (base, closed / "me", closed / "me" / "var"):
            d.chmod(0o755)
        closed.chmod(0o700)
        assert _closed_ancestor(closed / "me" / "var") == closed
        closed.chmod(0o755)
        assert _closed_ancestor(closed / "me" / "var") is None
    finally:
        shutil.rmtree(base)


def test_the_registered_test_guest_carries_every_checksum_and_path(tmp_path: Path) -> None:
    """The Image up registers for its guest is valid under the image rules: paths and the disk's sha256."""
    img = GuestImage(kernel=str(tmp_path / "vmlinuz"), initrd=str(tmp_path / "initrd.img"),
                     disk=str(tmp_path / "disk.qcow2"), disk_sha256="a" * 64, cmdline="console=ttyS0")
    image = registered_test_guest(img)
    assert image.name == "test-guest" and image.spec.source.sha256 == "a" * 64
    assert image.spec.source.path == img.disk and image.spec.kernel == img.kernel
