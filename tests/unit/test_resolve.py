"""The resolver against DESIGN.md's billing table: table tests and hypothesis properties."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controllers.billing import DEFAULT_POLICY
from controllers.ipam import IPAllocation, mac_candidates
from controllers.resolve import next_change, resolve
from specs.kinds import MaxResize
from tests.helpers import builders as b

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
IPS = IPAllocation(pool="pool-a", ipv4="192.0.2.10", prefix4=24, gateway4="192.0.2.1",
                   ipv6="2001:db8::10", prefix6=64, gateway6="2001:db8::1", dns=["1.1.1.1"])


def _resolve(sub_state: str = "Active", power: str = "Running", **kw: object):  # type: ignore[no-untyped-def]
    status = {k: v for k, v in kw.items() if k in ("suspendReason", "suspendedAt", "terminatedAt")}
    sub = b.subscription(state=sub_state, **status)
    if "operator" in kw:
        sub.spec.suspend = kw["operator"]  # type: ignore[assignment]
    if "sub_hold" in kw:
        sub.spec.suspendHoldUntil = kw["sub_hold"]  # type: ignore[assignment]
    cust = kw.get("customer", b.customer())
    return resolve(b.vps(power=power), sub, kw.get("plan", b.plan()), b.image(), IPS,  # type: ignore[arg-type]
                   kw.get("now", NOW), customer=cust, drained=bool(kw.get("drained", False)))  # type: ignore[arg-type]


@pytest.mark.parametrize(("state", "power", "kw", "want_power", "want_reason"), [
    ("Active", "Running", {}, "Running", ""),
    ("Active", "Stopped", {}, "Stopped", ""),
    ("Overdue", "Running", {}, "Running", ""),
    ("Overdue", "Stopped", {}, "Stopped", ""),
    ("Suspended", "Running", {"suspendReason": "nonpayment", "suspendedAt": NOW}, "Paused", "suspended: nonpayment"),
    ("Suspended", "Stopped", {"suspendReason": "abuse", "suspendedAt": NOW}, "Paused", "suspended: abuse"),
    ("Suspended", "Running", {"suspendReason": "nonpayment", "suspendedAt": NOW - timedelta(hours=25)},
     "Stopped", "suspended: nonpayment"),
    ("Active", "Running", {"operator": "admin"}, "Paused", "suspended: admin"),
    ("Suspended", "Running", {"suspendReason": "nonpayment", "sub_hold": NOW + timedelta(days=1)}, "Running", ""),
    ("Suspended", "Running", {"suspendReason": "abuse", "sub_hold": NOW + timedelta(days=1)},
     "Paused", "suspended: abuse"),
    ("Terminated", "Running", {"terminatedAt": NOW - timedelta(days=6)}, "Stopped", "terminated"),
    ("Terminated", "Running", {}, "Stopped", "terminated"),
    ("Active", "Running", {"drained": True}, "Stopped", "node drained"),
])
def test_billing_table(state: str, power: str, kw: dict[str, object], want_power: str, want_reason: str) -> None:
    """Each row of the billing table gives the power and reason DESIGN.md prescribes."""
    spec = _resolve(state, power, **kw)
    assert spec is not None
    assert (spec.power, spec.powerReason) == (want_power, want_reason)


def test_terminated_past_retention_has_no_domain() -> None:
    """A terminated subscription past its 7-day retention resolves to no domain."""
    assert _resolve("Terminated", terminatedAt=NOW - timedelta(days=7)) is None


def test_customer_retention_overrides_plan() -> None:
    """The customer's billing policy overrides the plan's, which overrides the defaults."""
    plan = b.plan(retentionDays=30)
    assert _resolve("Terminated", terminatedAt=NOW - timedelta(days=10), plan=plan) is not None
    cust = b.customer(retentionDays=2)
    assert _resolve("Terminated", terminatedAt=NOW - timedelta(days=3), plan=plan, customer=cust) is None


def test_customer_hold_keeps_nonpayment_suspension_off() -> None:
    """A customer's suspendHoldUntil in the future keeps an unpaid server running."""
    spec = _resolve("Suspended", suspendReason="nonpayment", customer=b.customer(hold=NOW + timedelta(hours=1)))
    assert spec is not None and spec.power == "Running"


def test_deleting_vps_has_no_domain() -> None:
    """A VPS with a deletionTimestamp resolves to no domain."""
    v = b.vps()
    v.metadata.deletionTimestamp = NOW
    assert resolve(v, b.subscription(), b.plan(), b.image(), IPS, NOW) is None


def test_plan_change_resizes_within_node_maxima() -> None:
    """The plan fixes the size; maxima come from the node's maxResize, never below the plan."""
    big = b.plan("s8", vcpus=16, memory=32768, disk=200)
    spec = resolve(b.vps(), b.subscription(plan_name="s8"), big, b.image(min_disk=300), IPS, NOW,
                   max_resize=MaxResize(vcpus=8, memoryMiB=16384))
    assert spec is not None
    assert (spec.vcpus, spec.memoryMiB, spec.diskGiB) == (16, 32768, 300)
    assert (spec.maxVcpus, spec.maxMemoryMiB) == (16, 32768)
    small = resolve(b.vps(), b.subscription(), b.plan(), b.image(), IPS, NOW,
                    max_resize=MaxResize(vcpus=8, memoryMiB=16384))
    assert small is not None and (small.maxVcpus, small.maxMemoryMiB) == (8, 16384)


def test_network_and_mac() -> None:
    """Addresses and the booked MAC go into the DomainSpec; without a MAC the uid's first candidate is used."""
    spec = resolve(b.vps(uid="u-1"), b.subscription(), b.plan(), b.image(), IPS, NOW)
    assert spec is not None
    assert spec.network.mac == next(mac_candidates("u-1"))
    assert spec.network.ipv4 is not None and spec.network.ipv4.address == "192.0.2.10"
    assert spec.network.ipv6 is not None and spec.network.ipv6.prefixLength == 64
    bare = resolve(b.vps(), b.subscription(), b.plan(), b.image(), None, NOW, mac="52:54:00:aa:bb:cc")
    assert bare is not None and bare.network.ipv4 is None and bare.network.mac == "52:54:00:aa:bb:cc"


def test_plan_mismatch_is_an_error_naming_the_field() -> None:
    """Passing a plan the subscription does not name is refused with the field in the message."""
    with pytest.raises(ValueError, match="plan"):
        resolve(b.vps(), b.subscription(plan_name="s2"), b.plan("s1"), b.image(), IPS, NOW)


def test_next_change_is_the_shutdown_or_retention_time() -> None:
    """The resolver tells when its answer changes by the clock alone."""
    sub = b.subscription(state="Suspended", suspendReason="nonpayment", suspendedAt=NOW)
    assert next_change(b.vps(), sub, b.plan(), None, NOW) == NOW + timedelta(hours=24)
    term = b.subscription(state="Terminated", terminatedAt=NOW)
    assert next_change(b.vps(), term, b.plan(), None, NOW) == NOW + timedelta(days=7)
    assert next_change(b.vps(), b.subscription(), b.plan(), None, NOW) is None


STATES = st.sampled_from(["Active", "Overdue", "Suspended", "Terminated"])
REASONS = st.sampled_from(["nonpayment", "abuse", "admin", "customer", None])
OFFSETS = st.one_of(st.none(), st.integers(min_value=-30 * 24, max_value=30 * 24).map(lambda h: timedelta(hours=h)))


@given(state=STATES, reason=REASONS, since=OFFSETS, power=st.sampled_from(["Running", "Stopped"]),
       operator=st.sampled_from([None, "abuse", "admin"]), drained=st.booleans(),
       hold=OFFSETS)
def test_billing_table_property(state: str, reason: str | None, since: timedelta | None, power: str,
                                operator: str | None, drained: bool, hold: timedelta | None) -> None:
    """For every billing state the resolver honours the table: never runs a suspended or terminated server."""
    when = NOW + since if since is not None else None
    status = {"suspendReason": reason, "suspendedAt": when if state == "Suspended" else None,
              "terminatedAt": when if state == "Terminated" else None}
    sub = b.subscription(state=state, **status)
    sub.spec.suspend = operator  # type: ignore[assignment]
    sub.spec.suspendHoldUntil = NOW + hold if hold is not None else None
    spec = resolve(b.vps(power=power), sub, b.plan(), b.image(), IPS, NOW, drained=drained)
    held = hold is not None and hold > timedelta(0)
    if state == "Terminated":
        gone = when is not None and when + DEFAULT_POLICY.retention <= NOW
        assert (spec is None) == gone
        if spec is not None:
            assert spec.power == "Stopped"
        return
    assert spec is not None
    suspended = operator is not None or (state == "Suspended" and not ((reason or "nonpayment") == "nonpayment"
                                                                       and held))
    if drained:
        assert spec.power == "Stopped"
    elif suspended:
        assert spec.power in ("Paused", "Stopped")
        assert spec.powerReason.startswith("suspended: ")
    else:
        assert spec.power == power and spec.powerReason == ""
    assert (spec.vcpus, spec.memoryMiB) == (1, 512)


@given(uid=st.uuids().map(str))
def test_resolve_is_deterministic(uid: str) -> None:
    """The same inputs give the same DomainSpec (so an unchanged result is never rewritten)."""
    v = b.vps(uid=uid)
    one = resolve(v, b.subscription(), b.plan(), b.image(), IPS, NOW)
    two = resolve(v.model_copy(deep=True), b.subscription(), b.plan(), b.image(), IPS, NOW)
    assert one == two
