"""Pure parts of the access layer: rate limits, login throttle, token checks, patch paths, watch audiences."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api.access import _allowed_path, _patched_paths
from api.auth import Principal, TokenError, check_token_request, expired, public_record
from api.hub import EVERYONE, STAFF_ONLY, HubEvent, Owners, frames, translate
from api.ratelimit import LoginThrottle, TokenBuckets
from reconcile.etcd import WatchEvent

ROOT = "/r"


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    """`burst` requests pass at once, the next waits 1/rate; time refills the bucket."""
    b = TokenBuckets(rate=2.0, burst=3)
    assert [b.take("t", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert b.take("t", 0.0) == pytest.approx(0.5)
    assert b.take("t", 0.5) == 0.0
    assert b.take("other", 0.0) == 0.0
    assert TokenBuckets(rate=0, burst=1).take("t", 0.0) == 0.0


@settings(max_examples=50)
@given(st.lists(st.floats(min_value=0, max_value=0.2), min_size=1, max_size=200))
def test_token_bucket_never_admits_more_than_burst_plus_rate_times_time(gaps: list[float]) -> None:
    """Over any request sequence, admitted <= burst + rate * elapsed."""
    b, now, admitted = TokenBuckets(rate=5.0, burst=4), 0.0, 0
    for gap in gaps:
        now += gap
        admitted += b.take("k", now) == 0.0
    assert admitted <= 4 + 5.0 * now + 1e-9


def test_login_throttle_doubles_after_the_free_attempts_and_forgets() -> None:
    """Per (account, source): 3 free attempts, then 1 s, 2 s, 4 s... capped; a success clears it; counts fade."""
    t = LoginThrottle(free=3, base_seconds=1.0, max_seconds=8.0, forget_seconds=100.0)
    for _ in range(4):
        assert t.attempt("x", "a", 0.0) == 0.0
    assert t.attempt("x", "a", 0.0) == pytest.approx(1.0)
    assert t.attempt("x", "a", 1.0) == 0.0
    assert t.attempt("x", "a", 1.0) == pytest.approx(2.0)
    for step in range(10):
        now = 100.0 + step * 10
        t.attempt("x", "a", now)
    assert t.attempt("x", "a", now) == pytest.approx(8.0)  # capped
    t.succeeded("x", "a", now)
    assert t.attempt("x", "b", now) == 0.0  # another source, fresh
    assert t.attempt("y", "a", now) > 0  # the source itself keeps its wait (spraying)
    assert t.attempt("y", "a", now + 500.0) == 0.0


def test_login_attempts_are_counted_before_they_are_checked() -> None:
    """Forty attempts before any answer: only free + 1 go ahead, the rest are told to wait."""
    t = LoginThrottle(free=3, base_seconds=1.0)
    admitted = sum(t.attempt("acct", "10.0.0.1", 0.0) == 0.0 for _ in range(40))
    assert admitted == 4


@settings(max_examples=50)
@given(st.lists(st.integers(min_value=0, max_value=30), min_size=1, max_size=40),
       st.integers(min_value=1, max_value=200))
def test_the_owner_from_a_fresh_source_waits_at_most_one_interval(attackers: list[int], tries: int) -> None:
    """Whatever many sources did to an account, a source with no failures of its own waits <= account_interval."""
    t = LoginThrottle(free=3, base_seconds=1.0, max_seconds=900.0, account_free=5, account_interval=1.0)
    now = 0.0
    for i in range(tries):
        now += 0.01
        t.attempt("acct", f"attacker-{attackers[i % len(attackers)]}", now)
    assert t.attempt("acct", "owner-at-home", now) <= 1.0
    assert t.attempt("acct", "owner-on-the-phone", now + 1.0) <= 1.0


def test_many_sources_together_are_paced_per_account() -> None:
    """Past account_free failures, sources that already failed share one attempt per interval."""
    t = LoginThrottle(free=100, account_free=5, account_interval=1.0)
    for i in range(5):
        assert t.attempt("acct", f"s{i}", 0.0) == 0.0
    assert t.attempt("acct", "s0", 0.1) == 0.0
    assert t.attempt("acct", "s1", 0.2) == pytest.approx(0.9)
    assert t.attempt("acct", "s2", 1.1) == 0.0


def test_token_requests_are_checked() -> None:
    """Unknown role, customer token without customer, customer on another role, naive expiry: TokenError."""
    check_token_request("customer", "acme", None)
    check_token_request("operator", None, datetime.now(UTC))
    for role, customer, expires, field in (("root", None, None, "role"), ("customer", None, None, "customer"),
                                           ("gitops", "acme", None, "customer"),
                                           ("admin", None, datetime(2030, 1, 1), "expires")):
        with pytest.raises(TokenError) as err:
            check_token_request(role, customer, expires)
        assert err.value.field == field


def test_expiry_and_public_record() -> None:
    """Past or unreadable expiry counts as expired; the public record has no salt or hash."""
    now = datetime.now(UTC)
    assert not expired({}, now)
    assert expired({"expires": (now - timedelta(seconds=1)).isoformat()}, now)
    assert not expired({"expires": (now + timedelta(hours=1)).isoformat()}, now)
    assert expired({"expires": "soon"}, now)
    assert public_record({"id": "a", "salt": "s", "sha256": "h", "role": "admin"}) == {"id": "a", "role": "admin"}


def test_patched_paths_and_customer_fields() -> None:
    """A merge patch names spec.* and metadata.* fields; only the allowed ones pass."""
    patch = {"spec": {"powerState": "Stopped", "node": "n1"}, "metadata": {"resourceVersion": "5", "labels": {}},
             "status": {}}
    assert _patched_paths(patch) == ["spec.powerState", "spec.node", "metadata.resourceVersion",
                                     "metadata.labels", "status"]
    allowed = frozenset({"powerState"})
    assert [p for p in _patched_paths(patch) if not _allowed_path(p, allowed)] == [
        "spec.node", "metadata.labels", "status"]


def put(key: str, doc: object, rev: int) -> WatchEvent:
    return WatchEvent("PUT", f"{ROOT}/{key}", json.dumps(doc).encode(), rev)


def test_audiences_follow_ownership_even_within_one_revision() -> None:
    """VPS written before its Subscription in the same batch is still the customer's; deletes keep the owner."""
    owners = Owners()
    batch = [put("specs/vps/web", {"spec": {"subscription": "sub"}}, 5),
             put("specs/subscriptions/sub", {"spec": {"customer": "acme"}}, 5),
             put("status/vps/web", {"phase": "Running"}, 6),
             put("specs/plans/hidden", {"spec": {"public": False}}, 7), put("specs/images/i", {"spec": {}}, 7),
             put("specs/nodes/n1", {"spec": {}}, 8), put("specs/customers/acme", {"spec": {}}, 8),
             WatchEvent("DELETE", f"{ROOT}/specs/vps/web", b"", 9), put("other/key", {}, 9)]
    out = translate(batch, ROOT, owners)
    assert [(e.kind, e.audience) for e in out] == [
        ("VPS", "acme"), ("Subscription", "acme"), ("VPS", "acme"), ("Plan", STAFF_ONLY), ("Image", EVERYONE),
        ("Node", STAFF_ONLY), ("Customer", "acme"), ("VPS", "acme")]
    assert "web" not in owners.vps_sub
    assert json.loads(out[0].data) == {"type": "PUT", "part": "spec", "kind": "VPS", "name": "web",
                                       "resourceVersion": "5", "object": {"spec": {"subscription": "sub"}}}


def test_frames_put_the_id_on_the_last_visible_event_of_each_revision() -> None:
    """Filtered frames keep revision order; `id:` marks each revision's last visible event only."""
    ev = [HubEvent(3, "VPS", "a", "acme", "{}"), HubEvent(4, "VPS", "a", "acme", "{1}"),
          HubEvent(4, "VPS", "b", "globex", "{2}"), HubEvent(5, "VPS", "a", "acme", "{3}")]
    out = frames(ev, 3, lambda e: e.audience == "acme")
    assert out == ["id: 4\ndata: {1}\n\n", "id: 5\ndata: {3}\n\n"]
    assert frames(ev, 10, lambda e: True) == []


def test_principal_defaults_to_a_token() -> None:
    """A principal made from a token is not a cookie session (no CSRF header needed)."""
    assert Principal("id", "admin").via == "token"
