"""Libvirt domain XML from a `DomainSpec`, and the few facts the agent reads back from XML.

Built with ElementTree so every value is escaped; never by string formatting. The vCPU and
memory maximums are fixed at define time (`maxVcpus`, `maxMemoryMiB`) so plans up to the
node's maxResize resize live. The guest boots with exactly its plan's memory; live growth is a
virtio-mem device the host plugs blocks into (ADR 013), never a balloon the guest may ignore,
and the QEMU process's cgroup gets a hard limit of plugged memory + `QEMU_OVERHEAD_MIB`.
The NIC follows the entry's network mode (a tap on the host
bridge, on the pool gateway's isolated NAT network, or user-mode) and, unless user-mode,
references the anti-spoofing filter with the booking's addresses (`netfilter`). No console
listens on TCP: graphics on a per-domain UNIX socket, the serial console on a PTY the agent's
libvirt owns, its output logged to a file.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from nodeagent import netfilter
from nodeagent.metadata import NS, PREFIX, Meta
from specs.domain import DomainSpec

_SAFE = re.compile(r"[^a-zA-Z0-9-]")

# What QEMU itself may use beyond the guest's plugged memory before its cgroup limit hits (ADR 013:
# ~34 MiB measured at idle under TCG; the rest is room for TCG's translation cache and I/O buffers).
QEMU_OVERHEAD_MIB = 256
# virtio-mem plugs in blocks of this size; the device's size is a multiple of it.
VIRTIO_MEM_BLOCK_MIB = 2


def hard_limit_mib(plugged_mib: int) -> int:
    """The cgroup memory limit of a domain with `plugged_mib` of guest memory."""
    return plugged_mib + QEMU_OVERHEAD_MIB


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
    # For entries without a network mode: "user" (user-mode NIC) or a libvirt network name.
    network: str = "user"
    guest_agent: bool = True
    # The VNC socket's path (None: no graphics device at all).
    graphics_socket: str | None = None
    # `<memtune><hard_limit>`: libvirt refuses memory tuning in session mode (no cgroups there).
    memory_limit: bool = True


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
    boot_mem = spec.memoryMiB
    grow = (max(spec.maxMemoryMiB, boot_mem) - boot_mem) // VIRTIO_MEM_BLOCK_MIB * VIRTIO_MEM_BLOCK_MIB
    if grow:
        _sub(dom, "maxMemory", str((boot_mem + grow) * 1024), unit="KiB", slots="1")
    # <memory> counts the memory devices too (libvirt's own accounting); the guest boots with the NUMA cell's.
    _sub(dom, "memory", str((boot_mem + grow) * 1024), unit="KiB")
    _sub(dom, "currentMemory", str(boot_mem * 1024), unit="KiB")
    if boot.memory_limit:
        tune = _sub(dom, "memtune")
        _sub(tune, "hard_limit", str(hard_limit_mib(boot_mem) * 1024), unit="KiB")
    _sub(dom, "vcpu", str(max_vcpus), placement="static", current=str(spec.vcpus))
    cpu = _sub(dom, "cpu")
    numa = _sub(cpu, "numa")
    _sub(numa, "cell", id="0", cpus=f"0-{max_vcpus - 1}", memory=str(boot_mem * 1024), unit="KiB")

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

    nic = _interface(dev, spec, boot)
    if spec.bandwidth and (spec.bandwidth.inboundKbps or spec.bandwidth.outboundKbps):
        bw = _sub(nic, "bandwidth")
        # libvirt counts kilobytes per second; the spec speaks kilobits.
        if spec.bandwidth.inboundKbps:
            _sub(bw, "inbound", average=str(max(1, spec.bandwidth.inboundKbps // 8)))
        if spec.bandwidth.outboundKbps:
            _sub(bw, "outbound", average=str(max(1, spec.bandwidth.outboundKbps // 8)))

    # A PTY, not a socket or port: only libvirt (the agent's connection) can open it.
    serial = _sub(dev, "serial", type="pty")
    if boot.serial_log:
        _sub(serial, "log", file=boot.serial_log, append="on")
    _sub(serial, "target", port="0")
    console = _sub(dev, "console", type="pty")
    _sub(console, "target", type="serial", port="0")
    if boot.guest_agent:
        chan = _sub(dev, "channel", type="unix")
        _sub(chan, "target", type="virtio", name="org.qemu.guest_agent.0")
    if boot.graphics_socket:
        gfx = _sub(dev, "graphics", type="vnc")
        _sub(gfx, "listen", type="socket", socket=boot.graphics_socket)
    # The balloon only lets the host reclaim from a willing guest; the limit is what is plugged.
    _sub(dev, "memballoon", model="virtio")
    if grow:
        _sub(dev, "memory", model="virtio-mem").append(virtio_mem_target(grow, 0))
    return ET.tostring(dom, encoding="unicode")


def virtio_mem_target(size_mib: int, requested_mib: int) -> ET.Element:
    target = ET.Element("target")
    _sub(target, "size", str(size_mib * 1024), unit="KiB")
    _sub(target, "node", "0")
    _sub(target, "block", str(VIRTIO_MEM_BLOCK_MIB * 1024), unit="KiB")
    _sub(target, "requested", str(requested_mib * 1024), unit="KiB")
    return target


def virtio_mem_update(domain_xml: str, total_mib: int) -> tuple[str, int] | None:
    """The live virtio-mem device of `domain_xml` asked to plug so the guest has `total_mib` in all
    (whole blocks, at most the device's size, never below what it was asked before), and that total.
    None: the domain has no virtio-mem device."""
    root = ET.fromstring(domain_xml)
    dev = root.find("devices/memory[@model='virtio-mem']")
    target = dev.find("target") if dev is not None else None
    if dev is None or target is None:
        return None
    boot = round(sum(_kib_attr(c) for c in root.findall("cpu/numa/cell")) / 1024)
    size = round(_kib(target.find("size")) / 1024)
    before = round(_kib(target.find("requested")) / 1024)
    blocks = -(-max(0, total_mib - boot) // VIRTIO_MEM_BLOCK_MIB)
    requested = max(before, min(size, blocks * VIRTIO_MEM_BLOCK_MIB))
    req = target.find("requested")
    if req is None:
        req = _sub(target, "requested")
    req.text = str(requested * 1024)
    req.set("unit", "KiB")
    cur = target.find("current")
    if cur is not None:
        target.remove(cur)
    return ET.tostring(dev, encoding="unicode"), boot + requested


def nat_network_of(spec: DomainSpec) -> tuple[str, str] | None:
    """(network, bridge) of the isolated network an isolated-nat entry needs: its pool gateway's NAT
    network, or the address-less isolated one while it has no IPv4 with a gateway."""
    if spec.network.mode != "isolated-nat":
        return None
    v4 = spec.network.ipv4
    if v4 is None or v4.gateway is None:
        return netfilter.NO_ADDRESS_NETWORK
    return netfilter.nat_network(v4.gateway, v4.prefixLength)


def _interface(dev: ET.Element, spec: DomainSpec, boot: Boot) -> ET.Element:
    net = spec.network
    mode = net.mode
    if mode is None:
        # An entry from before network modes: the agent's configured attachment, as it was.
        if boot.network == "user":
            nic = _sub(dev, "interface", type="user")
        else:
            nic = _sub(dev, "interface", type="network")
            _sub(nic, "source", network=boot.network)
    elif mode == "user":
        nic = _sub(dev, "interface", type="user")
    elif mode == "bridge":
        nic = _sub(dev, "interface", type="bridge")
        # A VLAN is set on the tap's bridge port by the agent (`hostnet.ensure_port_vlan`): libvirt 9.0
        # refuses <vlan> on a Linux bridge ("vlan tag not supported for this connection type").
        _sub(nic, "source", bridge=net.bridge or "")
    else:
        nat = nat_network_of(spec)
        assert nat is not None
        nic = _sub(dev, "interface", type="network")
        _sub(nic, "source", network=nat[0])
    if mode in netfilter.TAP_PREFIX:
        _sub(nic, "target", dev=netfilter.tap_name(spec.uid, mode))
    _sub(nic, "mac", address=net.mac)
    _sub(nic, "model", type="virtio")
    params = netfilter.params(spec)
    if params is not None:
        set_filter(nic, params)
    return nic


def set_filter(nic: ET.Element, params: netfilter.Params) -> None:
    """Replace the NIC's filter reference with `hostplane-vps` carrying `params`."""
    for old in nic.findall("filterref"):
        nic.remove(old)
    ref = _sub(nic, "filterref", filter=netfilter.FILTER_NAME)
    for name, value in params:
        _sub(ref, "parameter", name=name, value=value)


def interface_xml(domain_xml: str, mac: str) -> ET.Element | None:
    """The <interface> with `mac` in a domain's XML."""
    root = ET.fromstring(domain_xml)
    for nic in root.findall("devices/interface"):
        m = nic.find("mac")
        if m is not None and m.get("address", "").lower() == mac.lower():
            return nic
    return None


def read_filter(domain_xml: str, mac: str) -> netfilter.Params | None:
    """The `hostplane-vps` parameters on the NIC with `mac` (None: no such NIC or no filter on it)."""
    nic = interface_xml(domain_xml, mac)
    if nic is None:
        return None
    ref = nic.find(f"filterref[@filter='{netfilter.FILTER_NAME}']")
    if ref is None:
        return None
    return netfilter.canonical_params((p.get("name", ""), p.get("value", "")) for p in ref.findall("parameter"))


@dataclass(frozen=True)
class Sizes:
    vcpus: int
    max_vcpus: int
    # What the guest has: boot memory + what its virtio-mem device has plugged (old model: the balloon target).
    memory_mib: int
    max_memory_mib: int
    # Boot memory + what the virtio-mem device was asked to plug.
    requested_memory_mib: int = 0
    # Defined before ADR 013: booted with the maximum, limited only by the balloon.
    legacy_memory: bool = False


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
    vmem = root.find("devices/memory[@model='virtio-mem']")
    cells = root.findall("cpu/numa/cell")
    if vmem is not None or (cells and root.find("maxMemory") is None and root.find("devices/memory") is None):
        # The host-plugged model: the cells are the boot memory, the device adds what it has plugged.
        boot = round(sum(_kib_attr(c) for c in cells) / 1024) if cells else max_mem
        requested = round(_kib(vmem.find("target/requested")) / 1024) if vmem is not None else 0
        plugged = round(_kib(vmem.find("target/current")) / 1024) if vmem is not None else 0
        # <currentMemory> (the balloon's view: never above what is plugged on QEMU) stands in for the device
        # on libvirt's test driver, which plugs nothing.
        has = max(boot + plugged, round(_kib(root.find("currentMemory")) / 1024))
        return Sizes(cur_vcpus, max_vcpus, has, max_mem, boot + requested, legacy_memory=False)
    cur = root.find("currentMemory")
    cur_mem = round(_kib(cur) / 1024) if cur is not None else max_mem
    return Sizes(cur_vcpus, max_vcpus, cur_mem, max_mem, cur_mem, legacy_memory=max_mem > cur_mem)


def _kib_attr(cell: ET.Element) -> int:
    unit = cell.get("unit", "KiB")
    scale = {"KiB": 1, "k": 1, "MiB": 1024, "M": 1024, "GiB": 1024**2, "G": 1024**2}
    return int(cell.get("memory", "0")) * scale.get(unit, 1)


def disk_sources(domain_xml: str) -> list[str]:
    root = ET.fromstring(domain_xml)
    return [s.get("file", "") for s in root.findall("devices/disk/source") if s.get("file")]
