"""Money: integer micro-dollars inside, decimal USD strings outside. Pure."""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal, InvalidOperation

MICROS_PER_USD = 1_000_000
_MICRO = Decimal("0.000001")


def usd_to_micros(value: Decimal | str | int | float) -> int:
    """Dollars to micro-dollars, rounding half up; ValueError for negative, NaN or infinite amounts."""
    try:
        amount = Decimal(str(value)) if not isinstance(value, Decimal) else value
    except InvalidOperation as ex:
        raise ValueError(f"{value!r} is not an amount of dollars.") from ex
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"{value!r} is not a non-negative, finite amount of dollars.")
    return int((amount * MICROS_PER_USD).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def ceil_micros(usd: Decimal) -> int:
    """Dollars to micro-dollars, rounding up: a cost is never under-charged."""
    return int((usd * MICROS_PER_USD).to_integral_value(rounding=ROUND_CEILING))


def micros_to_usd(micros: int) -> str:
    """Micro-dollars as a USD string with six decimals (7500 → '0.007500')."""
    return str((Decimal(micros) / MICROS_PER_USD).quantize(_MICRO))
