"""The kinds of DESIGN.md: Plan, Image, Node, IPPool, Customer, Subscription, VPS.

Specs are what people write; statuses are what controllers write, under separate etcd
keys. Every model forbids unknown fields so a typo is an error, not a silent default.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from specs.meta import API_VERSION, Condition, Labels, Model, Name, ObjectMeta
from specs.money import Currency, Money

PositiveInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]

_HOSTNAME = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SSH_TYPES = (
    "ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521", "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com",
)
_EMAIL = re.compile(r"^[^@\s<>\"']{1,64}@[A-Za-z0-9.-]{1,253}\.[A-Za-z]{2,63}$")


def _hostname(value: str) -> str:
    if not _HOSTNAME.match(value):
        raise ValueError("must be an RFC 1123 hostname (lowercase labels of a-z, 0-9, '-')")
    return value


def _ssh_key(value: str) -> str:
    import base64
    import binascii
    import struct

    parts = value.strip().split()
    if len(parts) < 2 or parts[0] not in _SSH_TYPES:
        raise ValueError(f"must be an SSH public key of type {', '.join(_SSH_TYPES)}")
    try:
        blob = base64.b64decode(parts[1], validate=True)
        (n,) = struct.unpack(">I", blob[:4])
        embedded = blob[4 : 4 + n].decode("ascii")
    except (binascii.Error, struct.error, UnicodeDecodeError) as exc:
        raise ValueError("SSH public key data is not valid base64 key material") from exc
    if embedded != parts[0]:
        raise ValueError("SSH public key type does not match its key data")
    if any(ord(ch) < 32 for ch in value):
        raise ValueError("SSH public key must be a single line")
    return value.strip()


def _email(value: str) -> str:
    if not _EMAIL.match(value):
        raise ValueError("must be an e-mail address")
    return value


Hostname = Annotated[str, AfterValidator(_hostname)]
SSHKey = Annotated[str, AfterValidator(_ssh_key)]
Email = Annotated[str, AfterValidator(_email)]


class Resource(Model):
    """Envelope shared by every kind. Subclasses fix `kind`, `spec` and `status`."""

    KIND: ClassVar[str] = ""
    PLURAL: ClassVar[str] = ""
    ALIASES: ClassVar[tuple[str, ...]] = ()

    apiVersion: Literal["hostplane.io/v1"] = API_VERSION
    kind: str
    metadata: ObjectMeta
    spec: Any
    status: Any = None

    @field_validator("kind")
    @classmethod
    def _kind_matches(cls, v: str) -> str:
        if cls.KIND and v != cls.KIND:
            raise ValueError(f"expected kind {cls.KIND!r}")
        return v

    @property
    def name(self) -> str:
        return self.metadata.name


# ---------------------------------------------------------------- Plan

class BillingPolicy(Model):
    """Per-plan or per-customer overrides of the billing clock (DESIGN.md defaults)."""

    graceDays: NonNegInt | None = None
    suspendDays: NonNegInt | None = None
    retentionDays: NonNegInt | None = None
    suspendShutdownAfterHours: NonNegInt | None = None


class Price(Money):
    period: Literal["month"] = "month"


class Bandwidth(Model):
    inboundKbps: PositiveInt | None = None
    outboundKbps: PositiveInt | None = None


class PlanSpec(Model):
    vcpus: PositiveInt
    memoryMiB: PositiveInt
    diskGiB: PositiveInt
    trafficGiB: PositiveInt | None = None
    bandwidth: Bandwidth | None = None
    price: Price
    billingInterval: Literal["hour", "day"] = "hour"
    billing: BillingPolicy = Field(default_factory=BillingPolicy)
    description: str = ""
    public: bool = True


class Plan(Resource):
    KIND = "Plan"
    PLURAL = "plans"
    ALIASES = ("plan", "tariff", "tariffs")
    kind: Literal["Plan"] = "Plan"
    spec: PlanSpec
    status: dict[str, Any] | None = None


# ---------------------------------------------------------------- Image

class ImageSource(Model):
    path: str | None = None
    url: str | None = None
    sha256: str | None = None
    format: Literal["qcow2", "raw"] = "qcow2"

    @model_validator(mode="after")
    def _one_source(self) -> ImageSource:
        if (self.path is None) == (self.url is None):
            raise ValueError("exactly one of path or url is required")
        if self.url is not None:
            if not self.url.startswith(("http://", "https://", "file://")):
                raise ValueError("url must be http://, https:// or file://")
            if self.sha256 is None:
                raise ValueError("sha256 is required for a url source")
        if self.path is not None and not self.path.startswith("/"):
            raise ValueError("path must be absolute")
        if self.sha256 is not None and not _SHA256.match(self.sha256):
            raise ValueError("sha256 must be 64 lowercase hex digits")
        return self


class ImageSpec(Model):
    os: str = Field(min_length=1, max_length=64)
    version: str = Field(min_length=1, max_length=64)
    source: ImageSource
    minDiskGiB: PositiveInt = 1
    cloudInit: bool = True
    # Boot straight into a kernel/initrd pair (small test and rescue images).
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str | None = None


class Image(Resource):
    KIND = "Image"
    PLURAL = "images"
    ALIASES = ("image",)
    kind: Literal["Image"] = "Image"
    spec: ImageSpec
    status: dict[str, Any] | None = None


# ---------------------------------------------------------------- Node

class Capacity(Model):
    vcpus: PositiveInt
    memoryMiB: PositiveInt
    diskGiB: PositiveInt


class Overcommit(Model):
    cpu: float = Field(default=4.0, ge=1.0, le=64.0)
    memory: float = Field(default=1.0, ge=1.0, le=4.0)


class MaxResize(Model):
    vcpus: PositiveInt = 8
    memoryMiB: PositiveInt = 16384


class NodeSpec(Model):
    libvirtURI: str = "qemu:///system"
    capacity: Capacity
    overcommit: Overcommit = Field(default_factory=Overcommit)
    maxResize: MaxResize = Field(default_factory=MaxResize)
    schedulable: bool = True


class NodeStatus(Model):
    state: Literal["Ready", "NotReady", "Unknown"] = "Unknown"
    lastHeartbeat: datetime | None = None
    allocated: dict[str, int] = Field(default_factory=dict)
    capacityObserved: dict[str, int] = Field(default_factory=dict)
    unmanagedDomains: int = 0
    conditions: list[Condition] = Field(default_factory=list)


class Node(Resource):
    KIND = "Node"
    PLURAL = "nodes"
    ALIASES = ("node",)
    kind: Literal["Node"] = "Node"
    spec: NodeSpec
    status: NodeStatus | None = None


# ---------------------------------------------------------------- IPPool

class IPPoolSpec(Model):
    cidr: str
    gateway: str
    ipv6Prefix: str | None = None
    ipv6Gateway: str | None = None
    dns: list[str] = Field(default_factory=lambda: ["1.1.1.1", "9.9.9.9"])
    nodeSelector: Labels = Field(default_factory=dict)
    reserved: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _addresses(self) -> IPPoolSpec:
        try:
            net = ipaddress.IPv4Network(self.cidr, strict=True)
        except ValueError as exc:
            raise ValueError(f"cidr: {exc}") from exc
        try:
            gw = ipaddress.IPv4Address(self.gateway)
        except ValueError as exc:
            raise ValueError(f"gateway: {exc}") from exc
        if gw not in net:
            raise ValueError(f"gateway {gw} is outside {net}")
        for r in self.reserved:
            try:
                if "/" in r:
                    sub = ipaddress.IPv4Network(r, strict=True)
                    if not sub.subnet_of(net):
                        raise ValueError(f"reserved {r} is outside {net}")
                elif ipaddress.IPv4Address(r) not in net:
                    raise ValueError(f"reserved {r} is outside {net}")
            except ipaddress.AddressValueError as exc:
                raise ValueError(f"reserved {r!r}: {exc}") from exc
        if self.ipv6Prefix is not None:
            try:
                ipaddress.IPv6Network(self.ipv6Prefix, strict=True)
            except ValueError as exc:
                raise ValueError(f"ipv6Prefix: {exc}") from exc
        for d in self.dns:
            ipaddress.ip_address(d)
        return self


class IPPool(Resource):
    KIND = "IPPool"
    PLURAL = "ippools"
    ALIASES = ("ippool", "pool", "pools")
    kind: Literal["IPPool"] = "IPPool"
    spec: IPPoolSpec
    status: dict[str, Any] | None = None


# ---------------------------------------------------------------- Customer

class CustomerSpec(Model):
    email: Email
    displayName: str = ""
    currency: Currency = "EUR"
    creditLimit: str = "0"
    suspendHoldUntil: datetime | None = None
    billing: BillingPolicy = Field(default_factory=BillingPolicy)

    @model_validator(mode="after")
    def _credit(self) -> CustomerSpec:
        from specs.money import format_minor, to_minor

        minor = to_minor(self.creditLimit, self.currency)
        if minor < 0:
            raise ValueError("creditLimit must be >= 0")
        object.__setattr__(self, "creditLimit", format_minor(minor, self.currency))
        return self


class CustomerStatus(Model):
    balance: str = "0.00"
    balanceMinor: int = 0
    state: str = "Active"


class Customer(Resource):
    KIND = "Customer"
    PLURAL = "customers"
    ALIASES = ("customer",)
    kind: Literal["Customer"] = "Customer"
    spec: CustomerSpec
    status: CustomerStatus | None = None


# ---------------------------------------------------------------- Subscription

SubscriptionState = Literal["Active", "Overdue", "Suspended", "Terminated"]
SuspendReason = Literal["nonpayment", "abuse", "admin", "customer"]


class SubscriptionSpec(Model):
    customer: Name
    plan: Name
    autoRenew: bool = True
    billingMode: Literal["internal", "external"] = "internal"
    suspendHoldUntil: datetime | None = None
    # An operator's suspension (abuse/admin); billing's own is in status.
    suspend: SuspendReason | None = None
    cancelled: bool = False


class SubscriptionStatus(Model):
    state: SubscriptionState = "Active"
    suspendReason: SuspendReason | None = None
    overdueSince: datetime | None = None
    suspendedAt: datetime | None = None
    terminatedAt: datetime | None = None
    paidUntil: datetime | None = None
    conditions: list[Condition] = Field(default_factory=list)


class Subscription(Resource):
    KIND = "Subscription"
    PLURAL = "subscriptions"
    ALIASES = ("subscription", "sub", "subs")
    kind: Literal["Subscription"] = "Subscription"
    spec: SubscriptionSpec
    status: SubscriptionStatus | None = None


# ---------------------------------------------------------------- VPS

Phase = Literal[
    "Pending", "Scheduled", "Provisioning", "Running", "Stopped", "Paused", "Suspended",
    "Resizing", "Terminating", "Failed", "Unknown",
]


class VPSSpec(Model):
    subscription: Name
    image: Name
    hostname: Hostname
    sshKeys: list[SSHKey] = Field(default_factory=list, max_length=32)
    passwordHash: str | None = Field(default=None, max_length=256, pattern=r"^\$[0-9a-z]+\$[^\s:]+$")
    powerState: Literal["Running", "Stopped"] = "Running"
    rebuildGeneration: NonNegInt = 0
    restartGeneration: NonNegInt = 0
    nodeSelector: Labels = Field(default_factory=dict)
    node: Name | None = None


class VPSActual(Model):
    vcpus: int | None = None
    memoryMiB: int | None = None
    diskGiB: int | None = None
    power: str | None = None


class VPSIPs(Model):
    ipv4: str | None = None
    ipv6: str | None = None
    pool: str | None = None


class VPSStatus(Model):
    phase: Phase = "Pending"
    conditions: list[Condition] = Field(default_factory=list)
    node: str | None = None
    ips: VPSIPs = Field(default_factory=VPSIPs)
    observedGeneration: int | None = None
    actual: VPSActual = Field(default_factory=VPSActual)
    message: str = ""


class VPS(Resource):
    KIND = "VPS"
    PLURAL = "vps"
    ALIASES = ("vpses", "server", "servers")
    kind: Literal["VPS"] = "VPS"
    spec: VPSSpec
    status: VPSStatus | None = None


KINDS: dict[str, type[Resource]] = {
    k.KIND: k for k in (Plan, Image, Node, IPPool, Customer, Subscription, VPS)
}

_LOOKUP: dict[str, type[Resource]] = {}
for _k in KINDS.values():
    for _n in (_k.KIND, _k.KIND.lower(), _k.PLURAL, *_k.ALIASES):
        _LOOKUP[_n] = _k


def kind_for(name: str) -> type[Resource]:
    """Resolve a kind by its singular, plural, alias or capitalised name."""
    try:
        return _LOOKUP[name] if name in _LOOKUP else _LOOKUP[name.lower()]
    except KeyError:
        known = ", ".join(sorted(KINDS))
        raise KeyError(f"unknown kind {name!r}; known kinds: {known}") from None
