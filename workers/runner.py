"""Runs one attempt of a job: claims it, streams the agent's events, and records the outcome once."""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from celery.exceptions import SoftTimeLimitExceeded
from opentelemetry.trace import Span, SpanKind, StatusCode

from events import jobs, keys, tracing
from events.budgets import BudgetScripts, settle_call
from events.envelope import text
from events.metrics import AGENT_DURATION, AGENT_QUERIES
from events.money import micros_to_usd
from events.prices import PriceBook
from events.publisher import JobPublisher
from workers.agents.base import Agent, AgentContext, AgentError, AgentStop, Cancelled, LeaseLost
from workers.heartbeat import Heartbeat
from workers.llm.base import LLMError, Provider, Usage
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


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended: the job status, its terminal event, and what the record keeps."""

    status: str
    event: str
    data: Mapping[str, Any]
    result: str = ""
    error: Mapping[str, str] | None = None


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
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.provider = provider
        self.agents = agents
        self.lease_ms = int(lease_s * 1000)
        self.heartbeat_s = heartbeat_s
        self.job_ttl_s = job_ttl_s
        self.stream_ttl_s = stream_ttl_s
        self.flush_ms = flush_ms
        self.worker = worker
        self.clock = clock
        self.prices = prices
        self.scripts = jobs.JobScripts.register(client)
        self.budget_scripts = BudgetScripts.register(client)

    def run(self, job_id: str, attempt: int) -> str:
        """Run attempt `attempt` of the job if it is still due; returns the outcome or why it was skipped.

        The attempt runs in a CONSUMER span whose parent is the job's `traceparent` (made at submit), so its
        model calls and log lines join the trace of the request that submitted it.
        """
        traceparent, agent = (text(v) if v is not None else ""
                              for v in self.client.hmget(keys.job(job_id), "traceparent", "agent"))
        with tracing.in_span(f"run_agent {agent or 'unknown'}", kind=SpanKind.CONSUMER, parent=traceparent,
                             attributes={"agentic.job.id": job_id, "agentic.job.attempt": attempt,
                                         "agentic.agent": agent}) as span:
            ids = {"job_id": job_id, "trace_id": tracing.trace_id(traceparent) or tracing.span_trace_id(span)}
            status = self._run(job_id, attempt, ids, span)
            span.set_attribute("agentic.job.outcome", status)
        return status

    def _run(self, job_id: str, attempt: int, ids: Mapping[str, str], span: Span) -> str:
        token = f"{attempt}:{uuid.uuid4().hex}"
        start = {"attempt": attempt, "worker": self.worker, "provider": self.provider.name,
                 "trace_id": ids["trace_id"]}
        reply = self.scripts.start(
            keys=jobs.start_keys(job_id),
            args=[job_id, attempt, f"{self.clock():.6f}", token, self.lease_ms, self.worker, json.dumps(start)],
        )
        outcome = text(reply[0])
        if outcome != "ok":
            log.info("skipped job %s attempt %d: %s", job_id, attempt, outcome, extra=ids)
            return f"skipped:{outcome}"
        job = jobs.decode(dict(zip(reply[2][::2], reply[2][1::2], strict=True)))
        publisher = JobPublisher(self.client, keys.job_stream(job_id), job_id, attempt, int(reply[1]),
                                 flush_ms=self.flush_ms, clock=self.clock)
        heartbeat = Heartbeat(self.scripts.heartbeat, keys.job_lease(job_id), keys.job(job_id), token,
                              self.lease_ms, self.heartbeat_s)
        totals = Totals()
        started = time.perf_counter()
        with heartbeat:
            result = self._outcome(job, attempt, publisher, heartbeat, totals, ids)
        if result is None:  # lease lost: the next attempt owns the job's stream now
            publisher.close()
            status = "lease_lost"
        else:
            if result.status == "failed" and result.error:
                span.set_status(StatusCode.ERROR, result.error["code"])
                span.set_attribute("error.type", result.error["code"])
            status = self._finish(job_id, job.get("owner", ""), attempt, token, publisher, result, totals, ids)
        agent = job.get("agent", "") if job.get("agent", "") in self.agents else "unknown"
        AGENT_QUERIES.labels(agent, status).inc()
        AGENT_DURATION.labels(agent).observe(time.perf_counter() - started)
        return status

    def _outcome(self, job: Mapping[str, str], attempt: int, publisher: JobPublisher,
                 heartbeat: Heartbeat, totals: Totals, ids: Mapping[str, str]) -> Outcome | None:
        agent = self.agents.get(job.get("agent", ""))
        if agent is None:
            return error_outcome("unknown_agent", f"This worker has no agent named {job.get('agent')!r}.")

        spending = Spending(self.client, self.budget_scripts, self.prices, job, attempt, self.provider.name,
                            self.clock)

        def on_usage(usage: Usage, call: int) -> None:
            data = spending.charge(usage, call)
            totals.add(usage, data["cost_micros"])
            publisher.emit("usage", data)

        ctx = AgentContext(job=job, provider=self.provider, events=publisher, check=heartbeat.check,
                           on_usage=on_usage, before_call=spending.before_call, model=job.get("model", ""),
                           max_tokens=int(job.get("max_tokens", 1024)))
        try:
            answer = agent.run(ctx)
        except LeaseLost:
            log.warning("job %s attempt %d lost its lease", job["id"], attempt, extra=ids)
            return None
        except Cancelled:
            data = {"reason": "cancelled by request", "usage": totals.as_dict()}
            return Outcome("cancelled", "cancelled", data,
                           error={"code": "cancelled", "message": "The job was cancelled while running."})
        except LLMError as ex:
            return error_outcome(ex.code, str(ex))
        except (AgentError, AgentStop) as ex:
            return error_outcome(ex.code, str(ex))
        except SoftTimeLimitExceeded:
            return error_outcome("timeout", "The job ran past its time limit.")
        except Exception:
            log.exception("job %s failed", job["id"], extra={**ids, "attempt": attempt})
            return error_outcome("internal_error", "The agent failed unexpectedly; the error is in the worker's log.")
        return Outcome("succeeded", "done", {"result": answer, "usage": totals.as_dict()}, result=answer)

    def _finish(self, job_id: str, owner: str, attempt: int, token: str, publisher: JobPublisher,
                outcome: Outcome, totals: Totals, ids: Mapping[str, str]) -> str:
        seq = publisher.reserve_seq()
        publisher.close()
        data = dict(outcome.data)
        if outcome.status == "failed":
            data["usage"] = totals.as_dict()
        done = self.scripts.finish(
            keys=jobs.start_keys(job_id),
            args=[job_id, attempt, f"{self.clock():.6f}", token, outcome.status, outcome.result,
                  json.dumps(outcome.error) if outcome.error else "", json.dumps(totals.as_dict()),
                  outcome.event, json.dumps(data), seq, self.job_ttl_s, self.stream_ttl_s],
        )
        log.info("job %s attempt %d %s", job_id, attempt, outcome.status,
                 extra={**ids, "attempt": attempt, "status": outcome.status, "finish": text(done)})
        if text(done) != "ok":
            return "lease_lost"
        self.settle(owner, job_id, trace_id=ids["trace_id"])
        return outcome.status

    def settle(self, owner: str, job_id: str, *, trace_id: str = "") -> None:
        """Swap the job's hold for its actual spend (once; the sweeper does it if we die first)."""
        keys_, args = settle_call(owner, job_id, self.clock())
        reply = self.budget_scripts.settle(keys=keys_, args=args)
        for scope, spent, limit in (reply[3] if len(reply) > 3 else []):
            log.warning("budget alert for %s scope %s: spent %s of %s micros", owner, text(scope), text(spent),
                        text(limit), extra={"job_id": job_id, "user_id": owner, "trace_id": trace_id})
