"""The node contract: `DomainSpec` (what one VM should be) and `ObservedDomain` (what it is).

The VPS resolver writes a `DomainSpec` under `/nodes/<node>/desired/<vps>`; the node's
agent reads nothing else. It is self-contained: no customer, no price, no other node.
The agent writes `ObservedDomain` under `/nodes/<node>/observed/<vps>`. A domain is deleted only
for a `Tombstone` bound to its uid under `/nodes/<node>/tombstones/<uid>`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from specs.meta import Condition, Model

DesiredPower = Literal["Running", "Stopped", "Paused"]
ObservedPower = Literal["Running", "Stopped", "Paused", "Crashed", "Absent", "ShuttingDown", "Unknown"]


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
    network: DomainNetwork
    bandwidth: BandwidthLimit | None = None
    rebuildGeneration: int = 0
    restartGeneration: int = 0
    shutdownGraceSeconds: int = Field(default=60, ge=0)


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
