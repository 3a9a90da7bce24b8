"""The VPS controller's pure decision: tables of snapshot -> decision, and properties (model: test_plan.py)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controllers.booking import Booking
from controllers.schedule import Resources
from controllers.status import VPSProblem
from controllers.vps_decision import VPSDecision, VPSSnapshot, decide_vps
from tests.helpers import builders as b

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
BOOKED = Booking(vps="web-1", uid="uid-web-1", node="n1", vcpus=1, memoryMiB=512, diskGiB=10,
                 mac="52:54:00:00:00:01")
FULL = VPSProblem("Scheduled", "Unschedulable", "no node has room")


def snap(**changes: object) -> VPSSnapshot:
    base = VPSSnapshot(vps=b.vps(), subscription=b.subscription(), plan=b.plan(), image=b.image(),
                       customer=b.customer(), booking=BOOKED, node=b.node(), node_state="Ready",
                       pending_retry_seconds=2.0)
    return replace(base, **changes)  # type: ignore[arg-type]


def test_a_booked_active_server_gets_its_domain() -> None:
    """Everything present and booked: the node's desired entry is written, running, without a requeue."""
    d = decide_vps(snap(), NOW)
    assert d.write_desired and d.desired is not None and d.desired.power == "Running"
    assert (d.desired.vcpus, d.desired.memoryMiB, d.desired.diskGiB) == (1, 512, 10)
    assert (d.problem, d.pending, d.requeue_after, d.resize, d.delete) == (None, False, None, None, False)
    assert d.status is not None and d.status.node == "n1"


@pytest.mark.parametrize(("changes", "reason"), [
    ({"subscription": None}, "SubscriptionNotFound"),
    ({"plan": None}, "PlanNotFound"),
    ({"image": None}, "ImageNotFound"),
])
def test_missing_objects_are_reported_not_resolved(changes: dict[str, object], reason: str) -> None:
    """A missing subscription, plan or image is the reported problem; nothing is written to the node."""
    d = decide_vps(snap(**changes), NOW)
    assert d.problem is not None and d.problem.reason == reason
    assert not d.write_desired and not d.pending and d.requeue_after is None
    assert d.status is not None and any(c.reason == reason for c in d.status.conditions)


def test_a_reused_subscription_name_is_said() -> None:
    """A subscription of the name that is someone else's is named in the problem."""
    d = decide_vps(snap(subscription=None, sub_name_reused=True), NOW)
    assert d.problem is not None and "created anew" in d.problem.message


def test_an_unplaceable_server_waits_and_retries() -> None:
    """No booking and a placement problem: pending, retried after the configured delay."""
    d = decide_vps(snap(booking=None, placement_problem=FULL), NOW)
    assert d.problem == FULL and d.pending and d.requeue_after == 2.0 and not d.write_desired


def test_a_plan_change_resizes_the_booking() -> None:
    """A booking smaller than the plan (or the image's minimum disk) is resized to the new size."""
    d = decide_vps(snap(plan=b.plan(vcpus=2, memory=1024, disk=20)), NOW)
    assert d.resize == Resources(2, 1024, 20)
    d = decide_vps(snap(image=b.image(min_disk=40)), NOW)
    assert d.resize == Resources(1, 512, 40)


def test_a_moved_server_leaves_its_old_nodes() -> None:
    """Desired entries on other nodes are removed; the booking's node is kept."""
    d = decide_vps(snap(other_desired_nodes=frozenset({"n1", "n0", "n2"})), NOW)
    assert d.remove_from == ("n0", "n2")


def test_terminated_past_retention_deletes_the_server() -> None:
    """Retention passed: the VPS is marked deleted with an event, and no status or desired write."""
    sub = b.subscription(state="Terminated", terminatedAt=NOW - timedelta(days=8))
    d = decide_vps(snap(subscription=sub, add_finalizer=True), NOW)
    assert d == VPSDecision(add_finalizer=True, delete=True, events=(
        ("Normal", "Terminated", "subscription terminated and retention passed: deleting"),))


def test_a_suspension_requeues_at_its_shutdown() -> None:
    """Paused now, looked at again just after suspendedAt + shutdown delay."""
    sub = b.subscription(state="Suspended", suspendReason="nonpayment", suspendedAt=NOW - timedelta(hours=1))
    d = decide_vps(snap(subscription=sub), NOW)
    assert d.desired is not None and d.desired.power == "Paused"
    assert d.requeue_after is not None and abs(d.requeue_after - 23 * 3600) < 1


STATES = st.sampled_from(["Active", "Overdue", "Suspended", "Terminated"])


@given(state=STATES, booked=st.booleans(), missing=st.sampled_from([None, "subscription", "plan", "image"]),
       placement=st.booleans(), days=st.integers(min_value=-30, max_value=30))
def test_decision_invariants(state: str, booked: bool, missing: str | None, placement: bool, days: int) -> None:
    """Desired is written only for a booked server without a problem; pending iff a Scheduled problem; a
    deletion writes nothing else."""
    stamp = NOW + timedelta(days=days)
    sub = b.subscription(state=state, **({"suspendedAt": stamp} if state == "Suspended" else
                                          {"terminatedAt": stamp} if state == "Terminated" else {}))
    changes: dict[str, object] = {"subscription": sub, "booking": BOOKED if booked else None,
                                  "placement_problem": FULL if placement and not booked else None}
    if missing is not None:
        changes[missing] = None
    d = decide_vps(snap(**changes), NOW)
    if d.write_desired:
        assert booked and d.problem is None and d.desired is not None
    assert d.pending == (d.problem is not None and d.problem.condition == "Scheduled")
    if d.delete:
        assert d.status is None and not d.write_desired and state == "Terminated"
    else:
        assert d.status is not None
    assert d.requeue_after is None or d.requeue_after >= 0
