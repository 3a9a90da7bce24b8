"""Money: integer minor units inside, decimal strings at the edges, never float.

A `Money` value is written by people as `{"amount": "12.50", "currency": "EUR"}`. YAML and
JSON parsers may hand us a float for an unquoted `12.5`; it is converted through its
shortest decimal representation (`str(12.5) == "12.5"`), never through float arithmetic,
and rejected if it has more digits than the currency allows.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationInfo, field_validator

# ISO 4217 minor-unit exponents for the currencies a hoster is likely to bill in.
CURRENCY_EXPONENT: dict[str, int] = {
    "USD": 2, "EUR": 2, "GBP": 2, "RUB": 2, "CHF": 2, "PLN": 2, "CZK": 2, "SEK": 2,
    "NOK": 2, "DKK": 2, "UAH": 2, "KZT": 2, "TRY": 2, "CAD": 2, "AUD": 2, "INR": 2,
    "BRL": 2, "JPY": 0, "KRW": 0,
}


# Plain ASCII decimals only: `Decimal()` would also take "1_000", "1e9", "NaN" and non-ASCII
# digits, and an exponent like "1e999999999" would make an integer of a billion digits.
_AMOUNT = re.compile(r"[+-]?[0-9]{1,18}(\.[0-9]{1,18})?")
# A quadrillion major units: far beyond any real balance, far below float or int trouble.
MAX_ABS_AMOUNT = Decimal(10) ** 15


def _decimal(value: Any) -> Decimal:
    if isinstance(value, bool):
        raise ValueError("amount must be a decimal number, not a boolean")
    if isinstance(value, float):
        # The shortest repr is what the author typed (12.5 -> "12.5"); never float arithmetic.
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("amount must be finite")
        value = Decimal(repr(value))
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError("amount must be finite")
        if abs(value) >= MAX_ABS_AMOUNT:
            raise ValueError(f"amount must be less than {MAX_ABS_AMOUNT:,} in absolute value")
        value = format(value, "f")
    if isinstance(value, int):
        if abs(value) >= MAX_ABS_AMOUNT:
            raise ValueError(f"amount must be less than {MAX_ABS_AMOUNT:,} in absolute value")
        value = str(value)
    if isinstance(value, str):
        text = value.strip()
        if not _AMOUNT.fullmatch(text):
            raise ValueError(f"not a decimal amount like \"12.50\": {value[:40]!r}")
        d = Decimal(text)
        if abs(d) >= MAX_ABS_AMOUNT:
            raise ValueError(f"amount must be less than {MAX_ABS_AMOUNT:,} in absolute value")
        return d
    raise ValueError(f"amount must be a decimal string like \"12.50\", got {type(value).__name__}")


def to_minor(amount: Any, currency: str) -> int:
    """Convert a decimal amount to integer minor units, refusing lost precision."""
    exp = CURRENCY_EXPONENT.get(currency)
    if exp is None:
        raise ValueError(f"unknown currency {currency!r}")
    d = _decimal(amount)
    scaled = d.scaleb(exp)
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{currency} has {exp} decimal places; {str(amount)[:40]!r} has more")
    return int(scaled)


def format_minor(minor: int, currency: str) -> str:
    """Format integer minor units as a decimal string (`1250, EUR -> "12.50"`)."""
    exp = CURRENCY_EXPONENT.get(currency, 2)
    q = Decimal(minor).scaleb(-exp)
    return f"{q:.{exp}f}"


def _check_currency(value: Any) -> Any:
    if isinstance(value, str) and value.isascii() and value.upper() in CURRENCY_EXPONENT:
        return value.upper()
    shown = repr(value)[:40]
    raise ValueError(f"unknown currency {shown}; known: {', '.join(sorted(CURRENCY_EXPONENT))}")


Currency = Annotated[str, BeforeValidator(_check_currency)]


def canonical_amount(value: Any, currency: str | None) -> str:
    """The canonical decimal string of an amount in `currency` ("12.5", EUR -> "12.50").

    With no (valid) currency only the form is checked: the currency's own error is reported.
    """
    if currency is None:
        return str(_decimal(value))
    return format_minor(to_minor(value, currency), currency)


class Money(BaseModel):
    """An amount of money; `amount` is kept as a canonical decimal string.

    `currency` comes first so that `amount` is checked against it and an error names
    `amount` itself, not the whole value.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    currency: Currency
    amount: str

    @field_validator("amount", mode="before")
    @classmethod
    def _canonical(cls, value: Any, info: ValidationInfo) -> Any:
        return canonical_amount(value, info.data.get("currency"))

    @property
    def minor(self) -> int:
        return to_minor(self.amount, self.currency)

    @classmethod
    def from_minor(cls, minor: int, currency: str) -> Money:
        return cls(amount=format_minor(minor, currency), currency=currency)
