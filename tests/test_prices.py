"""The price book (events/money/prices.py): genai-prices' bundled data, the overrides file, and how calls are
charged. Pure: no Redis (amounts themselves are in test_amounts.py)."""

from __future__ import annotations

import importlib.metadata
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import genai_prices
import pytest

from events.money.amounts import ceil_micros, micros_to_usd, usd_to_micros
from events.money.prices import DEFAULT_PRICES_FILE, PriceBook, PriceFileError, UnknownModelError

BOOK = PriceBook()
D = Decimal


def write(tmp_path: Path, text: str, name: str = "prices.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_bundled_prices_come_from_genai_prices_with_the_figures_the_hand_computed_costs_use() -> None:
    figures = {
        m: (BOOK.price(m).input_per_mtok, BOOK.price(m).output_per_mtok, BOOK.price(m).cached_input_per_mtok)
        for m in ("gpt-4o", "gpt-4o-mini", "claude-3-opus", "claude-3-5-sonnet")
    }
    assert figures == {  # what this file's and test_advice.py's figures are computed from
        "gpt-4o": (D("2.5"), D(10), D("1.25")),
        "gpt-4o-mini": (D("0.15"), D("0.6"), D("0.075")),
        "claude-3-opus": (D(15), D(75), D("1.5")),
        "claude-3-5-sonnet": (D(3), D(15), D("0.3")),
    }
    gpt4o, version = BOOK.price("gpt-4o"), importlib.metadata.version("genai-prices")
    assert BOOK.version == version and gpt4o.source == f"genai-prices {version}:openai" and not gpt4o.tiered


def test_the_seed_example_costs_7500_micros() -> None:
    cost = BOOK.cost_micros("gpt-4o", 1_000, 500)  # 1,000 × $2.50/M + 500 × $10/M
    assert cost == 7_500 and micros_to_usd(cost) == "0.007500"


def test_gpt_4o_mini_costs_450_micros_for_the_same_tokens() -> None:
    assert BOOK.cost_micros("gpt-4o-mini", 1_000, 500) == 450  # 1,000 × $0.15/M + 500 × $0.60/M


@pytest.mark.parametrize(
    ("model", "cached", "micros"),
    [
        ("gpt-4o", 400, 7_000),  # 600 × 2.5 + 400 × 1.25 + 500 × 10, per million
        ("gpt-4o-mini", 200, 435),  # 800 × 0.15 + 200 × 0.075 + 500 × 0.6
        ("gpt-4o", 1_000, 6_250),  # every input token cached
        ("gpt-4o", 5_000, 6_250),
    ],  # more cached than input is read as all of it
)
def test_cached_input_tokens_are_part_of_input_and_cost_less(model: str, cached: int, micros: int) -> None:
    assert BOOK.cost_micros(model, 1_000, 500, cached) == micros < BOOK.cost_micros(model, 1_000, 500)


def test_negative_token_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        BOOK.cost_micros("gpt-4o", -1, 0)


def test_the_shipped_overrides_make_offline_free_and_price_a_self_hosted_model() -> None:
    offline, llama = BOOK.price("offline"), BOOK.price("llama-3.1-8b-instruct")
    assert (offline.input_per_mtok, offline.output_per_mtok, offline.cached_input_per_mtok) == (0, 0, 0)
    assert offline.source == llama.source == f"overrides:{DEFAULT_PRICES_FILE.name}"
    assert BOOK.cost_micros("offline", 10**6, 10**6) == 0
    assert llama.cached_input_per_mtok == llama.input_per_mtok  # cached_input defaults to input
    assert (
        BOOK.cost_micros("llama-3.1-8b-instruct", 10**6, 10**6)
        == usd_to_micros(llama.input_per_mtok + llama.output_per_mtok)
        == 130_000
    )


def test_overrides_win_over_genai_prices(tmp_path: Path) -> None:
    mine = PriceBook(write(tmp_path, "models:\n  gpt-4o: {input: 1, output: 3, cached_input: 0.5}\n"))
    assert mine.price("gpt-4o").source == "overrides:prices.yaml"
    assert mine.cost_micros("gpt-4o", 1_000, 1_000, 500) == 500 + 250 + 3_000
    assert mine.price("gpt-4o-mini").source.startswith("genai-prices")  # the rest still come from genai-prices


def test_an_unknown_model_is_refused_saying_how_to_price_it() -> None:
    with pytest.raises(UnknownModelError) as caught:
        BOOK.cost_micros("foo", 1, 1)
    assert str(caught.value) == (
        "Model 'foo' has no price. Add it under `models:` in ops/prices.yaml (or the file PRICES_FILE names), "
        "e.g. `foo: {input: 1.0, output: 2.0}` in USD per million tokens."
    )
    assert caught.value.model == "foo" and isinstance(caught.value, LookupError)
    with pytest.raises(UnknownModelError, match=r"Model 'nope-7' has no price\. Add it under `models:`"):
        BOOK.price("nope-7")
    assert not BOOK.known("foo") and BOOK.known("gpt-4o")


def test_without_overrides_the_offline_model_has_no_price_rather_than_zero() -> None:
    assert not PriceBook(None).known("offline")


@pytest.mark.parametrize(
    ("text", "mentions"),
    [
        ("models:\n  m: {input: -1, output: 1}\n", "models.m.input must be a non-negative number"),
        ("models:\n  m: {input: 1, output: -0.5}\n", "models.m.output must be a non-negative number"),
        ("models:\n  m: {input: 1, output: 1, cached_input: -2}\n", "models.m.cached_input must be a non-negative"),
        ("models:\n  m: {input: 1}\n", "models.m needs `input` and `output`"),
        ("models:\n  m: 3\n", "models.m needs `input` and `output`"),
        ("models:\n  m: {input: 1, output: x}\n", "models.m.output must be a number"),
        ("models:\n  m: {input: true, output: 1}\n", "models.m.input must be a number"),
        ("models:\n  m: {input: .nan, output: 1}\n", "models.m.input must be a non-negative"),
        ("models:\n  m: {input: 1, output: 1, typo: 2}\n", "models.m has unknown keys: typo"),
        ("models:\n  m: {input: 1, output: 1}\n  m: {input: 2, output: 2}\n", "m is given twice"),
        ("models:\n  1.5: {input: 1, output: 1}\n", "models.1.5: a model name must be text"),
        ("nothing: here\n", "one `models:` mapping"),
        ("models: [a, b]\n", "one `models:` mapping"),
        ("models: {a: [\n", "Cannot read the prices file"),
    ],
)
def test_a_malformed_overrides_file_is_refused_naming_the_file_and_entry(
    tmp_path: Path, text: str, mentions: str
) -> None:
    path = write(tmp_path, text, "bad.yaml")
    with pytest.raises(PriceFileError) as caught:
        PriceBook(path)
    assert str(path) in str(caught.value) and mentions in str(caught.value)


def test_a_negative_price_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PriceFileError, match=r"models\.cheap\.input must be a non-negative number"):
        PriceBook(write(tmp_path, "models:\n  cheap: {input: -0.01, output: 0}\n"))


def test_a_missing_overrides_file_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(PriceFileError, match=r"Cannot read the prices file .*nowhere\.yaml"):
        PriceBook(tmp_path / "nowhere.yaml")


@pytest.mark.parametrize("text", ["", "models:\n", "models: {}\n"])
def test_an_empty_overrides_file_means_no_overrides(tmp_path: Path, text: str) -> None:
    assert PriceBook(write(tmp_path, text)).overrides == {}


def test_the_listing_shows_overrides_then_well_known_models_with_sources() -> None:
    listed = BOOK.listing()
    by_model = {m["model"]: m for m in listed}
    assert [m["model"] for m in listed[:2]] == ["offline", "llama-3.1-8b-instruct"]
    assert by_model["offline"] == {
        "model": "offline",
        "input_usd_per_mtok": "0",
        "output_usd_per_mtok": "0",
        "cached_input_usd_per_mtok": "0",
        "source": "overrides:prices.yaml",
        "tiered": False,
        "tiers": [],
    }
    assert by_model["gpt-4o"] == {
        "model": "gpt-4o",
        "input_usd_per_mtok": "2.5",
        "output_usd_per_mtok": "10",
        "cached_input_usd_per_mtok": "1.25",
        "source": f"genai-prices {BOOK.version}:openai",
        "tiered": False,
        "tiers": [],
    }
    assert {"gpt-4o-mini", "claude-3-5-sonnet", "gemini-1.5-flash"} <= set(by_model)
    assert all(BOOK.known(m) for m in by_model)  # only what genai-prices resolves (no embeddings in 0.2.3)


def test_a_tiered_price_charges_the_tier_the_prompt_selects_and_bounds_at_the_highest() -> None:
    price = BOOK.price("gemini-1.5-pro")
    assert price.tiered and price.source.endswith("(tiered)")
    assert [(t.above_input_tokens, t.input_per_mtok, t.output_per_mtok) for t in price.tiers] == [
        (-1, D("1.25"), D(5)),
        (128_000, D("2.5"), D(10)),
    ]
    assert (price.input_per_mtok, price.output_per_mtok) == (D("2.5"), D(10))  # what holds reserve against
    assert BOOK.cost_micros("gemini-1.5-pro", 128_000, 1_000) == 165_000  # 128k × 1.25 + 1k × 5
    assert BOOK.cost_micros("gemini-1.5-pro", 128_001, 1_000) == 330_003  # every token at the upper tier
    for tokens in (0, 1_000, 128_000, 128_001, 500_000):  # the same as genai-prices' own sum, rounded up
        usage = genai_prices.Usage(input_tokens=tokens, output_tokens=2_000, cache_read_tokens=tokens // 2)
        total = genai_prices.calc_price(usage, model_ref="gemini-1.5-flash").total_price
        assert BOOK.cost_micros("gemini-1.5-flash", tokens, 2_000, tokens // 2) == ceil_micros(total)


def test_a_time_of_day_price_uses_the_days_peak_whatever_the_hour() -> None:
    day = datetime(2026, 11, 26, tzinfo=UTC)
    seen = [
        genai_prices.calc_price(
            genai_prices.Usage(input_tokens=1),
            model_ref="deepseek-chat",
            genai_request_timestamp=day + timedelta(minutes=m),
        ).model_price
        for m in range(0, 24 * 60, 15)
    ]
    peak_in, peak_out = max(p.input_mtok for p in seen), max(p.output_mtok for p in seen)
    assert min(p.input_mtok for p in seen) < peak_in  # there is an off-peak discount to guard against
    for hour in (3, 12, 20):
        book = PriceBook(clock=lambda hour=hour: (day + timedelta(hours=hour)).timestamp())
        price = book.price("deepseek-chat")
        assert (price.input_per_mtok, price.output_per_mtok) == (peak_in, peak_out)
        assert price.source.endswith("(peak)")


def test_a_price_is_looked_up_once_per_model() -> None:
    book = PriceBook()
    assert book.price("gpt-4o") is book.price("gpt-4o")
