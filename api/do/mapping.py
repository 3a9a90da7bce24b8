"""Hostplane kinds seen as DigitalOcean v2 objects, and how far an action has got. Pure: no I/O, no clock.

    Plan      -> size      slug = plan name; memory MiB, vcpus, disk GiB, prices as numbers
    Image     -> image     a distribution image; slug = image name, id from the id map
    Node      -> region    slug = the node's region label; sizes = the public plans
    VPS       -> droplet   name = hostname; id from the id map; status from the phase
    Customer  -> account   email, uuid = the customer's uid, status from its state

An action's status is decided from what the node agent last reported (`ObservedDomain`), never
from the request having been recorded: `action_progress` says in-progress until the observation
shows the change, errored (with the reason) when the server failed or went away.
This module must never read or write the store.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from specs.domain import ObservedDomain
from specs.kinds import VPS, Customer, Image, IPPool, Node, Plan
from specs.money import to_minor

REGION_LABELS = ("hostplane.io/region", "region")
HOURS_PER_MONTH = 672  # DESIGN.md: hourly charges are capped at the monthly price after 672 h
DISTRIBUTIONS = {"arch": "Arch Linux", "centos": "CentOS", "coreos": "CoreOS", "debian": "Debian",
                 "fedora": "Fedora", "freebsd": "FreeBSD", "gentoo": "Gentoo", "opensuse": "openSUSE",
                 "rocky": "Rocky Linux", "ubuntu": "Ubuntu"}

ActionStatus = Literal["in-progress", "completed", "errored"]


def page_numbers(total: int, page: int, per_page: int) -> tuple[slice, dict[str, int]]:
    """The slice of the items on `page` and the page numbers DigitalOcean links to: first and prev
    after page 1, next and last before the last page (an empty list has one, empty, page). Pure."""
    last = max(1, -(-total // per_page))
    pages: dict[str, int] = {}
    if page > 1:
        pages["first"] = 1
        pages["prev"] = min(page - 1, last)
    if page < last:
        pages["next"] = page + 1
        pages["last"] = last
    return slice((page - 1) * per_page, page * per_page), pages


def iso(ts: datetime | None) -> str | None:
    """DigitalOcean's timestamp form: UTC, seconds, a Z."""
    if ts is None:
        return None
    return ts.strftime("%Y-%m-%dT%H:%M:%SZ")


def region_of(node: Node) -> str | None:
    """The node's region slug, from its first region label."""
    for label in REGION_LABELS:
        value = node.metadata.labels.get(label)
        if value:
            return value
    return None


def size(plan: Plan, regions: list[str]) -> dict[str, Any]:
    """A public plan as a size; prices are numbers (DigitalOcean's form), hourly = monthly / 672."""
    monthly = Decimal(plan.spec.price.amount)
    return {"slug": plan.name, "memory": plan.spec.memoryMiB, "vcpus": plan.spec.vcpus, "disk": plan.spec.diskGiB,
            "transfer": round(plan.spec.trafficGiB / 1024, 3) if plan.spec.trafficGiB else 0.0,
            "price_monthly": float(monthly), "price_hourly": float(round(monthly / HOURS_PER_MONTH, 5)),
            "regions": regions, "available": plan.spec.public,
            "description": plan.spec.description or f"{plan.spec.vcpus} vCPU, {plan.spec.memoryMiB} MiB"}


def region(slug: str, nodes: list[Node], sizes: list[str]) -> dict[str, Any]:
    """A region: available while one of its nodes takes new servers."""
    available = any(n.spec.schedulable and (n.status is None or n.status.state != "NotReady") for n in nodes)
    return {"slug": slug, "name": slug, "sizes": sizes if available else [], "features": [], "available": available}


def image(img: Image, image_id: int, regions: list[str]) -> dict[str, Any]:
    status = img.status or {}
    size_gib = status.get("sizeGiB") if isinstance(status.get("sizeGiB"), (int, float)) else None
    return {"id": image_id, "name": f"{img.spec.os} {img.spec.version}", "type": "base",
            "distribution": DISTRIBUTIONS.get(img.spec.os.lower(), "Unknown"), "slug": img.name, "public": True,
            "regions": regions, "created_at": iso(img.metadata.creationTimestamp) or "1970-01-01T00:00:00Z",
            "min_disk_size": img.spec.minDiskGiB, "size_gigabytes": size_gib, "description": img.spec.os,
            "tags": [], "status": "available", "error_message": ""}


def droplet_status(vps: VPS) -> str:
    """new | active | off | archive, from the VPS's phase (its spec while nothing is observed)."""
    phase = vps.status.phase if vps.status is not None else "Pending"
    if vps.metadata.deletionTimestamp is not None or phase == "Terminating":
        return "archive"
    if phase in ("Pending", "Scheduled", "Provisioning"):
        return "new"
    if phase in ("Running", "Resizing"):
        return "active"
    if phase in ("Stopped", "Paused", "Suspended", "Failed"):
        return "off"
    return "active" if vps.spec.powerState == "Running" else "off"


def networks(vps: VPS, pools: dict[str, IPPool]) -> dict[str, list[dict[str, Any]]]:
    ips = vps.status.ips if vps.status is not None else None
    v4: list[dict[str, Any]] = []
    v6: list[dict[str, Any]] = []
    pool = pools.get(ips.pool) if ips is not None and ips.pool else None
    if ips is not None and ips.ipv4:
        net = ipaddress.IPv4Network(pool.spec.cidr) if pool is not None else None
        v4.append({"ip_address": ips.ipv4, "netmask": str(net.netmask) if net else "255.255.255.255",
                   "gateway": pool.spec.gateway if pool is not None else "", "type": "public"})
    if ips is not None and ips.ipv6:
        prefix = ipaddress.IPv6Network(pool.spec.ipv6Prefix) if pool is not None and pool.spec.ipv6Prefix else None
        v6.append({"ip_address": ips.ipv6, "netmask": prefix.prefixlen if prefix else 128,
                   "gateway": (pool.spec.ipv6Gateway or "") if pool is not None else "", "type": "public"})
    return {"v4": v4, "v6": v6}


@dataclass(frozen=True)
class DropletContext:
    """What a droplet is rendered from besides its VPS: looked up once per request by the caller."""

    plans: dict[str, Plan]
    plan_of: dict[str, str]  # subscription name -> plan name
    images: dict[str, tuple[Image, int]]  # image name -> (image, id)
    nodes: dict[str, Node]
    pools: dict[str, IPPool]
    regions: list[str]
    sizes: list[str]


def droplet(vps: VPS, droplet_id: int, tags: list[str], requested_region: str | None,
            ctx: DropletContext) -> dict[str, Any]:
    """A VPS as a droplet. Size fields come from the plan the server is on (its subscription's)."""
    plan = ctx.plans.get(ctx.plan_of.get(vps.spec.subscription, ""))
    node = ctx.nodes.get(vps.status.node or "") if vps.status is not None else None
    slug = (region_of(node) if node is not None else None) or requested_region or (ctx.regions[0] if ctx.regions
                                                                                  else "local")
    img = ctx.images.get(vps.spec.image)
    # The address pool is the droplet's network: its uid stands for DigitalOcean's VPC id.
    pool = ctx.pools.get(vps.status.ips.pool or "") if vps.status is not None else None
    size_doc = size(plan, ctx.regions) if plan is not None else None
    return {
        "id": droplet_id, "name": vps.spec.hostname,
        "memory": plan.spec.memoryMiB if plan else 0, "vcpus": plan.spec.vcpus if plan else 0,
        "disk": plan.spec.diskGiB if plan else 0, "locked": False, "status": droplet_status(vps),
        "kernel": None, "created_at": iso(vps.metadata.creationTimestamp) or "1970-01-01T00:00:00Z",
        "features": [], "backup_ids": [], "next_backup_window": None, "snapshot_ids": [],
        "image": image(img[0], img[1], ctx.regions) if img is not None else {},
        "volume_ids": [], "size": size_doc or {}, "size_slug": plan.name if plan else "",
        "networks": networks(vps, ctx.pools),
        "region": region(slug, [n for n in ctx.nodes.values() if region_of(n) == slug], ctx.sizes),
        "tags": tags,
        **({"vpc_uuid": pool.metadata.uid} if pool is not None and pool.metadata.uid else {}),
    }


def account(cust: Customer, droplet_limit: int) -> dict[str, Any]:
    state = cust.status.state if cust.status is not None else "Active"
    return {"droplet_limit": droplet_limit, "floating_ip_limit": 0, "email": cust.spec.email,
            "name": cust.spec.displayName or cust.name, "uuid": cust.metadata.uid or cust.name,
            "email_verified": False, "status": "active" if state == "Active" else "warning",
            "status_message": "" if state == "Active" else f"the account is {state.lower()}"}


def droplet_limit(existing: int, balance_minor: int, credit_minor: int, committed_minor: int,
                  cheapest_minor: int | None) -> int:
    """How many droplets the account may have: those it has, plus as many of the cheapest public size as
    its balance and credit cover beyond the monthly cost it is committed to (the order rule)."""
    room = balance_minor + credit_minor - committed_minor
    if cheapest_minor is None or room <= 0:
        return existing
    if cheapest_minor == 0:
        return existing + 1000
    return existing + room // cheapest_minor


def minor(plan: Plan) -> int:
    return to_minor(plan.spec.price.amount, plan.spec.price.currency)


def fingerprint(public_key: str) -> str:
    """The MD5 fingerprint DigitalOcean shows for a key: 16 hex pairs joined by colons."""
    parts = public_key.split()
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (IndexError, binascii.Error) as exc:
        raise ValueError("not an SSH public key") from exc
    digest = hashlib.md5(blob, usedforsecurity=False).hexdigest()
    return ":".join(digest[i:i + 2] for i in range(0, 32, 2))


@dataclass(frozen=True)
class Progress:
    status: ActionStatus
    reason: str = ""


ERROR_GRACE_SECONDS = 300


def action_progress(action: dict[str, Any], vps: VPS | None, observed: ObservedDomain | None,
                    now: datetime | None = None) -> Progress:
    """Where a droplet action stands, from the VPS and its node's latest observation. Pure.

    `action["target"]` holds what the observation must show: `power`, `restartGeneration`,
    `rebuildGeneration`, or `vcpus`/`memoryMiB`/`diskGiB`. An action with no target (rename) was
    complete when it was recorded. The agent retries what fails (an image still downloading, a
    busy libvirt): its error makes the action errored only once it has lasted ERROR_GRACE_SECONDS
    past the action's start (`now` given), or at once when the domain crashed."""
    if vps is None or vps.metadata.uid != action.get("uid") or vps.metadata.deletionTimestamp is not None:
        return Progress("errored", "the droplet was destroyed")
    status = vps.status
    target: dict[str, Any] = action.get("target") or {}
    if not target:
        return Progress("completed")
    if status is not None and status.phase == "Suspended" and target.get("power") == "Running":
        return Progress("errored", status.message or "the server is suspended")
    if observed is None or observed.uid != vps.metadata.uid:
        return Progress("in-progress")
    if observed.power == "Crashed":
        return Progress("errored", observed.lastError or "the server crashed")
    checks = [
        ("power", observed.power == target.get("power")),
        ("restartGeneration", observed.restartGeneration >= int(target.get("restartGeneration", 0))),
        ("rebuildGeneration", observed.rebuildGeneration >= int(target.get("rebuildGeneration", 0))),
        ("vcpus", observed.vcpus == target.get("vcpus")),
        ("memoryMiB", observed.memoryMiB == target.get("memoryMiB")),
        ("diskGiB", observed.diskGiB is not None and observed.diskGiB >= int(target.get("diskGiB", 0))),
    ]
    if all(ok for field, ok in checks if field in target):
        return Progress("completed")
    started = _parse_time(action.get("started_at"))
    if observed.lastError and now is not None and started is not None \
            and (now - started).total_seconds() > ERROR_GRACE_SECONDS:
        return Progress("errored", observed.lastError)
    return Progress("in-progress")


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
