"""One attempt's money: prices each model call, charges it to the job's hold, refuses calls that could overrun it."""

from __future__ import annotations

import hashlib
from typing import Any, Callable, Mapping, Sequence

from events.documents.dense import token_bound
from events.envelope import text
from events.money.amounts import micros_to_usd
from events.money.budgets import call_cost_bound, prompt_bytes
from events.money.prices import PriceBook, UnknownModelError
from events.money.usage import public, usage_data
from events.store import budget_scripts, keyspace
from events.store.budget_scripts import Held
from events.store.scripts import Scripts
from events.telemetry.metrics import LLM_CALLS, count_usage
from workers.agents.agent import AgentError, BudgetExhausted
from workers.llm.provider import ChatRequest, Usage


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

    def __init__(
        self,
        client: Any,
        prices: PriceBook,
        job: Mapping[str, str],
        attempt: int,
        provider: str,
        clock: Callable[[], float],
    ) -> None:
        self.scripts = Scripts(client)
        self.prices = prices
        self.job = job
        self.attempt = attempt
        self.provider = provider
        self.clock = clock
        self.owner = job.get("owner", "")
        amount, spent, period_ids = client.hmget(
            keyspace.budget_hold(self.owner, job["id"]), "amount", "spent", "period_ids"
        )
        # No hold (it was settled, or swept while the job waited) means nothing may be spent.
        self.amount = int(amount) if amount is not None else 0
        self.spent = int(spent or 0)
        self.period_ids = text(period_ids) if period_ids else ""
        self.charges = 0
        self.query_hash = query_hash(job)

    def _price(self, model: str) -> Any:
        try:
            return self.prices.price(model)
        except UnknownModelError as ex:
            raise AgentError(str(ex)) from ex

    def before_call(self, request: ChatRequest) -> None:
        """Extend the hold to cover the call's worst case, or raise BudgetExhausted when a budget has no room."""
        prompt = prompt_bytes(request.messages, request.tools)
        self._extend(call_cost_bound(self._price(request.model), prompt_bytes=prompt, max_tokens=request.max_tokens))

    def before_embed(self, model: str, texts: Sequence[str]) -> None:
        """The same for an embedding call: every input byte a full-price token, no output."""
        self._extend(call_cost_bound(self._price(model), prompt_bytes=token_bound(texts), max_tokens=0))

    def _extend(self, bound: int) -> None:
        needed = self.spent + bound
        if needed == 0:
            return  # a free model: nothing to hold
        reply = None
        if self.period_ids:
            reply = self.scripts.run(
                budget_scripts.extend(
                    user_id=self.owner, job_id=self.job["id"], needed_micros=needed, period_ids=self.period_ids
                )
            )
        if reply is not None and reply.outcome is Held.HELD:
            self.amount = reply.amount_micros
            return
        spent = f"It spent ${micros_to_usd(self.spent)}; its answer so far is its result."
        if reply is not None and reply.rejection is not None:
            no = reply.rejection
            held = (
                f" (another ${micros_to_usd(no.held_micros)} is held by running jobs and comes back as they end)"
                if no.held_micros > 0 and no.remaining_micros + no.held_micros >= bound
                else ""
            )
            raise BudgetExhausted(
                f"The next model call could cost up to ${micros_to_usd(bound)}, but the {no.period} budget for scope "
                f"'{no.scope}' has ${micros_to_usd(max(no.remaining_micros, 0))} left of "
                f"${micros_to_usd(no.limit_micros)}{held}; the job stopped there. {spent}"
            )
        raise BudgetExhausted(
            f"The next model call could cost up to ${micros_to_usd(bound)}, but this job has no "
            f"budget hold left; it stopped there. {spent}"
        )

    def charge(self, usage: Usage, call: int) -> dict[str, Any]:
        """Price one call and record it on the hold, the job and the usage stream at once; returns its public
        figures (the job's own `usage` event)."""
        price = self._price(usage.model)
        cost = self.prices.cost_micros(usage.model, usage.input_tokens, usage.output_tokens, usage.cached_input_tokens)
        data = usage_data(
            model=usage.model,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cached_input_tokens=usage.cached_input_tokens,
            cost_micros=cost,
            price_source=price.source,
            user_id=self.owner,
            session_id=self.job.get("session_id", ""),
            agent=self.job.get("agent", ""),
            provider=self.provider,
            estimated=usage.estimated,
            call=call,
            query_hash=self.query_hash,
        )
        self.charges += 1
        spent = self.scripts.run(
            budget_scripts.charge(
                user_id=self.owner,
                job_id=self.job["id"],
                attempt=self.attempt,
                charge_id=f"{self.attempt}:{self.charges}",
                cost_micros=cost,
                now=self.clock(),
                usage=data,
            )
        )
        self.spent = spent if spent >= 0 else self.spent + cost
        LLM_CALLS.labels(self.provider, usage.model).inc()
        count_usage(usage.model, usage.input_tokens, usage.output_tokens, cost)
        return public(data)
