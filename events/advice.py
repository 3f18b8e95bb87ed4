"""Cost recommendations from real usage: cheaper models of the same family, and repeats a cache would save."""

from __future__ import annotations

from typing import Any

from events.prices import PriceBook, UnknownModelError

CHEAPER = {
    "gpt-4o": "gpt-4o-mini", "gpt-4-turbo": "gpt-4o", "gpt-4": "gpt-4o", "gpt-4.1": "gpt-4.1-mini",
    "gpt-4.1-mini": "gpt-4.1-nano", "claude-3-opus": "claude-3-5-sonnet", "claude-3-5-sonnet": "claude-3-5-haiku",
    "gemini-1.5-pro": "gemini-1.5-flash",
}
TOP_REPEATS = 5


def model_swaps(by_model: dict[str, dict[str, int]], prices: PriceBook) -> list[dict[str, Any]]:
    """For each model with a cheaper sibling: what the same tokens would have cost there."""
    found = []
    for model, used in by_model.items():
        cheaper = CHEAPER.get(model)
        if cheaper is None:
            continue
        try:
            current = used.get("cost_micros") or prices.cost_micros(model, used["input_tokens"],
                                                                     used["output_tokens"],
                                                                     used.get("cached_input_tokens", 0))
            alternative = prices.cost_micros(cheaper, used["input_tokens"], used["output_tokens"],
                                             used.get("cached_input_tokens", 0))
        except UnknownModelError:
            continue
        savings = current - alternative
        if savings <= 0:
            continue
        found.append({
            "kind": "model_swap", "model": model, "suggested_model": cheaper,
            "title": f"Run {model} jobs that do not need it on {cheaper}: the same tokens would cost "
                     f"{round(100 * savings / current)}% less.",
            "savings_micros": savings, "current_cost_micros": current, "suggested_cost_micros": alternative,
            "savings_pct": round(100 * savings / current, 1), "input_tokens": used["input_tokens"],
            "output_tokens": used["output_tokens"], "calls": used.get("calls", 0),
        })
    return found


def cache_repeats(repeated: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One recommendation for identical queries run more than once: all but the first run could be cached."""
    rows = [r for r in repeated if r["jobs"] > 1 and r["cost_micros"] > 0]
    if not rows:
        return []
    saved = [(r, r["cost_micros"] * (r["jobs"] - 1) // r["jobs"]) for r in rows]
    total = sum(s for _, s in saved)
    if total <= 0:
        return []
    top = sorted(saved, key=lambda pair: -pair[1])[:TOP_REPEATS]
    return [{
        "kind": "cache_repeats",
        "title": f"{len(rows)} identical queries ran {sum(r['jobs'] for r in rows)} times; caching their answers "
                 "would have saved every run after the first.",
        "savings_micros": total, "repeated_queries": len(rows),
        "top": [{"query_hash": r["query_hash"], "jobs": r["jobs"], "cost_micros": r["cost_micros"],
                 "savings_micros": s} for r, s in top],
    }]


def recommendations(by_model: dict[str, dict[str, int]], repeated: list[dict[str, Any]],
                    prices: PriceBook) -> list[dict[str, Any]]:
    """Every recommendation with savings, largest first."""
    items = model_swaps(by_model, prices) + cache_repeats(repeated)
    return sorted(items, key=lambda item: -item["savings_micros"])
