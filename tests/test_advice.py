"""Cost recommendations (events/money/advice.py) on known, hand-checked figures: a cheaper sibling model and
caching repeated queries, with their savings. Pure: no Redis."""

from __future__ import annotations

from pathlib import Path

import pytest

from events.money import advice
from events.money.advice import recommendations
from events.money.prices import PriceBook

BOOK = PriceBook()

# The figures below use the bundled prices that test_prices.py pins.
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
