"""What the agent tells the control plane about one VPS: an `ObservedDomain`, and node capacity.

Pure: values in, values out, `now` passed in. Condition transition times move only when a
status changes, so an unchanged domain yields an identical report and nothing is written.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from nodeagent import plan as P
from nodeagent.domain_xml import domain_name
from specs.domain import DomainSpec, ObservedDomain, ObservedPower
from specs.meta import Condition, set_condition

CRASH_LOOP_AFTER = 2


def observed_power(a: P.Actual) -> tuple[ObservedPower, str]:
    if not a.defined:
        return "Absent", ""
    if not a.managed:
        return "Unknown", "not managed by Hostplane"
    if a.power == "running":
        return ("ShuttingDown", a.stop_intent) if a.stop_intent and a.stop_requested_at else ("Running", "")
    if a.power == "paused":
        return "Paused", ""
    if a.power == "crashed":
        return "Crashed", "crashed"
    if a.off_by_guest:
        return "Stopped", "guest"
    return "Stopped", "agent" if a.stop_intent else ""


def observe(desired: DomainSpec | None, a: P.Actual, *, vps: str, uid: str, generation: int | None,
            converged: bool, error: tuple[str, str] | None, notes: dict[str, str],
            previous: ObservedDomain | None, now: datetime) -> ObservedDomain:
    """The report for one VPS. `error` is (reason, message) of the last failure, if the last attempt failed."""
    power, reason = observed_power(a)
    if desired is not None and desired.powerReason and reason in ("", "agent"):
        reason = desired.powerReason
    conds: list[Condition] = list(previous.conditions) if previous else []

    def put(type_: str, status: bool, reason_: str = "", message: str = "") -> None:
        nonlocal conds
        conds = set_condition(conds, Condition(type=type_, status="True" if status else "False",
                                               reason=reason_, message=message), now)

    ready = converged and error is None and desired is not None
    put("Ready", ready, "Converged" if ready else (error[0] if error else "Converging"), error[1] if error else "")
    restart = desired is not None and P.restart_required(desired, a)
    put("RestartRequired", restart, "BeyondLiveMaximum" if restart else "",
        "vCPU or memory beyond the domain's maximum; applied at the next restart" if restart else "")
    grows = desired is not None and P.memory_pending_reboot(desired, a)
    put("MemoryGrowsAtReboot", grows, "GuestDidNotPlug" if grows else "",
        f"the guest has {a.memory_mib} MiB and has not plugged the {desired.memoryMiB} MiB asked for (no virtio-mem "
        "driver or memory not onlined); applied at the next stop/start" if grows and desired else "")
    legacy = a.defined and a.legacy_memory
    put("LegacyMemoryModel", legacy, "BalloonLimited" if legacy else "",
        "booted with the node maximum and limited only by the balloon; moved to plugged memory at the next "
        "stop/start" if legacy else "")
    loop = a.crash_count >= CRASH_LOOP_AFTER
    put("CrashLoop", loop, "CrashLoopBackOff" if loop else "",
        f"crashed {a.crash_count} times; next start after {P.crash_backoff(a.crash_count):.0f} s" if loop else "")
    # Only an unpause says anything about the guest clock; otherwise the last word stands.
    if "ClockNotSynced" in notes:
        put("ClockSynced", False, "NoGuestAgent", notes["ClockNotSynced"])
    elif "ClockSynced" in notes:
        put("ClockSynced", True, "GuestAgent", notes["ClockSynced"])
    if a.defined and not a.managed:
        error = ("NameConflict", f"a domain named {domain_name(uid)} exists without Hostplane metadata; left alone")

    observed_generation = generation if (converged and error is None) else (
        previous.observedGeneration if previous else None)
    since = previous.since if previous and previous.power == power and previous.since else now
    return ObservedDomain(
        vps=vps, uid=uid, domainName=domain_name(uid), power=power, powerReason=reason,
        vcpus=a.vcpus if a.defined else None, memoryMiB=a.memory_mib if a.defined else None,
        diskGiB=a.disk_gib, maxVcpus=a.max_vcpus if a.defined else None,
        maxMemoryMiB=a.max_memory_mib if a.defined else None,
        observedGeneration=observed_generation, rebuildGeneration=a.rebuild_generation,
        restartGeneration=a.restart_generation, conditions=conds,
        lastError=f"{error[0]}: {error[1]}" if error else "", since=since,
    )


def same_report(a: ObservedDomain | None, b: ObservedDomain | None) -> bool:
    if a is None or b is None:
        return a is b
    return a.model_dump() == b.model_dump()


def node_conditions(*, orphans: list[dict[str, str]], orphan_volumes: list[str], desired: int, managed: int,
                    libvirt_error: str, warming: bool = False,
                    stuck: tuple[str, float] | None = None) -> list[dict[str, str]]:
    """The agent's own node conditions (carried in the heartbeat, folded into the Node's status)."""
    out = [
        {"type": "OrphanDomains", "status": "True" if orphans else "False",
         "reason": "OrphanDomain" if orphans else "NoOrphans",
         "message": (f"{len(orphans)} domain(s) of this cluster with neither desired entry nor tombstone, left "
                     f"running: {', '.join(o['domain'] for o in orphans[:10])}; `hostplane node orphans NODE "
                     "--purge` deletes them" if orphans else "")},
        {"type": "OrphanVolumes", "status": "True" if orphan_volumes else "False",
         "reason": "OrphanVolume" if orphan_volumes else "NoOrphans",
         "message": (f"{len(orphan_volumes)} volume(s) without domain, desired entry or tombstone, kept: "
                     f"{', '.join(orphan_volumes[:10])}" if orphan_volumes else "")},
    ]
    empty = desired == 0 and managed > 0
    out.append({"type": "DesiredStateEmpty", "status": "True" if empty else "False",
                "reason": "NoDesiredEntries" if empty else "DesiredStatePresent",
                "message": (f"no desired entries while {managed} managed domain(s) exist: is --etcd right? "
                            "They are left as they are; only tombstones delete" if empty else "")})
    out.append({"type": "LibvirtReachable", "status": "False" if libvirt_error else "True",
                "reason": "LibvirtError" if libvirt_error else "Connected", "message": libvirt_error})
    out.append({"type": "LibvirtWarm", "status": "False" if warming else "True",
                "reason": "Warming" if warming else "Warm",
                "message": "connecting to libvirt and probing QEMU (a first start can take minutes); nothing is "
                           "placed here until it is done" if warming else ""})
    out.append({"type": "LibvirtResponsive", "status": "False" if stuck else "True",
                "reason": "CallTimeout" if stuck else "Responsive",
                "message": f"libvirt call '{stuck[0]}' has not returned for {stuck[1]:.0f} s" if stuck else ""})
    return out


def heartbeat(node: str, facts: Any, *, allocated: dict[str, int], libvirt_ok: bool, error: str,
              now: datetime, orphans: list[dict[str, str]] | None = None, orphan_volumes: list[str] | None = None,
              conditions: list[dict[str, str]] | None = None, warming: bool = False,
              endpoint: str = "", legacy_memory: list[str] | None = None) -> dict[str, Any]:
    """The node's heartbeat value: capacity from libvirt, what its managed domains use, orphans, conditions,
    and `endpoint` (host:port of its TLS endpoint for consoles and metrics, if it runs one)."""
    doc: dict[str, Any] = {"node": node, "time": now.astimezone(UTC).isoformat(), "libvirt": libvirt_ok}
    if endpoint:
        doc["endpoint"] = endpoint
    if facts is not None:
        doc["capacity"] = {"cpus": facts.cpus, "memoryMiB": facts.memory_mib,
                           "freeMemoryMiB": facts.free_memory_mib, "poolGiB": facts.pool_capacity_gib,
                           "poolAvailableGiB": facts.pool_available_gib}
        doc["domains"] = {"managed": facts.managed, "unmanaged": facts.unmanaged,
                          "foreign": getattr(facts, "foreign", 0)}
    doc["allocated"] = allocated
    if warming:
        doc["warming"] = True
    doc["orphans"] = list(orphans or [])
    doc["orphanVolumes"] = list(orphan_volumes or [])
    if legacy_memory:
        # VPS still booted with the node maximum and limited only by the balloon (ADR 013).
        doc["legacyMemoryDomains"] = list(legacy_memory)
    if conditions:
        doc["conditions"] = conditions
    if error:
        doc["error"] = error
    return doc
