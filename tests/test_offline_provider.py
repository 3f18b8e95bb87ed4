"""The offline provider (workers/llm/offline.py): which tools it calls, the answer it composes from their results,
and how it streams that answer (per-token sleep, max_tokens, determinism). Pure: no Redis, no network."""

from __future__ import annotations

import json

from workers.agents.tools import CALCULATOR, TEXT_STATS
from workers.llm.offline import OfflineProvider, compose_answer, plan_tool_calls
from workers.llm.provider import ChatRequest, Completion, TextDelta, Usage

QUESTION = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "what is 2+2"}]
NUMBER_TOOL = {
    "type": "function",
    "function": {"name": "dice", "parameters": {"type": "object", "properties": {"sides": {"type": "integer"}}}},
}


def test_offline_model_calls_each_offered_tool_that_takes_a_string() -> None:
    request = ChatRequest("offline", QUESTION, 100, [CALCULATOR.spec(), NUMBER_TOOL, TEXT_STATS.spec()])
    calls = plan_tool_calls(request)
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("calculator", {"expression": "what is 2+2"}),
        ("text_stats", {"text": "what is 2+2"}),
    ]
    assert len({c.id for c in calls}) == 2
    assert plan_tool_calls(ChatRequest("offline", QUESTION, 100)) == ()


def with_tool_results() -> list[dict]:
    return [
        *QUESTION,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "calculator", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "2+2 = 4"},
    ]


def test_offline_model_answers_from_tool_results_once_it_has_them() -> None:
    request = ChatRequest("offline", with_tool_results(), 100, [CALCULATOR.spec()])
    assert plan_tool_calls(request) == ()
    assert compose_answer(request) == "[offline model] From my tools: calculator: 2+2 = 4."
    assert "what is 2+2" in compose_answer(ChatRequest("offline", QUESTION, 100))


def test_offline_stream_yields_text_then_usage_then_completion_sleeping_per_token() -> None:
    slept: list[float] = []
    items = list(OfflineProvider(delay_ms=7, sleep=slept.append).stream(ChatRequest("offline", QUESTION, 100)))
    deltas = [i for i in items if isinstance(i, TextDelta)]
    assert items[: len(deltas)] == deltas and len(deltas) > 3
    usage, completion = items[len(deltas) :]
    assert isinstance(usage, Usage) and isinstance(completion, Completion)
    assert completion.text == "".join(d.text for d in deltas) == compose_answer(ChatRequest("offline", QUESTION, 1))
    assert (completion.finish_reason, usage.output_tokens, completion.usage) == ("stop", len(deltas), usage)
    assert slept == [0.007] * len(deltas)


def test_offline_stream_for_a_tool_call_has_no_text_and_no_sleep() -> None:
    slept: list[float] = []
    request = ChatRequest("offline", QUESTION, 100, [CALCULATOR.spec()])
    usage, completion = OfflineProvider(delay_ms=7, sleep=slept.append).stream(request)
    assert isinstance(usage, Usage) and completion.finish_reason == "tool_calls"
    assert completion.tool_calls == plan_tool_calls(request) and slept == []


def test_offline_stream_stops_at_max_tokens_with_finish_length_and_is_deterministic() -> None:
    request = ChatRequest("offline", QUESTION, 3)
    first, second = list(OfflineProvider().stream(request)), list(OfflineProvider().stream(request))
    assert first == second
    assert sum(isinstance(i, TextDelta) for i in first) == 3
    assert first[-1].finish_reason == "length" and first[-1].usage.output_tokens == 3


def test_offline_answer_that_fits_exactly_in_max_tokens_finishes_with_stop() -> None:
    words = sum(isinstance(i, TextDelta) for i in OfflineProvider().stream(ChatRequest("offline", QUESTION, 100)))
    assert list(OfflineProvider().stream(ChatRequest("offline", QUESTION, words)))[-1].finish_reason == "stop"
