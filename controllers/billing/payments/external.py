"""External billing mode: a hoster's own billing system (WHMCS, BILLmanager) sets subscription states.

    POST /v1/webhooks/external-billing      signed like the `webhook` payment provider
    {"id": "evt_1", "subscription": "web", "state": "suspended", "reason": "nonpayment"}

Only subscriptions with `spec.billingMode: external` accept it (the built-in charging and
lifecycle leave those alone). The event id is the idempotency key: a repeat is answered with
the first result and changes nothing. A terminated subscription stays terminated.
This module must never charge or credit anything.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, get_args

from controllers.billing.ledger import safe_key
from controllers.billing.payments import InvalidPayment, WebhookRequest, parse_json
from controllers.billing.payments.webhook import verify
from controllers.billing.status import subscription_status_put
from reconcile import keys
from reconcile.errors import Conflict, NotFound
from reconcile.etcd import CreatedAt, Get, ModIs, Put
from reconcile.objects import Store
from specs.kinds import Subscription, SubscriptionStatus, SuspendReason

STATES = {"active": "Active", "suspended": "Suspended", "terminated": "Terminated"}
SCOPE = "external-billing"


@dataclass(frozen=True)
class ExternalState:
    event_id: str
    subscription: str
    state: str
    reason: str | None = None


def parse_state(request: WebhookRequest, *, secret: bytes | None, now: datetime) -> ExternalState:
    verify(request, secret, now)
    data = parse_json(request.body)
    for name in ("id", "subscription", "state"):
        if not isinstance(data.get(name), str) or not data[name].strip() or len(data[name]) > 256:
            raise InvalidPayment(name, "must be a non-empty string")
    state = data["state"].strip().lower()
    if state not in STATES:
        raise InvalidPayment("state", f"must be one of {', '.join(STATES)}")
    reason = data.get("reason")
    if reason is not None and reason not in get_args(SuspendReason):
        raise InvalidPayment("reason", f"must be one of {', '.join(get_args(SuspendReason))}")
    return ExternalState(data["id"].strip(), data["subscription"].strip(), state, reason)


def _next(current: SubscriptionStatus, ev: ExternalState, now: datetime) -> SubscriptionStatus:
    target = STATES[ev.state]
    if current.state == "Terminated":
        if target != "Terminated":
            raise InvalidPayment("state", "a terminated subscription cannot change state")
        return current
    if target == "Active":
        return current.model_copy(update={"state": "Active", "suspendReason": None, "suspendedAt": None,
                                          "overdueSince": None})
    if target == "Suspended":
        same = current.state == "Suspended"
        return current.model_copy(update={"state": "Suspended", "suspendReason": ev.reason or "nonpayment",
                                          "suspendedAt": current.suspendedAt if same and current.suspendedAt
                                          else now})
    return current.model_copy(update={"state": "Terminated", "terminatedAt": now})


def _public(answer: dict[str, Any]) -> dict[str, Any]:
    # Sorted, so a repeat (read back from etcd) is answered byte for byte like the first.
    return {k: v for k, v in sorted(answer.items()) if k != "fingerprint"}


def apply_state(store: Store, ev: ExternalState, *, now: datetime) -> tuple[dict[str, Any], bool]:
    """Set the subscription's state once per event id; returns (answer, duplicate)."""
    r = store.root
    idem = keys.idempotency_key(SCOPE, safe_key(ev.event_id), r)
    skey, tkey = keys.spec_key(Subscription, ev.subscription, r), keys.status_key(Subscription, ev.subscription, r)
    fingerprint = f"{ev.subscription}|{ev.state}|{ev.reason}"
    for _ in range(20):
        res = store.txn([], [Get(idem), Get(skey), Get(tkey)])
        if res.gets[0]:
            stored = dict(json.loads(res.gets[0][0].value))
            if stored.get("fingerprint") != fingerprint:
                raise Conflict(f"event id {ev.event_id!r} was used for a different request")
            return _public(stored), True
        if not res.gets[1]:
            raise NotFound(f"subscription {ev.subscription!r} not found")
        sub = Subscription.model_validate(json.loads(res.gets[1][0].value))
        if sub.spec.billingMode != "external":
            raise InvalidPayment("subscription", f"{ev.subscription!r} is billed by Hostplane, not externally")
        current = (SubscriptionStatus.model_validate(json.loads(res.gets[2][0].value)) if res.gets[2]
                   else SubscriptionStatus())
        new = _next(current, ev, now)
        answer = {"event": ev.event_id, "subscription": ev.subscription, "state": new.state,
                  "suspendReason": new.suspendReason, "time": now.isoformat(), "fingerprint": fingerprint}
        out = store.txn([ModIs(idem, 0), CreatedAt(skey, res.gets[1][0].create_revision),
                         ModIs(tkey, res.gets[2][0].mod_revision if res.gets[2] else 0)],
                        [subscription_status_put(ev.subscription, new, r),
                         Put(idem, json.dumps(answer, sort_keys=True).encode())])
        if out.succeeded:
            return _public(answer), False
    raise Conflict(f"subscription {ev.subscription!r} kept changing; retry")
