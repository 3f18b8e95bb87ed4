"""Money: integer micro-dollars inside, decimal USD strings outside. Pure.

Every amount the system stores, compares or adds is an `int` of micro-dollars (1 USD = 1,000,000 micros), so
sums are exact and Redis can hold them as integers. Decimal USD appears only at the edges: parsing what a
client sends (`usd_to_micros`) and showing figures (`micros_to_usd`).
"""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal, InvalidOperation, localcontext

MICROS_PER_USD = 1_000_000
# Redis counters (INCRBY, HINCRBY) are signed 64-bit integers: no amount may be larger.
MAX_MICROS = 2**63 - 1


def _to_micros(usd: Decimal, rounding: str) -> int:
    """`usd` in micro-dollars, rounded once with `rounding`; exact whatever the number of digits."""
    with localcontext() as ctx:
        # Room for every digit: scaling by 10**6 then never rounds, only the final step does.
        ctx.prec = max(28, len(usd.as_tuple().digits))
        return int(usd.scaleb(6).to_integral_value(rounding=rounding))


def usd_to_micros(value: Decimal | str | int | float) -> int:
    """Converts dollars to micro-dollars, rounding half up to the micro.

    Decimal strings are converted exactly ("0.0075" is 7,500); floats go through their shortest repr, so 0.1
    is 100,000 and not 100,000.0000000000055.

    Raises:
        ValueError: `value` is not a number, is negative, NaN or infinite, or exceeds what a 64-bit counter holds.
    """
    if isinstance(value, bool):
        raise ValueError(f'{value!r} is not an amount of dollars; give a number such as 25 or "25.50".')
    try:
        amount = value if isinstance(value, Decimal) else Decimal(str(value).strip())
    except InvalidOperation as ex:
        raise ValueError(f'{value!r} is not an amount of dollars; give a number such as 25 or "25.50".') from ex
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"{value!r} is not a non-negative, finite amount of dollars; give a number such as 25.")
    if amount.adjusted() > 13:  # fast refusal before building a huge integer
        raise ValueError(f"{value!r} dollars is more than this system can count; amounts stop near $9.2 trillion.")
    micros = _to_micros(amount, ROUND_HALF_UP)
    if micros > MAX_MICROS:
        raise ValueError(f"{value!r} dollars is more than this system can count; amounts stop near $9.2 trillion.")
    return micros


def ceil_micros(usd: Decimal) -> int:
    """Converts a cost in dollars to micro-dollars, rounding up, so a cost is never under-charged.

    Raises:
        ValueError: `usd` is NaN or infinite.
    """
    if not usd.is_finite():
        raise ValueError(f"Cannot charge {usd!r} dollars; a cost must be a finite number.")
    return _to_micros(usd, ROUND_CEILING)


def micros_to_usd(micros: int) -> str:
    """Formats micro-dollars as USD with six decimals: 7500 is "0.007500"; deltas may be negative."""
    whole, frac = divmod(abs(int(micros)), MICROS_PER_USD)
    return f"{'-' if micros < 0 else ''}{whole}.{frac:06d}"
