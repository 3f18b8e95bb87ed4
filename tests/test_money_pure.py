"""Money, prices, periods, holds, forecasts and recommendations as pure logic, no Redis."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from events.catalog import AgentSpec
from events.money.advice import recommendations
from events.money.amounts import ceil_micros, micros_to_usd, usd_to_micros
from events.money.budgets import BudgetError, call_cost_bound, check_budget, job_scopes, scope_name, worst_case_micros
from events.money.forecast import forecast
from events.money.periods import period_bounds, period_id
from events.money.prices import PriceBook, PriceFileError, UnknownModelError

BOOK = PriceBook()


@pytest.mark.parametrize(
    ("usd", "micros"),
    [
        ("0.0075", 7500),
        (2.5, 2_500_000),
        ("0.0000005", 1),
        ("0.0000004", 0),
        (0, 0),
        (Decimal("12.345678"), 12_345_678),
    ],
)
def test_dollars_become_micros_rounding_half_up(usd, micros) -> None:
    assert usd_to_micros(usd) == micros


@pytest.mark.parametrize("bad", ["-1", "nan", "inf", "abc", float("nan")])
def test_negative_or_non_finite_dollars_are_refused(bad) -> None:
    with pytest.raises(ValueError):
        usd_to_micros(bad)


def test_micros_print_as_six_decimal_dollars_and_costs_round_up() -> None:
    assert micros_to_usd(7500) == "0.007500" and micros_to_usd(0) == "0.000000" and micros_to_usd(-5) == "-0.000005"
    assert ceil_micros(Decimal("0.0000001")) == 1 and ceil_micros(Decimal("0.000002")) == 2


@pytest.mark.parametrize(
    ("model", "tokens", "micros"),
    [
        ("gpt-4o", (1000, 500, 0), 7500),  # the seed's example: $0.0075
        ("gpt-4o-mini", (1000, 500, 0), 450),
        ("gpt-4o-mini", (1000, 500, 200), 435),  # 200 cached at $0.075/M instead of $0.15/M
        ("offline", (10_000, 10_000, 0), 0),
        ("llama-3.1-8b-instruct", (1_000_000, 1_000_000, 0), 130_000),
    ],
)
def test_cost_of_a_call(model: str, tokens: tuple[int, int, int], micros: int) -> None:
    assert BOOK.cost_micros(model, *tokens) == micros


def test_prices_name_their_source_and_overrides_win(tmp_path: Path) -> None:
    assert BOOK.price("gpt-4o").source.startswith("genai-prices") and BOOK.price("gpt-4o").input_per_mtok == 2.5
    custom = tmp_path / "prices.yaml"
    custom.write_text("models:\n  gpt-4o: {input: 1, output: 1}\n")
    mine = PriceBook(custom)
    assert mine.price("gpt-4o").source == "overrides:prices.yaml" and mine.cost_micros("gpt-4o", 1000, 1000) == 2000


def test_unknown_models_are_refused_with_how_to_price_them() -> None:
    with pytest.raises(UnknownModelError, match=r"Model 'nope-7' has no price\. Add it under `models:`"):
        BOOK.price("nope-7")
    assert not BOOK.known("nope-7") and BOOK.known("gpt-4o")


@pytest.mark.parametrize(
    ("text", "mentions"),
    [
        ("models:\n  m: {input: -1, output: 1}\n", "models.m.input"),
        ("models:\n  m: {input: 1}\n", "models.m"),
        ("models:\n  m: {input: 1, output: x}\n", "models.m.output"),
        ("nothing: here\n", "`models:`"),
        ("models:\n  m: {input: 1, output: 1, typo: 2}\n", "unknown keys"),
    ],
)
def test_a_malformed_prices_file_is_refused_naming_the_entry(tmp_path: Path, text: str, mentions: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(PriceFileError, match=mentions.replace(".", r"\.").replace("`", ".")):
        PriceBook(path)


def test_the_model_listing_has_the_overrides_and_well_known_models() -> None:
    listed = {m["model"]: m for m in BOOK.listing()}
    assert listed["offline"]["input_usd_per_mtok"] == "0" and listed["gpt-4o"]["output_usd_per_mtok"] == "10"


@pytest.mark.parametrize(
    ("period", "moment", "pid"),
    [
        ("daily", "2026-11-30T23:59:59", "d20261130"),
        ("daily", "2026-12-01T00:00:00", "d20261201"),
        ("weekly", "2026-11-29T12:00:00", "w2026-48"),
        ("weekly", "2026-11-30T00:00:00", "w2026-49"),
        ("monthly", "2026-11-30T23:59:59", "m202611"),
        ("monthly", "2026-12-01T00:00:01", "m202612"),
        ("total", "2026-01-01T00:00:00", "total"),
    ],
)
def test_periods_turn_over_at_utc_boundaries(period: str, moment: str, pid: str) -> None:
    assert period_id(period, datetime.fromisoformat(moment).replace(tzinfo=UTC).timestamp()) == pid


def test_period_bounds() -> None:
    ts = datetime(2026, 11, 26, 15, tzinfo=UTC).timestamp()
    assert period_bounds("monthly", ts) == (date(2026, 11, 1), date(2026, 12, 1))
    assert period_bounds("weekly", ts) == (date(2026, 11, 23), date(2026, 11, 30))


def test_budget_scopes_and_validation() -> None:
    assert job_scopes("s1", "query") == ["user", "session:s1", "agent:query"] and job_scopes("", "") == ["user"]
    assert scope_name("agent", "query") == "agent:query" and scope_name("user") == "user"
    for bad in (
        lambda: scope_name("planet"),
        lambda: scope_name("session"),
        lambda: check_budget("user", 1, "hourly", 80),
        lambda: check_budget("user", -1, "daily", 80),
        lambda: check_budget("user", 1, "daily", 0),
    ):
        with pytest.raises(BudgetError):
            bad()


def test_a_hold_covers_every_call_with_the_conversation_growing() -> None:
    price = BOOK.price("gpt-4o")
    one = call_cost_bound(price, prompt_bytes=1000, max_tokens=100)
    assert one == 2500 + 1000  # 1,000 bytes × $2.5/M + 100 × $10/M
    spec = AgentSpec("test", "", max_llm_calls=3, prompt_overhead_bytes=0)
    three = worst_case_micros(price, spec, query_bytes=1000, max_tokens=100)
    assert three > 3 * one
    assert worst_case_micros(BOOK.price("offline"), spec, query_bytes=10**6, max_tokens=10**4) == 0


def test_forecast_of_a_steady_spend() -> None:
    today = date(2026, 11, 20)
    history = [(today - timedelta(days=i), 1000) for i in range(10)]
    got = forecast(history, today=today, period_end=date(2026, 11, 30), limit_micros=15_000, spent_micros=10_000)
    assert got["method"] == "ols_daily_14d" and got["slope_micros_per_day"] == 0 and got["days_left"] == 10
    assert got["projected_remaining_micros"] == 10_000 and got["projected_period_total_micros"] == 20_000
    assert got["interval_low_micros"] == got["interval_high_micros"] == 20_000
    assert got["days_until_exhausted"] == 5 and got["exhausted_on"] == "2026-11-25"


def test_forecast_of_a_ramp_fits_it_exactly() -> None:
    today = date(2026, 11, 20)
    history = [(today - timedelta(days=13 - i), 100 * i) for i in range(14)]
    got = forecast(history, today=today, period_end=date(2026, 11, 22), limit_micros=None, spent_micros=0)
    assert got["slope_micros_per_day"] == 100 and got["intercept_micros"] == 0
    assert got["projected_remaining_micros"] == 1400 + 1500 and got["days_until_exhausted"] is None


def test_forecast_with_little_history_or_an_exhausted_budget() -> None:
    today = date(2026, 11, 20)
    got = forecast([(today, 700)], today=today, period_end=date(2026, 11, 23), limit_micros=500, spent_micros=700)
    assert got["method"] == "mean_daily" and got["projected_remaining_micros"] == 2100
    assert got["days_until_exhausted"] == 0


def test_recommendations_price_a_cheaper_sibling_and_cacheable_repeats() -> None:
    by_model = {
        "gpt-4o": {
            "input_tokens": 1_000_000,
            "output_tokens": 100_000,
            "cached_input_tokens": 0,
            "cost_micros": 3_500_000,
            "calls": 10,
        },
        "offline": {"input_tokens": 5, "output_tokens": 5, "cached_input_tokens": 0, "cost_micros": 0, "calls": 1},
    }
    repeated = [{"query_hash": "a", "jobs": 4, "cost_micros": 4000}, {"query_hash": "b", "jobs": 1, "cost_micros": 9}]
    items = recommendations(by_model, repeated, BOOK)
    assert [i["kind"] for i in items] == ["model_swap", "cache_repeats"]
    assert items[0]["suggested_model"] == "gpt-4o-mini" and items[0]["savings_micros"] == 3_500_000 - 210_000
    assert items[1]["savings_micros"] == 3000 and items[1]["repeated_queries"] == 1
