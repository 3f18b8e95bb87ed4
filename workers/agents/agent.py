"""What every agent is made of: tools, the context a job runs in, and the tool-calling loop."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol

from events.catalog import AgentSpec
from workers.llm.provider import ChatRequest, Completion, Provider, Retrying, TextDelta, ToolCall, Usage

WAIT_SLICE_S = 0.1  # how soon a cancel ends a retry's wait


class AgentStop(Exception):
    """Raised inside an agent when the job must stop before it finishes."""

    code = "stopped"


class Cancelled(AgentStop):
    """Raised when the job's owner cancelled it."""

    code = "cancelled"


class LeaseLost(AgentStop):
    """Raised when this attempt lost its lease (another attempt took over); it must write nothing more."""

    code = "lease_lost"


class BudgetExhausted(AgentStop):
    """Raised before a model call whose worst case would take the job past its budget hold."""

    code = "budget_exhausted"


class AgentError(Exception):
    """Raised when an agent cannot answer (bad tool arguments it cannot recover from, too many steps)."""

    code = "agent_error"


@dataclass(frozen=True)
class Tool:
    """A function the model may call; `run` takes the parsed arguments and returns text."""

    name: str
    description: str
    parameters: Mapping[str, Any]
    run: Callable[[Mapping[str, Any]], str]

    def spec(self) -> dict[str, Any]:
        """The tool in OpenAI's `tools` format."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": dict(self.parameters)},
        }


class Events(Protocol):
    """Where an agent reports progress (the job's publisher)."""

    def token(self, text: str, **data: Any) -> None: ...

    def emit(self, etype: str, data: Mapping[str, Any]) -> int: ...


@dataclass
class AgentContext:
    """Everything a running job gives its agent."""

    job: Mapping[str, str]
    provider: Provider
    events: Events
    check: Callable[[], None]
    on_usage: Callable[[Usage, int], None]
    before_call: Callable[[ChatRequest], None]
    model: str
    max_tokens: int
    clock: Callable[[], float] = time.monotonic
    calls: int = field(default=0)
    embed: Callable[[list[str]], list[str]] | None = None  # the provider's embeddings, paid by the job (packed)
    answered: list[str] = field(default_factory=list)  # the text of each model call so far (a partial answer)

    @property
    def query(self) -> str:
        """The user's question."""
        return self.job.get("query", "")

    def wait(self, seconds: float) -> None:
        """Sleep `seconds` in short slices, checking between them: a cancel or a lost lease ends the wait."""
        deadline = self.clock() + seconds
        while (left := deadline - self.clock()) > 0:
            self.check()
            time.sleep(min(left, WAIT_SLICE_S))
        self.check()


class Agent(Protocol):
    """A kind of job (`agent_type`)."""

    name: str
    spec: AgentSpec

    def run(self, ctx: AgentContext) -> str:
        """Answer the job's query, streaming through `ctx.events`; returns the final answer."""
        ...


def call_model(ctx: AgentContext, messages: list[dict[str, Any]], tools: list[Tool]) -> Completion:
    """One streamed model call: tokens and usage go out as events, cancel is checked between tokens."""
    request = ChatRequest(ctx.model, messages, ctx.max_tokens, [t.spec() for t in tools], wait=ctx.wait)
    ctx.before_call(request)
    call = ctx.calls
    ctx.calls += 1
    completion: Completion | None = None
    stream = ctx.provider.stream(request)
    try:
        for item in stream:
            ctx.check()
            if isinstance(item, TextDelta):
                ctx.events.token(item.text, call=call)
            elif isinstance(item, Usage):
                ctx.on_usage(item, call)
            elif isinstance(item, Retrying):
                ctx.events.emit(
                    "metadata",
                    {
                        "event": "llm_retry",
                        "call": call,
                        "retry": item.retry,
                        "delay_s": round(item.delay_s, 3),
                        "reason": item.reason,
                        "discard_partial": item.discard_partial,
                    },
                )
            elif isinstance(item, Completion):
                completion = item
    finally:
        stream.close()
    if completion is None:
        raise AgentError("The model's stream ended without a completion.")
    if completion.text:
        ctx.answered.append(completion.text)
    return completion


def run_tool(ctx: AgentContext, tools: Mapping[str, Tool], call: ToolCall, max_result_chars: int) -> str:
    """Run one tool call with tool_start/tool_end events; a failing tool reports its error to the model. The result
    is cut to `max_result_chars` (budget holds count on that bound)."""
    ctx.check()
    ctx.events.emit("tool_start", {"tool": call.name, "call_id": call.id, "arguments": call.arguments})
    started = ctx.clock()
    ok = True
    tool = tools.get(call.name)
    try:
        if tool is None:
            raise ValueError(f"There is no tool named {call.name!r}.")
        args = json.loads(call.arguments or "{}")
        if not isinstance(args, dict):
            raise ValueError("Tool arguments must be a JSON object.")
        result = tool.run(args)
    except Exception as ex:  # the model sees the error and may try again
        ok = False
        result = f"error: {ex}"
    if len(result) > max_result_chars:
        result = result[:max_result_chars] + "…"
    ctx.events.emit(
        "tool_end",
        {
            "tool": call.name,
            "call_id": call.id,
            "ok": ok,
            "result": result,
            "duration_ms": round((ctx.clock() - started) * 1000, 3),
        },
    )
    return result


def tool_loop(
    ctx: AgentContext,
    system: str,
    tools: list[Tool],
    spec: AgentSpec,
    *,
    history: list[dict[str, Any]] | None = None,
    user: str | list[dict[str, Any]] | None = None,
) -> str:
    """Ask the model, run the tools it calls, and repeat until it answers or the agent's model calls are used up.

    `history` (earlier turns) goes between the system prompt and the user's message; `user` replaces the job's
    query as that message's content (content parts, e.g. text and an image)."""
    max_calls = spec.max_llm_calls
    by_name = {t.name: t for t in tools}
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": system},
        *(history or []),
        {"role": "user", "content": ctx.query if user is None else user},
    ]
    for step in range(max_calls):
        offered = tools if step < max_calls - 1 else []  # the last call must answer
        completion = call_model(ctx, messages, offered)
        if not completion.tool_calls:
            return completion.text
        messages.append(
            {
                "role": "assistant",
                "content": completion.text or None,
                "tool_calls": [
                    {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                    for c in completion.tool_calls
                ],
            }
        )
        for n, call in enumerate(completion.tool_calls):
            if n < spec.tool_results_per_call:
                result = run_tool(ctx, by_name, call, spec.max_tool_result_chars)
            else:  # the budget hold counts on this many results per call; every call id still gets an answer
                result = f"error: not run: at most {spec.tool_results_per_call} tool calls per step; call it again"
            messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
    raise AgentError(f"The agent used all {max_calls} model calls without answering.")
