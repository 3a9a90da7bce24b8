"""The node contract: `DomainSpec` (what one VM should be) and `ObservedDomain` (what it is).

The VPS resolver writes a `DomainSpec` under `/nodes/<node>/desired/<vps>`; the node's
agent reads nothing else. It is self-contained: no customer, no price, no other node.
The agent writes `ObservedDomain` under `/nodes/<node>/observed/<vps>`. A domain is deleted only
for a `Tombstone` bound to its uid under `/nodes/<node>/tombstones/<uid>`.
"""

from __future__ import annotations

import ipaddress
from datetime import datetime
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from specs.meta import Condition, Model, check_text

DesiredPower = Literal["Running", "Stopped", "Paused"]
ObservedPower = Literal["Running", "Stopped", "Paused", "Crashed", "Absent", "ShuttingDown", "Unknown"]
# How a VPS NIC attaches to the host (docs/operations.md, "Network modes"):
#   bridge        a tap on the host bridge that carries the public network (production)
#   isolated-nat  a private libvirt NAT network per pool gateway; guests never reach the host
#   user          QEMU user-mode (SLIRP): a developer choice; it reaches the host's loopback
NetworkMode = Literal["bridge", "isolated-nat", "user"]
# A Linux interface name: at most 15 bytes, no '/', whitespace or ':'.
IFNAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$"
MAX_EXTRA_IPS = 64


class DomainImage(Model):
    name: str
    path: str | None = None
    url: str | None = None
    sha256: str | None = None
    format: Literal["qcow2", "raw"] = "qcow2"
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str | None = None


class IPAssignment(Model):
    address: str
    prefixLength: int
    gateway: str | None = None


class DomainNetwork(Model):
    mac: str = Field(pattern=r"^52:54:00(:[0-9a-f]{2}){3}$")
    ipv4: IPAssignment | None = None
    ipv6: IPAssignment | None = None
    dns: list[str] = Field(default_factory=list)
    # None: the agent's own default (entries written before nodes chose a mode).
    mode: NetworkMode | None = None
    bridge: str | None = Field(default=None, pattern=IFNAME_PATTERN, validate_default=True)
    vlan: int | None = Field(default=None, ge=1, le=4094)
    # Further addresses booked to the VPS (IPv4 or IPv6); the host filter lets them through.
    extraIPs: list[str] = Field(default_factory=list, max_length=MAX_EXTRA_IPS)

    @field_validator("bridge")
    @classmethod
    def _bridge(cls, v: str | None, info: ValidationInfo) -> str | None:
        mode = info.data.get("mode")
        if mode == "bridge" and v is None:
            raise ValueError("mode bridge needs the host bridge's name")
        if mode != "bridge" and v is not None:
            raise ValueError(f"a bridge is only used in mode bridge, not {mode}")
        return v

    @field_validator("extraIPs")
    @classmethod
    def _extra_ips(cls, v: list[str]) -> list[str]:
        out = [str(ipaddress.ip_address(a)) for a in v]
        if len(set(out)) != len(out):
            raise ValueError("extraIPs lists an address twice")
        return out


class BandwidthLimit(Model):
    inboundKbps: int | None = None
    outboundKbps: int | None = None


class DomainSpec(Model):
    vps: str
    uid: str
    vcpus: int = Field(gt=0)
    memoryMiB: int = Field(gt=0)
    diskGiB: int = Field(gt=0)
    maxVcpus: int = Field(gt=0)
    maxMemoryMiB: int = Field(gt=0)
    power: DesiredPower = "Running"
    # Why the power is what it is, e.g. "suspended: nonpayment"; shown in status.
    powerReason: str = ""
    # Seconds to stay Paused before a suspended domain is shut off (None: stay paused).
    shutdownAfterPausedSeconds: int | None = None
    image: DomainImage
    hostname: str
    sshKeys: list[str] = Field(default_factory=list)
    passwordHash: str | None = None
    # A `#!` script the guest runs at first boot (cloud-init's script user-data), beside the cloud-config.
    userScript: str | None = Field(default=None, max_length=16384, pattern=r"^#!")
    network: DomainNetwork
    bandwidth: BandwidthLimit | None = None
    rebuildGeneration: int = 0
    restartGeneration: int = 0
    shutdownGraceSeconds: int = Field(default=60, ge=0)

    @field_validator("userScript")
    @classmethod
    def _user_script(cls, v: str | None) -> str | None:
        return None if v is None else check_text(v, multiline=True)


class Tombstone(Model):
    """The explicit order to delete one VPS incarnation's domain and volumes on a node.

    Written by the controllers' deletion path (or an operator's orphan purge) under
    `/nodes/<node>/tombstones/<uid>`; the agent deletes a domain only for a tombstone whose uid
    matches the domain's, then removes the tombstone.
    """

    vps: str
    uid: str
    reason: Literal["Deleted", "Moved", "Purged"] = "Deleted"
    at: datetime | None = None


class ObservedDomain(Model):
    vps: str
    uid: str
    domainName: str
    power: ObservedPower
    powerReason: str = ""
    vcpus: int | None = None
    memoryMiB: int | None = None
    diskGiB: int | None = None
    maxVcpus: int | None = None
    maxMemoryMiB: int | None = None
    # resourceVersion of the desired entry this observation has converged to.
    observedGeneration: int | None = None
    rebuildGeneration: int = 0
    restartGeneration: int = 0
    conditions: list[Condition] = Field(default_factory=list)
    lastError: str = ""
    since: datetime | None = None
