"""The status decision: fold a VPS's booking, desired and observed domain into `VPS.status`. Pure.

Phases, first match wins:

    Terminating   deletionTimestamp set
    Pending       no node booked yet (the Scheduled condition says why)
    Unknown       the node is NotReady or gone: its VPS are never moved (their disks are local)
    Scheduled     booked, no desired entry written yet
    Provisioning  desired written, the node reports nothing (or the domain not yet defined)
    Failed        the node reports a crash or an error it cannot get past
    Suspended     paused or shut off because of a suspension
    Resizing      running at a size other than the plan's
    Running / Stopped / Paused   as the node observes it

`events_for(old, new)` turns a status change into Kubernetes-style events. This module must
never do I/O or read a clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from controllers.ipam import IPAllocation
from specs.domain import DomainSpec, ObservedDomain
from specs.kinds import VPS, Phase, VPSActual, VPSIPs, VPSStatus
from specs.meta import Condition, set_condition

NodeState = Literal["Ready", "NotReady", "Unknown", "Missing"]


@dataclass(frozen=True)
class VPSProblem:
    """A reason the controllers could not act: which condition it sets, why, and what to do."""

    condition: str  # "Scheduled" or "Resolved"
    reason: str
    message: str


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


def converged(desired: DomainSpec, observed: ObservedDomain) -> bool:
    """True when the node runs exactly what the desired entry asks for."""
    return (
        observed.uid == desired.uid
        and observed.power == desired.power
        and observed.vcpus == desired.vcpus
        and observed.memoryMiB == desired.memoryMiB
        and (observed.diskGiB is None or observed.diskGiB >= desired.diskGiB)
    )


def _cond(type_: str, ok: bool | None, reason: str, message: str = "") -> Condition:
    status: Literal["True", "False", "Unknown"] = "Unknown" if ok is None else ("True" if ok else "False")
    return Condition(type=type_, status=status, reason=reason, message=message)


def _suspension_reason(desired: DomainSpec | None) -> str | None:
    if desired is not None and desired.powerReason.startswith("suspended: "):
        return desired.powerReason.removeprefix("suspended: ")
    return None


def vps_status(
    vps: VPS,
    *,
    previous: VPSStatus | None,
    node: str | None,
    ips: IPAllocation | None,
    desired: DomainSpec | None,
    observed: ObservedDomain | None,
    node_state: NodeState | None,
    problem: VPSProblem | None,
    observed_generation: int | None,
    now: datetime,
) -> VPSStatus:
    """The VPS's status from everything the controllers know about it."""
    prev = previous or VPSStatus()
    conds = list(prev.conditions)

    def put(c: Condition) -> None:
        nonlocal conds
        conds = set_condition(conds, c, now)

    phase: Phase
    message = ""
    if problem is not None:
        put(_cond(problem.condition, False, problem.reason, problem.message))
        message = problem.message
        if problem.condition == "Scheduled":
            # Also spelled the way operators search for it: Unschedulable=True with the cause.
            put(_cond("Unschedulable", True, problem.reason, problem.message))
    if node is not None:
        put(_cond("Scheduled", True, "Scheduled", f"on node {node}"))
        conds = [c for c in conds if c.type != "Unschedulable"]
    if problem is None or problem.condition != "Resolved":
        conds = [c for c in conds if c.type != "Resolved"] if desired is not None else conds

    sus = _suspension_reason(desired)
    if sus is not None:
        put(_cond("Suspended", True, sus.capitalize(), desired.powerReason if desired else ""))
    else:
        conds = [c for c in conds if c.type != "Suspended"]

    if vps.metadata.deletionTimestamp is not None:
        phase, message = "Terminating", "deleting the domain, then releasing its addresses"
    elif node is None:
        phase = "Pending"
        message = message or "waiting to be scheduled"
    elif node_state in ("NotReady", "Unknown", "Missing"):
        phase = "Unknown"
        why = "NodeNotFound" if node_state == "Missing" else "NodeNotReady"
        message = f"node {node} is {'gone' if node_state == 'Missing' else 'not ready'}; its VPS stay put"
        put(_cond("NodeReady", False, why, message))
    elif desired is None:
        phase = "Scheduled"
    elif observed is None or (observed.power == "Absent" and not observed.lastError):
        phase = "Provisioning"
        message = message or f"creating the domain on {node}"
    elif observed.power == "Crashed" or (observed.power == "Absent" and observed.lastError):
        phase, message = "Failed", observed.lastError or "the domain crashed"
    elif observed.power == "Unknown":
        phase, message = "Unknown", observed.lastError or "the node cannot tell the domain's state"
    elif sus is not None and observed.power in ("Paused", "Stopped"):
        phase, message = "Suspended", desired.powerReason
    elif observed.power == "Running" and (observed.vcpus != desired.vcpus or observed.memoryMiB != desired.memoryMiB):
        phase = "Resizing"
        message = f"resizing to {desired.vcpus} vCPU, {desired.memoryMiB} MiB"
    elif observed.power in ("Running", "ShuttingDown"):
        phase = "Running"
    elif observed.power == "Paused":
        phase = "Paused"
    else:
        phase = "Stopped"
        if desired.powerReason:
            message = desired.powerReason

    if node is not None and node_state == "Ready":
        put(_cond("NodeReady", True, "NodeReady"))
    if observed is not None:
        restart = next((c for c in observed.conditions if c.type == "RestartRequired" and c.status == "True"), None)
        if restart is not None:
            put(_cond("ResizePending", True, "RestartRequired",
                      restart.message or "the new size applies at the next restart"))
        else:
            conds = [c for c in conds if c.type != "ResizePending"]
    if desired is not None and observed is not None and node_state == "Ready":
        ok = converged(desired, observed)
        put(_cond("Ready", ok, "Converged" if ok else "Converging",
                  "" if ok else observed.lastError or f"{observed.power} -> {desired.power}"))
    elif phase in ("Pending", "Scheduled", "Provisioning", "Unknown", "Terminating"):
        put(_cond("Ready", False, phase))

    actual = VPSActual()
    if observed is not None:
        actual = VPSActual(vcpus=observed.vcpus, memoryMiB=observed.memoryMiB, diskGiB=observed.diskGiB,
                           power=observed.power)
    vips = VPSIPs(ipv4=ips.ipv4, ipv6=ips.ipv6, pool=ips.pool) if ips is not None else VPSIPs()
    return VPSStatus(phase=phase, conditions=conds, node=node, ips=vips,
                     observedGeneration=observed_generation, actual=actual, message=message)


def events_for(old: VPSStatus | None, new: VPSStatus) -> list[Event]:
    """The events a status change is worth: what `hostplane describe` shows."""
    prev = old or VPSStatus()
    out: list[Event] = []
    if new.node and new.node != prev.node:
        out.append(Event("Normal", "Scheduled", f"assigned to node {new.node}"
                         + (f" with {new.ips.ipv4}" if new.ips.ipv4 else "")))
    if new.phase == "Running" and prev.phase not in ("Running", "Resizing", "Suspended"):
        out.append(Event("Normal", "Started", f"domain running on {new.node}"))
    if new.phase == "Stopped" and prev.phase in ("Running", "Resizing", "Paused"):
        out.append(Event("Normal", "Stopped", new.message or "domain shut off"))
    if new.phase == "Suspended" and prev.phase != "Suspended":
        reason = next((c.reason for c in new.conditions if c.type == "Suspended"), "")
        out.append(Event("Normal", "Suspended", "unpaid" if reason.lower() == "nonpayment" else new.message))
    if prev.phase == "Suspended" and new.phase not in ("Suspended", "Terminating"):
        out.append(Event("Normal", "Resumed", f"suspension lifted; now {new.phase}"))
    pa, na = prev.actual, new.actual
    if (pa.vcpus is not None and na.vcpus is not None
            and (pa.vcpus, pa.memoryMiB) != (na.vcpus, na.memoryMiB)):
        out.append(Event("Normal", "Resized", f"now {na.vcpus} vCPU, {na.memoryMiB} MiB"))
    if new.phase == "Failed" and prev.phase != "Failed":
        out.append(Event("Warning", "Failed", new.message))
    if new.phase == "Unknown" and prev.phase != "Unknown":
        out.append(Event("Warning", "NodeNotReady", new.message))
    was = {c.type: c for c in prev.conditions}
    for c in new.conditions:
        if c.status == "False" and c.type in ("Scheduled", "Resolved"):
            before = was.get(c.type)
            if before is None or before.status != "False" or before.reason != c.reason:
                kind = "FailedScheduling" if c.type == "Scheduled" else "FailedResolve"
                out.append(Event("Warning", kind, f"{c.reason}: {c.message}"))
    return out
