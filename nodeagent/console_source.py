"""Where a running domain's consoles are on this host: its serial PTY, its VNC UNIX socket.

Read from the live domain XML (the PTY's path is known only once QEMU runs). Blocking: one
libvirt call. It must never open either: `nodeagent.endpoint` does, for the API only.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import libvirt

from nodeagent.endpoint import ConsoleUnavailable
from nodeagent.hypervisor import Hypervisor


def serial_pty(live_xml: str) -> str | None:
    """The PTY path of the domain's first serial port (None if it has no PTY). Pure."""
    root = ET.fromstring(live_xml)
    for serial in root.findall("./devices/serial"):
        source = serial.find("source")
        if serial.get("type") == "pty" and source is not None and source.get("path"):
            return source.get("path")
    return None


def vnc_socket(live_xml: str) -> str | None:
    """The UNIX socket of the domain's VNC graphics (None without one, or when it listens on TCP). Pure."""
    root = ET.fromstring(live_xml)
    for gfx in root.findall("./devices/graphics[@type='vnc']"):
        listen = gfx.find("listen[@type='socket']")
        if listen is not None and listen.get("socket"):
            return listen.get("socket")
    return None


def console_source(hv: Hypervisor, domain: str, kind: str) -> str:
    """The PTY (kind "serial") or VNC socket (kind "vnc") of the running domain, or ConsoleUnavailable."""
    with hv.call(f"console of {domain}"):
        dom = hv.lookup(domain)
        try:
            if dom is None or not dom.isActive():
                raise ConsoleUnavailable("the server is not running")
            live = dom.XMLDesc(0)
        except libvirt.libvirtError as exc:
            raise ConsoleUnavailable(f"the server's console cannot be read: {exc.get_error_message()}") from exc
    path = serial_pty(live) if kind == "serial" else vnc_socket(live)
    if path is None:
        raise ConsoleUnavailable("the server has no serial console" if kind == "serial"
                                 else "the server has no graphical console")
    return path
