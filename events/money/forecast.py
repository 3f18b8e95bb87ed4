"""Spend forecasts from the recent daily trend. Pure.

Ordinary least squares over the last (up to) 14 days of daily spend, today included and missing days counted
as zero, projected over the days left in the period; a ~95% interval from the residual standard deviation and
Student's t for the fit's n - 2 degrees of freedom (with at most 12, the normal 1.96 would be 10% or more too
narrow). The fit is exact rational arithmetic, so a steady spend or a straight ramp comes out exactly.
"""

from __future__ import annotations

import math
from datetime import date, timedelta
from fractions import Fraction
from typing import Any

WINDOW_DAYS = 14
Z95 = 1.96
# Student's t, two-sided 95% (the 0.975 quantile), by degrees of freedom; beyond the table the normal's 1.96.
T95 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
)  # fmt: skip
INTERVAL = (
    "95% (±t σ of the daily residuals × √days left, t of Student's distribution with the fit's n - 2 degrees of "
    "freedom; the low end never below nothing more spent)"
)


def t95(degrees_of_freedom: int) -> float:
    """The two-sided 95% quantile of Student's t with `degrees_of_freedom` (0: no spread is known, 0)."""
    if degrees_of_freedom <= 0:
        return 0.0
    return T95[degrees_of_freedom - 1] if degrees_of_freedom <= len(T95) else Z95


def _half_up(value: Fraction) -> int:
    return math.floor(value + Fraction(1, 2))


def _history(daily: list[tuple[date, int]], today: date) -> tuple[date, list[int]]:
    """The first day used and the spend of each day from it to today; days before the window are dropped."""
    by_day: dict[date, int] = {}
    for day, micros in daily:
        if day <= today:
            by_day[day] = by_day.get(day, 0) + int(micros)
    first = max(min(by_day, default=today), today - timedelta(days=WINDOW_DAYS - 1))
    return first, [by_day.get(first + timedelta(days=i), 0) for i in range((today - first).days + 1)]


def _fit(values: list[int]) -> tuple[Fraction, Fraction, float]:
    """Slope, intercept (at the first day) and residual standard deviation of `values` over days 0..n-1."""
    n = len(values)
    mean_x, mean_y = Fraction(n - 1, 2), Fraction(sum(values), n)
    sxx = sum(((x - mean_x) ** 2 for x in range(n)), Fraction(0))
    slope = sum(((x - mean_x) * (y - mean_y) for x, y in enumerate(values)), Fraction(0)) / sxx
    intercept = mean_y - slope * mean_x
    squares = sum(((y - intercept - slope * x) ** 2 for x, y in enumerate(values)), Fraction(0))
    # n - 2 degrees of freedom: two points always fit exactly and say nothing about the spread.
    return slope, intercept, math.sqrt(squares / (n - 2)) if n > 2 else 0.0


def forecast(
    daily: list[tuple[date, int]], *, today: date, period_end: date, limit_micros: int | None, spent_micros: int
) -> dict[str, Any]:
    """Projects spend to `period_end` and when `limit_micros` runs out, from the daily spend history.

    Args:
        daily: Spend per UTC day in micro-dollars; today's (partial) spend is the last point.
        today: The current UTC day.
        period_end: The last day of the budget period (inclusive); the days after today up to it are projected.
        limit_micros: The budget's limit, or None when there is none.
        spent_micros: What the period has spent so far.

    Returns:
        Figures in integer micro-dollars (keys ending in `_micros`), the method, the interval and the fit.
        `days_until_exhausted` is 0 when the budget is already spent, None when there is no limit or the trend
        does not reach it by `period_end` (a zero or falling trend never does).
    """
    first, values = _history(daily, today)
    days_left = max((period_end - today).days, 0)
    if len(values) >= 2:
        method, note = f"ols_daily_{WINDOW_DAYS}d", None
        slope, intercept, sigma = _fit(values)
    else:
        method = "mean_daily"
        note = "Fewer than 2 days of history: every day left is projected at the mean daily spend."
        slope, intercept, sigma = Fraction(0), Fraction(sum(values), max(len(values), 1)), 0.0
    end_x = len(values) - 1
    predicted = [max(Fraction(0), intercept + slope * (end_x + k)) for k in range(1, days_left + 1)]
    remaining = sum(predicted, Fraction(0))
    freedom = max(len(values) - 2, 0)
    spread = Fraction(t95(freedom) * sigma * math.sqrt(days_left))
    low, high = max(0, _half_up(remaining - spread)), _half_up(remaining + spread)
    exhausted_in = _days_until(limit_micros, spent_micros, predicted)
    return {
        "method": method,
        "note": note,
        "interval": INTERVAL,
        "interval_level": 0.95,
        "interval_t": t95(freedom),
        "degrees_of_freedom": freedom,
        "history_days": len(values),
        "history_start": first.isoformat(),
        "slope_micros_per_day": round(float(slope), 3),
        "intercept_micros": _half_up(intercept),
        "residual_sd_micros": round(sigma),
        "days_left": days_left,
        "spent_micros": spent_micros,
        "projected_remaining_micros": _half_up(remaining),
        "projected_remaining_low_micros": low,
        "projected_remaining_high_micros": high,
        "projected_period_total_micros": spent_micros + _half_up(remaining),
        "interval_low_micros": spent_micros + low,
        "interval_high_micros": spent_micros + high,
        "limit_micros": limit_micros,
        "days_until_exhausted": exhausted_in,
        "exhausted_on": (today + timedelta(days=exhausted_in)).isoformat() if exhausted_in is not None else None,
    }


def _days_until(limit: int | None, spent: int, predicted: list[Fraction]) -> int | None:
    """Whole days until cumulative spend reaches `limit`: 0 if it already has; None if not within the period."""
    if limit is None:
        return None
    if spent >= limit:
        return 0
    total = Fraction(spent)
    for day, amount in enumerate(predicted, start=1):
        total += amount
        if total >= limit:
            return day
    return None
