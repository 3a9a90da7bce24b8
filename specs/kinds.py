"""The kinds of DESIGN.md: Plan, Image, Node, IPPool, Customer, Subscription, VPS.

Specs are what people write; statuses are what controllers write, under separate etcd
keys. Every model forbids unknown fields so a typo is an error, not a silent default.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, Field, Strict, ValidationInfo, field_validator, model_validator

from specs.domain import IFNAME_PATTERN, NetworkMode
from specs.meta import API_VERSION, Condition, Labels, Model, Name, ObjectMeta, Text, check_text
from specs.money import Currency, Money, canonical_amount

# Strict: `memoryMiB: true` or `vcpus: "4"` is a wrong type, not 1 or 4.
PositiveInt = Annotated[int, Strict(), Field(gt=0)]
NonNegInt = Annotated[int, Strict(), Field(ge=0)]

_HOSTNAME = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")
_SSH_TYPES = (
    "ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521", "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com",
)
_EMAIL = re.compile(r"^[^@\s<>\"'\x00-\x1f\x7f]{1,64}@([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$")


def _hostname(value: str) -> str:
    if not _HOSTNAME.fullmatch(value):
        raise ValueError("must be an RFC 1123 hostname (lowercase labels of a-z, 0-9, '-')")
    return value


# Bytes of the public key after the type name, for the fixed-size types.
_SSH_KEY_BYTES = {"ssh-ed25519": 32}
MAX_SSH_KEY_CHARS = 16384


def _ssh_fields(blob: bytes) -> list[bytes]:
    """Split SSH wire-format key data into its length-prefixed strings (RFC 4253 6.6)."""
    fields: list[bytes] = []
    at = 0
    while at < len(blob):
        if at + 4 > len(blob):
            raise ValueError("truncated")
        n = int.from_bytes(blob[at : at + 4], "big")
        if at + 4 + n > len(blob):
            raise ValueError("truncated")
        fields.append(blob[at + 4 : at + 4 + n])
        at += 4 + n
    return fields


def _ssh_key(value: str) -> str:
    import base64
    import binascii

    # Checked before anything else: the key line is written verbatim into cloud-init.
    line = value.strip()
    if len(line) > MAX_SSH_KEY_CHARS:
        raise ValueError(f"SSH public key is longer than {MAX_SSH_KEY_CHARS} characters")
    if any(ch in "\r\n" for ch in line):
        raise ValueError("SSH public key must be a single line")
    check_text(line)
    parts = line.split()
    if len(parts) < 2 or parts[0] not in _SSH_TYPES:
        raise ValueError(f"must be an SSH public key of type {', '.join(_SSH_TYPES)}")
    try:
        fields = _ssh_fields(base64.b64decode(parts[1], validate=True))
        embedded = fields[0].decode("ascii") if fields else ""
    except (binascii.Error, ValueError) as exc:
        raise ValueError("SSH public key data is not valid base64 key material") from exc
    if embedded != parts[0]:
        raise ValueError("SSH public key type does not match its key data")
    size = _SSH_KEY_BYTES.get(parts[0])
    if len(fields) < 2 or (size is not None and (len(fields) != 2 or len(fields[1]) != size)):
        raise ValueError("SSH public key data is incomplete")
    return line


def _email(value: str) -> str:
    if len(value) > 254 or not _EMAIL.fullmatch(value) or ".." in value:
        raise ValueError("must be an e-mail address")
    return value


def _multiline(value: str) -> str:
    return check_text(value, multiline=True)


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

    @field_validator("amount")
    @classmethod
    def _not_negative(cls, value: str) -> str:
        if value.startswith("-"):
            raise ValueError("a price must be >= 0")
        return value


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
    description: Annotated[str, Field(max_length=4096), AfterValidator(_multiline)] = ""
    public: bool = True


class Plan(Resource):
    KIND = "Plan"
    PLURAL = "plans"
    ALIASES = ("plan", "tariff", "tariffs")
    kind: Literal["Plan"] = "Plan"
    spec: PlanSpec
    status: dict[str, Any] | None = None


# ---------------------------------------------------------------- Image

def _abs_path(value: str) -> str:
    check_text(value)
    if not value.startswith("/"):
        raise ValueError("path must be absolute")
    if "\0" in value or ".." in value.split("/"):
        raise ValueError("path must not contain '..' segments")
    return value


def _url(value: str) -> str:
    check_text(value)
    if not value.startswith(("http://", "https://")):
        raise ValueError("url must be http:// or https:// (a file on the node is a `path`)")
    if any(ch.isspace() for ch in value):
        raise ValueError("url must not contain whitespace")
    try:
        parts = urllib.parse.urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise ValueError("url is not a valid URL") from None
    if not parts.hostname:
        raise ValueError("url must name a host")
    if parts.username is not None or parts.password is not None:
        # Images are readable by customers: a credential here would be published.
        raise ValueError("url must not carry credentials")
    return value


AbsPath = Annotated[str, Field(max_length=4096), AfterValidator(_abs_path)]
URL = Annotated[str, Field(max_length=2048), AfterValidator(_url)]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class ImageSource(Model):
    """A file under the node's image directories (`path`) or an http(s) download (`url`), always with its sha256."""

    path: AbsPath | None = None
    url: URL | None = None
    sha256: Sha256
    format: Literal["qcow2", "raw"] = "qcow2"

    @model_validator(mode="after")
    def _one_source(self) -> ImageSource:
        if (self.path is None) == (self.url is None):
            raise ValueError("exactly one of path or url is required")
        return self


class ImageSpec(Model):
    os: Annotated[Text, Field(min_length=1, max_length=64)]
    version: Annotated[Text, Field(min_length=1, max_length=64)]
    source: ImageSource
    minDiskGiB: PositiveInt = 1
    cloudInit: bool = True
    # Boot straight into a kernel/initrd pair (small test and rescue images).
    kernel: AbsPath | None = None
    initrd: AbsPath | None = None
    cmdline: Annotated[Text, Field(max_length=2048)] | None = None


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


VlanId = Annotated[int, Strict(), Field(ge=1, le=4094)]


class NodeNetwork(Model):
    """How the node's VPS NICs attach (docs/operations.md, "Network modes").

    `bridge` is required in mode bridge and refused otherwise; `vlans` tags a pool's NICs
    (pool name -> VLAN id) on that bridge. Field validators so that an error names its field.
    """

    mode: NetworkMode = "isolated-nat"
    bridge: str | None = Field(default=None, pattern=IFNAME_PATTERN, validate_default=True)
    vlans: dict[Name, VlanId] = Field(default_factory=dict, max_length=256)

    @field_validator("bridge")
    @classmethod
    def _bridge(cls, v: str | None, info: ValidationInfo) -> str | None:
        mode = info.data.get("mode", "isolated-nat")
        if mode == "bridge" and v is None:
            raise ValueError("mode bridge needs the host bridge's name, e.g. br0")
        if mode != "bridge" and v is not None:
            raise ValueError(f"a bridge is only used in mode bridge, not {mode}")
        return v

    @field_validator("vlans")
    @classmethod
    def _vlans(cls, v: dict[str, int], info: ValidationInfo) -> dict[str, int]:
        mode = info.data.get("mode", "isolated-nat")
        if v and mode != "bridge":
            raise ValueError(f"VLAN tags are only used in mode bridge, not {mode}")
        return v


class NodeSpec(Model):
    libvirtURI: Annotated[Text, Field(min_length=1, max_length=1024)] = "qemu:///system"
    capacity: Capacity
    overcommit: Overcommit = Field(default_factory=Overcommit)
    maxResize: MaxResize = Field(default_factory=MaxResize)
    schedulable: bool = True
    network: NodeNetwork = Field(default_factory=NodeNetwork)


class OrphanDomain(Model):
    """A domain of this cluster on the node with neither a desired entry nor a tombstone: left alone."""

    domain: str
    vps: str
    uid: str


class NodeStatus(Model):
    state: Literal["Ready", "NotReady", "Unknown"] = "Unknown"
    lastHeartbeat: datetime | None = None
    allocated: dict[str, int] = Field(default_factory=dict)
    capacityObserved: dict[str, int] = Field(default_factory=dict)
    unmanagedDomains: int = 0
    orphans: list[OrphanDomain] = Field(default_factory=list)
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
    dns: list[str] = Field(default_factory=lambda: ["1.1.1.1", "9.9.9.9"], max_length=8)
    nodeSelector: Labels = Field(default_factory=dict)
    reserved: list[str] = Field(default_factory=list, max_length=4096)

    # Field validators (not one model validator) so that an error names its own field; each
    # later field sees the earlier ones in `info.data` only when they were valid.
    @field_validator("cidr")
    @classmethod
    def _cidr(cls, v: str) -> str:
        net = ipaddress.IPv4Network(v, strict=True)
        if net.prefixlen > 30:
            raise ValueError(f"{net} has no room for a gateway and guests (at most /30)")
        return str(net)

    @field_validator("gateway")
    @classmethod
    def _gateway(cls, v: str, info: ValidationInfo) -> str:
        gw = ipaddress.IPv4Address(v)
        net = _pool_net(info)
        if net is not None:
            if gw not in net:
                raise ValueError(f"gateway {gw} is outside {net}")
            if gw in (net.network_address, net.broadcast_address):
                raise ValueError(f"gateway {gw} is the network or broadcast address of {net}")
        return str(gw)

    @field_validator("ipv6Prefix")
    @classmethod
    def _ipv6_prefix(cls, v: str | None) -> str | None:
        return None if v is None else str(ipaddress.IPv6Network(v, strict=True))

    @field_validator("ipv6Gateway")
    @classmethod
    def _ipv6_gateway(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None:
            return None
        gw = ipaddress.IPv6Address(v)
        prefix = info.data.get("ipv6Prefix")
        if prefix is not None and gw not in ipaddress.IPv6Network(prefix):
            raise ValueError(f"ipv6Gateway {gw} is outside {prefix}")
        return str(gw)

    @field_validator("dns")
    @classmethod
    def _dns(cls, v: list[str]) -> list[str]:
        return [str(ipaddress.ip_address(d)) for d in v]

    @field_validator("reserved")
    @classmethod
    def _reserved(cls, v: list[str], info: ValidationInfo) -> list[str]:
        net = _pool_net(info)
        out = []
        for r in v:
            if "/" in r:
                sub = ipaddress.IPv4Network(r, strict=True)
                if net is not None and not sub.subnet_of(net):
                    raise ValueError(f"reserved {r} is outside {net}")
                out.append(str(sub))
            else:
                addr = ipaddress.IPv4Address(r)
                if net is not None and addr not in net:
                    raise ValueError(f"reserved {r} is outside {net}")
                out.append(str(addr))
        return out

    @model_validator(mode="after")
    def _ipv6_pair(self) -> IPPoolSpec:
        if self.ipv6Gateway is not None and self.ipv6Prefix is None:
            raise ValueError("ipv6Gateway needs ipv6Prefix")
        return self


def _pool_net(info: ValidationInfo) -> ipaddress.IPv4Network | None:
    cidr = info.data.get("cidr")
    return None if cidr is None else ipaddress.IPv4Network(cidr)


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
    displayName: Annotated[Text, Field(max_length=256)] = ""
    currency: Currency = "EUR"
    creditLimit: str = Field(default="0", validate_default=True)
    suspendHoldUntil: datetime | None = None
    billing: BillingPolicy = Field(default_factory=BillingPolicy)

    @field_validator("creditLimit", mode="before")
    @classmethod
    def _credit(cls, value: Any, info: ValidationInfo) -> str:
        amount = canonical_amount(value, info.data.get("currency"))
        if amount.startswith("-"):
            raise ValueError("creditLimit must be >= 0")
        return amount


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
    # The uid of the Subscription this server was created under (the API sets it): ownership follows
    # it, so a Subscription deleted and created again under the same name does not inherit the server.
    subscriptionUID: str | None = Field(default=None, max_length=64, pattern=r"^[A-Za-z0-9-]+$")
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

    def bound_to(self, sub: Subscription) -> bool:
        """Whether `sub` is this server's Subscription: the name it refers to and, when recorded, the
        uid it was created under (a Subscription recreated under the old name is another one). Pure."""
        return sub.name == self.spec.subscription and (
            self.spec.subscriptionUID is None or self.spec.subscriptionUID == sub.metadata.uid)


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
