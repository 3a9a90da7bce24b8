"""Money is integer minor units inside and decimal strings outside; floats never do arithmetic."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from specs import Customer, Money, format_minor, to_minor
from specs.money import CURRENCY_EXPONENT

currencies = st.sampled_from(sorted(CURRENCY_EXPONENT))


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(minor=st.integers(-(10**14), 10**14), currency=currencies)
def test_format_then_parse_is_identity(minor: int, currency: str) -> None:
    """to_minor(format_minor(m)) == m for every amount and currency."""
    assert to_minor(format_minor(minor, currency), currency) == minor


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cents=st.integers(0, 10**9))
def test_two_digit_floats_convert_through_their_shortest_repr(cents: int) -> None:
    """A float as YAML hands it over (12.5, 0.1) converts to exactly the cents it was written as."""
    as_float = float(f"{cents // 100}.{cents % 100:02d}")
    assert to_minor(as_float, "EUR") == cents


@pytest.mark.parametrize(("amount", "currency", "minor"), [
    ("12.50", "EUR", 1250), ("12.5", "EUR", 1250), (12.5, "EUR", 1250), (0.1, "USD", 10), (3, "EUR", 300),
    ("-3.00", "EUR", -300), (" 7 ", "EUR", 700), ("1000", "JPY", 1000), (Decimal("1.20"), "EUR", 120),
    ("+2", "EUR", 200), (0.3, "EUR", 30),
])
def test_amounts_convert_to_minor_units(amount: Any, currency: str, minor: int) -> None:
    """Strings, ints, Decimals and floats convert exactly."""
    assert to_minor(amount, currency) == minor


@pytest.mark.parametrize(("amount", "currency", "message"), [
    ("0.001", "EUR", "EUR has 2 decimal places"),
    (0.005, "EUR", "EUR has 2 decimal places"),
    ("1.5", "JPY", "JPY has 0 decimal places"),
    ("1e9", "EUR", "not a decimal amount"),
    ("1E+999999999", "EUR", "not a decimal amount"),
    ("1_000", "EUR", "not a decimal amount"),
    ("\u0661\u0662", "EUR", "not a decimal amount"),  # Arabic-Indic digits
    ("NaN", "EUR", "not a decimal amount"),
    (float("nan"), "EUR", "finite"),
    (float("inf"), "EUR", "finite"),
    (Decimal("Infinity"), "EUR", "finite"),
    (1e300, "EUR", "less than"),
    (10**30, "EUR", "less than"),
    ("", "EUR", "not a decimal amount"),
    (True, "EUR", "not a boolean"),
    (None, "EUR", "decimal string"),
    ("1", "XTS", "unknown currency"),
])
def test_bad_amounts_are_refused(amount: Any, currency: str, message: str) -> None:
    """Over-precise, exotic-notation, non-finite, huge, boolean and unknown-currency amounts are errors."""
    with pytest.raises(ValueError, match=message):
        to_minor(amount, currency)


def test_money_model_is_canonical() -> None:
    """Money keeps a canonical amount string and an upper-case currency; minor gives integer units."""
    m = Money.model_validate({"amount": 12.5, "currency": "eur"})
    assert (m.amount, m.currency, m.minor) == ("12.50", "EUR", 1250)
    assert Money.from_minor(-5, "JPY") == Money(amount="-5", currency="JPY")


@pytest.mark.parametrize(("data", "field"), [
    ({"amount": "1.234", "currency": "EUR"}, "amount"),
    ({"amount": "1", "currency": "euro"}, "currency"),
    ({"amount": "1", "currency": "\uff25\uff35\uff32"}, "currency"),
    ({"amount": "1"}, "currency"),
    ({"amount": "1", "currency": "EUR", "extra": 1}, "extra"),
])
def test_money_errors_name_the_field(data: dict[str, Any], field: str) -> None:
    """A bad Money names the field at fault."""
    with pytest.raises(ValidationError) as info:
        Money.model_validate(data)
    assert [e["loc"][0] for e in info.value.errors()] == [field]


def customer(**spec: Any) -> dict[str, Any]:
    return {"kind": "Customer", "metadata": {"name": "c"}, "spec": {"email": "a@b.com", **spec}}


def test_credit_limit_is_canonical_in_the_customer_currency() -> None:
    """creditLimit is normalised to the customer's currency precision, default 0."""
    assert Customer.model_validate(customer()).spec.creditLimit == "0.00"
    assert Customer.model_validate(customer(creditLimit=50, currency="usd")).spec.creditLimit == "50.00"
    assert Customer.model_validate(customer(creditLimit="500", currency="JPY")).spec.creditLimit == "500"


@pytest.mark.parametrize(("spec", "message"), [
    ({"creditLimit": "-1"}, "creditLimit must be >= 0"),
    ({"creditLimit": "1.5", "currency": "JPY"}, "JPY has 0 decimal places"),
    ({"creditLimit": 0.001}, "EUR has 2 decimal places"),
    ({"creditLimit": "10", "currency": "XXX"}, "unknown currency"),
])
def test_bad_credit_limits_are_refused(spec: dict[str, Any], message: str) -> None:
    """A negative or over-precise credit limit, or an unknown currency, is refused."""
    with pytest.raises(ValidationError, match=message):
        Customer.model_validate(customer(**spec))
