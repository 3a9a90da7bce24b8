"""The planner: what to do to one VPS's domain, given what it should be and what it is.

`plan(desired, actual, now=...)` is pure: no I/O, no clock, no randomness. `desired` is the
resolved `DomainSpec` (None when the node's desired entry is gone); `actual` is what the
node holds for that VPS, read from libvirt by the agent (the domain, the intent recorded in
its metadata, its volumes). The agent executes the returned actions in order, re-reads, and
plans again until the plan is empty; time-driven steps (ACPI re-send, the destroy deadline,
crash-loop backoff, the paused-then-off timer) are found by `wake_after`.

It must never plan a volume deletion while a desired entry exists (rebuild replaces the root
disk, identity and seed kept), never stop or delete anything without a tombstone for the
domain's uid (a missing desired entry alone is not intent: an empty or wrong etcd must not
destroy disks), never shrink a disk, and never touch a domain that does not carry Hostplane
metadata for this VPS and this cluster.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Literal

from nodeagent import netfilter
from specs.domain import DomainSpec

Power = Literal["running", "paused", "shutoff", "crashed"]
StopIntent = Literal["stop", "restart", "rebuild", "delete", "suspend"]

ACPI_RESEND_SECONDS = 5.0
DEFAULT_GRACE_SECONDS = 60.0
CRASH_BACKOFF_BASE = 10.0
CRASH_BACKOFF_CAP = 300.0
# A domain that has run this long since its last crash restart is no longer in a crash loop.
CRASH_FORGET_SECONDS = 600.0


@dataclass(frozen=True)
class Actual:
    """One VPS's side of the node: its domain (if any), the intent in its metadata, its volumes."""

    defined: bool = False
    # False when a domain of that name exists without Hostplane metadata: never touched.
    managed: bool = True
    power: Power = "shutoff"
    # The domain powered itself off (libvirt reason "shutdown" with no stop intent of ours).
    off_by_guest: bool = False
    vcpus: int = 0
    max_vcpus: int = 0
    # Memory the guest really has: boot memory + what its virtio-mem device has plugged (ADR 013).
    memory_mib: int = 0
    max_memory_mib: int = 0
    # Boot memory + what the device was asked to plug; above `memory_mib`: the guest has not accepted it.
    requested_memory_mib: int = 0
    # Defined before ADR 013 (booted with the maximum, limited by the balloon): migrated at the next define.
    legacy_memory: bool = False
    # Metadata (inactive XML): what the agent last applied and what it was in the middle of.
    config_hash: str | None = None
    seed_hash: str | None = None
    rebuild_generation: int = 0
    restart_generation: int = 0
    stop_intent: StopIntent | None = None
    stop_requested_at: float | None = None
    last_acpi_at: float | None = None
    grace_seconds: float = DEFAULT_GRACE_SECONDS
    paused_at: float | None = None
    crash_count: int = 0
    crashed_at: float | None = None
    last_start_at: float | None = None
    # Storage.
    base_present: bool = False
    disk_gib: int | None = None
    seed_present: bool = False
    # The anti-spoofing filter's parameters on the NIC (live XML when active); None: no filter.
    filter_params: netfilter.Params | None = None


# ---------------------------------------------------------------------------------- actions


@dataclass(frozen=True)
class Action:
    """Base of every step. Each is idempotent: repeating it after a crash at any line is safe."""

    @property
    def name(self) -> str:
        return type(self).__name__


@dataclass(frozen=True)
class EnsureImage(Action):
    """Have the image's read-only base (and kernel/initrd) in the pool, checksum verified."""


@dataclass(frozen=True)
class CreateRootDisk(Action):
    size_gib: int


@dataclass(frozen=True)
class GrowRootDisk(Action):
    size_gib: int
    online: bool


@dataclass(frozen=True)
class RecreateRootDisk(Action):
    """Rebuild: a fresh overlay on the image replaces the root disk; the seed and MAC stay."""

    size_gib: int
    rebuild_generation: int


@dataclass(frozen=True)
class BuildSeed(Action):
    seed_hash: str


@dataclass(frozen=True)
class Define(Action):
    """(Re)define the domain from the spec; intent already in its metadata is kept.

    The generations are what the (new) domain's disk and boot already satisfy.
    """

    config_hash: str
    seed_hash: str
    rebuild_generation: int
    restart_generation: int


@dataclass(frozen=True)
class Start(Action):
    """Boot; records the restart generation this boot satisfies and clears any stop intent."""

    restart_generation: int
    at: float
    paused: bool = False
    after_crash: bool = False


@dataclass(frozen=True)
class RequestShutdown(Action):
    """Send ACPI power-off; the first one records when the graceful stop began."""

    intent: StopIntent
    first: bool
    grace_seconds: float


@dataclass(frozen=True)
class Destroy(Action):
    """Hard power-off, only after the grace period of a graceful stop (or a paused domain)."""


@dataclass(frozen=True)
class Pause(Action):
    """Pause; records when, so a suspended domain can be shut off after its timer."""

    at: float


@dataclass(frozen=True)
class Resume(Action):
    """Unpause; the guest clock is re-synced when a guest agent answers, else noted.

    `for_stop`: resumed only so it can see ACPI; the pause time is kept.
    """

    for_stop: bool = False


@dataclass(frozen=True)
class SetVcpus(Action):
    vcpus: int
    live: bool


@dataclass(frozen=True)
class GrowMemory(Action):
    """Ask the running domain's virtio-mem device to plug up to `memory_mib` in all (never less):
    the cgroup limit is raised first. A legacy domain's balloon target is raised instead."""

    memory_mib: int


IntentKey = Literal["stop_intent", "restart_generation", "paused_at"]


@dataclass(frozen=True)
class RecordIntent(Action):
    """Write one field of intent into the metadata without touching the domain's power."""

    key: IntentKey
    value: str | int | float | None


@dataclass(frozen=True)
class RecordCrash(Action):
    crashed_at: float


@dataclass(frozen=True)
class ForgetCrashes(Action):
    pass


@dataclass(frozen=True)
class UpdateFilter(Action):
    """Set the NIC's filter parameters to the booking's (live and config): no reboot."""

    params: netfilter.Params
    live: bool


@dataclass(frozen=True)
class DeleteVolumes(Action):
    """Root disk and seed. Only ever planned for a tombstone of this uid (and no desired entry)."""


@dataclass(frozen=True)
class Undefine(Action):
    pass


# ------------------------------------------------------------------------------- hashing


def _digest(data: object) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def config_hash(spec: DomainSpec) -> str:
    """What needs a (re)define: everything fixed at define time. Live-resizable sizes are not in it."""
    return _digest({
        "vps": spec.vps, "uid": spec.uid, "maxVcpus": spec.maxVcpus, "maxMemoryMiB": spec.maxMemoryMiB,
        "mac": spec.network.mac,
        "bandwidth": spec.bandwidth.model_dump() if spec.bandwidth else None,
        "kernel": [spec.image.kernel, spec.image.initrd, spec.image.cmdline],
        "grace": spec.shutdownGraceSeconds,
        # Only for entries with a mode, so entries written before modes keep their hash.
        **({"nic": [spec.network.mode, spec.network.bridge, spec.network.vlan]} if spec.network.mode else {}),
    })


def seed_hash(spec: DomainSpec) -> str:
    """What the NoCloud seed carries; a change rebuilds it."""
    return _digest({
        "uid": spec.uid, "hostname": spec.hostname, "sshKeys": spec.sshKeys,
        "passwordHash": spec.passwordHash, "network": spec.network.model_dump(),
        # Only when set, so seeds of entries without a script keep their hash.
        **({"userScript": spec.userScript} if spec.userScript is not None else {}),
    })


def memory_pending_reboot(desired: DomainSpec, a: Actual) -> bool:
    """A live growth was asked of the running guest and it did not take it (no virtio-mem driver or no
    onlining): the memory arrives with the next define, at the next stop/start."""
    return (_active(a) and not a.legacy_memory and _wants_growth(desired, a)
            and (a.requested_memory_mib >= desired.memoryMiB
                 or not memory_differs(a.requested_memory_mib, desired.memoryMiB)))


def _wants_growth(d: DomainSpec, a: Actual) -> bool:
    return d.memoryMiB > a.memory_mib and memory_differs(a.memory_mib, d.memoryMiB) and d.memoryMiB <= a.max_memory_mib


def memory_differs(actual_mib: int, desired_mib: int) -> bool:
    """A running guest's balloon settles near its target, not on it: within 2% (at least 4 MiB) is reached."""
    return abs(actual_mib - desired_mib) > max(4, desired_mib // 50)


def crash_backoff(crash_count: int) -> float:
    """10 s * n^2, capped at 5 min."""
    return min(CRASH_BACKOFF_BASE * max(crash_count, 1) ** 2, CRASH_BACKOFF_CAP)


# ------------------------------------------------------------------------------ planning


@dataclass(frozen=True)
class _Ctx:
    desired: DomainSpec | None
    actual: Actual
    now: float
    notes: list[str] = field(default_factory=list)


def _active(a: Actual) -> bool:
    return a.defined and a.power in ("running", "paused")


def _graceful_stop(a: Actual, intent: StopIntent, grace: float, now: float) -> list[Action]:
    if a.power == "paused":
        # A paused guest cannot see ACPI; let it run so it can shut down cleanly.
        return [Resume(for_stop=True),
                RequestShutdown(intent, first=a.stop_requested_at is None, grace_seconds=grace)]
    if a.stop_requested_at is None:
        return [RequestShutdown(intent, first=True, grace_seconds=grace)]
    if now - a.stop_requested_at >= a.grace_seconds:
        return [Destroy()]
    if a.last_acpi_at is None or now - a.last_acpi_at >= ACPI_RESEND_SECONDS:
        return [RequestShutdown(intent, first=False, grace_seconds=a.grace_seconds)]
    return []


def _plan_delete(a: Actual, now: float) -> list[Action]:
    if a.defined and not a.managed:
        return []
    if _active(a):
        return _graceful_stop(a, "delete", a.grace_seconds, now)
    out: list[Action] = []
    # Volumes before the domain: if we crash in between, the still-defined domain brings us back here.
    if a.disk_gib is not None or a.seed_present:
        out.append(DeleteVolumes())
    if a.defined:
        out.append(Undefine())
    return out


def _pause_expired(d: DomainSpec, a: Actual, now: float) -> bool:
    return (d.power == "Paused" and d.shutdownAfterPausedSeconds is not None and a.paused_at is not None
            and now - a.paused_at >= d.shutdownAfterPausedSeconds)


def plan(desired: DomainSpec | None, actual: Actual | None, *, now: float, tombstoned: bool = False) -> list[Action]:
    """The steps that move `actual` towards `desired`; empty when converged (or only waiting).

    Without a desired entry, only a tombstone for this uid (`tombstoned`) deletes; otherwise the
    domain is an orphan and nothing is planned for it.
    """
    a = actual or Actual()
    if desired is None:
        return _plan_delete(a, now) if tombstoned else []
    d = desired
    if a.defined and not a.managed:
        return []

    out: list[Action] = []
    pending_rebuild = a.defined and d.rebuildGeneration > a.rebuild_generation
    pending_restart = a.defined and d.restartGeneration > a.restart_generation
    grace = float(d.shutdownGraceSeconds)
    active = _active(a)

    # A rebuild replaces the disk under a stopped domain only.
    if pending_rebuild and active:
        return _graceful_stop(a, "rebuild", grace, now)

    # Storage first: nothing boots without its disk and seed.
    if pending_rebuild:
        if not a.base_present:
            out.append(EnsureImage())
        out.append(RecreateRootDisk(max(d.diskGiB, a.disk_gib or 0), d.rebuildGeneration))
    elif a.disk_gib is None:
        if not a.base_present:
            out.append(EnsureImage())
        out.append(CreateRootDisk(d.diskGiB))
    elif d.diskGiB > a.disk_gib:
        out.append(GrowRootDisk(d.diskGiB, online=active))
    sh = seed_hash(d)
    if not a.seed_present or a.seed_hash != sh:
        out.append(BuildSeed(sh))
    ch = config_hash(d)
    sizes_differ = a.vcpus != d.vcpus or memory_differs(a.memory_mib, d.memoryMiB)
    # Off: a define boots it with exactly the plan's sizes, and moves a legacy domain to the new memory model.
    if not a.defined or a.config_hash != ch or (not active and (sizes_differ or a.legacy_memory)):
        out.append(Define(ch, sh, a.rebuild_generation if a.defined else d.rebuildGeneration,
                          a.restart_generation if a.defined else d.restartGeneration))

    want_filter = netfilter.params(d)
    if a.defined and want_filter is not None and a.filter_params != want_filter:
        # The booking's addresses moved, or someone edited the filter: put it back, live if running.
        out.append(UpdateFilter(want_filter, live=active))

    if not active:
        out.extend(_plan_off(d, a, now, pending_restart))
        return out

    # Active from here on.
    need_off: StopIntent | None = None
    if d.power == "Stopped":
        need_off = "stop"
    elif pending_restart:
        need_off = "restart"
    elif _pause_expired(d, a, now):
        need_off = "suspend"
    if need_off is not None:
        out.extend(_graceful_stop(a, need_off, grace, now))
        return out

    if a.stop_intent is not None:
        # A stop was begun but is no longer wanted (power set back): forget it.
        out.append(RecordIntent("stop_intent", None))
    if d.power == "Paused" and a.power == "running":
        out.append(Pause(now))
    elif d.power == "Running" and a.power == "paused":
        out.append(Resume())
    elif d.power == "Paused" and a.paused_at is None:
        out.append(RecordIntent("paused_at", now))
    elif d.power == "Running" and a.paused_at is not None:
        out.append(RecordIntent("paused_at", None))
    # Live resize within the maximums fixed at define time; beyond them waits for a restart.
    if d.vcpus != a.vcpus and d.vcpus <= a.max_vcpus:
        out.append(SetVcpus(d.vcpus, live=True))
    # Memory only ever grows live; asked once, then it is up to the guest (`memory_pending_reboot`).
    if _wants_growth(d, a) and (a.legacy_memory or (a.requested_memory_mib < d.memoryMiB
                                                     and memory_differs(a.requested_memory_mib, d.memoryMiB))):
        out.append(GrowMemory(d.memoryMiB))
    if (a.crash_count > 0 and a.power == "running" and a.last_start_at is not None
            and now - a.last_start_at >= CRASH_FORGET_SECONDS):
        out.append(ForgetCrashes())
    return out


def _plan_off(d: DomainSpec, a: Actual, now: float, pending_restart: bool) -> list[Action]:
    """The domain is defined (or about to be) and not running."""
    want_on = d.power in ("Running", "Paused") and not _pause_expired(d, a, now)
    if not want_on:
        if pending_restart:
            # Nothing to restart while it is meant to be off; the next boot is fresh anyway.
            out: list[Action] = [RecordIntent("restart_generation", d.restartGeneration)]
            if a.stop_intent is None:
                out.append(RecordIntent("stop_intent", "stop"))
            return out
        if a.defined and a.stop_intent is None and a.power == "shutoff":
            # Remember that staying off is now also our intent, so a later Running boots it.
            return [RecordIntent("stop_intent", "stop")]
        return []
    if a.defined and a.power == "crashed" and not pending_restart:
        if a.crashed_at is None:
            return [RecordCrash(now)]
        if now - a.crashed_at < crash_backoff(a.crash_count):
            return []
        return [Start(d.restartGeneration, now, paused=d.power == "Paused", after_crash=True)]
    if a.defined and a.off_by_guest and a.stop_intent is None and not pending_restart:
        # The guest powered itself off: that is the user's intent; a restart request boots it.
        return []
    return [Start(d.restartGeneration, now, paused=d.power == "Paused")]


def wake_after(desired: DomainSpec | None, actual: Actual | None, *, now: float,
               tombstoned: bool = False) -> float | None:
    """Seconds until a time-driven decision for this VPS may change (None: nothing pending)."""
    a = actual or Actual()
    times: list[float] = []
    if a.stop_requested_at is not None and _active(a) and (desired is not None or tombstoned):
        times.append(a.stop_requested_at + a.grace_seconds)
        times.append((a.last_acpi_at or a.stop_requested_at) + ACPI_RESEND_SECONDS)
    if desired is not None:
        if a.power == "crashed" and a.crashed_at is not None:
            times.append(a.crashed_at + crash_backoff(a.crash_count))
        if (desired.power == "Paused" and desired.shutdownAfterPausedSeconds is not None
                and a.paused_at is not None and _active(a)):
            times.append(a.paused_at + desired.shutdownAfterPausedSeconds)
        if a.crash_count > 0 and a.last_start_at is not None and a.power == "running":
            times.append(a.last_start_at + CRASH_FORGET_SECONDS)
    future = [t - now for t in times if t > now]
    if not future:
        return None
    return max(0.05, min(future))


def settled(desired: DomainSpec | None, actual: Actual | None, *, tombstoned: bool = False) -> bool:
    """With an empty plan: is that the end state, or only a wait (a stop under way, a crash backing off)?"""
    a = actual or Actual()
    if desired is None and not tombstoned:
        return True  # an orphan: nothing will happen to it
    if _active(a) and a.stop_requested_at is not None and a.stop_intent is not None:
        return False
    return not (desired is not None and a.defined and a.power == "crashed" and desired.power != "Stopped")


def restart_required(desired: DomainSpec, actual: Actual) -> bool:
    """The running domain cannot reach the desired size live: its maximums are below it."""
    return _active(actual) and (desired.vcpus > actual.max_vcpus or desired.memoryMiB > actual.max_memory_mib
                                or desired.maxVcpus != actual.max_vcpus
                                or desired.maxMemoryMiB != actual.max_memory_mib)
