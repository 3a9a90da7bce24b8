"""Fixtures for end-to-end tests on real QEMU: a libvirt QEMU connection and the test guest.

See `tests.e2e.guest.session` for how the connection is found or a private daemon started.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.guest.build import GuestImage, build
from tests.e2e.guest.session import Session, make_workdir, qemu_session


@pytest.fixture(scope="session")
def qemu() -> Iterator[Session]:
    """A working QEMU libvirt connection for the session (a private daemon if needed, stopped after)."""
    with qemu_session() as session:
        yield session


@pytest.fixture(scope="session")
def guest_image() -> GuestImage:
    """The tiny test guest (built once, cached under ~/.cache/hostplane-test-guest)."""
    return build()


@pytest.fixture
def agent_dir(qemu: Session) -> Iterator[Path]:
    """A data dir the hypervisor's user can write, removed afterwards."""
    d = make_workdir(qemu)
    yield d
    shutil.rmtree(d, ignore_errors=True)
