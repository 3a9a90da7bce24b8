"""Build the tiny test guest from Debian packages: cloud kernel + busybox initramfs + blank disk.

The initramfs loads the virtio, network and isofs modules, mounts the NoCloud seed (label
`cidata`), prints `MemTotal` at boot and every 10 s (`hostplane-guest: memtotal N kB`; the kernel
onlines hot-plugged memory itself, `memhp_default_state=online`), prints its hostname and SSH keys
to the serial console, configures eth0 from the
seed's network-config (static addresses and default routes), runs a `#!` script given in
user-data (alone or as the text/x-shellscript part of a multipart user-data, as cloud-init
does) with each output line prefixed `hostplane-script:`, then serves a shell on the serial
console and powers off when the ACPI power button is pressed. `radvd` (with the libc it links)
is included so a test can play a rogue router. It boots under TCG in a few seconds: the first
VPS of `hostplane up` (the `test-guest` Image it registers, built into
`<data dir>/images/test-guest/`) and the
e2e suite's guest (cached under ~/.cache/hostplane-test-guest/<hash of this file>).

Run as `python -m api.testguest [DIR]` (or `make test-image`); prints the paths and sha256s.
It must never touch the host beyond its target directory and `apt-get download` into a temp dir.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

# Modules the init loads, in dependency order resolved from modules.dep at build time.
WANTED = ["virtio_pci", "virtio_blk", "isofs", "button", "evdev", "virtio_balloon", "virtio_net", "af_packet",
          "ipv6", "virtio_mem"]
# Hot-plugged memory (virtio-mem or DIMM) is onlined by the kernel itself, as udev does on a full distribution.
# swiotlb=noforce: a hot-plug range above 4 GiB makes Linux reserve a 64 MiB bounce buffer at boot, which a small
# guest cannot spare (128 MiB does not boot with it); virtio devices without an IOMMU never bounce (ADR 013).
CMDLINE = "console=ttyS0 panic=-1 quiet loglevel=3 memhp_default_state=online swiotlb=noforce"

INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules.order); do insmod /lib/modules/$m.ko 2>/dev/null; done
echo "hostplane-guest: booted kernel $(uname -r)"
# MemTotal at boot and every few seconds (and on SIGUSR1 to that loop): tests watch memory growth here.
memtotal() { echo "hostplane-guest: memtotal $(sed -n 's/^MemTotal: *\([0-9]*\) kB/\1/p' /proc/meminfo) kB"; }
memtotal
(trap memtotal USR1; while true; do sleep 10 & wait $!; memtotal; done) &
n=0
while [ $n -lt 50 ]; do
  for d in /dev/vd?; do
    [ -b "$d" ] || continue
    mount -t iso9660 -o ro "$d" /seed 2>/dev/null && break 2
  done
  n=$((n+1)); sleep 0.1
done
if [ -f /seed/meta-data ]; then
  h=$(sed -n 's/.*"local-hostname": "\(.*\)".*/\1/p' /seed/meta-data)
  hostname "$h"
  echo "hostplane-guest: hostname=$h"
  sed -n 's/^  "\(ssh-[^"]*\)",\{0,1\}$/hostplane-guest: ssh-key=\1/p' /seed/user-data
  echo "hostplane-guest: user-data follows"
  cat /seed/user-data
else
  echo "hostplane-guest: no cidata seed found"
fi
ip link set lo up
if [ -f /seed/network-config ] && ip link show eth0 >/dev/null 2>&1; then
  # Static addresses are ours at once: no duplicate address detection to wait for.
  echo 0 > /proc/sys/net/ipv6/conf/eth0/accept_dad 2>/dev/null
  ip link set eth0 up
  addrs=$(sed -n '/"addresses"/,/\]/p' /seed/network-config | grep -o '"[0-9a-fA-F.:]*/[0-9]*"' | tr -d '"')
  for a in $addrs; do ip addr add "$a" dev eth0; done
  for g in $(grep -o '"via": "[^"]*"' /seed/network-config | cut -d'"' -f4); do
    case "$g" in *:*) ip -6 route add default via "$g" dev eth0 ;; *) ip route add default via "$g" dev eth0 ;; esac
  done
  echo "hostplane-guest: net eth0 $(cat /sys/class/net/eth0/address) $(echo $addrs)"
fi
if [ -f /seed/user-data ]; then
  if head -n 1 /seed/user-data | grep -q '^#!'; then
    cp /seed/user-data /tmp/user-script
  else
    awk '/^Content-Type: text\/x-shellscript/ {s=1; h=1; next}
         s && h && /^$/ {h=0; next}
         s && !h && /^--/ {exit}
         s && !h {print}' /seed/user-data > /tmp/user-script
  fi
  if [ -s /tmp/user-script ]; then
    echo "hostplane-guest: running user-data script"
    (sh /tmp/user-script 2>&1; echo "exit $?") | while IFS= read -r line; do echo "hostplane-script: $line"; done &
  fi
fi
# A shell on the serial console (a PTY only the hypervisor's owner can open): tests drive the guest here.
stty -F /dev/ttyS0 -echo 2>/dev/null
setsid sh -c 'exec sh </dev/ttyS0 >/dev/ttyS0 2>&1' &
for d in /dev/vd?; do
  [ -b "$d" ] && echo "hostplane-guest: disk $d $(cat /sys/block/${d#/dev/}/size) sectors"
done
echo "hostplane-guest: ready"
# The ACPI power button arrives as an input event; any event on it means power off.
for e in /sys/class/input/event*; do
  if grep -q "Power Button" "$e/device/name" 2>/dev/null; then
    dd if=/dev/input/${e##*/} of=/dev/null bs=24 count=1 2>/dev/null
    echo "hostplane-guest: power button, powering off"
    sync
    poweroff -f
  fi
done
echo "hostplane-guest: no power button device; idling"
while true; do sleep 3600; done
"""


@dataclass(frozen=True)
class GuestImage:
    kernel: str
    initrd: str
    disk: str
    disk_sha256: str
    cmdline: str
    kernel_sha256: str = ""
    initrd_sha256: str = ""


def cache_root() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    key = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]
    return base / "hostplane-test-guest" / key


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _cpio_newc(entries: list[tuple[str, int, bytes]]) -> bytes:
    """A newc cpio archive of (path, mode, data); symlinks carry their target as data."""
    out = io.BytesIO()
    for ino, (name, mode, data) in enumerate([*entries, ("TRAILER!!!", 0, b"")], start=1):
        nb = name.encode() + b"\0"
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(nb), 0]
        out.write(b"070701" + b"".join(f"{v:08x}".encode() for v in fields))
        out.write(nb)
        out.write(b"\0" * ((4 - (110 + len(nb)) % 4) % 4))
        out.write(data)
        out.write(b"\0" * ((4 - len(data) % 4) % 4))
    return out.getvalue()


def _module_order(moddir: Path) -> list[tuple[str, Path]]:
    """WANTED and what they depend on, dependencies first (from each module's `depends=` modinfo)."""
    paths = {ko.name.removesuffix(".ko").replace("-", "_"): ko for ko in moddir.rglob("*.ko")}

    def depends(name: str) -> list[str]:
        data = paths[name].read_bytes()
        at = data.find(b"\0depends=")
        if at < 0:
            return []
        raw = data[at + 9:data.index(b"\0", at + 1)].decode()
        return [d.replace("-", "_") for d in raw.split(",") if d]

    order: list[str] = []

    def visit(n: str) -> None:
        if n in order or n not in paths:
            return
        for d in depends(n):
            visit(d)
        order.append(n)

    for w in WANTED:
        visit(w)
    return [(n, paths[n]) for n in order]


def _download(pkgs: list[str], dest: Path) -> None:
    subprocess.run(["apt-get", "download", "-q", *pkgs], cwd=dest, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def build(root: Path | None = None) -> GuestImage:
    """Build (or reuse) the guest; returns where its parts are. A partial build is never reused:
    the manifest is written last."""
    root = root or cache_root()
    manifest = root / "image.json"
    if manifest.exists():
        return GuestImage(**json.loads(manifest.read_text()))
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        os.chmod(t, 0o755)  # apt's sandbox user must be able to write the download
        deps = subprocess.run(["apt-cache", "depends", "linux-image-cloud-amd64"], check=True,
                              capture_output=True, text=True).stdout
        kpkg = next(w.split()[-1] for w in deps.splitlines() if "Depends:" in w and "linux-image-" in w)
        _download([kpkg, "busybox-static", "radvd", "libc6"], t)
        for deb in t.glob("*.deb"):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(t / "x")], check=True)
        x = t / "x"
        vmlinuz = next((x / "boot").glob("vmlinuz-*"))
        moddir = next((x / "lib" / "modules").iterdir())
        mods = _module_order(moddir)
        entries: list[tuple[str, int, bytes]] = []
        for d in ("bin", "dev", "proc", "sys", "seed", "lib", "lib/modules", "tmp", "etc", "run", "var",
                  "var/run", "lib64", "lib/x86_64-linux-gnu"):
            entries.append((d, 0o040755, b""))
        entries.append(("bin/busybox", 0o100755, (x / "bin" / "busybox").read_bytes()))
        entries.append(("bin/sh", 0o120777, b"busybox"))
        entries.append(("bin/radvd", 0o100755, (x / "usr" / "sbin" / "radvd").read_bytes()))
        libc = x / "lib" / "x86_64-linux-gnu"
        entries.append(("lib/x86_64-linux-gnu/libc.so.6", 0o100755, (libc / "libc.so.6").read_bytes()))
        entries.append(("lib64/ld-linux-x86-64.so.2", 0o100755, (libc / "ld-linux-x86-64.so.2").read_bytes()))
        entries.append(("init", 0o100755, INIT.encode()))
        entries.append(("modules.order", 0o100644, "\n".join(n for n, _ in mods).encode() + b"\n"))
        for name, path in mods:
            entries.append((f"lib/modules/{name}.ko", 0o100644, path.read_bytes()))
        initrd = root / "initrd.img"
        with open(initrd, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", mtime=0) as gz:
            gz.write(_cpio_newc(entries))
        kernel = root / "vmlinuz"
        shutil.copyfile(vmlinuz, kernel)
    disk = root / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    for p in (root, kernel, initrd, disk):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    img = GuestImage(kernel=str(kernel), initrd=str(initrd), disk=str(disk), disk_sha256=_sha256(disk),
                     cmdline=CMDLINE, kernel_sha256=_sha256(kernel), initrd_sha256=_sha256(initrd))
    manifest.write_text(json.dumps(asdict(img), indent=1))
    return img


if __name__ == "__main__":
    image = build(Path(sys.argv[1]) if len(sys.argv) > 1 else None)
    print(json.dumps(asdict(image), indent=1))
