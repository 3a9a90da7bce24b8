"""Small builders for the kinds, with the defaults a controller test needs and nothing more."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from specs.kinds import (
    VPS,
    Customer,
    CustomerSpec,
    Image,
    ImageSource,
    ImageSpec,
    IPPool,
    IPPoolSpec,
    Node,
    NodeSpec,
    Plan,
    PlanSpec,
    Price,
    Subscription,
    SubscriptionSpec,
    SubscriptionStatus,
    VPSSpec,
)
from specs.meta import ObjectMeta


def plan(name: str = "s1", vcpus: int = 1, memory: int = 512, disk: int = 10, **billing: Any) -> Plan:
    return Plan(metadata=ObjectMeta(name=name), spec=PlanSpec(
        vcpus=vcpus, memoryMiB=memory, diskGiB=disk, price=Price(amount="5.00", currency="EUR"),
        billing=billing or {}))


def image(name: str = "debian-12", min_disk: int = 1) -> Image:
    return Image(metadata=ObjectMeta(name=name), spec=ImageSpec(
        os="debian", version="12", source=ImageSource(path="/var/lib/images/debian-12.qcow2", sha256="0" * 64),
        minDiskGiB=min_disk))


def customer(name: str = "acme", hold: datetime | None = None, **billing: Any) -> Customer:
    return Customer(metadata=ObjectMeta(name=name), spec=CustomerSpec(
        email=f"{name}@example.com", suspendHoldUntil=hold, billing=billing or {}))


def subscription(name: str = "sub-1", plan_name: str = "s1", customer_name: str = "acme",
                 state: str = "Active", **status: Any) -> Subscription:
    return Subscription(metadata=ObjectMeta(name=name),
                        spec=SubscriptionSpec(customer=customer_name, plan=plan_name),
                        status=SubscriptionStatus.model_validate({"state": state, **status}))


def vps(name: str = "web-1", sub: str = "sub-1", image_name: str = "debian-12", uid: str | None = None,
        power: str = "Running", **spec: Any) -> VPS:
    return VPS(metadata=ObjectMeta(name=name, uid=uid or f"uid-{name}"),
               spec=VPSSpec.model_validate({"subscription": sub, "image": image_name, "hostname": f"{name}.example.com",
                                            "powerState": power, **spec}))


def node(name: str = "n1", vcpus: int = 8, memory: int = 16384, disk: int = 500, labels: dict[str, str] | None = None,
         cpu_overcommit: float = 4.0, memory_overcommit: float = 1.0, schedulable: bool = True,
         annotations: dict[str, str] | None = None, uri: str = "test:///default") -> Node:
    return Node(metadata=ObjectMeta(name=name, labels=labels or {}, annotations=annotations or {}),
                spec=NodeSpec.model_validate({
                    "libvirtURI": uri, "capacity": {"vcpus": vcpus, "memoryMiB": memory, "diskGiB": disk},
                    "overcommit": {"cpu": cpu_overcommit, "memory": memory_overcommit},
                    "schedulable": schedulable}))


def pool(name: str = "pool-a", cidr: str = "192.0.2.0/24", gateway: str = "192.0.2.1",
         reserved: list[str] | None = None, selector: dict[str, str] | None = None,
         ipv6: str | None = None) -> IPPool:
    return IPPool(metadata=ObjectMeta(name=name), spec=IPPoolSpec(
        cidr=cidr, gateway=gateway, reserved=reserved or [], nodeSelector=selector or {}, ipv6Prefix=ipv6))
