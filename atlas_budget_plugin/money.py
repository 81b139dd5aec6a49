"""Exact money: Decimal in the API, integer nano-units (1e-9 of the currency) in the store."""

from __future__ import annotations

import functools
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Annotated, Any

from pydantic import BeforeValidator, ValidationInfo

#: Store scale: one unit is 10**-9 of the currency. A million-token price of
#: $0.01 is 10 units per token, and a signed 64-bit sum still holds $9.2 billion.
SCALE = 9
QUANTUM = Decimal(1).scaleb(-SCALE)
UNITS_PER_CURRENCY = 10**SCALE
#: Largest amount accepted as one value; sums of many still fit a signed 64-bit column.
MAX_AMOUNT = 10**9


def quantize(amount: Decimal) -> Decimal:
    """Round ``amount`` to the store's precision (banker's rounding, so totals do not drift)."""
    return tidy(amount.quantize(QUANTUM, rounding=ROUND_HALF_EVEN))


def to_units(amount: Decimal) -> int:
    """Decimal currency amount -> integer store units (rounded to the store's precision)."""
    if not isinstance(amount, Decimal):
        raise TypeError(f"money must be a Decimal, got {type(amount).__name__} {amount!r}")
    return int(quantize(amount).scaleb(SCALE))


CENT = Decimal("0.01")


def tidy(amount: Decimal) -> Decimal:
    """Same value, written with at least two and no needless decimal places (0.05, 0.0455, 20.00)."""
    amount = amount.normalize()
    return amount.quantize(CENT) if amount.as_tuple().exponent > -2 else amount  # type: ignore[operator]


@functools.lru_cache(maxsize=16_384)
def _from_units(units: int) -> Decimal:
    return tidy(Decimal(units).scaleb(-SCALE))


def from_units(units: int | None) -> Decimal:
    """Integer store units -> Decimal currency amount (exact).

    Cached: every call turns the same limits, estimates and running totals into Decimals dozens of
    times, and ``tidy`` is the costly part. Decimals are immutable, so sharing one is safe.
    """
    return _from_units(int(units or 0))


def parse_money(value: Any, field: str = "amount") -> Decimal:
    """Read a money value from config or API input; floats are refused because they are inexact."""
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, bool) or isinstance(value, float):
        raise ValueError(
            f'{field} must be a decimal string such as "{value}", not a float: floats cannot hold money exactly'
        )
    elif isinstance(value, (int, str)):
        try:
            result = Decimal(str(value).strip())
        except InvalidOperation:
            raise ValueError(f'{field} must be a decimal number such as "20.00", got {value!r}') from None
    else:
        raise ValueError(f'{field} must be a decimal string such as "20.00", got {value!r}')
    if not result.is_finite():
        raise ValueError(f"{field} must be a finite amount, got {value!r}")
    if abs(result) >= MAX_AMOUNT:
        raise ValueError(f"{field} {str(value)[:40]!r} is too large; amounts must stay below {MAX_AMOUNT:,}")
    if result != quantize(result):
        raise ValueError(
            f"{field} has more than {SCALE} decimal places ({value!r}); the store keeps money to "
            f"1e-{SCALE} of the currency"
        )
    return result


def _money_validator(value: Any, info: ValidationInfo) -> Decimal:
    # The field's own name in the message ("limit", "rollover_cap"), not a generic "amount".
    return parse_money(value, info.field_name or "amount")


#: Pydantic field type for money: Decimal, never from a float.
Money = Annotated[Decimal, BeforeValidator(_money_validator)]
