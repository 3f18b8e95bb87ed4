"""Budgets: scopes, limits per period, and the worst case a model call may cost. Pure.

The scripts that hold, extend, charge and settle money are in events/store/budget_scripts.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal

from events.catalog import AgentSpec
from events.errors import DomainError
from events.money.amounts import ceil_micros
from events.money.periods import PERIODS
from events.money.prices import ModelPrice

SCOPE_KINDS = ("user", "session", "agent")
DEFAULT_ALERT_PCT = 80
MESSAGE_OVERHEAD_BYTES = 64  # framing of one message in a request, beyond its text
BYTES_PER_OUTPUT_TOKEN = 4


class BudgetError(DomainError):
    """Raised when a budget request is malformed (unknown scope kind or period, negative limit)."""

    code = "invalid_field"


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


def worst_case_micros(price: ModelPrice, spec: AgentSpec, *, query_bytes: int, max_tokens: int) -> int:
    """The hold for a job of the agent `spec`: its model calls, the conversation growing by each answer and the
    tool results the agent lets through."""
    growth = max_tokens * BYTES_PER_OUTPUT_TOKEN + spec.tool_results_per_call * (
        spec.max_tool_result_chars + MESSAGE_OVERHEAD_BYTES
    )
    first = query_bytes + spec.prompt_overhead_bytes
    return sum(
        call_cost_bound(price, prompt_bytes=first + k * growth, max_tokens=max_tokens)
        for k in range(spec.max_llm_calls)
    )
