"""The cost service behind /api/v1/costs: stats, usage, budgets, forecast, recommendations, tracking."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime, timedelta
from typing import Any, Callable

import redis

from events.catalog import AGENT_TYPES
from events.envelope import text
from events.money.advice import recommendations
from events.money.amounts import micros_to_usd
from events.money.budgets import Budget, check_budget, job_scopes
from events.money.forecast import forecast
from events.money.ledger_codec import TOTAL_FIELDS, add_up, repeated_queries
from events.money.periods import PERIODS, hour_buckets, period_bounds, period_id
from events.money.prices import PriceBook
from events.money.usage import usage_data
from events.process.ledger import GROUP as LEDGER_GROUP
from events.store import budget_scripts, keyspace
from events.store.scripts import AsyncScripts
from events.telemetry.metrics import count_usage

WINDOWS = {"day": 86400, "week": 7 * 86400, "month": 30 * 86400}


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def money(figures: dict[str, int]) -> dict[str, Any]:
    """Figures with their cost shown in USD beside the micros."""
    return {**figures, "cost_usd": micros_to_usd(figures.get("cost_micros", 0))}


def sum_buckets(rows: list[dict[Any, Any]], group: str | None) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """Add ledger hashes up: the totals, and per member of `group` (model, agent, session or user) when asked."""
    return add_up(({text(k): int(v) for k, v in row.items()} for row in rows), group)


class CostService:
    """Reads the ledger and the budgets; `client` is a redis.asyncio client."""

    def __init__(
        self,
        client: Any,
        prices: PriceBook,
        *,
        hold_ttl_s: int = 600,
        alert_pct: int = 80,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.prices = prices
        self.alert_pct = alert_pct
        self.clock = clock
        self.scripts = AsyncScripts(client)

    async def _buckets(self, owner: str, start: float, end: float, *, whole: bool = True) -> list[dict[Any, Any]]:
        """The owner's hour buckets from `start` to `end`: whole, or (`whole` False) only their totals, which is
        all that stats without a group need and far less to read in the `all` buckets."""
        pipe = self.client.pipeline(transaction=False)
        for bucket in hour_buckets(start, end):
            if whole:
                pipe.hgetall(keyspace.ledger_hour(owner, bucket))
            else:
                pipe.hmget(keyspace.ledger_hour(owner, bucket), TOTAL_FIELDS)
        rows = await pipe.execute()
        if not whole:
            rows = [
                {name: value for name, value in zip(TOTAL_FIELDS, row, strict=True) if value is not None}
                for row in rows
            ]
        return [row for row in rows if row]

    async def stats(self, owner: str | None, period: str, group_by: str | None) -> dict[str, Any]:
        """Spend and tokens over the last day, week or month (or all time), optionally grouped."""
        now = self.clock()
        who = owner or "all"
        if period == "all":
            totals, _ = sum_buckets([await self.client.hgetall(keyspace.ledger_total(who))], None)
            if group_by:  # groups come from the buckets of the last 400 days, the ledger's retention
                _, groups = sum_buckets(await self._buckets(who, now - 400 * 86400, now), group_by)
            else:
                groups = {}
            since = None
        else:
            rows = await self._buckets(who, now - WINDOWS[period], now, whole=group_by is not None)
            totals, groups = sum_buckets(rows, group_by)
            since = _iso(now - WINDOWS[period])
        listed = sorted(({"key": k, **money(v)} for k, v in groups.items()), key=lambda g: -g["cost_micros"])
        return {
            "user_id": owner,
            "period": period,
            "since": since,
            "until": _iso(now),
            "group_by": group_by,
            **money(totals),
            "groups": listed if group_by else None,
        }

    async def daily(self, owner: str, days: int) -> list[tuple[date, int]]:
        """Spend per UTC day for the last `days` days, today included."""
        now = self.clock()
        today = datetime.fromtimestamp(now, UTC).date()
        first = today - timedelta(days=days - 1)
        start = datetime(first.year, first.month, first.day, tzinfo=UTC).timestamp()
        buckets = hour_buckets(start, now)
        pipe = self.client.pipeline(transaction=False)
        for bucket in buckets:
            pipe.hget(keyspace.ledger_hour(owner, bucket), "cost")
        per_day: dict[date, int] = {first + timedelta(days=i): 0 for i in range(days)}
        for bucket, cost in zip(buckets, await pipe.execute(), strict=True):
            day = date(int(bucket[:4]), int(bucket[4:6]), int(bucket[6:8]))
            per_day[day] = per_day.get(day, 0) + int(cost or 0)
        return sorted(per_day.items())

    async def usage(self, user_id: str) -> dict[str, Any]:
        """A user's spend: all-time totals, the last 30 days by model and agent, and day by day."""
        totals, _ = sum_buckets([await self.client.hgetall(keyspace.ledger_total(user_id))], None)
        month = await self.stats(user_id, "month", "model")
        agents = await self.stats(user_id, "month", "agent")
        return {
            "user_id": user_id,
            "all_time": money(totals),
            "last_30_days": {
                **{k: v for k, v in month.items() if k not in ("groups", "group_by", "user_id", "period")},
                "by_model": month["groups"],
                "by_agent": agents["groups"],
            },
            "daily": [{"date": d.isoformat(), **money({"cost_micros": c})} for d, c in await self.daily(user_id, 30)],
            "budgets": await self.budgets(user_id),
        }

    async def set_budget(
        self, user_id: str, scope: str, limit_micros: int | None, period: str, alert_pct: int | None
    ) -> dict[str, Any] | None:
        """Create, change or (limit None) remove one budget; returns its state."""
        if limit_micros is None:
            await self.client.hdel(keyspace.budget_config(user_id), scope)
            return None
        budget = check_budget(scope, limit_micros, period, alert_pct or self.alert_pct)
        await self.client.hset(keyspace.budget_config(user_id), scope, budget.to_json())
        return next(b for b in await self.budgets(user_id) if b["scope"] == scope)

    async def budgets(self, user_id: str) -> list[dict[str, Any]]:
        """Every budget of a user, with what is spent, held and left in its current period."""
        now = self.clock()
        config = await self.client.hgetall(keyspace.budget_config(user_id))
        found = [Budget.from_json(text(scope), raw) for scope, raw in config.items()]
        pipe = self.client.pipeline(transaction=False)
        for budget in found:
            pipe.hmget(
                keyspace.budget_period(user_id, period_id(budget.period, now)),
                f"spent:{budget.scope}",
                f"held:{budget.scope}",
            )
        out = []
        for budget, (spent, held) in zip(found, await pipe.execute(), strict=True):
            spent_m, held_m = int(spent or 0), int(held or 0)
            start, end = period_bounds(budget.period, now)
            out.append(
                {
                    "scope": budget.scope,
                    "period": budget.period,
                    "alert_pct": budget.alert_pct,
                    "limit_usd": micros_to_usd(budget.limit_micros),
                    "spent_usd": micros_to_usd(spent_m),
                    "held_usd": micros_to_usd(held_m),
                    "remaining_usd": micros_to_usd(max(budget.limit_micros - spent_m - held_m, 0)),
                    "used_pct": round(100 * spent_m / budget.limit_micros, 2) if budget.limit_micros else None,
                    "period_start": start.isoformat() if budget.period != "total" else None,
                    "period_end": end.isoformat() if budget.period != "total" else None,
                    "limit_micros": budget.limit_micros,
                    "spent_micros": spent_m,
                    "held_micros": held_m,
                }
            )
        return sorted(out, key=lambda b: b["scope"])

    async def check(self, user_id: str, amount_micros: int, scopes: list[str] | None = None) -> dict[str, Any]:
        """Whether `amount_micros` more would fit every budget of `scopes` now (no hold is made)."""
        scopes = scopes or ["user"]
        budgets = [b for b in await self.budgets(user_id) if b["scope"] in scopes]
        left = [b["limit_micros"] - b["spent_micros"] - b["held_micros"] for b in budgets]
        remaining = min(left) if left else None
        return {
            "allowed": remaining is None or amount_micros <= remaining,
            "amount_usd": micros_to_usd(amount_micros),
            "remaining_usd": micros_to_usd(max(remaining, 0)) if remaining is not None else None,
            "budgets": budgets,
        }

    async def forecast(self, user_id: str) -> dict[str, Any]:
        """End-of-period spend and when the user's budget runs out, from the last 14 days' trend."""
        now = self.clock()
        today = datetime.fromtimestamp(now, UTC).date()
        user_budget = next((b for b in await self.budgets(user_id) if b["scope"] == "user"), None)
        period = user_budget["period"] if user_budget else "monthly"
        start, end = period_bounds(period, now)
        history = await self.daily(user_id, 14)
        if user_budget:
            spent, limit = user_budget["spent_micros"], user_budget["limit_micros"]
        else:
            spent, limit = sum(c for d, c in history if d >= start), None
        result = forecast(
            history,
            today=today,
            period_end=end - timedelta(days=1) if period != "total" else today + timedelta(days=30),
            limit_micros=limit,
            spent_micros=spent,
        )
        shown = {
            k: (micros_to_usd(v) if k.endswith("_micros") and isinstance(v, int) else v) for k, v in result.items()
        }
        return {
            "user_id": user_id,
            "period": period,
            "budget": user_budget,
            **{(k[: -len("_micros")] + "_usd" if k.endswith("_micros") else k): v for k, v in shown.items()},
        }

    async def recommendations(self, user_id: str) -> dict[str, Any]:
        """Ways to spend less, computed from the user's last 30 days."""
        now = self.clock()
        _, by_model = sum_buckets(await self._buckets(user_id, now - WINDOWS["month"], now), "model")
        raw = {text(k): int(v) for k, v in (await self.client.hgetall(keyspace.ledger_queries(user_id))).items()}
        repeated = repeated_queries(raw)
        items = recommendations(by_model, repeated, self.prices)
        for item in items:
            item["savings_usd"] = micros_to_usd(item["savings_micros"])
        return {
            "user_id": user_id,
            "window_days": 30,
            "recommendations": items,
            "total_savings_usd": micros_to_usd(sum(i["savings_micros"] for i in items)),
        }

    async def track(
        self,
        user_id: str,
        model: str,
        input_tokens: int,
        output_tokens: int,
        *,
        cached_input_tokens: int = 0,
        session_id: str = "",
        agent: str = "",
    ) -> dict[str, Any]:
        """Record usage that happened outside a job: priced, counted against budgets, put in the ledger."""
        now = self.clock()
        price = self.prices.price(model)
        cost = self.prices.cost_micros(model, input_tokens, output_tokens, cached_input_tokens)
        data = usage_data(
            model=model,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cached_input_tokens=cached_input_tokens,
            cost_micros=cost,
            price_source=price.source,
            user_id=user_id,
            session_id=session_id,
            agent=agent,
            provider="manual",
        )
        await self.scripts.run(
            budget_scripts.spend(
                user_id=user_id, cost_micros=cost, now=now, usage=data, scopes=job_scopes(session_id, agent)
            )
        )
        count_usage(model, input_tokens, output_tokens, cost)
        return {k: v for k, v in data.items() if k not in ("provider", "call", "estimated", "query_hash")}

    async def health(self) -> dict[str, Any]:
        """The price book, the ledger consumer's lag and the holds outstanding."""
        lag = None
        pending = None
        try:
            groups = {text(g["name"]): g for g in await self.client.xinfo_groups(keyspace.USAGE_STREAM)}
            if LEDGER_GROUP in groups:
                lag = groups[LEDGER_GROUP].get("lag")
                pending = groups[LEDGER_GROUP].get("pending")
        except redis.ResponseError:  # the stream does not exist before the first usage event
            lag = 0
        return {
            "status": "ok",
            "prices": {"genai_prices": self.prices.version, "models_listed": len(self.prices.listing())},
            "ledger": {"group": LEDGER_GROUP, "lag": lag, "pending": pending},
            "holds_outstanding": await self.client.zcard(keyspace.HOLDS_INDEX),
            "agents": {name: info.max_llm_calls for name, info in AGENT_TYPES.items()},
            "periods": PERIODS,
        }
