"""The status fold and the events it yields (state in -> status out), plus node status."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controllers.booking import NodeAllocation
from controllers.ipam import IPAllocation
from controllers.nodes import node_status
from controllers.resolve import resolve
from controllers.status import VPSProblem, events_for, vps_status
from specs.domain import DomainSpec, ObservedDomain
from specs.kinds import VPSStatus
from specs.meta import Condition
from tests.helpers import builders as b

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
IPS = IPAllocation(pool="pool-a", ipv4="192.0.2.10", prefix4=24)


def desired(**kw: object) -> DomainSpec:
    spec = resolve(b.vps(), b.subscription(), b.plan(), b.image(), IPS, NOW)
    assert spec is not None
    return spec.model_copy(update=kw)


def observed(power: str = "Running", vcpus: int = 1, memory: int = 512, **kw: object) -> ObservedDomain:
    return ObservedDomain.model_validate({"vps": "web-1", "uid": "uid-web-1", "domainName": "hp-uid-web-1",
                                          "power": power, "vcpus": vcpus, "memoryMiB": memory, "diskGiB": 10, **kw})


def fold(**kw: object) -> VPSStatus:
    v = kw.pop("vps", b.vps())
    args: dict[str, object] = {"previous": None, "node": "n1", "ips": IPS, "desired": desired(),
                               "observed": observed(), "node_state": "Ready", "problem": None,
                               "observed_generation": 1, "now": NOW}
    args.update(kw)
    return vps_status(v, **args)  # type: ignore[arg-type]


@pytest.mark.parametrize(("kw", "phase"), [
    ({"node": None, "desired": None, "observed": None, "node_state": None}, "Pending"),
    ({"desired": None, "observed": None}, "Scheduled"),
    ({"observed": None}, "Provisioning"),
    ({"observed": observed("Absent")}, "Provisioning"),
    ({}, "Running"),
    ({"desired": desired(power="Stopped"), "observed": observed("Stopped")}, "Stopped"),
    ({"desired": desired(power="Paused", powerReason="suspended: nonpayment"), "observed": observed("Paused")},
     "Suspended"),
    ({"desired": desired(power="Stopped", powerReason="suspended: abuse"), "observed": observed("Stopped")},
     "Suspended"),
    ({"desired": desired(vcpus=2, memoryMiB=1024)}, "Resizing"),
    ({"observed": observed("Crashed", lastError="qemu died")}, "Failed"),
    ({"node_state": "NotReady"}, "Unknown"),
    ({"node_state": "Missing"}, "Unknown"),
])
def test_phase_table(kw: dict[str, object], phase: str) -> None:
    """Each combination of booking, desired and observed state folds to its documented phase."""
    assert fold(**kw).phase == phase


def test_terminating_wins() -> None:
    """A VPS being deleted is Terminating whatever the node reports."""
    v = b.vps()
    v.metadata.deletionTimestamp = NOW
    assert fold(vps=v).phase == "Terminating"


def test_unschedulable_condition_and_event() -> None:
    """No room gives Pending with a Scheduled=False condition and one FailedScheduling warning."""
    st_ = fold(node=None, desired=None, observed=None, node_state=None,
               problem=VPSProblem("Scheduled", "InsufficientCapacity", "no room"))
    cond = next(c for c in st_.conditions if c.type == "Scheduled")
    assert (st_.phase, cond.status, cond.reason) == ("Pending", "False", "InsufficientCapacity")
    unsched = next(c for c in st_.conditions if c.type == "Unschedulable")
    assert (unsched.status, unsched.reason, unsched.message) == ("True", "InsufficientCapacity", "no room")
    placed = fold(previous=st_)
    assert not any(c.type == "Unschedulable" for c in placed.conditions)
    evs = events_for(None, st_)
    assert [(e.type, e.reason) for e in evs] == [("Warning", "FailedScheduling")]
    assert events_for(st_, st_) == []


def test_ready_condition_tracks_convergence() -> None:
    """Ready is True once the node runs exactly the desired domain, False while converging."""
    ok = fold()
    assert next(c for c in ok.conditions if c.type == "Ready").status == "True"
    moving = fold(desired=desired(power="Stopped"))
    assert next(c for c in moving.conditions if c.type == "Ready").status == "False"


def test_restart_required_is_surfaced() -> None:
    """A resize that waits for a restart shows a ResizePending condition."""
    obs = observed(vcpus=1, conditions=[Condition(type="RestartRequired", status="True", message="next boot")])
    s = fold(desired=desired(vcpus=12), observed=obs)
    assert s.phase == "Resizing"
    assert any(c.type == "ResizePending" and c.status == "True" for c in s.conditions)


def test_lifecycle_events() -> None:
    """Scheduled, Started, Suspended: unpaid and Resized appear once each on their transitions."""
    pending = fold(node=None, desired=None, observed=None, node_state=None)
    prov = fold(observed=None, previous=pending)
    running = fold(previous=prov)
    suspended = fold(previous=running, desired=desired(power="Paused", powerReason="suspended: nonpayment"),
                     observed=observed("Paused"))
    resumed = fold(previous=suspended, desired=desired(vcpus=2, memoryMiB=1024),
                   observed=observed(vcpus=2, memory=1024))
    got = [(e.reason, e.message) for s0, s1 in [(pending, prov), (prov, running), (running, suspended),
                                                (suspended, resumed)] for e in events_for(s0, s1)]
    reasons = [r for r, _ in got]
    assert reasons == ["Scheduled", "Started", "Suspended", "Resumed", "Resized"]
    assert ("Suspended", "unpaid") in got


def test_transition_time_moves_only_on_change() -> None:
    """Folding twice keeps the conditions' transition times, so an unchanged status is not rewritten."""
    first = fold()
    again = fold(previous=first, now=NOW + timedelta(minutes=5))
    assert first == again


@given(power=st.sampled_from(["Running", "Stopped", "Paused", "Crashed", "Absent", "ShuttingDown", "Unknown"]),
       want=st.sampled_from(["Running", "Stopped", "Paused"]),
       node_state=st.sampled_from(["Ready", "NotReady", "Missing"]), has_obs=st.booleans())
def test_fold_is_total_and_idempotent(power: str, want: str, node_state: str, has_obs: bool) -> None:
    """Any input folds to a phase, and folding the result again changes nothing."""
    kw = {"desired": desired(power=want), "observed": observed(power) if has_obs else None, "node_state": node_state}
    one = fold(**kw)
    assert one.phase
    assert fold(previous=one, **kw) == one
    if node_state != "Ready":
        assert one.phase == "Unknown"


def test_node_ready_notready_unknown() -> None:
    """A heartbeat makes a node Ready; its loss NotReady; a node never seen is Unknown."""
    n = b.node()
    never = node_status(n, previous=None, heartbeat=None, allocation=NodeAllocation(), now=NOW)
    assert never.state == "Unknown"
    ready = node_status(n, previous=never, heartbeat={"time": NOW.isoformat(), "capacity": {"vcpus": 8}},
                        allocation=NodeAllocation(vcpus=2, memoryMiB=1024, diskGiB=20, count=2), now=NOW)
    assert (ready.state, ready.lastHeartbeat, ready.capacityObserved) == ("Ready", NOW, {"vcpus": 8})
    assert ready.allocated["vps"] == 2
    lost = node_status(n, previous=ready, heartbeat=None, allocation=NodeAllocation(), now=NOW + timedelta(minutes=1))
    assert lost.state == "NotReady" and lost.lastHeartbeat == NOW
    assert next(c for c in lost.conditions if c.type == "Ready").reason == "HeartbeatExpired"


def test_a_warming_node_is_not_ready_until_libvirt_is_warm() -> None:
    """While the agent probes QEMU its node is NotReady (LibvirtWarming), then Ready; agent conditions are folded in."""
    n = b.node()
    warm_cond = {"type": "LibvirtWarm", "status": "False", "reason": "Warming", "message": "probing"}
    warming = node_status(n, previous=None, heartbeat={"time": NOW.isoformat(), "warming": True,
                                                       "conditions": [warm_cond]},
                          allocation=NodeAllocation(), now=NOW)
    assert warming.state == "NotReady"
    assert next(c for c in warming.conditions if c.type == "Ready").reason == "LibvirtWarming"
    assert next(c for c in warming.conditions if c.type == "LibvirtWarm").status == "False"
    warm = node_status(n, previous=warming, heartbeat={"time": NOW.isoformat(),
                                                       "conditions": [warm_cond | {"status": "True"}]},
                       allocation=NodeAllocation(), now=NOW)
    assert warm.state == "Ready" and next(c for c in warm.conditions if c.type == "LibvirtWarm").status == "True"


def test_cordon_and_drain_conditions() -> None:
    """schedulable: false reads Cordoned; the drain annotation reads Drained."""
    cordoned = node_status(b.node(schedulable=False), previous=None, heartbeat={}, allocation=NodeAllocation(),
                           now=NOW)
    assert next(c for c in cordoned.conditions if c.type == "Schedulable").reason == "Cordoned"
    drained = node_status(b.node(annotations={"hostplane.io/drain": "true"}), previous=None, heartbeat={},
                          allocation=NodeAllocation(), now=NOW)
    assert next(c for c in drained.conditions if c.type == "Schedulable").reason == "Drained"
