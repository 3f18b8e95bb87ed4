"""Budgets: scopes, limits per period, and the worst case a model call may cost. Pure.

The scripts that hold, extend, charge and settle money are in events/store/budget_scripts.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from events.catalog import AgentSpec
from events.errors import DomainError
from events.money.amounts import ceil_micros
from events.money.periods import PERIODS
from events.money.prices import ModelPrice

SCOPE_KINDS = ("user", "session", "agent")
DEFAULT_ALERT_PCT = 80


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


IMAGE_TOKENS = 50_000  # the most one image is billed in OpenAI's tables: gpt-4o-mini, high detail, 8 tiles: 48,169


def prompt_bytes(messages: Any, tools: Any) -> int:
    """A request's prompt as holds count it: its JSON bytes (a token is at least one byte), with each image part
    counted as IMAGE_TOKENS instead of its encoded bytes, which say nothing of what a service bills for an image
    (a tiny PNG of a large blank page costs the most)."""
    images = 0

    def bare(value: Any) -> Any:
        nonlocal images
        if isinstance(value, dict):
            if value.get("type") == "image_url":
                images += 1
                return {"type": "image_url"}
            return {k: bare(v) for k, v in value.items()}
        return [bare(v) for v in value] if isinstance(value, list) else value

    size = len(json.dumps(bare(messages)).encode()) + len(json.dumps(tools).encode())
    return size + images * IMAGE_TOKENS


def first_call_micros(price: ModelPrice, spec: AgentSpec, *, query: str, max_tokens: int, images: int = 0) -> int:
    """The hold a job takes at submit: its first model call's worst case. The prompt is the query as the request
    carries it (JSON-escaped) plus the agent's system prompt and tool specs (`prompt_overhead_bytes`, checked
    against real first requests by tests/test_admission.py), every byte a full-price token; the output is
    `max_tokens`; each attached image as IMAGE_TOKENS. Each further call is held by the worker when it knows that
    call's real prompt."""
    prompt = len(json.dumps(query).encode()) + spec.prompt_overhead_bytes + images * IMAGE_TOKENS
    return call_cost_bound(price, prompt_bytes=prompt, max_tokens=max_tokens)
