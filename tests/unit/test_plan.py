"""The node planner: table tests and properties against a model hypervisor."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from nodeagent import netfilter
from nodeagent import plan as P
from nodeagent.plan import Actual, config_hash, plan, seed_hash, wake_after
from specs.domain import DomainImage, DomainNetwork, DomainSpec

NOW = 1_000_000.0


def spec(**kw: object) -> DomainSpec:
    base: dict[str, object] = {
        "vps": "web-1", "uid": "0a1b2c3d", "vcpus": 1, "memoryMiB": 128, "diskGiB": 2, "maxVcpus": 4,
        "maxMemoryMiB": 512, "image": DomainImage(name="tiny"), "hostname": "web-1",
        "network": DomainNetwork(mac="52:54:00:00:00:01"),
    }
    base.update(kw)
    return DomainSpec.model_validate(base)


def converged_actual(d: DomainSpec, **kw: object) -> Actual:
    a = Actual(defined=True, power="running", vcpus=d.vcpus, max_vcpus=d.maxVcpus, memory_mib=d.memoryMiB,
               max_memory_mib=d.maxMemoryMiB, config_hash=config_hash(d), seed_hash=seed_hash(d),
               rebuild_generation=d.rebuildGeneration, restart_generation=d.restartGeneration,
               base_present=True, disk_gib=d.diskGiB, seed_present=True, grace_seconds=d.shutdownGraceSeconds)
    return replace(a, **kw)  # type: ignore[arg-type]


# ------------------------------------------------------------------ the model hypervisor


def apply(a: Actual, action: P.Action, d: DomainSpec | None, *, guest_acpi: bool = True) -> Actual:
    """What a hypervisor does for each action; the guest obeys ACPI at once when `guest_acpi`."""
    match action:
        case P.EnsureImage():
            return replace(a, base_present=True)
        case P.CreateRootDisk(size_gib=s):
            return replace(a, disk_gib=s)
        case P.GrowRootDisk(size_gib=s):
            assert a.disk_gib is not None and s >= a.disk_gib
            return replace(a, disk_gib=s)
        case P.RecreateRootDisk(size_gib=s, rebuild_generation=g):
            assert a.power in ("shutoff", "crashed") or not a.defined
            return replace(a, disk_gib=s, rebuild_generation=g)
        case P.BuildSeed(seed_hash=h):
            return replace(a, seed_present=True, seed_hash=h if a.defined else a.seed_hash)
        case P.Define(config_hash=ch, seed_hash=sh, rebuild_generation=rg, restart_generation=tg):
            assert d is not None
            active = a.defined and a.power in ("running", "paused")
            new = replace(a, defined=True, managed=True, config_hash=ch, seed_hash=sh, rebuild_generation=rg,
                          restart_generation=tg, grace_seconds=d.shutdownGraceSeconds)
            if not active:
                # The filter read back is the live one while running: a define changes only the config.
                # A define boots with exactly the plan's memory, in the new model.
                new = replace(new, vcpus=d.vcpus, memory_mib=d.memoryMiB, max_vcpus=d.maxVcpus,
                              max_memory_mib=d.maxMemoryMiB, filter_params=netfilter.params(d),
                              requested_memory_mib=d.memoryMiB, legacy_memory=False)
            if not a.defined:
                new = replace(new, power="shutoff", off_by_guest=False)
            return new
        case P.Start(restart_generation=g, at=t, paused=paused, after_crash=_):
            assert a.defined and a.disk_gib is not None and a.seed_present
            return replace(a, power="paused" if paused else "running", restart_generation=g, stop_intent=None,
                           stop_requested_at=None, last_acpi_at=None, crashed_at=None, off_by_guest=False,
                           last_start_at=t, paused_at=t if paused else None)
        case P.RequestShutdown(intent=i, first=first):
            assert a.power == "running"
            a = replace(a, stop_intent=i, stop_requested_at=NOW_CELL[0] if first else a.stop_requested_at,
                        last_acpi_at=NOW_CELL[0])
            return replace(a, power="shutoff") if guest_acpi else a
        case P.Destroy():
            return replace(a, power="shutoff")
        case P.Pause(at=t):
            assert a.power == "running"
            return replace(a, power="paused", paused_at=t)
        case P.Resume(for_stop=for_stop):
            assert a.power == "paused"
            return replace(a, power="running", paused_at=a.paused_at if for_stop else None)
        case P.SetVcpus(vcpus=n):
            assert n <= a.max_vcpus
            return replace(a, vcpus=n)
        case P.GrowMemory(memory_mib=m):
            assert a.power in ("running", "paused") and m <= a.max_memory_mib
            assert m > a.memory_mib, "memory never shrinks live"
            if a.legacy_memory:
                return replace(a, memory_mib=m, requested_memory_mib=m)
            # The guest plugs it only if it has a virtio-mem driver.
            return replace(a, requested_memory_mib=m, memory_mib=m if GUEST_PLUGS[0] else a.memory_mib)
        case P.RecordIntent(key=k, value=v):
            return replace(a, **{k: v})
        case P.RecordCrash(crashed_at=t):
            return replace(a, crashed_at=t, crash_count=a.crash_count + 1)
        case P.ForgetCrashes():
            return replace(a, crash_count=0)
        case P.UpdateFilter(params=fp, live=live):
            assert a.defined and live == (a.power in ("running", "paused"))
            return replace(a, filter_params=fp)
        case P.DeleteVolumes():
            assert d is None, "a volume is deleted only when the desired entry is gone"
            return replace(a, disk_gib=None, seed_present=False)
        case P.Undefine():
            assert a.power in ("shutoff", "crashed")
            return Actual(base_present=a.base_present, disk_gib=a.disk_gib, seed_present=a.seed_present)
    raise AssertionError(f"unknown action {action}")


NOW_CELL = [NOW]
GUEST_PLUGS = [True]


def run_to_convergence(d: DomainSpec | None, a: Actual, *, guest_acpi: bool = True, tombstoned: bool = False,
                       rounds: int = 300) -> tuple[Actual, float]:
    now = NOW
    for _ in range(rounds):
        NOW_CELL[0] = now
        actions = plan(d, a, now=now, tombstoned=tombstoned)
        if not actions:
            wait = wake_after(d, a, now=now, tombstoned=tombstoned)
            if wait is None:
                return a, now
            now += wait
            continue
        for act in actions:
            if d is not None:
                assert not isinstance(act, P.DeleteVolumes)
            a = apply(a, act, d, guest_acpi=guest_acpi)
        now += 0.5
    raise AssertionError(f"no convergence: {a}")


def is_converged(d: DomainSpec, a: Actual, now: float) -> bool:
    if not (a.defined and a.config_hash == config_hash(d) and a.seed_hash == seed_hash(d)):
        return False
    if a.disk_gib is None or a.disk_gib < d.diskGiB or a.rebuild_generation < d.rebuildGeneration:
        return False
    want = d.power
    if want == "Stopped":
        return a.power in ("shutoff", "crashed")
    # A guest that powered itself off stays off, whatever runs it would want.
    guest_off = a.power == "shutoff" and a.off_by_guest and a.stop_intent is None
    if guest_off:
        return a.restart_generation >= d.restartGeneration
    if want == "Paused":
        expired = d.shutdownAfterPausedSeconds is not None
        return a.power == "paused" or (expired and a.power in ("shutoff", "crashed"))
    return (a.power == "running" and a.restart_generation >= d.restartGeneration
            and (a.vcpus == d.vcpus or d.vcpus > a.max_vcpus)
            and (not P.memory_differs(a.memory_mib, d.memoryMiB) or d.memoryMiB > a.max_memory_mib
                 or a.memory_mib > d.memoryMiB or P.memory_pending_reboot(d, a)))


# ----------------------------------------------------------------------------- tables


def test_new_vps_is_built_and_started_in_order() -> None:
    """A VPS with nothing on the node gets image, disk, seed, definition and a boot, in that order."""
    d = spec()
    names = [a.name for a in plan(d, None, now=NOW)]
    assert names == ["EnsureImage", "CreateRootDisk", "BuildSeed", "Define", "Start"]


def test_converged_plans_nothing() -> None:
    """A domain matching its spec needs no action."""
    d = spec()
    assert plan(d, converged_actual(d), now=NOW) == []


def test_stop_begins_with_acpi_and_destroys_after_grace() -> None:
    """Stopping sends ACPI, re-sends it every 5 s, and destroys only after the grace period."""
    d = spec(power="Stopped", shutdownGraceSeconds=30)
    a = converged_actual(d)
    assert plan(d, a, now=NOW) == [P.RequestShutdown("stop", first=True, grace_seconds=30.0)]
    a = replace(a, stop_intent="stop", stop_requested_at=NOW, last_acpi_at=NOW, grace_seconds=30)
    assert plan(d, a, now=NOW + 2) == []
    assert plan(d, a, now=NOW + 5) == [P.RequestShutdown("stop", first=False, grace_seconds=30.0)]
    assert plan(d, replace(a, last_acpi_at=NOW + 25), now=NOW + 30) == [P.Destroy()]
    assert wake_after(d, a, now=NOW + 1) == 4.0


def test_guest_poweroff_stays_off_until_restart_requested() -> None:
    """A guest that powered itself off is left off; a restart generation boots it."""
    d = spec()
    a = converged_actual(d, power="shutoff", off_by_guest=True)
    assert plan(d, a, now=NOW) == []
    d2 = spec(restartGeneration=1)
    assert plan(d2, a, now=NOW) == [P.Start(1, NOW)]


def test_stopped_then_running_boots_a_guest_stopped_domain() -> None:
    """After the user asks for Stopped on a guest-off domain, asking Running again boots it."""
    a = converged_actual(spec(), power="shutoff", off_by_guest=True)
    assert plan(spec(power="Stopped"), a, now=NOW) == [P.RecordIntent("stop_intent", "stop")]
    assert plan(spec(), replace(a, stop_intent="stop"), now=NOW) == [P.Start(0, NOW)]


def test_crash_restarts_with_backoff() -> None:
    """A crashed domain is recorded, then restarted after 10 s x n^2."""
    d = spec()
    a = converged_actual(d, power="crashed")
    assert plan(d, a, now=NOW) == [P.RecordCrash(NOW)]
    a = replace(a, crashed_at=NOW, crash_count=3)
    assert plan(d, a, now=NOW + 89) == []
    assert plan(d, a, now=NOW + 90) == [P.Start(0, NOW + 90, after_crash=True)]
    assert P.crash_backoff(100) == 300.0


def test_live_resize_within_maximum() -> None:
    """vCPU and memory grow live up to the maximums; beyond them nothing is forced."""
    d = spec(vcpus=2, memoryMiB=256)
    a = converged_actual(spec())
    assert plan(d, a, now=NOW) == [P.SetVcpus(2, live=True), P.GrowMemory(256)]
    big = spec(vcpus=8, maxVcpus=8)
    acts = plan(big, a, now=NOW)
    assert not any(isinstance(x, P.SetVcpus) for x in acts)
    assert P.restart_required(big, a)


def test_disk_grows_online_and_never_shrinks() -> None:
    """A larger disk grows online; a smaller one is left alone."""
    a = converged_actual(spec())
    assert plan(spec(diskGiB=5), a, now=NOW) == [P.GrowRootDisk(5, online=True)]
    assert plan(spec(diskGiB=1), a, now=NOW) == []


def test_rebuild_stops_then_recreates_disk_and_boots() -> None:
    """A rebuild stops the guest first, then replaces the root disk and boots it again."""
    d = spec(rebuildGeneration=1)
    a = converged_actual(spec())
    assert plan(d, a, now=NOW) == [P.RequestShutdown("rebuild", first=True, grace_seconds=60.0)]
    off = replace(a, power="shutoff", stop_intent="rebuild")
    assert plan(d, off, now=NOW) == [P.RecreateRootDisk(2, 1), P.Start(0, NOW)]


def test_delete_stops_then_removes_volumes_then_domain() -> None:
    """With a tombstone for its uid, the domain is shut down, its volumes deleted, then undefined."""
    a = converged_actual(spec())
    assert plan(None, a, now=NOW, tombstoned=True) == [P.RequestShutdown("delete", first=True, grace_seconds=60.0)]
    off = replace(a, power="shutoff")
    assert plan(None, off, now=NOW, tombstoned=True) == [P.DeleteVolumes(), P.Undefine()]
    assert plan(None, Actual(disk_gib=3), now=NOW, tombstoned=True) == [P.DeleteVolumes()]
    assert plan(None, None, now=NOW, tombstoned=True) == []


def test_missing_desired_entry_without_tombstone_is_an_orphan_left_alone() -> None:
    """No desired entry and no tombstone (an empty or wrong etcd): nothing is stopped or deleted."""
    a = converged_actual(spec())
    assert plan(None, a, now=NOW) == []
    assert plan(None, replace(a, power="shutoff"), now=NOW) == []
    assert plan(None, Actual(disk_gib=3, seed_present=True), now=NOW) == []
    # Even a delete already under way (its tombstone since withdrawn) goes no further.
    stopping = replace(a, stop_intent="delete", stop_requested_at=NOW - 600, last_acpi_at=NOW - 600)
    assert plan(None, stopping, now=NOW) == []
    assert wake_after(None, stopping, now=NOW) is None
    assert P.settled(None, a)


def test_unmanaged_domain_is_never_touched() -> None:
    """A domain with the same name but no Hostplane metadata gets no action, desired or not."""
    foreign = Actual(defined=True, managed=False, power="running")
    assert plan(spec(), foreign, now=NOW) == []
    assert plan(None, foreign, now=NOW) == []


def test_suspended_domain_paused_then_shut_off_after_timer() -> None:
    """A Paused spec with a timer pauses at once and shuts off once the timer has run."""
    d = spec(power="Paused", shutdownAfterPausedSeconds=100)
    a = converged_actual(d)
    assert plan(d, a, now=NOW) == [P.Pause(NOW)]
    paused = replace(a, power="paused", paused_at=NOW)
    assert plan(d, paused, now=NOW + 50) == []
    assert wake_after(d, paused, now=NOW + 50) == 50
    assert plan(d, paused, now=NOW + 100) == [P.Resume(for_stop=True),
                                               P.RequestShutdown("suspend", first=True, grace_seconds=60.0)]


def test_paid_again_resumes_and_forgets_pause_time() -> None:
    """Running after Paused resumes the domain (and the resume clears the pause time)."""
    d = spec()
    paused = converged_actual(d, power="paused", paused_at=NOW - 10)
    assert plan(d, paused, now=NOW) == [P.Resume()]


# ------------------------------------------------------------------------- properties


@st.composite
def specs(draw: st.DrawFn) -> DomainSpec:
    max_vcpus = draw(st.integers(1, 8))
    max_mem = draw(st.sampled_from([128, 256, 512, 1024]))
    return spec(
        vcpus=draw(st.integers(1, 10)), maxVcpus=max_vcpus, memoryMiB=draw(st.sampled_from([64, 128, 256, 2048])),
        maxMemoryMiB=max_mem, diskGiB=draw(st.integers(1, 20)),
        power=draw(st.sampled_from(["Running", "Stopped", "Paused"])),
        shutdownAfterPausedSeconds=draw(st.none() | st.integers(0, 300)),
        hostname=draw(st.sampled_from(["a", "b"])), sshKeys=draw(st.lists(st.sampled_from(["k1", "k2"]), max_size=2)),
        rebuildGeneration=draw(st.integers(0, 2)), restartGeneration=draw(st.integers(0, 2)),
        shutdownGraceSeconds=draw(st.sampled_from([0, 30, 60])),
    )


@st.composite
def actuals(draw: st.DrawFn) -> Actual:
    defined = draw(st.booleans())
    t = st.none() | st.floats(NOW - 1000, NOW, allow_nan=False)
    return Actual(
        defined=defined,
        power=draw(st.sampled_from(["running", "paused", "shutoff", "crashed"])) if defined else "shutoff",
        off_by_guest=draw(st.booleans()),
        vcpus=draw(st.integers(1, 8)), max_vcpus=draw(st.integers(1, 8)),
        memory_mib=draw(st.sampled_from([64, 128, 256])), max_memory_mib=draw(st.sampled_from([128, 256, 1024])),
        requested_memory_mib=draw(st.sampled_from([0, 64, 128, 256, 1024])), legacy_memory=draw(st.booleans()),
        config_hash=draw(st.none() | st.just("old")), seed_hash=draw(st.none() | st.just("old")),
        rebuild_generation=draw(st.integers(0, 2)), restart_generation=draw(st.integers(0, 2)),
        stop_intent=draw(st.none() | st.sampled_from(["stop", "restart", "rebuild", "delete", "suspend"])),
        stop_requested_at=draw(t), last_acpi_at=draw(t), paused_at=draw(t),
        crash_count=draw(st.integers(0, 5)), crashed_at=draw(t), last_start_at=draw(t),
        base_present=draw(st.booleans()), disk_gib=draw(st.none() | st.integers(1, 20)),
        seed_present=draw(st.booleans()),
    )


@settings(max_examples=200, deadline=None)
@given(specs(), actuals(), st.booleans(), st.booleans())
def test_property_convergence_and_idempotence(d: DomainSpec, a: Actual, acpi: bool, plugs: bool) -> None:
    """From any node state, applying plans reaches the desired state, after which the plan is empty."""
    GUEST_PLUGS[0] = plugs
    final, now = run_to_convergence(d, a, guest_acpi=acpi)
    assert is_converged(d, final, now), final
    assert plan(d, final, now=now) == []


@settings(max_examples=200, deadline=None)
@given(specs(), actuals())
def test_property_safety(d: DomainSpec, a: Actual) -> None:
    """With a desired entry, no volume is deleted, no disk shrinks, and a running disk is never replaced."""
    for act in plan(d, a, now=NOW):
        assert not isinstance(act, (P.DeleteVolumes, P.Undefine))
        if isinstance(act, (P.GrowRootDisk, P.RecreateRootDisk)) and a.disk_gib is not None:
            assert act.size_gib >= a.disk_gib
        if isinstance(act, P.RecreateRootDisk):
            assert not (a.defined and a.power in ("running", "paused"))
        if isinstance(act, P.GrowMemory):
            # Live memory only grows, and is asked for once.
            assert a.power in ("running", "paused") and act.memory_mib > a.memory_mib
            assert a.legacy_memory or act.memory_mib > a.requested_memory_mib


@settings(max_examples=200, deadline=None)
@given(specs(), actuals(), st.booleans())
def test_property_growth_pending_reboot_converges(d: DomainSpec, a: Actual, plugs: bool) -> None:
    """Whether or not the guest plugs a growth, a stop and a start later it has exactly its plan's memory."""
    GUEST_PLUGS[0] = plugs
    running = d.model_copy(update={"power": "Running"})
    a, _ = run_to_convergence(running, a)
    a, _ = run_to_convergence(d.model_copy(update={"power": "Stopped"}), a)
    final, _ = run_to_convergence(running, a)
    if final.power == "running" and not final.off_by_guest:
        assert final.memory_mib == d.memoryMiB and not final.legacy_memory
        assert not P.memory_pending_reboot(running, final)


@settings(max_examples=200, deadline=None)
@given(actuals(), st.booleans())
def test_property_delete_leaves_nothing(a: Actual, acpi: bool) -> None:
    """With a tombstone for its uid, a managed domain and its volumes are removed entirely."""
    final, _ = run_to_convergence(None, a, guest_acpi=acpi, tombstoned=True)
    assert not final.defined and final.disk_gib is None and not final.seed_present


@settings(max_examples=200, deadline=None)
@given(actuals(), st.floats(0, 10_000, allow_nan=False))
def test_property_never_delete_without_tombstone(a: Actual, later: float) -> None:
    """Without a desired entry and without a tombstone, no state at any time gets a single action."""
    assert plan(None, a, now=NOW + later) == []
    assert wake_after(None, a, now=NOW + later) is None


@settings(max_examples=100, deadline=None)
@given(st.none() | specs(), actuals())
def test_property_unmanaged_untouched(d: DomainSpec | None, a: Actual) -> None:
    """A domain without Hostplane metadata never gets an action."""
    assert plan(d, replace(a, defined=True, managed=False), now=NOW) == []


def test_waiting_is_not_settled() -> None:
    """A stop under way or a crash backing off plans nothing yet is not the end state."""
    d = spec()
    assert P.settled(d, converged_actual(d))
    assert not P.settled(spec(power="Stopped"), converged_actual(d, stop_intent="stop", stop_requested_at=NOW))
    assert not P.settled(d, converged_actual(d, power="crashed", crashed_at=NOW, crash_count=1))
    assert P.settled(d, converged_actual(d, power="shutoff", off_by_guest=True))


def test_balloon_near_target_is_reached() -> None:
    """A guest whose balloon settled a little off the target is not resized again and again."""
    d = spec(memoryMiB=128)
    assert plan(d, converged_actual(d, memory_mib=126), now=NOW) == []
    assert plan(d, converged_actual(d, memory_mib=100, requested_memory_mib=100), now=NOW) == [P.GrowMemory(128)]


def test_memory_never_shrinks_live_and_shrinks_at_the_next_define() -> None:
    """A smaller plan leaves a running guest's memory alone; the next define (when off) boots with it."""
    d = spec(memoryMiB=128)
    running = converged_actual(d, memory_mib=256, requested_memory_mib=256)
    assert plan(d, running, now=NOW) == []
    off = replace(running, power="shutoff", stop_intent="stop")
    assert [x.name for x in plan(d, off, now=NOW)] == ["Define", "Start"]


def test_growth_the_guest_did_not_take_waits_for_the_next_boot() -> None:
    """Asked once; a guest that did not plug it gets the condition, and the memory at its next define."""
    d = spec(memoryMiB=512)
    refused = converged_actual(spec(), memory_mib=128, requested_memory_mib=512)
    assert plan(d, refused, now=NOW) == []
    assert P.memory_pending_reboot(d, refused)
    assert not P.memory_pending_reboot(d, replace(refused, memory_mib=512))
    off = replace(refused, power="shutoff", stop_intent="stop")
    assert [x.name for x in plan(d, off, now=NOW)] == ["Define", "Start"]


def test_legacy_domain_is_migrated_only_when_off() -> None:
    """A domain of the old memory model is never restarted for it; it is redefined at its next start."""
    d = spec()
    legacy = converged_actual(d, legacy_memory=True)
    assert plan(d, legacy, now=NOW) == []
    off = replace(legacy, power="shutoff", stop_intent="stop")
    assert [x.name for x in plan(d, off, now=NOW)] == ["Define", "Start"]
