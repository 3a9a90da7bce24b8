"""Domain XML and the Hostplane metadata it carries."""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET

from hypothesis import given
from hypothesis import strategies as st

from nodeagent import domain_xml
from nodeagent.metadata import Meta, from_domain_xml
from specs.domain import BandwidthLimit, DomainImage, DomainNetwork, DomainSpec

BOOT = domain_xml.Boot("qemu", "/pool/root.qcow2", "/pool/seed.iso", "/logs/serial.log")


def spec(**kw: object) -> DomainSpec:
    base: dict[str, object] = {
        "vps": "web-1", "uid": "3f2a", "vcpus": 1, "memoryMiB": 128, "diskGiB": 2, "maxVcpus": 4,
        "maxMemoryMiB": 512, "image": DomainImage(name="tiny"), "hostname": "web-1",
        "network": DomainNetwork(mac="52:54:00:00:00:01"),
    }
    base.update(kw)
    return DomainSpec.model_validate(base)


def test_sizes_current_and_maximum() -> None:
    """vCPU and memory carry current and maximum so a resize within the maximum is live."""
    xml = domain_xml.build(spec(), Meta(vps="web-1", uid="3f2a"), BOOT)
    assert domain_xml.read_sizes(xml) == domain_xml.Sizes(1, 4, 128, 512)


def test_devices_carry_mac_and_limits_and_no_console_listens_on_tcp() -> None:
    """The NIC has the spec's MAC and KB/s limits; VNC is on a UNIX socket, the serial console a logged PTY."""
    boot = dataclasses.replace(BOOT, graphics_socket="/run/hp/hp-3f2a.vnc")
    xml = domain_xml.build(spec(bandwidth=BandwidthLimit(inboundKbps=8000, outboundKbps=800)),
                           Meta(vps="web-1", uid="3f2a"), boot)
    root = ET.fromstring(xml)
    assert root.find("devices/interface/mac").get("address") == "52:54:00:00:00:01"  # type: ignore[union-attr]
    assert root.find("devices/interface/bandwidth/inbound").get("average") == "1000"  # type: ignore[union-attr]
    assert root.find("devices/serial").get("type") == "pty"  # type: ignore[union-attr]
    assert root.find("devices/serial/log").get("file") == "/logs/serial.log"  # type: ignore[union-attr]
    listens = root.findall("devices/graphics/listen")
    assert [(x.get("type"), x.get("socket")) for x in listens] == [("socket", "/run/hp/hp-3f2a.vnc")]
    gfx = root.findall("devices/graphics")
    assert not [g for g in gfx if g.get("port") or g.get("listen") or g.get("autoport")]
    assert not [c for c in root.findall("devices/*") if c.get("type") in ("tcp", "udp", "telnet")]
    assert root.findtext("name") == "hp-3f2a" and root.findtext("title") == "web-1"


def test_no_graphics_socket_means_no_graphics() -> None:
    """Without a socket path the domain has no graphics device at all."""
    root = ET.fromstring(domain_xml.build(spec(), Meta(vps="web-1", uid="3f2a"), BOOT))
    assert root.find("devices/graphics") is None


@given(st.text(min_size=1, max_size=40).filter(lambda s: "\x00" not in s and s.strip() == s))
def test_hostile_names_are_escaped_and_round_trip(vps: str) -> None:
    """Any VPS name lands in title and metadata escaped, and reads back unchanged."""
    cleaned = "".join(c for c in vps if c.isprintable()) or "x"
    meta = Meta(vps=cleaned, uid="u<&>'\"1", stop_intent="stop", stop_requested_at=12.25)
    xml = domain_xml.build(spec(vps=cleaned), meta, BOOT)
    assert from_domain_xml(xml) == meta
    assert ET.fromstring(xml).findtext("title") == cleaned


def test_domain_without_our_metadata_is_not_ours() -> None:
    """XML with no Hostplane metadata (or without a uid) parses as not managed."""
    assert from_domain_xml("<domain type='test'><name>x</name></domain>") is None
    other = ("<domain type='test'><name>x</name><metadata><hp:instance xmlns:hp='https://hostplane.io/xmlns/domain/1'>"
             "<hp:vps>a</hp:vps></hp:instance></metadata></domain>")
    assert from_domain_xml(other) is None


def test_direct_kernel_boot_when_image_has_kernel() -> None:
    """An image with a kernel boots it directly with its command line."""
    s = spec(image=DomainImage(name="tiny", kernel="k", initrd="i", cmdline="console=ttyS0"))
    boot = domain_xml.Boot("qemu", "/r", "/s", kernel="/pool/k", initrd="/pool/i")
    root = ET.fromstring(domain_xml.build(s, Meta(vps="web-1", uid="3f2a"), boot))
    assert root.findtext("os/kernel") == "/pool/k" and root.findtext("os/cmdline") == "console=ttyS0"
