"""Spend forecasts from the recent daily trend. Pure.

Ordinary least squares over the last (up to) 14 days of daily spend, missing days counted as zero,
projected over the days left in the period; a ~95% interval from the residual standard deviation.
"""

from __future__ import annotations

import math
from datetime import date, timedelta
from typing import Any

WINDOW_DAYS = 14
Z95 = 1.96


def _fit(values: list[int]) -> tuple[float, float, float]:
    """Slope, intercept and residual standard deviation of values over days 0..n-1."""
    n = len(values)
    xs = range(n)
    mean_x, mean_y = (n - 1) / 2, sum(values) / n
    sxx = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, values, strict=True)) / sxx
    intercept = mean_y - slope * mean_x
    residuals = [y - (intercept + slope * x) for x, y in zip(xs, values, strict=True)]
    sigma = math.sqrt(sum(r * r for r in residuals) / (n - 2)) if n > 2 else 0.0
    return slope, intercept, sigma


def forecast(daily: list[tuple[date, int]], *, today: date, period_end: date, limit_micros: int | None,
             spent_micros: int) -> dict[str, Any]:
    """Project spend to `period_end` (inclusive) and when `limit_micros` runs out, from the daily history."""
    by_day = dict(daily)
    first = max(min(by_day, default=today), today - timedelta(days=WINDOW_DAYS - 1))
    values = [by_day.get(first + timedelta(days=i), 0) for i in range((today - first).days + 1)]
    days_left = max((period_end - today).days, 0)
    if len(values) >= 2:
        method = f"ols_daily_{WINDOW_DAYS}d"
        slope, intercept, sigma = _fit(values)
        predicted = [max(0.0, intercept + slope * (len(values) - 1 + k)) for k in range(1, days_left + 1)]
    else:
        method = "mean_daily"
        slope, intercept, sigma = 0.0, float(values[0] if values else 0), 0.0
        predicted = [intercept] * days_left
    remaining = round(sum(predicted))
    spread = Z95 * sigma * math.sqrt(days_left)
    projected = spent_micros + remaining
    exhausted_in = _days_until(limit_micros, spent_micros, predicted)
    return {
        "method": method,
        "interval": "95% (±1.96 σ of the daily residuals × √days left)",
        "history_days": len(values),
        "slope_micros_per_day": round(slope, 3),
        "intercept_micros": round(intercept, 3),
        "days_left": days_left,
        "spent_micros": spent_micros,
        "projected_remaining_micros": remaining,
        "projected_period_total_micros": projected,
        "interval_low_micros": max(spent_micros, round(projected - spread)),
        "interval_high_micros": round(projected + spread),
        "limit_micros": limit_micros,
        "days_until_exhausted": exhausted_in,
        "exhausted_on": (today + timedelta(days=exhausted_in)).isoformat() if exhausted_in is not None else None,
    }


def _days_until(limit: int | None, spent: int, predicted: list[float]) -> int | None:
    """Whole days until cumulative spend reaches `limit`: 0 if it already has; None if not within the period."""
    if limit is None:
        return None
    if spent >= limit:
        return 0
    total = float(spent)
    for day, amount in enumerate(predicted, start=1):
        total += amount
        if total >= limit:
            return day
    return None
