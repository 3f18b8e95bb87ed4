"""One attempt's money: prices each model call, charges it to the job's hold, refuses calls that could overrun it."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Callable, Mapping

from events import keys
from events.budgets import BudgetScripts, call_cost_bound
from events.envelope import Event, text
from events.metrics import LLM_CALLS, count_usage
from events.money import micros_to_usd
from events.prices import PriceBook, UnknownModelError
from workers.agents.base import AgentError, BudgetExhausted
from workers.llm.base import ChatRequest, Usage


def query_hash(job: Mapping[str, str]) -> str:
    """Identifies identical queries (same agent, model and text) for the cache recommendation."""
    raw = "\x1f".join((job.get("agent", ""), job.get("model", ""), job.get("query", "")))
    return hashlib.sha256(raw.encode()).hexdigest()[:20]


class Spending:
    """The job's hold as this attempt sees it: `amount` reserved so far, `spent` by every attempt so far.

    Before each model call the hold is extended to cover what was spent plus the call's worst case, against every
    budget that applies now (one that was set after the job was submitted included); a call that does not fit
    never starts.
    """

    def __init__(self, client: Any, scripts: BudgetScripts, prices: PriceBook, job: Mapping[str, str],
                 attempt: int, provider: str, clock: Callable[[], float]) -> None:
        self.client = client
        self.scripts = scripts
        self.prices = prices
        self.job = job
        self.attempt = attempt
        self.provider = provider
        self.clock = clock
        self.owner = job.get("owner", "")
        self.hold_key = keys.budget_hold(self.owner, job["id"])
        amount, spent, periods, scopes = client.hmget(self.hold_key, "amount", "spent", "periods", "scopes")
        # No hold (it was settled, or swept while the job waited) means nothing may be spent.
        self.amount = int(amount) if amount is not None else 0
        self.spent = int(spent or 0)
        self.periods: list[str] = json.loads(periods) if periods else []
        self.scopes: list[str] = json.loads(scopes) if scopes else []
        self.charges = 0
        self.query_hash = query_hash(job)

    def _price(self, model: str) -> Any:
        try:
            return self.prices.price(model)
        except UnknownModelError as ex:
            raise AgentError(str(ex)) from ex

    def before_call(self, request: ChatRequest) -> None:
        """Extend the hold to cover the call's worst case, or raise BudgetExhausted when a budget has no room."""
        prompt = len(json.dumps(request.messages).encode()) + len(json.dumps(request.tools).encode())
        bound = call_cost_bound(self._price(request.model), prompt_bytes=prompt, max_tokens=request.max_tokens)
        needed = self.spent + bound
        if needed == 0:
            return  # a free model: nothing to hold
        if not self.periods:
            raise BudgetExhausted(f"The next model call could cost up to ${micros_to_usd(bound)}, but this job has "
                                  "no budget hold left; it stopped there.")
        reply = self.scripts.extend(keys=[keys.budget_config(self.owner), self.hold_key, *self.periods],
                                    args=[needed, *self.scopes])
        outcome = text(reply[0])
        if outcome == "held":
            self.amount = int(text(reply[1]))
            return
        if outcome == "rejected":
            scope, remaining, limit, period = (text(v) for v in reply[1:5])
            raise BudgetExhausted(
                f"The next model call could cost up to ${micros_to_usd(bound)}, but the {period} budget for scope "
                f"'{scope}' has ${micros_to_usd(max(int(remaining), 0))} left of ${micros_to_usd(int(limit))}; "
                "the job stopped there.")
        raise BudgetExhausted(f"The next model call could cost up to ${micros_to_usd(bound)}, but this job has no "
                              "budget hold left; it stopped there.")

    def charge(self, usage: Usage, call: int) -> dict[str, Any]:
        """Price one call and record it on the hold, the job and the usage stream at once; returns its figures."""
        price = self._price(usage.model)
        cost = self.prices.cost_micros(usage.model, usage.input_tokens, usage.output_tokens,
                                       usage.cached_input_tokens)
        data = {"model": usage.model, "input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens,
                "cached_input_tokens": usage.cached_input_tokens, "estimated": usage.estimated, "call": call,
                "cost_micros": cost, "cost_usd": micros_to_usd(cost), "price_source": price.source}
        shared = {**data, "user_id": self.owner, "session_id": self.job.get("session_id", ""),
                  "agent": self.job.get("agent", ""), "provider": self.provider, "query_hash": self.query_hash}
        event = Event("usage", self.job["id"], 0, self.clock(), self.attempt, shared)
        fields = [part for pair in event.to_fields().items() for part in pair]
        self.charges += 1
        spent = self.scripts.charge(keys=[self.hold_key, keys.job(self.job["id"]), keys.USAGE_STREAM],
                                    args=[cost, f"{self.attempt}:{self.charges}", *fields])
        if int(spent) >= 0:
            self.spent = int(spent)
        else:
            self.spent += cost
        LLM_CALLS.labels(self.provider, usage.model).inc()
        count_usage(usage.model, usage.input_tokens, usage.output_tokens, cost)
        return data
