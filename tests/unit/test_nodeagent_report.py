"""What the agent reports for one VPS: power with reason, conditions, generation, written only on change."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from nodeagent import plan as P
from nodeagent.report import heartbeat, observe, observed_power, same_report
from specs.domain import DomainImage, DomainNetwork, DomainSpec

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def spec(**kw: object) -> DomainSpec:
    base: dict[str, object] = {
        "vps": "web-1", "uid": "u1", "vcpus": 1, "memoryMiB": 128, "diskGiB": 2, "maxVcpus": 2,
        "maxMemoryMiB": 256, "image": DomainImage(name="tiny"), "hostname": "web-1",
        "network": DomainNetwork(mac="52:54:00:00:00:01"),
    }
    base.update(kw)
    return DomainSpec.model_validate(base)


RUNNING = P.Actual(defined=True, power="running", vcpus=1, max_vcpus=2, memory_mib=128, max_memory_mib=256,
                   disk_gib=2, seed_present=True, base_present=True)


def test_power_and_reason() -> None:
    """Guest power-off, agent stop, crash, shutting down and absence each read distinctly."""
    assert observed_power(replace(RUNNING, power="shutoff", off_by_guest=True)) == ("Stopped", "guest")
    assert observed_power(replace(RUNNING, power="shutoff", stop_intent="stop")) == ("Stopped", "agent")
    assert observed_power(replace(RUNNING, power="crashed")) == ("Crashed", "crashed")
    assert observed_power(replace(RUNNING, stop_intent="delete", stop_requested_at=1.0)) == ("ShuttingDown", "delete")
    assert observed_power(P.Actual()) == ("Absent", "")


def test_unchanged_state_gives_identical_report() -> None:
    """Observing the same state twice, later, yields the same report (so nothing is rewritten)."""
    first = observe(spec(), RUNNING, vps="web-1", uid="u1", generation=7, converged=True, error=None, notes={},
                    previous=None, now=T0)
    again = observe(spec(), RUNNING, vps="web-1", uid="u1", generation=7, converged=True, error=None, notes={},
                    previous=first, now=T0 + timedelta(minutes=5))
    assert same_report(first, again)
    assert first.observedGeneration == 7


def test_error_keeps_last_converged_generation() -> None:
    """A failed attempt reports the error and keeps the generation it last converged to."""
    ok = observe(spec(), RUNNING, vps="web-1", uid="u1", generation=7, converged=True, error=None, notes={},
                 previous=None, now=T0)
    bad = observe(spec(vcpus=2), RUNNING, vps="web-1", uid="u1", generation=9, converged=False,
                  error=("StorageFull", "pool is full"), notes={}, previous=ok, now=T0)
    assert bad.observedGeneration == 7 and bad.lastError == "StorageFull: pool is full"
    ready = next(c for c in bad.conditions if c.type == "Ready")
    assert ready.status == "False" and ready.reason == "StorageFull"


def test_restart_required_and_crash_loop_conditions() -> None:
    """Beyond-maximum sizes set RestartRequired; repeated crashes set CrashLoop."""
    obs = observe(spec(vcpus=4, maxVcpus=4), replace(RUNNING, crash_count=3), vps="web-1", uid="u1",
                  generation=3, converged=True, error=None, notes={}, previous=None, now=T0)
    conds = {c.type: c for c in obs.conditions}
    assert conds["RestartRequired"].status == "True" and conds["CrashLoop"].status == "True"
    assert "90 s" in conds["CrashLoop"].message


def test_name_conflict_reported() -> None:
    """A foreign domain under the derived name is reported as a conflict, not as ours."""
    obs = observe(spec(), P.Actual(defined=True, managed=False), vps="web-1", uid="u1", generation=3,
                  converged=True, error=None, notes={}, previous=None, now=T0)
    assert obs.power == "Unknown" and obs.lastError.startswith("NameConflict")
    assert obs.observedGeneration is None


def test_memory_growth_not_plugged_and_legacy_model_are_reported() -> None:
    """A growth the guest did not plug reports the plugged size and MemoryGrowsAtReboot; the old model is named."""
    refused = replace(RUNNING, memory_mib=RUNNING.memory_mib, requested_memory_mib=RUNNING.max_memory_mib)
    obs = observe(spec(memoryMiB=RUNNING.max_memory_mib), refused, vps="web-1", uid="u1", generation=3,
                  converged=True, error=None, notes={}, previous=None, now=T0)
    conds = {c.type: c for c in obs.conditions}
    assert obs.memoryMiB == RUNNING.memory_mib
    assert conds["MemoryGrowsAtReboot"].status == "True" and "next stop/start" in conds["MemoryGrowsAtReboot"].message
    assert conds["LegacyMemoryModel"].status == "False"
    old = observe(spec(), replace(RUNNING, legacy_memory=True), vps="web-1", uid="u1", generation=3,
                  converged=True, error=None, notes={}, previous=None, now=T0)
    assert {c.type: c.status for c in old.conditions}["LegacyMemoryModel"] == "True"


def test_heartbeat_names_vps_still_on_the_balloon_model() -> None:
    """The node's heartbeat lists the VPS whose domains still run the old memory model, and omits it when none do."""
    doc = heartbeat("n1", None, allocated={}, libvirt_ok=True, error="", now=T0, legacy_memory=["web-1"])
    assert doc["legacyMemoryDomains"] == ["web-1"]
    assert "legacyMemoryDomains" not in heartbeat("n1", None, allocated={}, libvirt_ok=True, error="", now=T0)
