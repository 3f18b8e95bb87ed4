"""Budgets and holds: scopes, the worst case a job may cost, and the budget scripts.

A job's hold is reserved at submit against every scope with a budget (user, session, agent), all or
nothing (hold.lua). Before each model call the worker extends the hold to cover that call's worst case against
every budget that applies then, a budget set after the submit included (extend.lua); a call that does not fit
never starts. The worker charges each call to the hold (charge.lua, once per charge id). At the end, settle.lua
swaps the hold for the actual spend exactly once; the sweeper settles holds whose job died.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from events import keys
from events.jobs import lua
from events.money import ceil_micros
from events.periods import PERIOD_TTL_S, PERIODS, period_ids
from events.prices import ModelPrice

SCOPE_KINDS = ("user", "session", "agent")
DEFAULT_ALERT_PCT = 80
# Worst-case growth of the conversation per model call, beyond the call's own output: tool results
# (each capped at this many characters by the worker) and message framing.
MAX_TOOL_RESULT_CHARS = 2000
TOOL_RESULTS_PER_CALL = 2
MESSAGE_OVERHEAD_BYTES = 64
BYTES_PER_OUTPUT_TOKEN = 4


class BudgetError(ValueError):
    """Raised when a budget request is malformed (unknown scope kind or period, negative limit)."""


@dataclass(frozen=True)
class Budget:
    """One budget: a limit on a scope's spend per period."""

    scope: str
    limit_micros: int
    period: str
    alert_pct: int = DEFAULT_ALERT_PCT

    def to_json(self) -> str:
        """As stored in the user's budget hash."""
        return json.dumps({"limit_micros": self.limit_micros, "period": self.period, "alert_pct": self.alert_pct})

    @classmethod
    def from_json(cls, scope: str, raw: str | bytes) -> Budget:
        """Decode a stored budget."""
        data = json.loads(raw)
        return cls(scope, int(data["limit_micros"]), data["period"], int(data.get("alert_pct", DEFAULT_ALERT_PCT)))


def scope_name(kind: str, name: str = "") -> str:
    """'user', 'session:<id>' or 'agent:<name>'; raises BudgetError for anything else."""
    if kind not in SCOPE_KINDS:
        raise BudgetError(f"Unknown budget scope {kind!r}; use one of: {', '.join(SCOPE_KINDS)}.")
    if kind == "user":
        return "user"
    if not name:
        raise BudgetError(f"A {kind} budget needs the {kind}'s name ('{kind}_id' or 'agent').")
    return f"{kind}:{name}"


def check_budget(scope: str, limit_micros: int, period: str, alert_pct: int) -> Budget:
    """A valid Budget, or BudgetError saying what is wrong."""
    if period not in PERIODS:
        raise BudgetError(f"Unknown period {period!r}; use one of: {', '.join(PERIODS)}.")
    if limit_micros < 0:
        raise BudgetError("A budget's limit cannot be negative.")
    if not 1 <= alert_pct <= 100:
        raise BudgetError("alert_pct must be between 1 and 100.")
    return Budget(scope, limit_micros, period, alert_pct)


def job_scopes(session_id: str, agent: str) -> list[str]:
    """The scopes a job's spend counts against."""
    scopes = ["user"]
    if session_id:
        scopes.append(f"session:{session_id}")
    if agent:
        scopes.append(f"agent:{agent}")
    return scopes


def call_cost_bound(price: ModelPrice, *, prompt_bytes: int, max_tokens: int) -> int:
    """The most one model call can cost: every prompt byte a full-price token, plus `max_tokens` of output."""
    usd = (Decimal(prompt_bytes) * price.input_per_mtok + Decimal(max_tokens) * price.output_per_mtok) / 1_000_000
    return ceil_micros(usd)


def worst_case_micros(price: ModelPrice, *, input_bytes: int, max_tokens: int, calls: int) -> int:
    """The hold for a job: `calls` model calls, the conversation growing by each answer and its tool results."""
    growth = max_tokens * BYTES_PER_OUTPUT_TOKEN + TOOL_RESULTS_PER_CALL * (MAX_TOOL_RESULT_CHARS +
                                                                           MESSAGE_OVERHEAD_BYTES)
    return sum(call_cost_bound(price, prompt_bytes=input_bytes + k * growth, max_tokens=max_tokens)
               for k in range(calls))


def hold_member(user_id: str, job_id: str) -> str:
    """A hold's member in the global index."""
    return f"{user_id}\t{job_id}"


def period_keys(user_id: str, now: float) -> list[str]:
    """The user's period keys at `now`: daily, weekly, monthly, total."""
    ids = period_ids(now)
    return [keys.budget_period(user_id, ids[p]) for p in PERIODS]


def period_ttls() -> list[int]:
    """TTLs of the four period keys, in their order."""
    return [PERIOD_TTL_S[p] for p in PERIODS]


@dataclass
class BudgetScripts:
    """The budget scripts registered on one client (sync or asyncio)."""

    hold: Any
    extend: Any
    charge: Any
    settle: Any
    spend: Any

    @classmethod
    def register(cls, client: Any) -> BudgetScripts:
        """Register every budget script on `client`."""
        return cls(
            hold=client.register_script(lua("hold", "_budget")),
            extend=client.register_script(lua("extend", "_budget")),
            charge=client.register_script(lua("charge")),
            settle=client.register_script(lua("settle", "_budget")),
            spend=client.register_script(lua("spend", "_budget")),
        )


def settle_call(user_id: str, job_id: str, now: float) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of settle.lua for one job."""
    return ([keys.budget_hold(user_id, job_id), keys.HOLDS_INDEX, keys.budget_config(user_id), keys.ALERTS_STREAM],
            [hold_member(user_id, job_id), f"{now:.6f}"])
