"""Spend forecasts (events/money/forecast.py) on known, hand-checked figures: an OLS line over the last 14 days,
its 95% interval, and the day a budget runs out. Pure: no Redis."""

from __future__ import annotations

import math
from datetime import date, timedelta

import pytest

from events.money.forecast import forecast

TODAY = date(2026, 11, 20)


def days(values: list[int], end: date = TODAY) -> list[tuple[date, int]]:
    """`values` as daily spend, the last one on `end`."""
    return [(end - timedelta(days=len(values) - 1 - i), v) for i, v in enumerate(values)]


def test_a_steady_spend_projects_exactly_with_no_spread() -> None:
    got = forecast(
        days([1_000] * 10), today=TODAY, period_end=TODAY + timedelta(days=10), limit_micros=15_000, spent_micros=10_000
    )
    assert got["method"] == "ols_daily_14d" and got["interval_level"] == 0.95 and "95%" in got["interval"]
    assert got["history_days"] == 10 and got["history_start"] == "2026-11-11" and got["days_left"] == 10
    assert got["slope_micros_per_day"] == 0 and got["intercept_micros"] == 1_000 and got["residual_sd_micros"] == 0
    assert got["projected_remaining_micros"] == 10_000 and got["projected_period_total_micros"] == 20_000
    assert got["projected_remaining_low_micros"] == got["projected_remaining_high_micros"] == 10_000
    assert got["interval_low_micros"] == got["interval_high_micros"] == 20_000
    # 10,000 spent of 15,000 at 1,000 a day: the fifth day from now reaches the limit.
    assert got["days_until_exhausted"] == 5 and got["exhausted_on"] == "2026-11-25"


@pytest.mark.parametrize(
    ("limit", "until"), [(10_001, 1), (11_000, 1), (11_001, 2), (19_999, 10), (20_000, 10), (20_001, None)]
)
def test_days_until_exhausted_is_the_first_day_cumulative_spend_reaches_the_limit(
    limit: int, until: int | None
) -> None:
    got = forecast(
        days([1_000] * 10), today=TODAY, period_end=TODAY + timedelta(days=10), limit_micros=limit, spent_micros=10_000
    )
    assert got["days_until_exhausted"] == until  # None: the budget outlasts the period


def test_a_linear_ramp_gives_the_exact_ols_slope_and_intercept() -> None:
    got = forecast(
        days([100 * i + 50 for i in range(14)]),
        today=TODAY,
        period_end=TODAY + timedelta(days=2),
        limit_micros=None,
        spent_micros=0,
    )
    assert got["slope_micros_per_day"] == 100 and got["intercept_micros"] == 50 and got["residual_sd_micros"] == 0
    assert got["projected_remaining_micros"] == 1_450 + 1_550  # the fit at x = 14 and x = 15
    assert got["days_until_exhausted"] is None and got["exhausted_on"] is None  # no limit


def test_only_the_last_14_days_are_fitted() -> None:
    history = days([50_000] * 6 + [100 * i for i in range(14)])  # 20 days; the first six are outside the window
    got = forecast(history, today=TODAY, period_end=TODAY + timedelta(days=1), limit_micros=None, spent_micros=0)
    assert got["history_days"] == 14 and got["history_start"] == (TODAY - timedelta(days=13)).isoformat()
    assert (got["slope_micros_per_day"], got["intercept_micros"], got["projected_remaining_micros"]) == (100, 0, 1_400)


def test_missing_days_count_as_zero_and_later_or_repeated_days_are_handled() -> None:
    # 0, 2000, 0, 2000 over four days, with day two given in two parts and a stray entry after today.
    history = [
        (TODAY - timedelta(days=3), 0),
        (TODAY - timedelta(days=2), 1_500),
        (TODAY - timedelta(days=2), 500),
        (TODAY, 2_000),
        (TODAY + timedelta(days=1), 99_999),
    ]
    got = forecast(history, today=TODAY, period_end=TODAY + timedelta(days=4), limit_micros=None, spent_micros=4_000)
    # By hand: x̄ = 1.5, ȳ = 1000, Sxy = 2000, Sxx = 5, so slope 400 and intercept 400; the fitted values
    # 400, 800, 1200, 1600 leave residuals -400, 1200, -1200, 400: SSR 3,200,000 over n - 2 = 2 degrees.
    # Student's t for 2 degrees of freedom, two-sided 95%: 4.303 (a t table), not the normal's 1.96.
    sigma = math.sqrt(3_200_000 / 2)
    remaining = 2_000 + 2_400 + 2_800 + 3_200  # the line at x = 4..7
    spread = 4.303 * sigma * math.sqrt(4)  # 10,885.8
    assert got["history_days"] == 4 and got["slope_micros_per_day"] == 400 and got["intercept_micros"] == 400
    assert got["residual_sd_micros"] == round(sigma) == 1_265
    assert (got["degrees_of_freedom"], got["interval_t"]) == (2, 4.303)
    assert got["projected_remaining_micros"] == remaining == 10_400
    assert got["projected_remaining_low_micros"] == 0  # 10,400 - 10,885.8 is below nothing more spent
    assert got["projected_remaining_high_micros"] == math.floor(remaining + spread + 0.5) == 21_286
    assert (got["interval_low_micros"], got["interval_high_micros"]) == (4_000, 4_000 + 21_286)


def test_a_full_window_uses_t_with_12_degrees_of_freedom_11_percent_wider_than_the_normal() -> None:
    # 14 days alternating 1,000 and 3,000: by hand, x̄ = 6.5, ȳ = 2,000, Sxx = 227.5, Sxy = 7,000 (each pair of
    # days adds +1,000 at the later x), so the slope is 7,000 / 227.5 = 30.769… and the intercept 2,000 - 6.5 ×
    # 30.769… = 1,800. The residuals' squares sum to 14,000,000 - 7,000² / 227.5 = 13,784,615.4 over 12 degrees.
    values = [1_000, 3_000] * 7
    got = forecast(days(values), today=TODAY, period_end=TODAY + timedelta(days=9), limit_micros=None, spent_micros=0)
    sigma = math.sqrt((14_000_000 - 7_000**2 / 227.5) / 12)  # 1,071.8
    slope, intercept = 7_000 / 227.5, 2_000 - 6.5 * 7_000 / 227.5
    remaining = sum(intercept + slope * x for x in range(14, 23))  # 9 days left
    spread = 2.179 * sigma * math.sqrt(9)  # t(0.975, 12) = 2.179
    assert got["degrees_of_freedom"] == 12 and got["interval_t"] == 2.179
    assert got["residual_sd_micros"] == round(sigma) == 1_072
    assert got["projected_remaining_micros"] == math.floor(remaining + 0.5) == 21_185  # 9 × 1,800 + 30.77 × 162
    assert got["projected_remaining_high_micros"] == math.floor(remaining + spread + 0.5)
    assert got["projected_remaining_low_micros"] == math.floor(remaining - spread + 0.5)
    assert 2.179 / 1.96 > 1.11  # the normal's interval would have been more than 10% too narrow


def test_the_interval_never_goes_below_nothing_more_spent() -> None:
    got = forecast(
        days([0, 5_000, 0, 5_000]),
        today=TODAY,
        period_end=TODAY + timedelta(days=1),
        limit_micros=None,
        spent_micros=10_000,
    )
    assert got["projected_remaining_micros"] == 5_000 and got["residual_sd_micros"] == 3_162  # √(20,000,000 / 2)
    assert got["projected_remaining_low_micros"] == 0 and got["interval_low_micros"] == 10_000


def test_a_falling_trend_projects_no_negative_spend_and_never_exhausts() -> None:
    got = forecast(
        days([100 * (13 - i) for i in range(14)]),
        today=TODAY,
        period_end=TODAY + timedelta(days=5),
        limit_micros=1_000,
        spent_micros=500,
    )
    assert got["slope_micros_per_day"] == -100 and got["projected_remaining_micros"] == 0
    assert got["days_until_exhausted"] is None


@pytest.mark.parametrize(("history", "remaining"), [(days([700]), 2_100), ([], 0)])
def test_fewer_than_two_days_use_the_mean_and_say_so(history: list[tuple[date, int]], remaining: int) -> None:
    got = forecast(history, today=TODAY, period_end=TODAY + timedelta(days=3), limit_micros=None, spent_micros=700)
    assert got["method"] == "mean_daily" and "mean" in got["note"] and got["history_days"] == 1
    assert got["projected_remaining_micros"] == remaining and got["residual_sd_micros"] == 0
    assert got["interval_low_micros"] == got["interval_high_micros"] == 700 + remaining


def test_an_already_exhausted_budget_runs_out_today() -> None:
    got = forecast(days([700]), today=TODAY, period_end=TODAY + timedelta(days=3), limit_micros=500, spent_micros=700)
    assert got["days_until_exhausted"] == 0 and got["exhausted_on"] == TODAY.isoformat()


def test_no_spend_never_exhausts_a_budget() -> None:
    got = forecast(days([0] * 14), today=TODAY, period_end=TODAY + timedelta(days=9), limit_micros=1, spent_micros=0)
    assert got["days_until_exhausted"] is None and got["projected_remaining_micros"] == 0


def test_the_last_day_of_the_period_leaves_nothing_to_project() -> None:
    got = forecast(days([1_000] * 5), today=TODAY, period_end=TODAY, limit_micros=None, spent_micros=5_000)
    assert got["days_left"] == 0 and got["projected_period_total_micros"] == got["interval_high_micros"] == 5_000
