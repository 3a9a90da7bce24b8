"""Reading a running domain's console paths from its live XML (pure)."""

from __future__ import annotations

from nodeagent.console_source import serial_pty, vnc_socket

LIVE = """<domain><devices>
  <serial type='pty'><source path='/dev/pts/7'/><target port='0'/></serial>
  <console type='pty' tty='/dev/pts/7'><source path='/dev/pts/7'/><target type='serial' port='0'/></console>
  <graphics type='vnc'><listen type='socket' socket='/var/lib/libvirt/qemu/domain-3-hp/vnc.sock'/></graphics>
</devices></domain>"""


def test_paths_are_read_from_the_live_xml() -> None:
    """The serial PTY and the VNC socket come from the live domain XML."""
    assert serial_pty(LIVE) == "/dev/pts/7"
    assert vnc_socket(LIVE) == "/var/lib/libvirt/qemu/domain-3-hp/vnc.sock"


def test_tcp_graphics_and_missing_ptys_are_not_consoles() -> None:
    """A VNC listener on TCP is never relayed; a domain without a PTY has no serial console."""
    xml = "<domain><devices><graphics type='vnc' port='5900'><listen type='address' address='0.0.0.0'/>" \
          "</graphics><serial type='file'><source path='/tmp/x'/></serial></devices></domain>"
    assert vnc_socket(xml) is None
    assert serial_pty(xml) is None
