"""The offline provider: a deterministic stand-in model that runs on this machine, with no network.

It plays a real model's part in the agent loop: offered tools and no tool results yet, it calls every
tool with the user's text; given tool results, it streams an answer built from them, word by word.
Every answer says it comes from the offline model. Token counts are real counts of what it read and wrote.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any, Callable, Generator

from workers.llm.provider import ChatRequest, Completion, StreamItem, TextDelta, ToolCall, Usage

MODEL = "offline"
_TOKEN = re.compile(r"\s*\S+")


def count_tokens(text: str) -> int:
    """Tokens as this model counts them: about four characters each, at least one per word."""
    return max(len(_TOKEN.findall(text)), (len(text) + 3) // 4)


def prompt_tokens(request: ChatRequest) -> int:
    """The prompt's tokens: each message's content and three of framing, and the tool specs, which a real service
    bills with every call too (as their JSON, about four characters a token)."""
    tools = count_tokens(json.dumps(request.tools)) if request.tools else 0
    return sum(count_tokens(str(m.get("content") or "")) + 3 for m in request.messages) + tools


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return str(message.get("content") or "")
    return ""


def _first_string_param(tool: dict[str, Any]) -> str | None:
    params = tool.get("function", {}).get("parameters", {})
    for name in params.get("required", []) or list(params.get("properties", {})):
        if params.get("properties", {}).get(name, {}).get("type") == "string":
            return str(name)
    return None


def plan_tool_calls(request: ChatRequest) -> tuple[ToolCall, ...]:
    """Call each offered tool that takes a string, with the user's text, unless tools already answered."""
    if not request.tools or any(m.get("role") == "tool" for m in request.messages):
        return ()
    text = _last_user_text(request.messages)
    calls = []
    for i, tool in enumerate(request.tools):
        param = _first_string_param(tool)
        if param is not None:
            name = tool["function"]["name"]
            calls.append(ToolCall(f"call_offline_{i}", name, json.dumps({param: text})))
    return tuple(calls)


def compose_answer(request: ChatRequest) -> str:
    """The answer text: built from the tool results in the conversation, else from the question itself."""
    names = {}
    for message in request.messages:
        for call in message.get("tool_calls") or []:
            names[call["id"]] = call["function"]["name"]
    results = [
        (names.get(m.get("tool_call_id"), "tool"), str(m.get("content")))
        for m in request.messages
        if m.get("role") == "tool"
    ]
    if results:
        found = "; ".join(f"{name}: {content}" for name, content in results)
        return f"[offline model] From my tools: {found}."
    question = _last_user_text(request.messages)
    return f'[offline model] You asked {count_tokens(question)} tokens\' worth: "{question[:200]}".'


class OfflineProvider:
    """Streams deterministic answers, `delay_ms` apart per token; priced from the overrides (default $0)."""

    name = "offline"
    base_url = "offline"

    def __init__(self, *, delay_ms: int = 0, sleep: Callable[[float], None] = time.sleep) -> None:
        self.delay_s = delay_ms / 1000
        self.sleep = sleep

    def stream(self, request: ChatRequest) -> Generator[StreamItem, None, None]:
        """Stream one completion; never fails."""
        prompt = prompt_tokens(request)
        calls = plan_tool_calls(request)
        if calls:
            usage = Usage(request.model, prompt, sum(count_tokens(c.arguments) for c in calls))
            yield usage
            yield Completion("", calls, "tool_calls", usage)
            return
        answer = _TOKEN.findall(compose_answer(request))
        words = answer[: request.max_tokens]
        for word in words:
            if self.delay_s:
                self.sleep(self.delay_s)
            yield TextDelta(word)
        finish = "length" if len(answer) > len(words) else "stop"
        usage = Usage(request.model, prompt, len(words))
        yield usage
        yield Completion("".join(words), (), finish, usage)
