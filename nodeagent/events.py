"""libvirt's event loop, run once per process on a daemon thread.

libvirt delivers lifecycle events and detects dead connections only while an event loop runs,
and its default loop is process-wide by design: it must be registered before the first
connection that wants events is opened. This module is the one place that holds that state;
nothing else in the agent keeps module-level state.
"""

from __future__ import annotations

import logging
import threading

import libvirt

log = logging.getLogger(__name__)

_guard = threading.Lock()
_thread: threading.Thread | None = None


def _run() -> None:
    while True:
        try:
            libvirt.virEventRunDefaultImpl()
        except libvirt.libvirtError:
            log.exception("libvirt event loop iteration failed")


def ensure_event_loop() -> None:
    """Register and start libvirt's default event loop if this process has not yet."""
    global _thread
    with _guard:
        if _thread is not None:
            return
        libvirt.virEventRegisterDefaultImpl()
        _thread = threading.Thread(target=_run, name="libvirt-events", daemon=True)
        _thread.start()
