"""Payment providers as modules, and the one way a payment reaches the ledger.

A provider is any class registered under the Python entry point group `hostplane.payments`
(the built-ins: `manual` for operator-entered payments, `webhook` for a generic signed
callback). It turns what it was given into a `PaymentNotice`; `record_payment` credits it
with the provider's transaction id as the idempotency key, so the same payment delivered
twice, or concurrently, is credited once and answered the same both times.

    PaymentRejected           the notice is refused; nothing is written
      ├── BadSignature        missing, malformed or wrong signature
      ├── Replayed            timestamp outside the replay window
      └── InvalidPayment      a field is wrong (.field names it)

This module must never trust a notice it did not verify, nor write anything but ledger entries.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from functools import cache
from importlib.metadata import entry_points
from typing import Any, Literal, Protocol

from controllers.billing import ledger
from reconcile.keys import webhook_secret_key as secret_key
from reconcile.objects import Store
from specs.money import CURRENCY_EXPONENT

GROUP = "hostplane.payments"
_BUILTIN = {"manual": "controllers.billing.payments.manual:ManualProvider",
            "webhook": "controllers.billing.payments.webhook:WebhookProvider"}


class PaymentRejected(Exception):
    pass


class BadSignature(PaymentRejected):
    pass


class Replayed(PaymentRejected):
    pass


class InvalidPayment(PaymentRejected, ValueError):
    def __init__(self, field_: str, message: str) -> None:
        self.field = field_
        super().__init__(f"{field_}: {message}")


@dataclass(frozen=True)
class WebhookRequest:
    """What arrived over HTTP: headers (any case) and the raw body bytes the signature covers."""

    headers: Mapping[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers.items():
            if k.lower() == name:
                return v
        return None


@dataclass(frozen=True)
class PaymentNotice:
    provider: str
    transaction_id: str
    customer: str
    amount: Any  # a decimal string or Decimal, as the provider sent it
    currency: str
    kind: Literal["payment", "refund"] = "payment"
    reference: str | None = None
    description: str = ""


class PaymentProvider(Protocol):
    name: str
    accepts_webhooks: bool

    def parse(self, request: WebhookRequest, *, secret: bytes | None, now: datetime) -> PaymentNotice:
        """Verify and read a provider callback; raise PaymentRejected when it is not acceptable."""
        ...


def _load(spec: str) -> Any:
    module, _, attr = spec.partition(":")
    mod = __import__(module, fromlist=[attr])
    return getattr(mod, attr)


@cache
def load_providers() -> dict[str, PaymentProvider]:
    """Every provider registered under `hostplane.payments` (built-ins even if the metadata is stale)."""
    found: dict[str, PaymentProvider] = {}
    for ep in entry_points(group=GROUP):
        if ep.name in _BUILTIN and ep.value != _BUILTIN[ep.name]:
            continue  # metadata of an older install naming a built-in's former module
        found[ep.name] = ep.load()()
    for name, spec in _BUILTIN.items():
        found.setdefault(name, _load(spec)())
    return found


def provider(name: str) -> PaymentProvider | None:
    return load_providers().get(name)


def parse_json(body: bytes) -> dict[str, Any]:
    """A JSON object whose numbers stay exact decimals (a float never touches money)."""
    try:
        data = json.loads(body, parse_float=Decimal)
    except (ValueError, RecursionError) as exc:
        raise InvalidPayment("body", f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidPayment("body", "must be a JSON object")
    return data


def record_payment(store: Store, notice: PaymentNotice, *, now: datetime) -> ledger.Applied:
    """Credit (or refund) a verified notice once per (provider, transaction id)."""
    if not notice.transaction_id or len(notice.transaction_id) > 256:
        raise InvalidPayment("transactionId", "is required (at most 256 characters)")
    if notice.currency not in CURRENCY_EXPONENT:
        raise InvalidPayment("currency", f"unknown currency {notice.currency!r}")
    try:
        minor = ledger.parse_amount(notice.amount, notice.currency)
    except ledger.InvalidEntry as exc:
        raise InvalidPayment("amount", str(exc).removeprefix("amount: ")) from None
    if minor <= 0:
        raise InvalidPayment("amount", f"must be positive, got {notice.amount}")
    signed = minor if notice.kind == "payment" else -minor
    entry = ledger.NewEntry(
        type=notice.kind, amount_minor=signed, currency=notice.currency, scope=f"payment-{notice.provider}",
        key=notice.transaction_id, reference=notice.reference or notice.transaction_id,
        description=notice.description or f"{notice.kind} via {notice.provider}",
        fingerprint=f"{notice.customer}|{notice.kind}|{signed}|{notice.currency}",
    )
    return ledger.append(store, notice.customer, [entry], now=now)[0]


def answer(applied: ledger.Applied) -> dict[str, Any]:
    """The response body for a payment: the first result, identical for every repeat."""
    return {k: v for k, v in sorted(applied.result.items()) if k != "fingerprint"}


# ------------------------------------------------------------------ webhook secrets


def webhook_secret(store: Store, provider_name: str) -> bytes | None:
    kv = store.kv_get(secret_key(provider_name, store.root))
    return None if kv is None else kv.value


def set_webhook_secret(store: Store, provider_name: str, secret: str | None = None) -> str:
    """Store (and return) a provider's shared secret; a random 256-bit one unless given."""
    value = secret or secrets.token_urlsafe(32)
    store.kv_put(secret_key(provider_name, store.root), value.encode())
    return value


__all__ = [
    "GROUP", "BadSignature", "InvalidPayment", "PaymentNotice", "PaymentProvider", "PaymentRejected", "Replayed",
    "WebhookRequest", "answer", "load_providers", "parse_json", "provider", "record_payment", "set_webhook_secret",
    "webhook_secret",
]
