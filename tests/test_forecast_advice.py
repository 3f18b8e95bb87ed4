"""Spend forecasts and cost recommendations on known, hand-checked figures. Pure: no Redis."""

from __future__ import annotations

import math
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from events.money import advice
from events.money.advice import recommendations
from events.money.forecast import forecast
from events.money.prices import PriceBook

TODAY = date(2026, 11, 20)
BOOK = PriceBook()
D = Decimal


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
    sigma = math.sqrt(3_200_000 / 2)
    remaining = 2_000 + 2_400 + 2_800 + 3_200  # the line at x = 4..7
    spread = 1.96 * sigma * math.sqrt(4)
    assert got["history_days"] == 4 and got["slope_micros_per_day"] == 400 and got["intercept_micros"] == 400
    assert got["residual_sd_micros"] == round(sigma) == 1_265
    assert got["projected_remaining_micros"] == remaining == 10_400
    assert got["projected_remaining_low_micros"] == math.floor(remaining - spread + 0.5) == 5_442
    assert got["projected_remaining_high_micros"] == math.floor(remaining + spread + 0.5) == 15_358
    assert (got["interval_low_micros"], got["interval_high_micros"]) == (4_000 + 5_442, 4_000 + 15_358)


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


def test_the_prices_the_recommendations_rely_on() -> None:
    figures = {
        m: (BOOK.price(m).input_per_mtok, BOOK.price(m).output_per_mtok, BOOK.price(m).cached_input_per_mtok)
        for m in ("gpt-4o", "gpt-4o-mini", "claude-3-opus", "claude-3-5-sonnet")
    }
    assert figures == {
        "gpt-4o": (D("2.5"), D(10), D("1.25")),
        "gpt-4o-mini": (D("0.15"), D("0.6"), D("0.075")),
        "claude-3-opus": (D(15), D(75), D("1.5")),
        "claude-3-5-sonnet": (D(3), D(15), D("0.3")),
    }


USAGE = {
    # gpt-4o: 800k fresh × $2.50 + 200k cached × $1.25 + 100k out × $10, per million = $3.25.
    "gpt-4o": {
        "input_tokens": 1_000_000,
        "output_tokens": 100_000,
        "cached_input_tokens": 200_000,
        "cost_micros": 3_250_000,
        "calls": 40,
    },
    # claude-3-opus: 10k × $15 + 2k × $75 = $0.30; no recorded cost, so it is repriced.
    "claude-3-opus": {"input_tokens": 10_000, "output_tokens": 2_000, "cached_input_tokens": 0, "calls": 2},
    "offline": {
        "input_tokens": 5_000,
        "output_tokens": 5_000,
        "cached_input_tokens": 0,
        "cost_micros": 0,
        "calls": 9,
    },  # no cheaper sibling
}
REPEATED = [
    {"query_hash": "b", "jobs": 3, "cost_micros": 1_000},
    {"query_hash": "a", "jobs": 4, "cost_micros": 4_000},
    {"query_hash": "once", "jobs": 1, "cost_micros": 9_000},  # ran once: nothing to cache
    {"query_hash": "free", "jobs": 5, "cost_micros": 0},
]


def test_recommendations_give_the_hand_computed_savings_largest_first() -> None:
    items = recommendations(USAGE, REPEATED, BOOK)
    assert [(i["kind"], i.get("model")) for i in items] == [
        ("model_swap", "gpt-4o"),
        ("model_swap", "claude-3-opus"),
        ("cache_repeats", None),
    ]
    gpt, opus, cache = items
    # gpt-4o-mini: 800k × $0.15 + 200k × $0.075 + 100k × $0.60 = $0.195.
    assert gpt["suggested_model"] == "gpt-4o-mini" and gpt["current_cost_micros"] == 3_250_000
    assert gpt["suggested_cost_micros"] == 195_000 and gpt["savings_micros"] == 3_055_000
    assert gpt["savings_pct"] == 94.0 and "$0.195000 instead of $3.250000" in gpt["title"]
    assert (gpt["input_tokens"], gpt["output_tokens"], gpt["cached_input_tokens"], gpt["calls"]) == (
        1_000_000,
        100_000,
        200_000,
        40,
    )
    # claude-3-5-sonnet: 10k × $3 + 2k × $15 = $0.06, against $0.30.
    assert opus["suggested_model"] == "claude-3-5-sonnet" and opus["current_cost_micros"] == 300_000
    assert opus["suggested_cost_micros"] == 60_000 and opus["savings_micros"] == 240_000 and opus["savings_pct"] == 80
    # All but the first run: 4000 × 3 // 4 = 3000 and 1000 × 2 // 3 = 666.
    assert cache["savings_micros"] == 3_666 and cache["repeated_queries"] == 2 and cache["runs"] == 7
    assert [(q["query_hash"], q["savings_micros"]) for q in cache["top"]] == [("a", 3_000), ("b", 666)]
    assert all(i["title"].endswith(".") and i["savings_micros"] > 0 for i in items)


def test_a_swap_that_saves_nothing_is_left_out(tmp_path: Path) -> None:
    same = tmp_path / "prices.yaml"
    same.write_text("models:\n  gpt-4o: {input: 1, output: 1}\n  gpt-4o-mini: {input: 1, output: 1}\n")
    repriced = {k: v for k, v in USAGE["gpt-4o"].items() if k != "cost_micros"}
    assert recommendations({"gpt-4o": repriced}, [], PriceBook(same)) == []
    # What was really paid is the current cost: here it was less than the sibling would charge now.
    assert recommendations({"gpt-4o": {**repriced, "cost_micros": 100_000}}, [], BOOK) == []
    assert recommendations({}, [], BOOK) == []


def test_a_swap_to_or_from_an_unpriced_model_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(advice.CHEAPER, "gpt-4o", "no-such-model-9")
    monkeypatch.setitem(advice.CHEAPER, "house-model", "gpt-4o-mini")
    usage = {"gpt-4o": USAGE["gpt-4o"], "house-model": {**USAGE["gpt-4o"], "cost_micros": 10**9}}
    assert recommendations(usage, [], BOOK) == []


def test_only_the_top_repeated_queries_are_listed() -> None:
    repeated = [{"query_hash": f"q{i}", "jobs": 2, "cost_micros": 100 * (i + 1)} for i in range(8)]
    (item,) = recommendations({}, repeated, BOOK)
    assert item["savings_micros"] == sum(50 * (i + 1) for i in range(8)) and item["repeated_queries"] == 8
    assert [q["query_hash"] for q in item["top"]] == ["q7", "q6", "q5", "q4", "q3"]
