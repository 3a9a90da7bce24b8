"""Billing over HTTP: payment webhooks, the external-billing webhook, operator payments, ledger reads.

    POST /v1/webhooks/payments/<provider>          signed provider callback (no bearer token)
    POST /v1/webhooks/external-billing             signed state change for an externally billed subscription
    POST /v1/customers/<name>/payments             operator payment via the `manual` provider (admin)
    GET  /v1/customers/<name>/ledger               balance and live entries
    GET  /v1/customers/<name>/statements           closed months
    GET  /v1/customers/<name>/statements/<YYYY-MM> one month's statement (closed or running)
    PUT  /v1/billing/webhook-secrets/<provider>    set or rotate a provider's shared secret (admin; shown once)

Webhooks authenticate by signature instead of a token; a repeat of a payment is answered
with the first answer, byte for byte. Billing errors become API errors in `_translate`
only. This module must never decide billing states or compute money itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from api import access
from api.auth import Principal
from api.deps import Body, Caller, State, read_limited
from api.errors import BadRequest, Forbidden, Invalid, Unauthorized, refuse_unknown_fields
from controllers import billing
from reconcile.errors import Conflict, NotFound
from specs.kinds import Customer
from specs.money import format_minor

router = APIRouter(prefix="/v1", tags=["billing"])


def _now(request: Request) -> datetime:
    clock: Callable[[], datetime] | None = getattr(request.app.state, "billing_clock", None)
    return clock() if clock is not None else datetime.now(UTC)


async def raw_body(request: Request, state: State) -> bytes:
    """The exact request bytes (the signature covers them), bounded by the API's body limit."""
    return await read_limited(request, state.settings.max_body_bytes)


RawBody = Annotated[bytes, Depends(raw_body)]


@contextmanager
def _translate() -> Iterator[None]:
    """The one place where billing errors become HTTP problems."""
    try:
        yield
    except (billing.BadSignature, billing.Replayed) as exc:
        raise Unauthorized(str(exc)) from None
    except (billing.InvalidPayment, billing.InvalidEntry) as exc:
        raise Invalid(str(exc), [{"path": exc.field, "message": str(exc).split(": ", 1)[-1]}]) from None
    except billing.UnknownCustomer as exc:
        raise NotFound(str(exc)) from None
    except (billing.KeyReused, billing.GuardFailed) as exc:
        raise Conflict(str(exc)) from None


def _may_read(principal: Principal, customer: str) -> None:
    # Staff and the billing-webhook role read any account; a customer only its own (404 otherwise).
    access.may_read_customer(principal, customer)


def _customer(state: State, name: str) -> Customer:
    return state.store.get(Customer, name)


@router.post("/webhooks/payments/{provider}", summary="A payment provider's signed callback")
def payment_webhook(provider: str, request: Request, state: State, body: RawBody) -> dict[str, Any]:
    prov = billing.provider(provider)
    if prov is None or not prov.accepts_webhooks:
        raise NotFound(f"no payment provider {provider!r} takes webhooks")
    with _translate():
        secret = billing.webhook_secret(state.store, provider)
        notice = prov.parse(billing.WebhookRequest(dict(request.headers), body), secret=secret, now=_now(request))
        return billing.answer(billing.record_payment(state.store, notice, now=_now(request)))


@router.post("/webhooks/external-billing", summary="An external billing system sets a subscription's state")
def external_billing_webhook(request: Request, state: State, body: RawBody) -> dict[str, Any]:
    with _translate():
        secret = billing.webhook_secret(state.store, "external")
        ev = billing.parse_state(billing.WebhookRequest(dict(request.headers), body), secret=secret,
                                  now=_now(request))
        answer, _ = billing.apply_state(state.store, ev, now=_now(request))
        return answer


@router.post("/customers/{name}/payments", summary="Record a payment received by other means (manual provider)")
def manual_payment(name: str, request: Request, state: State, caller: Caller, body: Body) -> dict[str, Any]:
    if caller.role != "admin":
        raise Forbidden("only an operator may record payments")
    if not isinstance(body, dict):
        raise BadRequest("the body must be an object with amount and reference")
    refuse_unknown_fields(body, {"amount", "currency", "reference", "type", "description"})
    with _translate():
        cust = _customer(state, name)
        prov = billing.provider("manual")
        assert isinstance(prov, billing.ManualProvider)
        amount = body.get("amount")
        if amount is None or isinstance(amount, bool | float):
            raise billing.InvalidPayment("amount", "a decimal string like \"500.00\" is required")
        currency = body.get("currency") or cust.spec.currency
        if not isinstance(currency, str):
            raise billing.InvalidPayment("currency", "must be a currency code")
        notice = prov.notice(name, amount, currency.upper(), body.get("reference") or "",
                             kind=body.get("type") or "payment", description=str(body.get("description") or ""))
        return billing.answer(billing.record_payment(state.store, notice, now=_now(request)))


@router.get("/customers/{name}/ledger", summary="A customer's balance and live ledger entries")
def read_ledger(name: str, state: State, caller: Caller) -> dict[str, Any]:
    _may_read(caller, name)
    with _translate():
        cust = _customer(state, name)
        acct = billing.read_account(state.store, name)
        items = billing.entries(state.store, name)
    return {"customer": name, "currency": acct.currency or cust.spec.currency,
            "balance": format_minor(acct.balanceMinor, acct.currency), "balanceMinor": acct.balanceMinor,
            "openingMinor": acct.openingMinor, "entries": [e.to_json() for e in items],
            "statements": billing.statements(state.store, name)}


@router.get("/customers/{name}/statements", summary="Months with a closed statement")
def list_statements(name: str, state: State, caller: Caller) -> dict[str, Any]:
    _may_read(caller, name)
    _customer(state, name)
    return {"customer": name, "months": billing.statements(state.store, name)}


@router.get("/customers/{name}/statements/{month}", summary="One month's statement (closed, or running)")
def read_statement(name: str, month: str, state: State, caller: Caller) -> dict[str, Any]:
    _may_read(caller, name)
    with _translate():
        _customer(state, name)
        return billing.statement(state.store, name, month).to_json()


@router.put("/billing/webhook-secrets/{provider}", summary="Set or rotate a provider's webhook secret (shown once)")
def rotate_secret(provider: str, state: State, caller: Caller) -> dict[str, str]:
    if caller.role != "admin":
        raise Forbidden("only an operator may set webhook secrets")
    if provider != "external":
        prov = billing.provider(provider)
        if prov is None or not prov.accepts_webhooks:
            raise NotFound(f"no payment provider {provider!r} takes webhooks")
    return {"provider": provider, "secret": billing.set_webhook_secret(state.store, provider)}
