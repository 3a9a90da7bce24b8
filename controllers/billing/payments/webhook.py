"""The `webhook` provider: a generic payment gateway posting signed JSON callbacks.

    POST /v1/webhooks/payments/webhook
    Hostplane-Timestamp: 1764129600                      (unix seconds)
    Hostplane-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>." + body)>
    {"id": "tx_123", "customer": "acme", "amount": "500.00", "currency": "EUR", "type": "payment"}

A callback is accepted only with a valid signature and a timestamp within five minutes of
now (either way), so a captured request cannot be replayed later; within the window a
repeat carries the same id and is answered with the first result. Numbers in the body are
read as exact decimals; an amount with more digits than its currency has is refused.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime, timedelta
from typing import Any

from controllers.billing.payments import (
    BadSignature,
    InvalidPayment,
    PaymentNotice,
    Replayed,
    WebhookRequest,
    parse_json,
)

REPLAY_WINDOW = timedelta(minutes=5)
TIMESTAMP_HEADER = "Hostplane-Timestamp"
SIGNATURE_HEADER = "Hostplane-Signature"


def sign(secret: bytes, timestamp: int | str, body: bytes) -> str:
    """The signature header value for `body` sent at `timestamp`."""
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"sha256={mac}"


def verify(request: WebhookRequest, secret: bytes | None, now: datetime) -> None:
    """Raise BadSignature or Replayed unless the request is signed with `secret` within the window."""
    if not secret:
        raise BadSignature("no webhook secret is configured for this provider")
    ts = request.header(TIMESTAMP_HEADER)
    sig = request.header(SIGNATURE_HEADER)
    if not ts or not sig:
        raise BadSignature(f"the {TIMESTAMP_HEADER} and {SIGNATURE_HEADER} headers are required")
    if not ts.isascii() or not ts.isdigit() or len(ts) > 12:
        raise BadSignature(f"{TIMESTAMP_HEADER} must be unix seconds")
    if not hmac.compare_digest(sign(secret, ts, request.body).encode(), sig.strip().encode()):
        raise BadSignature("the signature does not match the body")
    # Compared as seconds: a far-off timestamp (999999999999) is no date at all, so it must never
    # reach datetime (that raised ValueError, a 500).
    skew = int(ts) - now.timestamp()
    if abs(skew) > REPLAY_WINDOW.total_seconds():
        raise Replayed(f"{TIMESTAMP_HEADER}: {ts} is {abs(int(skew))} seconds {'ahead of' if skew > 0 else 'behind'} "
                       "the server's clock, outside the 5-minute window")


def _text(data: dict[str, Any], name: str, *, required: bool = True, limit: int = 256) -> str | None:
    value = data.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise InvalidPayment(name, f"must be a non-empty string of at most {limit} characters")
    return value.strip()


class WebhookProvider:
    name = "webhook"
    accepts_webhooks = True

    def parse(self, request: WebhookRequest, *, secret: bytes | None, now: datetime) -> PaymentNotice:
        verify(request, secret, now)
        data = parse_json(request.body)
        kind = data.get("type", "payment")
        if kind not in ("payment", "refund"):
            raise InvalidPayment("type", "must be payment or refund")
        amount = data.get("amount")
        if amount is None or isinstance(amount, bool):
            raise InvalidPayment("amount", "a decimal amount like \"500.00\" is required")
        return PaymentNotice(
            provider=self.name, transaction_id=str(_text(data, "id")), customer=str(_text(data, "customer")),
            amount=amount, currency=str(_text(data, "currency", limit=8)).upper(), kind=kind,
            reference=_text(data, "reference", required=False), description=f"{kind} via webhook",
        )
