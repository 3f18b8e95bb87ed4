"""Model prices: a local overrides file first, then genai-prices' bundled data (never fetched at run time).

An unknown model is refused with UnknownModelError, never priced at $0 silently. Costs are exact Decimal
arithmetic, rounded up to the micro-dollar once per call. Prices that are not one flat rate never under-charge:

- Tiered (a dearer rate for long prompts, e.g. gemini-1.5-pro above 128k tokens): a call pays the tier its
  prompt selects, as the provider bills; the flat `*_per_mtok` fields hold the highest tier, because holds
  and per-call bounds (events/budgets.py) read only those. The source says "(tiered)".
- Time of day (DeepSeek's off-peak discount): the day's highest price is used. The source says "(peak)".
- Dated price changes: the price in force when the model is first priced; a restart picks up a newer one.
"""

from __future__ import annotations

import importlib.metadata
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, NamedTuple

import genai_prices
import yaml
from genai_prices.types import TieredPrices, TimeOfDateConstraint

from events.errors import DomainError
from events.money.amounts import ceil_micros
from events.telemetry.metrics import CACHE_OPS, CACHE_SIZE

DEFAULT_PRICES_FILE = Path(__file__).resolve().parents[2] / "ops" / "prices.yaml"
# Well-known models shown by GET /costs/models when genai-prices resolves them.
LISTED = (
    "gpt-4o",
    "gpt-4o-mini",
    "gpt-4-turbo",
    "gpt-3.5-turbo",
    "o1",
    "o3-mini",
    "gpt-4.1",
    "gpt-4.1-mini",
    "gpt-4.1-nano",
    "text-embedding-3-small",
    "text-embedding-3-large",
    "claude-3-5-sonnet",
    "claude-3-5-haiku",
    "claude-3-opus",
    "gemini-1.5-pro",
    "gemini-1.5-flash",
)
MTOK = Decimal(1_000_000)
MAX_CACHED_MODELS = 1024  # model names come from requests: bound what a process remembers


class UnknownModelError(DomainError, LookupError):
    """Raised when a model has no price in the overrides file nor in genai-prices."""

    code = "unpriced_model"

    def __init__(self, model: str) -> None:
        super().__init__(
            f"Model '{model}' has no price. Add it under `models:` in ops/prices.yaml (or the file PRICES_FILE "
            f"names), e.g. `{model}: {{input: 1.0, output: 2.0}}` in USD per million tokens."
        )
        self.model = model


class PriceFileError(ValueError):
    """Raised when the overrides file cannot be read or an entry in it is malformed."""


class PriceTier(NamedTuple):
    """USD per million tokens for prompts of more than `above_input_tokens` input tokens (cached included)."""

    above_input_tokens: int
    input_per_mtok: Decimal
    output_per_mtok: Decimal
    cached_input_per_mtok: Decimal


@dataclass(frozen=True)
class ModelPrice:
    """A model's price in USD per million tokens; `source` says where it came from.

    For a tiered model the flat fields are the highest tier (an upper bound) and `tiers` lists every tier,
    lowest first; `rates()` picks the one a prompt pays.
    """

    model: str
    input_per_mtok: Decimal
    output_per_mtok: Decimal
    cached_input_per_mtok: Decimal
    source: str
    tiers: tuple[PriceTier, ...] = ()

    @property
    def tiered(self) -> bool:
        """True when the rate depends on the prompt's size."""
        return bool(self.tiers)

    def rates(self, input_tokens: int) -> tuple[Decimal, Decimal, Decimal]:
        """Input, output and cached-input rates for a prompt of `input_tokens` tokens."""
        chosen = next((t for t in reversed(self.tiers) if input_tokens > t.above_input_tokens), None)
        if chosen is None:
            return self.input_per_mtok, self.output_per_mtok, self.cached_input_per_mtok
        return chosen.input_per_mtok, chosen.output_per_mtok, chosen.cached_input_per_mtok

    def cost_usd(self, input_tokens: int, output_tokens: int, cached_input_tokens: int = 0) -> Decimal:
        """The exact cost of one call; `input_tokens` includes the cached ones, as OpenAI's prompt_tokens does."""
        if min(input_tokens, output_tokens, cached_input_tokens) < 0:
            raise ValueError("Token counts cannot be negative.")
        cached = min(cached_input_tokens, input_tokens)
        rate_in, rate_out, rate_cached = self.rates(input_tokens)
        return ((input_tokens - cached) * rate_in + cached * rate_cached + output_tokens * rate_out) / MTOK

    def as_listing(self) -> dict[str, Any]:
        """As GET /costs/models shows it: prices as decimal strings; `tiers` is empty for a flat price."""
        return {
            "model": self.model,
            **_listed(self),
            "source": self.source,
            "tiered": self.tiered,
            "tiers": [{"min_input_tokens": t.above_input_tokens + 1, **_listed(t)} for t in self.tiers],
        }


def _listed(rates: ModelPrice | PriceTier) -> dict[str, str]:
    return {
        f"{name}_usd_per_mtok": format(getattr(rates, f"{name}_per_mtok"), "f")
        for name in ("input", "output", "cached_input")
    }


class _Loader(yaml.SafeLoader):  # type: ignore[misc, unused-ignore]
    """A safe YAML loader that refuses a key given twice (plain YAML lets the last one win silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        counts = Counter(self.construct_object(key, deep=deep) for key, _ in node.value)
        twice = [str(key) for key, n in counts.items() if n > 1]
        if twice:
            raise PriceFileError(f"line {node.start_mark.line + 1}: {', '.join(twice)} is given twice; keep one.")
        return mapping


def _number(value: Any, where: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, float, str, Decimal)):
        raise PriceFileError(f"{where} must be a number of USD per million tokens, not {value!r}.")
    try:
        number = Decimal(str(value))
    except InvalidOperation as ex:
        raise PriceFileError(f"{where} must be a number of USD per million tokens, not {value!r}.") from ex
    if not number.is_finite() or number < 0:
        raise PriceFileError(f"{where} must be a non-negative number of USD per million tokens, not {value!r}.")
    return number


def load_overrides(path: Path) -> dict[str, ModelPrice]:
    """Reads and checks the overrides file; PriceFileError names the file and the bad entry."""
    try:
        doc = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    except PriceFileError as ex:
        raise PriceFileError(f"{path}: {ex}") from ex
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as ex:
        raise PriceFileError(f"Cannot read the prices file {path}: {ex}") from ex
    if doc is None or doc == {"models": None}:
        return {}
    if not isinstance(doc, dict) or set(doc) != {"models"} or not isinstance(doc["models"], dict):
        raise PriceFileError(
            f"{path} must hold one `models:` mapping of model name to prices, "
            "e.g. `models: {my-model: {input: 1.0, output: 2.0}}`."
        )
    found = {}
    for model, entry in doc["models"].items():
        where = f"{path}: models.{model}"
        if not isinstance(model, str) or not model.strip():
            raise PriceFileError(f"{where}: a model name must be text; quote it.")
        if not isinstance(entry, dict) or "input" not in entry or "output" not in entry:
            raise PriceFileError(f"{where} needs `input` and `output` prices (USD per million tokens).")
        unknown = set(entry) - {"input", "output", "cached_input"}
        if unknown:
            raise PriceFileError(
                f"{where} has unknown keys: {', '.join(sorted(map(str, unknown)))}; use input, output and cached_input."
            )
        rate_in = _number(entry["input"], f"{where}.input")
        found[model] = ModelPrice(
            model,
            rate_in,
            _number(entry["output"], f"{where}.output"),
            _number(entry.get("cached_input", rate_in), f"{where}.cached_input"),
            f"overrides:{path.name}",
        )
    return found


def _rate(value: Decimal | TieredPrices | None, input_tokens: int) -> Decimal | None:
    """The rate a prompt of `input_tokens` pays, by genai-prices' rule: the last tier it exceeds wins."""
    if not isinstance(value, TieredPrices):
        return value
    return next((t.price for t in reversed(value.tiers) if input_tokens > t.start), value.base)


def _schedule(prices: list[Any]) -> list[PriceTier] | None:
    """Every tier of the genai-prices ModelPrices given, each field the highest of them; None if not per token."""
    starts = {-1} | {
        tier.start
        for p in prices
        for key in ("input_mtok", "output_mtok", "cache_read_mtok")
        if isinstance(getattr(p, key), TieredPrices)
        for tier in getattr(p, key).tiers
    }
    rows = []
    for start in sorted(starts):
        found = []
        for p in prices:
            rate_in, rate_out = _rate(p.input_mtok, start + 1), _rate(p.output_mtok, start + 1)
            if rate_in is None or rate_out is None:
                return None
            cached = _rate(p.cache_read_mtok, start + 1)
            found.append((rate_in, rate_out, rate_in if cached is None else cached))
        rows.append(PriceTier(start, *(max(column) for column in zip(*found, strict=True))))
    return rows


def _prices_today(calc: Any, now: datetime) -> list[Any]:
    """The price `calc` found, plus every other one in force at some time today for time-of-day pricing."""
    conditional = calc.model.prices if isinstance(calc.model.prices, list) else []
    clocks = [c.constraint for c in conditional if isinstance(c.constraint, TimeOfDateConstraint)]
    if not clocks:
        return [calc.model_price]
    # Prices change only where a window starts or ends: one look at each such moment sees every price.
    moments = [datetime.combine(now.date(), t) for c in clocks for t in (c.start_time, c.end_time)]
    return [calc.model_price, *(calc.model.get_prices(m if m.tzinfo else m.replace(tzinfo=UTC)) for m in moments)]


class PriceBook:
    """The prices in force: overrides first, then genai-prices' bundled data.

    Args:
        overrides: The overrides file (None: none); read and checked once, here.
        clock: Seconds since the epoch; picks genai-prices' dated prices.

    Raises:
        PriceFileError: The overrides file is missing or malformed.
    """

    def __init__(self, overrides: Path | None = DEFAULT_PRICES_FILE, *, clock: Callable[[], float] = time.time) -> None:
        self.path = overrides
        self.overrides = load_overrides(overrides) if overrides is not None else {}
        self.version = importlib.metadata.version("genai-prices")
        self.clock = clock
        self._cache: dict[str, ModelPrice] = {}
        self._cache_bytes = 0

    def price(self, model: str) -> ModelPrice:
        """The price of `model`: the override if any, else genai-prices'; raises UnknownModelError."""
        if model in self.overrides:
            return self.overrides[model]
        found = self._cache.get(model)
        if found is not None:
            CACHE_OPS.labels("price_lookup", "hit").inc()
            return found
        CACHE_OPS.labels("price_lookup", "miss").inc()
        found = self._from_genai_prices(model)
        if len(self._cache) < MAX_CACHED_MODELS:
            self._cache[model] = found
            self._cache_bytes += len(repr(found)) + len(model)
            CACHE_SIZE.labels("prices").set(self._cache_bytes)
        return found

    def _from_genai_prices(self, model: str) -> ModelPrice:
        now = datetime.fromtimestamp(self.clock(), UTC)
        try:
            calc = genai_prices.calc_price(
                genai_prices.Usage(input_tokens=1), model_ref=model, genai_request_timestamp=now
            )
        except (LookupError, ValueError) as ex:  # no match, or data it cannot price per token
            raise UnknownModelError(model) from ex
        candidates = _prices_today(calc, now)
        rows = _schedule(candidates)
        if rows is None:
            raise UnknownModelError(model)
        top = PriceTier(-1, *(max(column) for column in zip(*(row[1:] for row in rows), strict=True)))
        notes = [note for note, on in (("tiered", len(rows) > 1), ("peak", len(set(map(repr, candidates))) > 1)) if on]
        source = f"genai-prices {self.version}:{calc.provider.id}" + (f" ({', '.join(notes)})" if notes else "")
        return ModelPrice(model, *top[1:], source, tuple(rows) if len(rows) > 1 else ())

    def known(self, model: str) -> bool:
        """True when `model` has a price."""
        try:
            return bool(self.price(model))
        except UnknownModelError:
            return False

    def cost_micros(self, model: str, input_tokens: int, output_tokens: int, cached_input_tokens: int = 0) -> int:
        """The cost of one call in micro-dollars, rounded up; `input_tokens` includes the cached ones.

        Raises:
            UnknownModelError: `model` has no price.
            ValueError: A token count is negative.
        """
        return ceil_micros(self.price(model).cost_usd(input_tokens, output_tokens, cached_input_tokens))

    def listing(self, extra: Iterable[str] = LISTED) -> list[dict[str, Any]]:
        """Every override, then the well-known models genai-prices resolves, for GET /costs/models."""
        names = list(self.overrides) + [m for m in dict.fromkeys(extra) if m not in self.overrides and self.known(m)]
        return [self.price(m).as_listing() for m in names]
