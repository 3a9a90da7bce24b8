"""The node-lifecycle decision: a node's status from its heartbeat and its bookings. Pure.

A node is Ready while its agent's lease-bound heartbeat key exists and says libvirt is warm,
NotReady while the agent is still warming libvirt up or once the lease has expired (it was seen
before), Unknown if no agent has ever reported. A NotReady node's
VPS are never deleted or moved: their disks are local. `schedulable: false` cordons a node;
the `hostplane.io/drain: "true"` annotation cordons it and stops its domains for maintenance.
This module must never do I/O or read a clock.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from controllers import layout
from controllers.booking import NodeAllocation
from specs.kinds import Node, NodeStatus, OrphanDomain
from specs.meta import Condition, set_condition

HEARTBEAT_RESOLUTION = timedelta(seconds=30)


def parse_heartbeat(raw: bytes) -> dict[str, Any]:
    """The agent's heartbeat value: JSON, ideally with `time` and `capacity`; anything else is tolerated."""
    try:
        data = json.loads(raw)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def warming(heartbeat: dict[str, Any]) -> bool:
    """The agent beats but has not finished its first libvirt connection (QEMU probing can take minutes)."""
    return heartbeat.get("warming") is True


def drained(node: Node | None) -> bool:
    return node is not None and node.metadata.annotations.get(layout.DRAIN_ANNOTATION, "") == "true"


def schedulable(node: Node) -> bool:
    return node.spec.schedulable and not drained(node)


def _heartbeat_time(hb: dict[str, Any]) -> datetime | None:
    for field in ("time", "timestamp", "lastHeartbeat"):
        value = hb.get(field)
        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value)
            except ValueError:
                continue
    return None


def node_status(
    node: Node,
    *,
    previous: NodeStatus | None,
    heartbeat: dict[str, Any] | None,
    allocation: NodeAllocation,
    now: datetime,
) -> NodeStatus:
    """The node's status: readiness, last heartbeat, what is booked on it and what it reports."""
    prev = previous or NodeStatus()
    last: datetime | None
    if heartbeat is not None:
        state = "Ready"
        last = _heartbeat_time(heartbeat) or (prev.lastHeartbeat if prev.state == "Ready" else None) or now
        # Agents beat every few seconds; recording each beat would rewrite every node's status
        # that often. The lease is what decides readiness; the time shown is coarse on purpose.
        if (prev.state == "Ready" and prev.lastHeartbeat is not None
                and timedelta(0) <= last - prev.lastHeartbeat < HEARTBEAT_RESOLUTION):
            last = prev.lastHeartbeat
    else:
        state = "NotReady" if prev.state in ("Ready", "NotReady") else "Unknown"
        last = prev.lastHeartbeat
    capacity = heartbeat.get("capacity") if heartbeat else None
    observed_cap = ({k: int(v) for k, v in capacity.items() if isinstance(v, int | float)}
                    if isinstance(capacity, dict) else prev.capacityObserved)
    domains = heartbeat.get("domains") if heartbeat else None
    unmanaged = domains.get("unmanaged", prev.unmanagedDomains) if isinstance(domains, dict) else prev.unmanagedDomains
    conds = list(prev.conditions)
    if heartbeat is not None and warming(heartbeat):
        state = "NotReady"
        conds = set_condition(conds, Condition(
            type="Ready", status="False", reason="LibvirtWarming",
            message="the agent is connecting to libvirt and probing QEMU; nothing is placed here until it is done"),
            now)
    elif state == "Ready":
        conds = set_condition(conds, Condition(type="Ready", status="True", reason="HeartbeatFresh"), now)
    else:
        conds = set_condition(conds, Condition(
            type="Ready", status="False" if state == "NotReady" else "Unknown",
            reason="HeartbeatExpired" if state == "NotReady" else "NeverSeen",
            message="the node agent's heartbeat lease has expired; its VPS are Unknown and stay put"
            if state == "NotReady" else "no node agent has reported yet"), now)
    if drained(node):
        cond = Condition(type="Schedulable", status="False", reason="Drained",
                         message="drained for maintenance: domains are stopped, nothing new is placed")
    elif not node.spec.schedulable:
        cond = Condition(type="Schedulable", status="False", reason="Cordoned", message="nothing new is placed")
    else:
        cond = Condition(type="Schedulable", status="True", reason="Schedulable")
    conds = set_condition(conds, cond, now)
    orphans = prev.orphans
    if heartbeat is not None:
        # The agent's own conditions (orphans, an empty desired state, libvirt) and its orphan list.
        for c in heartbeat.get("conditions") or []:
            if isinstance(c, dict) and isinstance(c.get("type"), str) and c.get("status") in ("True", "False"):
                conds = set_condition(conds, Condition(type=c["type"], status=c["status"],
                                                       reason=str(c.get("reason", "")),
                                                       message=str(c.get("message", ""))[:1000]), now)
        raw = heartbeat.get("orphans")
        if isinstance(raw, list):
            orphans = [OrphanDomain(domain=o["domain"], vps=o["vps"], uid=o["uid"]) for o in raw
                       if isinstance(o, dict) and all(isinstance(o.get(k), str) for k in ("domain", "vps", "uid"))]
    return NodeStatus(
        orphans=orphans,
        state=state,
        lastHeartbeat=last,
        allocated={"vcpus": allocation.vcpus, "memoryMiB": allocation.memoryMiB,
                   "diskGiB": allocation.diskGiB, "vps": allocation.count},
        capacityObserved=observed_cap,
        unmanagedDomains=int(unmanaged) if isinstance(unmanaged, int) else prev.unmanagedDomains,
        conditions=conds,
    )
