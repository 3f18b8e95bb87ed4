"""Runs one attempt of a job: claims it, streams the agent's events, and records the outcome once."""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

from celery.exceptions import SoftTimeLimitExceeded
from opentelemetry.trace import Span, SpanKind, StatusCode
from redis.exceptions import RedisError

from events import semantic_cache
from events.documents.dense import pack
from events.envelope import text
from events.money.amounts import micros_to_usd
from events.money.prices import PriceBook
from events.publisher import JobPublisher
from events.store import cache_scripts, job_scripts, keyspace
from events.store.budget_scripts import settle_hold
from events.store.cache_scripts import Bounds, Shared, shared_failure
from events.store.job_scripts import Outcome, StartOutcome
from events.store.scripts import Scripts
from events.telemetry import tracing
from events.telemetry.metrics import AGENT_DURATION, AGENT_QUERIES, CACHE_OPS, CACHE_SIZE
from workers.agents.agent import (
    Agent,
    AgentContext,
    AgentError,
    AgentStop,
    BudgetExhausted,
    Cancelled,
    LeaseLost,
)
from workers.heartbeat import Heartbeat
from workers.llm.embeddings import ProviderEmbedder
from workers.llm.provider import LLMError, Provider, Usage
from workers.spending import Spending

log = logging.getLogger("workers.runner")


@dataclass
class Totals:
    """Tokens of every model call of one attempt."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    calls: int = 0
    cost_micros: int = 0
    estimated: bool = False
    models: list[str] = field(default_factory=list)

    def add(self, usage: Usage, cost_micros: int = 0) -> None:
        """Count one call's usage and cost."""
        self.cost_micros += cost_micros
        self.input_tokens += usage.input_tokens
        self.output_tokens += usage.output_tokens
        self.cached_input_tokens += usage.cached_input_tokens
        self.calls += 1
        self.estimated = self.estimated or usage.estimated
        if usage.model not in self.models:
            self.models.append(usage.model)

    def as_dict(self) -> dict[str, Any]:
        """The totals as the job record and the `done` event show them."""
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cached_input_tokens": self.cached_input_tokens,
            "total_tokens": self.input_tokens + self.output_tokens,
            "llm_calls": self.calls,
            "estimated": self.estimated,
            "cost_usd": micros_to_usd(self.cost_micros),
        }


def _zero_usage() -> dict[str, Any]:
    """The usage of a job answered without a model call."""
    return {**Totals().as_dict(), "cached": True}


def error_outcome(code: str, message: str) -> Outcome:
    """A failed attempt."""
    error = {"code": code, "message": message}
    return Outcome("failed", "error", error, error=error)


class JobRunner:
    """Runs attempts in one worker process; `client` is a sync redis client."""

    def __init__(
        self,
        client: Any,
        provider: Provider,
        agents: Mapping[str, Agent],
        prices: PriceBook,
        *,
        lease_s: float,
        heartbeat_s: float,
        job_ttl_s: int,
        stream_ttl_s: int,
        flush_ms: int,
        worker: str,
        cache: Bounds | None = None,
        embedder: ProviderEmbedder | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.provider = provider
        self.embedder = embedder
        self.agents = agents
        self.lease_ms = int(lease_s * 1000)
        self.heartbeat_s = heartbeat_s
        self.job_ttl_s = job_ttl_s
        self.stream_ttl_s = stream_ttl_s
        self.flush_ms = flush_ms
        self.worker = worker
        self.clock = clock
        self.prices = prices
        self.cache = cache or Bounds(ttl_s=0, max_entries=1, max_bytes=0)  # no bounds given: store nothing
        self.scripts = Scripts(client)

    def run(self, job_id: str, attempt: int) -> str:
        """Run attempt `attempt` of the job if it is still due; returns the outcome or why it was skipped.

        The attempt runs in a CONSUMER span whose parent is the job's `traceparent` (made at submit), so its
        model calls and log lines join the trace of the request that submitted it.
        """
        traceparent, tracestate, agent = (
            text(v) if v is not None else ""
            for v in self.client.hmget(keyspace.job(job_id), "traceparent", "tracestate", "agent")
        )
        with tracing.in_span(
            f"run_agent {agent or 'unknown'}",
            kind=SpanKind.CONSUMER,
            parent=traceparent,
            parent_state=tracestate or None,
            attributes={"agentic.job.id": job_id, "agentic.job.attempt": attempt, "agentic.agent": agent},
        ) as span:
            ids = {"job_id": job_id, "trace_id": tracing.trace_id(traceparent) or tracing.span_trace_id(span)}
            status = self._run(job_id, attempt, ids, span)
            span.set_attribute("agentic.job.outcome", status)
        return status

    def _run(self, job_id: str, attempt: int, ids: Mapping[str, str], span: Span) -> str:
        token = f"{attempt}:{uuid.uuid4().hex}"
        start = {"attempt": attempt, "worker": self.worker, "provider": self.provider.name, "trace_id": ids["trace_id"]}
        started = self.scripts.run(
            job_scripts.start(
                job_id=job_id,
                attempt=attempt,
                now=self.clock(),
                lease_token=token,
                lease_ms=self.lease_ms,
                worker=self.worker,
                data=start,
            )
        )
        if started.outcome is not StartOutcome.OK or started.job is None:
            log.info("skipped job %s attempt %d: %s", job_id, attempt, started.outcome.value, extra=ids)
            return f"skipped:{started.outcome.value}"
        job = started.job
        publisher = JobPublisher(
            self.client,
            keyspace.job_stream(job_id),
            job_id,
            attempt,
            started.next_seq,
            flush_ms=self.flush_ms,
            clock=self.clock,
        )
        heartbeat = Heartbeat(self.scripts, job_id, token, self.lease_ms, self.heartbeat_s)
        totals = Totals()
        began = time.perf_counter()
        with heartbeat:
            result = self._outcome(job, attempt, publisher, heartbeat, totals, ids)
        if result is None:  # lease lost: the next attempt owns the job's stream now
            publisher.close()
            status = "lease_lost"
        else:
            if result.status == "failed" and result.error:
                span.set_status(StatusCode.ERROR, result.error["code"])
                span.set_attribute("error.type", result.error["code"])
            status = self._finish(job, attempt, token, publisher, result, totals, ids)
        agent = job.get("agent", "") if job.get("agent", "") in self.agents else "unknown"
        AGENT_QUERIES.labels(agent, status).inc()
        AGENT_DURATION.labels(agent).observe(time.perf_counter() - began)
        return status

    def _outcome(
        self,
        job: Mapping[str, str],
        attempt: int,
        publisher: JobPublisher,
        heartbeat: Heartbeat,
        totals: Totals,
        ids: Mapping[str, str],
    ) -> Outcome | None:
        agent = self.agents.get(job.get("agent", ""))
        if agent is None:
            return error_outcome("unknown_agent", f"This worker has no agent named {job.get('agent')!r}.")

        spending = Spending(self.client, self.prices, job, attempt, self.provider.name, self.clock)

        def on_usage(usage: Usage, call: int) -> None:
            data = spending.charge(usage, call)
            totals.add(usage, data["cost_micros"])
            publisher.emit("usage", data)

        ctx = AgentContext(
            job=job,
            provider=self.provider,
            events=publisher,
            check=heartbeat.check,
            on_usage=on_usage,
            before_call=spending.before_call,
            model=job.get("model", ""),
            max_tokens=int(job.get("max_tokens", 1024)),
        )
        if self.embedder is not None:
            embedder = ProviderEmbedder(self.embedder.model, self.embedder.provider, wait=ctx.wait)

            def embed(texts: list[str]) -> list[str]:
                """Embed under the job's hold, charged and reported like a chat call."""
                spending.before_embed(embedder.model, texts)
                made = embedder.embed(texts)
                on_usage(Usage(embedder.model, made.input_tokens, 0), ctx.calls)
                ctx.calls += 1
                return [pack(v) for v in made.vectors]

            ctx.embed = embed
        try:
            answer = agent.run(ctx)
        except LeaseLost:
            log.warning("job %s attempt %d lost its lease", job["id"], attempt, extra=ids)
            return None
        except Cancelled:
            data = {"reason": "cancelled by request", "usage": totals.as_dict()}
            return Outcome(
                "cancelled",
                "cancelled",
                data,
                error={"code": "cancelled", "message": "The job was cancelled while running."},
            )
        except LLMError as ex:
            return error_outcome(ex.code, str(ex))
        except BudgetExhausted as ex:
            return self._out_of_budget(ex, ctx, spending, publisher)
        except (AgentError, AgentStop) as ex:
            return error_outcome(ex.code, str(ex))
        except SoftTimeLimitExceeded:
            return error_outcome("timeout", "The job ran past its time limit.")
        except Exception:
            log.exception("job %s failed", job["id"], extra={**ids, "attempt": attempt})
            return error_outcome("internal_error", "The agent failed unexpectedly; the error is in the worker's log.")
        return Outcome("succeeded", "done", {"result": answer, "usage": totals.as_dict()}, result=answer)

    @staticmethod
    def _out_of_budget(ex: BudgetExhausted, ctx: AgentContext, spending: Spending, publisher: JobPublisher) -> Outcome:
        """A job stopped before a call its budget could not hold: failed `budget_exhausted`, with what it spent
        and its answer so far (the text of the calls it made) as its result, and an event saying so first."""
        partial = "\n\n".join(ctx.answered)
        spent = micros_to_usd(spending.spent)
        publisher.emit(
            "metadata",
            {"event": "budget_exhausted", "reason": str(ex), "spent_usd": spent, "has_partial_result": bool(partial)},
        )
        error = {"code": ex.code, "message": str(ex)}
        data = {**error, "spent_usd": spent, "partial_result": partial}
        return Outcome("failed", "error", data, result=partial, error=error)

    def _finish(
        self,
        job: Mapping[str, str],
        attempt: int,
        token: str,
        publisher: JobPublisher,
        outcome: Outcome,
        totals: Totals,
        ids: Mapping[str, str],
    ) -> str:
        job_id, owner = job["id"], job.get("owner", "")
        seq = publisher.reserve_seq()
        publisher.close()
        data = dict(outcome.data)
        if outcome.status == "failed":
            data["usage"] = totals.as_dict()
        ended: dict[str, Any] = {
            "job_id": job_id,
            "attempt": attempt,
            "lease_token": token,
            "outcome": replace(outcome, data=data),
            "usage": totals.as_dict(),
            "seq": seq,
            "job_ttl_s": self.job_ttl_s,
            "stream_ttl_s": self.stream_ttl_s,
        }
        if job.get("cache_digest"):
            finished = self._finish_leader(job, ended, outcome)
        else:
            finished = self.scripts.run(job_scripts.finish(now=self.clock(), **ended))
        log.info(
            "job %s attempt %d %s",
            job_id,
            attempt,
            outcome.status,
            extra={**ids, "attempt": attempt, "status": outcome.status, "finished": finished},
        )
        if not finished:
            return "lease_lost"
        self.settle(owner, job_id, trace_id=ids["trace_id"])
        return outcome.status

    def _finish_leader(self, job: Mapping[str, str], ended: Mapping[str, Any], outcome: Outcome) -> bool:
        """Finish a leader of identical requests: store its answer, end its followers with its outcome."""
        digest, job_id = job["cache_digest"], job["id"]
        provider = job.get("provider", "")
        if outcome.status == "succeeded":
            shared = Shared("succeeded", provider, result=outcome.result, usage=_zero_usage())
        else:
            shared = shared_failure(job_id, outcome.status, outcome.error, provider)
        entry = ""
        if outcome.status == "succeeded" and self.cache.ttl_s > 0:
            entry = json.dumps({"result": outcome.result, "source_job": job_id, "created_at": self.clock()})
            if len(entry.encode()) > self.cache.max_bytes:
                CACHE_OPS.labels("response_store", "too_large").inc()
                entry = ""
        reply = cache_scripts.LeaderFinished(cache_scripts.Raced.MOVED)
        for _ in range(cache_scripts.MAX_READS):
            followers = sorted(text(f) for f in self.client.smembers(keyspace.cache_followers(digest)))
            reply = self.scripts.run(
                cache_scripts.finish_leader(
                    now=self.clock(),
                    digest=digest,
                    entry=entry,
                    bounds=self.cache,
                    followers=followers,
                    shared=shared,
                    **ended,
                )
            )
            if reply.outcome is not cache_scripts.Raced.MOVED:
                break
        if reply.outcome is not cache_scripts.Ended.OK:
            return False
        if reply.stored:
            CACHE_OPS.labels("response_store", "stored").inc()
            CACHE_SIZE.labels("responses").set(reply.cache_bytes)
        if reply.stored and job.get("cache_partition"):  # the API found semantic matching applies to this request
            try:
                registered = semantic_cache.register(
                    self.client,
                    partition=job["cache_partition"],
                    digest=digest,
                    query=job.get("query", ""),
                    ttl_s=self.cache.ttl_s,
                )
                CACHE_OPS.labels("semantic_store", registered).inc()
            except RedisError:  # the answer is stored and the job ended: only similar requests will miss it
                log.warning("job %s not registered for semantic matching", job_id, extra={"job_id": job_id})
        CACHE_OPS.labels("response_evict", "evicted").inc(reply.evicted)
        CACHE_OPS.labels("response_evict", "expired").inc(reply.expired)
        CACHE_OPS.labels("inflight_share", "ended").inc(reply.followers_ended)
        return True

    def settle(self, owner: str, job_id: str, *, trace_id: str = "") -> None:
        """Swap the job's hold for its actual spend (once; the sweeper does it if we die first)."""
        reply = settle_hold(self.scripts, user_id=owner, job_id=job_id, now=self.clock())
        for alert in reply.alerts:
            log.warning(
                "budget alert for %s scope %s: spent %s of %s micros",
                owner,
                alert.scope,
                alert.spent_micros,
                alert.limit_micros,
                extra={"job_id": job_id, "user_id": owner, "trace_id": trace_id},
            )
