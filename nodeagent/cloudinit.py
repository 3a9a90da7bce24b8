"""The NoCloud seed for one VPS: meta-data, user-data and network-config on an ISO labelled `cidata`.

Pure: `seed_files(spec)` returns the file contents and `build_iso(files)` the image bytes,
no I/O. Every document is serialised with `json` (valid YAML, cloud-init reads it) so no user
value is ever pasted into a template. The seed carries identity only (hostname, keys, password
hash, addresses); rebuilding a disk keeps it.
"""

from __future__ import annotations

import hashlib
import io
import json
from typing import Any

import pycdlib

from specs.domain import DomainSpec, IPAssignment


def _address(ip: IPAssignment) -> str:
    return f"{ip.address}/{ip.prefixLength}"


def network_config(spec: DomainSpec) -> dict[str, Any]:
    """Netplan v2 matching the NIC by MAC, static when addresses are allocated, else DHCP."""
    eth: dict[str, Any] = {"match": {"macaddress": spec.network.mac}, "set-name": "eth0"}
    addresses = [_address(ip) for ip in (spec.network.ipv4, spec.network.ipv6) if ip is not None]
    if addresses:
        eth["addresses"] = addresses
        routes = []
        if spec.network.ipv4 and spec.network.ipv4.gateway:
            routes.append({"to": "0.0.0.0/0", "via": spec.network.ipv4.gateway})
        if spec.network.ipv6 and spec.network.ipv6.gateway:
            routes.append({"to": "::/0", "via": spec.network.ipv6.gateway})
        if routes:
            eth["routes"] = routes
    else:
        eth["dhcp4"] = True
    if spec.network.dns:
        eth["nameservers"] = {"addresses": list(spec.network.dns)}
    return {"version": 2, "ethernets": {"eth0": eth}}


def user_data(spec: DomainSpec) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "hostname": spec.hostname,
        "preserve_hostname": False,
        "ssh_authorized_keys": list(spec.sshKeys),
    }
    if spec.passwordHash:
        doc["users"] = ["default", {"name": "root", "hashed_passwd": spec.passwordHash, "lock_passwd": False}]
        doc["ssh_pwauth"] = True
    return doc


def seed_files(spec: DomainSpec) -> dict[str, bytes]:
    """The three NoCloud files, deterministic for a given spec."""
    meta = {"instance-id": spec.uid, "local-hostname": spec.hostname}

    def dump(d: dict[str, Any]) -> bytes:
        return (json.dumps(d, indent=1, sort_keys=True) + "\n").encode()

    config = b"#cloud-config\n" + dump(user_data(spec))
    return {
        "meta-data": dump(meta),
        "user-data": config if spec.userScript is None else multipart(config, spec.userScript.encode()),
        "network-config": dump(network_config(spec)),
    }


def multipart(config: bytes, script: bytes) -> bytes:
    """cloud-init's multipart user-data: the cloud-config and a `#!` script, parts kept verbatim.

    The boundary is derived from both parts' digest, so it cannot occur in either.
    """
    boundary = "hostplane-" + hashlib.sha256(config + b"\0" + script).hexdigest()[:32]
    out = [f'Content-Type: multipart/mixed; boundary="{boundary}"\nMIME-Version: 1.0\n\n'.encode()]
    for ctype, body in (("text/cloud-config", config), ("text/x-shellscript", script)):
        out.append(f'--{boundary}\nContent-Type: {ctype}; charset="utf-8"\n'
                   'Content-Transfer-Encoding: 8bit\n\n'.encode())
        out.append(body if body.endswith(b"\n") else body + b"\n")
    out.append(f"--{boundary}--\n".encode())
    return b"".join(out)


def build_iso(files: dict[str, bytes], *, label: str = "cidata") -> bytes:
    """An ISO 9660 image (Rock Ridge + Joliet for the long names) with the given files at its root."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=label)
    for i, (name, data) in enumerate(sorted(files.items())):
        iso_name = f"/F{i}.;1"
        iso.add_fp(io.BytesIO(data), len(data), iso_name, rr_name=name, joliet_path=f"/{name}")
    out = io.BytesIO()
    iso.write_fp(out)
    iso.close()
    return out.getvalue()


def read_iso(data: bytes) -> dict[str, bytes]:
    """The files of a seed ISO by their Rock Ridge names (for checks and tests)."""
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(data))
    out: dict[str, bytes] = {}
    try:
        for child in iso.list_children(rr_path="/"):
            if child.is_dir():
                continue
            name = child.rock_ridge.name().decode()
            buf = io.BytesIO()
            iso.get_file_from_iso_fp(buf, rr_path=f"/{name}")
            out[name] = buf.getvalue()
    finally:
        iso.close()
    return out


def volume_label(data: bytes) -> str:
    """The ISO 9660 volume identifier (bytes 40..72 of the primary volume descriptor at 32 KiB)."""
    return data[32768 + 40:32768 + 72].decode("ascii", "replace").strip()
