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
    assert domain_xml.read_sizes(xml) == domain_xml.Sizes(1, 4, 128, 512, 128)


def test_boots_with_plan_memory_growth_is_a_virtio_mem_device_and_cgroup_limited() -> None:
    """The guest boots with the plan's memory (one NUMA cell); the rest is an empty virtio-mem device."""
    root = ET.fromstring(domain_xml.build(spec(), Meta(vps="web-1", uid="3f2a"), BOOT))
    cell = root.find("cpu/numa/cell")
    assert cell is not None and cell.get("memory") == str(128 * 1024) and cell.get("cpus") == "0-3"
    assert root.findtext("currentMemory") == str(128 * 1024)
    assert root.find("maxMemory").text == str(512 * 1024)  # type: ignore[union-attr]
    dev = root.find("devices/memory[@model='virtio-mem']")
    assert dev is not None and dev.findtext("target/size") == str(384 * 1024)
    assert dev.findtext("target/requested") == "0"
    assert root.findtext("memtune/hard_limit") == str((128 + domain_xml.QEMU_OVERHEAD_MIB) * 1024)
    no_limit = ET.fromstring(domain_xml.build(spec(), Meta(vps="web-1", uid="3f2a"),
                                              dataclasses.replace(BOOT, memory_limit=False)))
    assert no_limit.find("memtune") is None


def test_plugged_memory_is_what_the_device_reports_not_what_was_requested() -> None:
    """Live XML: boot memory + <current>; <requested> alone (guest without driver) is not memory it has."""
    root = ET.fromstring(domain_xml.build(spec(), Meta(vps="web-1", uid="3f2a"), BOOT))
    dev = root.find("devices/memory[@model='virtio-mem']")
    assert dev is not None
    update = domain_xml.virtio_mem_update(ET.tostring(root, encoding="unicode"), 385)
    assert update is not None and update[1] == 386  # whole 2 MiB blocks
    assert ET.fromstring(update[0]).findtext("target/requested") == str(258 * 1024)
    huge = domain_xml.virtio_mem_update(ET.tostring(root, encoding="unicode"), 4096)
    assert huge is not None and huge[1] == 512  # never beyond the device
    dev.find("target/requested").text = str(256 * 1024)  # type: ignore[union-attr]
    ET.SubElement(dev.find("target"), "current", unit="KiB").text = str(64 * 1024)  # type: ignore[arg-type]
    sizes = domain_xml.read_sizes(ET.tostring(root, encoding="unicode"))
    assert (sizes.memory_mib, sizes.requested_memory_mib, sizes.legacy_memory) == (192, 384, False)


def test_old_model_is_recognised_as_legacy() -> None:
    """A domain defined before ADR 013 (<memory> = maximum, balloon target = plan) reads as legacy."""
    old = ("<domain type='qemu'><name>x</name><memory unit='KiB'>16777216</memory>"
           "<currentMemory unit='KiB'>262144</currentMemory><vcpu current='1'>4</vcpu></domain>")
    sizes = domain_xml.read_sizes(old)
    assert sizes.legacy_memory and sizes.memory_mib == 256 and sizes.max_memory_mib == 16384


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
