"""The seed's Python API for costs, backed by the same Redis state as the HTTP API.

tracker = get_cost_tracker()
cost = await tracker.track_usage(model="gpt-4o", input_tokens=1000, output_tokens=500, user_id="user_123")
budget = await tracker.check_budget("user_123", 0.05)      # {"allowed": ..., "remaining_usd": ...}
stats = await tracker.get_stats(user_id="user_123", period="week")
print(f"Total cost: ${stats.total_cost}")
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable

from api.cost_service import CostService
from events.money.amounts import micros_to_usd, usd_to_micros
from events.money.prices import PriceBook
from events.store.clients import async_client
from settings import Settings


@dataclass(frozen=True)
class CostStats:
    """Spend over a period; `total_cost` in USD."""

    total_cost: float
    total_cost_usd: str
    input_tokens: int
    output_tokens: int
    calls: int
    period: str
    groups: list[dict[str, Any]] = field(default_factory=list)


class CostTracker:
    """Tracks usage, checks budgets and reads stats."""

    def __init__(self, service: CostService) -> None:
        self.service = service

    async def track_usage(
        self,
        model: str,
        input_tokens: int,
        output_tokens: int,
        user_id: str,
        *,
        cached_input_tokens: int = 0,
        session_id: str = "",
        agent: str = "",
    ) -> float:
        """Record one call's usage; returns its cost in USD (e.g. 0.0075)."""
        tracked = await self.service.track(
            user_id,
            model,
            input_tokens,
            output_tokens,
            cached_input_tokens=cached_input_tokens,
            session_id=session_id,
            agent=agent,
        )
        return float(Decimal(tracked["cost_usd"]))

    async def check_budget(self, user_id: str, amount_usd: float | str | Decimal) -> dict[str, Any]:
        """Whether spending `amount_usd` more fits the user's budgets right now (nothing is reserved)."""
        return await self.service.check(user_id, usd_to_micros(Decimal(str(amount_usd))))

    async def get_stats(
        self, user_id: str | None = None, period: str = "week", group_by: str | None = None
    ) -> CostStats:
        """Spend over 'day', 'week', 'month' or 'all' (user_id None: everyone)."""
        found = await self.service.stats(user_id, period, group_by)
        return CostStats(
            total_cost=float(Decimal(found["cost_usd"])),
            total_cost_usd=found["cost_usd"],
            input_tokens=found["input_tokens"],
            output_tokens=found["output_tokens"],
            calls=found["calls"],
            period=period,
            groups=found["groups"] or [],
        )

    async def close(self) -> None:
        """Close the Redis connections."""
        await self.service.client.aclose()


_tracker: CostTracker | None = None


def get_cost_tracker(settings: Settings | None = None, *, clock: Callable[[], float] = time.time) -> CostTracker:
    """The process's tracker (made on first use); pass settings or a clock to make a separate one."""
    global _tracker
    if settings is not None or clock is not time.time:
        return _make(settings or Settings.from_env(), clock)
    if _tracker is None:
        _tracker = _make(Settings.from_env(), clock)
    return _tracker


def _make(settings: Settings, clock: Callable[[], float]) -> CostTracker:
    client = async_client(settings.redis, socket_timeout=5, max_connections=8, pool_timeout=5)
    service = CostService(
        client,
        PriceBook(Path(settings.prices_file)),
        hold_ttl_s=settings.hold_ttl_s,
        alert_pct=settings.budget_alert_pct,
        clock=clock,
    )
    return CostTracker(service)


__all__ = ["CostStats", "CostTracker", "get_cost_tracker", "micros_to_usd"]
