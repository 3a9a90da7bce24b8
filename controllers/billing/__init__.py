"""Billing, its own wing beside VPS management: ledger, charging, the subscription lifecycle,
payment providers and the billing controller.

This module is the wing's public surface: the API, the VPS controllers and tools import what
they use from here, never from the submodules (import-linter contracts hold that).

    ledger.py      the append-only ledger and balances (writes Customer.status)
    charging.py    hourly charges (pure arithmetic + the charge cursor)
    lifecycle.py   the ONE billing policy with its defaults and the pure state machine
    payments/      payment providers, webhooks and external billing systems
    controller.py  the billing controller (the only writer of Subscription.status)
"""

from __future__ import annotations

from controllers.billing.controller import BillingController, start_billing
from controllers.billing.ledger import (
    Account,
    Applied,
    Entry,
    GuardFailed,
    InvalidEntry,
    KeyReused,
    LedgerError,
    UnknownCustomer,
    entries,
    read_account,
    statement,
    statements,
)
from controllers.billing.lifecycle import (
    DEFAULT_POLICY,
    Policy,
    ServerPower,
    effective_policy,
    next_billing_state,
    policy_for,
    power_for,
)
from controllers.billing.payments import (
    BadSignature,
    InvalidPayment,
    PaymentNotice,
    PaymentRejected,
    Replayed,
    WebhookRequest,
    answer,
    provider,
    record_payment,
    set_webhook_secret,
    webhook_secret,
)
from controllers.billing.payments.external import apply_state, parse_state
from controllers.billing.payments.manual import ManualProvider

__all__ = [
    "DEFAULT_POLICY",
    "Account",
    "Applied",
    "BadSignature",
    "BillingController",
    "Entry",
    "GuardFailed",
    "InvalidEntry",
    "InvalidPayment",
    "KeyReused",
    "LedgerError",
    "ManualProvider",
    "PaymentNotice",
    "PaymentRejected",
    "Policy",
    "Replayed",
    "ServerPower",
    "UnknownCustomer",
    "WebhookRequest",
    "answer",
    "apply_state",
    "effective_policy",
    "entries",
    "next_billing_state",
    "parse_state",
    "policy_for",
    "power_for",
    "provider",
    "read_account",
    "record_payment",
    "set_webhook_secret",
    "start_billing",
    "statement",
    "statements",
    "webhook_secret",
]
