"""The `manual` provider: an operator records a payment that arrived by other means (a bank transfer).

It takes no webhooks; the API's admin endpoint builds the notice from the operator's
command (`hostplane billing pay CUSTOMER 500.00 --ref BANK-123`), and the reference is the
transaction id, so entering the same bank reference twice credits once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from controllers.billing.payments import BadSignature, InvalidPayment, PaymentNotice, WebhookRequest


class ManualProvider:
    name = "manual"
    accepts_webhooks = False

    def parse(self, request: WebhookRequest, *, secret: bytes | None, now: datetime) -> PaymentNotice:
        raise BadSignature("the manual provider takes no webhooks; use the admin payments endpoint")

    def notice(self, customer: str, amount: Any, currency: str, reference: str, *, kind: str = "payment",
               description: str = "") -> PaymentNotice:
        if not isinstance(reference, str) or not reference.strip():
            raise InvalidPayment("reference", "a payment reference (the bank's transaction id) is required")
        if kind not in ("payment", "refund"):
            raise InvalidPayment("type", "must be payment or refund")
        return PaymentNotice(provider=self.name, transaction_id=reference.strip(), customer=customer, amount=amount,
                             currency=currency, kind=kind,  # type: ignore[arg-type]
                             reference=reference.strip(), description=description or f"manual {kind}")
