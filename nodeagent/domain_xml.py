"""Libvirt domain XML from a `DomainSpec`, and the few facts the agent reads back from XML.

Built with ElementTree so every value is escaped; never by string formatting. The vCPU and
memory maximums are fixed at define time (`maxVcpus`, `maxMemoryMiB`) so plans up to the
node's maxResize resize live. Everything the host exposes stays on loopback: VNC listens on
127.0.0.1 and the NIC is user-mode (or an isolated libvirt network named by the agent).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from nodeagent.metadata import NS, PREFIX, Meta
from specs.domain import DomainSpec

_SAFE = re.compile(r"[^a-zA-Z0-9-]")


def domain_name(uid: str) -> str:
    """Stable libvirt name for a VPS: derived from its uid, so a re-created VPS never collides."""
    return "hp-" + _SAFE.sub("-", uid)[:60]


def root_volume_name(name: str) -> str:
    return f"{name}-root.qcow2"


def seed_volume_name(name: str) -> str:
    return f"{name}-seed.iso"


@dataclass(frozen=True)
class Boot:
    """Host-side paths and hypervisor flavour for one domain (what the spec cannot know)."""

    domain_type: str  # "kvm", "qemu" or "test"
    root_disk: str
    seed: str
    serial_log: str | None = None
    kernel: str | None = None
    initrd: str | None = None
    arch: str | None = "x86_64"
    machine: str | None = "pc"
    # "user" (user-mode NIC, nothing leaves the host unless the guest connects out) or a libvirt network name.
    network: str = "user"
    guest_agent: bool = True


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrs)
    if text is not None:
        el.text = text
    return el


def build(spec: DomainSpec, meta: Meta, boot: Boot, *, uuid: str | None = None) -> str:
    """The full domain XML for `spec`, carrying `meta` in the Hostplane namespace.

    `uuid`: the existing domain's, when redefining (libvirt refuses a new uuid for a known name).
    """
    ET.register_namespace(PREFIX, NS)
    dom = ET.Element("domain", {"type": boot.domain_type})
    _sub(dom, "name", domain_name(spec.uid))
    if uuid:
        _sub(dom, "uuid", uuid)
    _sub(dom, "title", spec.vps)
    _sub(dom, "description", f"Hostplane VPS {spec.vps}")
    md = _sub(dom, "metadata")
    md.append(meta.element())
    max_vcpus = max(spec.maxVcpus, spec.vcpus)
    max_mem = max(spec.maxMemoryMiB, spec.memoryMiB)
    _sub(dom, "memory", str(max_mem * 1024), unit="KiB")
    _sub(dom, "currentMemory", str(spec.memoryMiB * 1024), unit="KiB")
    _sub(dom, "vcpu", str(max_vcpus), placement="static", current=str(spec.vcpus))

    os_el = _sub(dom, "os")
    type_attrs: dict[str, str] = {}
    if boot.arch:
        type_attrs["arch"] = boot.arch
    if boot.machine:
        type_attrs["machine"] = boot.machine
    _sub(os_el, "type", "hvm", **type_attrs)
    if boot.kernel:
        _sub(os_el, "kernel", boot.kernel)
        if boot.initrd:
            _sub(os_el, "initrd", boot.initrd)
        if spec.image.cmdline:
            _sub(os_el, "cmdline", spec.image.cmdline)
    else:
        _sub(os_el, "boot", dev="hd")
    features = _sub(dom, "features")
    _sub(features, "acpi")
    _sub(features, "apic")
    _sub(dom, "on_poweroff", "destroy")
    _sub(dom, "on_reboot", "restart")
    # A crash leaves the domain off with reason "crashed"; the agent restarts it with backoff.
    _sub(dom, "on_crash", "destroy")

    dev = _sub(dom, "devices")
    disk = _sub(dev, "disk", type="file", device="disk")
    _sub(disk, "driver", name="qemu", type="qcow2", discard="unmap")
    _sub(disk, "source", file=boot.root_disk)
    _sub(disk, "target", dev="vda", bus="virtio")
    seed = _sub(dev, "disk", type="file", device="disk")
    _sub(seed, "driver", name="qemu", type="raw")
    _sub(seed, "source", file=boot.seed)
    _sub(seed, "target", dev="vdb", bus="virtio")
    _sub(seed, "readonly")

    if boot.network == "user":
        nic = _sub(dev, "interface", type="user")
    else:
        nic = _sub(dev, "interface", type="network")
        _sub(nic, "source", network=boot.network)
    _sub(nic, "mac", address=spec.network.mac)
    _sub(nic, "model", type="virtio")
    if spec.bandwidth and (spec.bandwidth.inboundKbps or spec.bandwidth.outboundKbps):
        bw = _sub(nic, "bandwidth")
        # libvirt counts kilobytes per second; the spec speaks kilobits.
        if spec.bandwidth.inboundKbps:
            _sub(bw, "inbound", average=str(max(1, spec.bandwidth.inboundKbps // 8)))
        if spec.bandwidth.outboundKbps:
            _sub(bw, "outbound", average=str(max(1, spec.bandwidth.outboundKbps // 8)))

    if boot.serial_log:
        serial = _sub(dev, "serial", type="file")
        _sub(serial, "source", path=boot.serial_log, append="on")
        _sub(serial, "target", port="0")
        console = _sub(dev, "console", type="file")
        _sub(console, "source", path=boot.serial_log, append="on")
        _sub(console, "target", type="serial", port="0")
    if boot.guest_agent:
        chan = _sub(dev, "channel", type="unix")
        _sub(chan, "target", type="virtio", name="org.qemu.guest_agent.0")
    gfx = _sub(dev, "graphics", type="vnc", port="-1", autoport="yes", listen="127.0.0.1")
    _sub(gfx, "listen", type="address", address="127.0.0.1")
    _sub(dev, "memballoon", model="virtio")
    return ET.tostring(dom, encoding="unicode")


@dataclass(frozen=True)
class Sizes:
    vcpus: int
    max_vcpus: int
    memory_mib: int
    max_memory_mib: int


def _kib(el: ET.Element | None) -> int:
    if el is None or el.text is None:
        return 0
    unit = el.get("unit", "KiB")
    scale = {"b": 1 / 1024, "bytes": 1 / 1024, "KiB": 1, "k": 1, "MiB": 1024, "M": 1024, "GiB": 1024**2, "G": 1024**2}
    return int(int(el.text) * scale.get(unit, 1))


def read_sizes(domain_xml: str) -> Sizes:
    """Current and maximum vCPU and memory as the XML says (live XML for a running domain)."""
    root = ET.fromstring(domain_xml)
    vcpu = root.find("vcpu")
    max_vcpus = int(vcpu.text) if vcpu is not None and vcpu.text else 0
    cur_vcpus = int(vcpu.get("current", max_vcpus)) if vcpu is not None else 0
    max_mem = round(_kib(root.find("memory")) / 1024)
    cur = root.find("currentMemory")
    cur_mem = round(_kib(cur) / 1024) if cur is not None else max_mem
    return Sizes(cur_vcpus, max_vcpus, cur_mem, max_mem)


def disk_sources(domain_xml: str) -> list[str]:
    root = ET.fromstring(domain_xml)
    return [s.get("file", "") for s in root.findall("devices/disk/source") if s.get("file")]
