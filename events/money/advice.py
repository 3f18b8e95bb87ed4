"""Cost recommendations from real usage: cheaper models of the same family, and repeats a cache would save. Pure."""

from __future__ import annotations

from typing import Any

from events.money.amounts import micros_to_usd
from events.money.prices import PriceBook

# A model and its cheaper sibling in the same family: a small, explicit table rather than a guess from names.
CHEAPER = {
    "gpt-4o": "gpt-4o-mini",
    "gpt-4-turbo": "gpt-4o",
    "gpt-4": "gpt-4o",
    "gpt-4.1": "gpt-4.1-mini",
    "gpt-4.1-mini": "gpt-4.1-nano",
    "claude-3-opus": "claude-3-5-sonnet",
    "claude-3-5-sonnet": "claude-3-5-haiku",
    "gemini-1.5-pro": "gemini-1.5-flash",
}
TOP_REPEATS = 5


def model_swaps(by_model: dict[str, dict[str, int]], prices: PriceBook) -> list[dict[str, Any]]:
    """For each model with a cheaper sibling: what the same tokens would have cost there.

    The current cost is what was recorded (`cost_micros`), or the tokens repriced when it is absent. Models
    where either side has no price are skipped; so are swaps that would not save anything.
    """
    found = []
    for model, used in sorted(by_model.items()):
        cheaper = CHEAPER.get(model)
        if cheaper is None or not prices.known(model) or not prices.known(cheaper):
            continue
        tokens = {key: int(used.get(key, 0)) for key in ("input_tokens", "output_tokens", "cached_input_tokens")}
        current = int(used["cost_micros"]) if "cost_micros" in used else prices.cost_micros(model, **tokens)
        alternative = prices.cost_micros(cheaper, **tokens)
        savings = current - alternative
        if savings <= 0:
            continue
        pct = round(100 * savings / current, 1)
        found.append(
            {
                "kind": "model_swap",
                "title": f"Run the {model} work that does not need it on {cheaper}: the same tokens would have cost "
                f"${micros_to_usd(alternative)} instead of ${micros_to_usd(current)} ({pct}% less).",
                "savings_micros": savings,
                "model": model,
                "suggested_model": cheaper,
                "current_cost_micros": current,
                "suggested_cost_micros": alternative,
                "savings_pct": pct,
                **tokens,
                "calls": int(used.get("calls", 0)),
            }
        )
    return found


def cache_repeats(repeated: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One recommendation for identical queries run more than once: all but the first run could be cached.

    Each query's saving is `cost_micros * (jobs - 1) // jobs`, where `cost_micros` is what all its runs cost.
    """
    saved = [
        (r, int(r["cost_micros"]) * (int(r["jobs"]) - 1) // int(r["jobs"]))
        for r in repeated
        if int(r["jobs"]) > 1 and int(r["cost_micros"]) > 0
    ]
    total = sum(s for _, s in saved)
    if total <= 0:
        return []
    top = sorted(saved, key=lambda pair: (-pair[1], str(pair[0]["query_hash"])))[:TOP_REPEATS]
    runs = sum(int(r["jobs"]) for r, _ in saved)
    return [
        {
            "kind": "cache_repeats",
            "title": f"{len(saved)} identical queries ran {runs} times; answering every run after the first from a "
            f"cache would have saved ${micros_to_usd(total)}.",
            "savings_micros": total,
            "repeated_queries": len(saved),
            "runs": runs,
            "top": [
                {
                    "query_hash": r["query_hash"],
                    "jobs": int(r["jobs"]),
                    "cost_micros": int(r["cost_micros"]),
                    "savings_micros": s,
                }
                for r, s in top
            ],
        }
    ]


def recommendations(
    by_model: dict[str, dict[str, int]], repeated: list[dict[str, Any]], prices: PriceBook
) -> list[dict[str, Any]]:
    """Every recommendation that saves something, largest saving first.

    Args:
        by_model: Per model, the period's `input_tokens` (cached included), `output_tokens`,
            `cached_input_tokens`, `cost_micros` and `calls`.
        repeated: Identical queries run more than once: `query_hash`, `jobs` and the `cost_micros` of all runs.
        prices: The price book that prices the alternatives.

    Returns:
        Items with `kind` ("model_swap" or "cache_repeats"), a `title` sentence, `savings_micros` and details.
    """
    items = [item for item in model_swaps(by_model, prices) + cache_repeats(repeated) if item["savings_micros"] > 0]
    return sorted(items, key=lambda item: -item["savings_micros"])
