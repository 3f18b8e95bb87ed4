"""Model prices: genai-prices' bundled data, with a local overrides file for self-hosted or unknown models.

An unknown model is refused (UnknownModelError), never priced at $0 silently. Costs are exact Decimal
arithmetic rounded up to the micro-dollar. Tiered prices (cheaper below some prompt size) are charged by
genai-prices' own calculation; bounds and holds use the highest tier, so they never fall short.
"""

from __future__ import annotations

import functools
import importlib.metadata
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import genai_prices
import yaml

from events.money import ceil_micros

DEFAULT_PRICES_FILE = Path(__file__).resolve().parent.parent / "ops" / "prices.yaml"
LISTED = ("gpt-4o", "gpt-4o-mini", "gpt-4-turbo", "gpt-3.5-turbo", "o1", "o3-mini", "gpt-4.1", "gpt-4.1-mini",
          "gpt-4.1-nano", "text-embedding-3-small", "text-embedding-3-large", "claude-3-5-sonnet",
          "claude-3-5-haiku", "claude-3-opus", "gemini-1.5-pro", "gemini-1.5-flash")
MTOK = Decimal(1_000_000)


class UnknownModelError(LookupError):
    """Raised when a model has no price in the overrides file nor in genai-prices."""

    def __init__(self, model: str, where: Path | None) -> None:
        super().__init__(
            f"Model '{model}' has no price. Add it under `models:` in {where or 'ops/prices.yaml'} (or the file "
            f"PRICES_FILE names), e.g. `{model}: {{input: 1.0, output: 2.0}}` in USD per million tokens.")
        self.model = model


class PriceFileError(ValueError):
    """Raised when the overrides file cannot be read or an entry in it is malformed."""


@dataclass(frozen=True)
class ModelPrice:
    """USD per million tokens; `source` says where the price came from."""

    model: str
    input_per_mtok: Decimal
    output_per_mtok: Decimal
    cached_input_per_mtok: Decimal
    source: str
    tiered: bool = False

    def as_listing(self) -> dict[str, Any]:
        """As GET /costs/models shows it."""
        return {"model": self.model, "input_usd_per_mtok": str(self.input_per_mtok),
                "output_usd_per_mtok": str(self.output_per_mtok),
                "cached_input_usd_per_mtok": str(self.cached_input_per_mtok), "source": self.source,
                "tiered": self.tiered}


def _number(value: Any, where: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, float, str, Decimal)):
        raise PriceFileError(f"{where} must be a number of USD per million tokens.")
    try:
        number = Decimal(str(value))
    except InvalidOperation as ex:
        raise PriceFileError(f"{where} must be a number of USD per million tokens.") from ex
    if not number.is_finite() or number < 0:
        raise PriceFileError(f"{where} must be a non-negative number.")
    return number


def load_overrides(path: Path) -> dict[str, ModelPrice]:
    """Read and check the overrides file; PriceFileError names the file and the bad entry."""
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as ex:
        raise PriceFileError(f"Cannot read the prices file {path}: {ex}") from ex
    models = doc.get("models") if isinstance(doc, dict) else None
    if not isinstance(models, dict):
        raise PriceFileError(f"{path} must have a `models:` mapping of model name to prices.")
    found = {}
    for model, entry in models.items():
        where = f"{path}: models.{model}"
        if not isinstance(entry, dict) or "input" not in entry or "output" not in entry:
            raise PriceFileError(f"{where} needs `input` and `output` prices (USD per million tokens).")
        unknown = set(entry) - {"input", "output", "cached_input"}
        if unknown:
            raise PriceFileError(f"{where} has unknown keys: {', '.join(sorted(unknown))}.")
        tin = _number(entry["input"], f"{where}.input")
        found[str(model)] = ModelPrice(str(model), tin, _number(entry["output"], f"{where}.output"),
                                       _number(entry.get("cached_input", tin), f"{where}.cached_input"),
                                       f"overrides:{path.name}")
    return found


def _highest(value: Any) -> Decimal | None:
    """A flat price, or the highest tier of a tiered one."""
    if value is None or isinstance(value, Decimal):
        return value
    tiers = [getattr(t, "price", None) for t in getattr(value, "tiers", [])]
    return max([getattr(value, "base", Decimal(0)), *[t for t in tiers if t is not None]])


class PriceBook:
    """Prices in force: overrides first, then genai-prices' bundled data (never fetched at run time)."""

    def __init__(self, overrides: Path | None = DEFAULT_PRICES_FILE) -> None:
        self.path = overrides
        self.overrides = load_overrides(overrides) if overrides is not None else {}
        self.version = importlib.metadata.version("genai-prices")

    @functools.lru_cache(maxsize=1024)  # noqa: B019 - one book per process, models are few
    def price(self, model: str) -> ModelPrice:
        """The price of `model`; raises UnknownModelError."""
        if model in self.overrides:
            return self.overrides[model]
        try:
            calc = genai_prices.calc_price(genai_prices.Usage(input_tokens=1), model_ref=model)
        except LookupError:
            raise UnknownModelError(model, self.path) from None
        mp = calc.model_price
        tin, tout = _highest(mp.input_mtok), _highest(mp.output_mtok)
        if tin is None or tout is None:
            raise UnknownModelError(model, self.path)
        cached = _highest(mp.cache_read_mtok)
        tiered = not isinstance(mp.input_mtok, Decimal) or not isinstance(mp.output_mtok, Decimal)
        return ModelPrice(model, tin, tout, cached if cached is not None else tin,
                          f"genai-prices {self.version}:{calc.provider.id}", tiered)

    def known(self, model: str) -> bool:
        """True when `model` has a price."""
        try:
            self.price(model)
        except UnknownModelError:
            return False
        return True

    def cost_micros(self, model: str, input_tokens: int, output_tokens: int, cached_input_tokens: int = 0) -> int:
        """The cost of one call in micro-dollars, rounded up; `input_tokens` includes the cached ones."""
        price = self.price(model)
        cached = min(cached_input_tokens, input_tokens)
        if price.tiered:
            usage = genai_prices.Usage(input_tokens=input_tokens, output_tokens=output_tokens,
                                       cache_read_tokens=cached or None)
            return ceil_micros(genai_prices.calc_price(usage, model_ref=model).total_price)
        usd = (Decimal(input_tokens - cached) * price.input_per_mtok + Decimal(cached) * price.cached_input_per_mtok
               + Decimal(output_tokens) * price.output_per_mtok) / MTOK
        return ceil_micros(usd)

    def listing(self) -> list[dict[str, Any]]:
        """Every override and the well-known models genai-prices resolves, for GET /costs/models."""
        names = list(self.overrides) + [m for m in LISTED if m not in self.overrides and self.known(m)]
        return [self.price(m).as_listing() for m in names]
