"""The interface every LLM provider implements, and the items its stream yields.

A provider's `stream()` yields, in order: any number of `TextDelta` and `Retrying` items, one `Usage`
for every HTTP call it made (failed calls included, with estimated counts where the service sent none),
and last one `Completion`. Closing the generator early (cancel, budget) aborts the call.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Callable, Generator, Protocol, Union


class LLMError(Exception):
    """Raised when an LLM call fails for good; `code` goes into the job's error."""

    code = "llm_error"


class LLMUnavailableError(LLMError):
    """Raised when the service kept failing (5xx, timeouts, dropped connections) after every retry."""

    code = "llm_unavailable"


class LLMRateLimitedError(LLMError):
    """Raised when the service kept answering 429 after every retry."""

    code = "llm_rate_limited"


class LLMRequestError(LLMError):
    """Raised when the service rejected the request itself (4xx other than 429); retrying cannot help."""

    code = "llm_bad_request"


@dataclass(frozen=True)
class ToolCall:
    """A function call the model asked for; `arguments` is the JSON text the model wrote."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class TextDelta:
    """A piece of the answer, as the service streamed it."""

    text: str


@dataclass(frozen=True)
class Retrying:
    """The call failed and is tried again after `delay_s`; tokens already streamed are void if `discard_partial`."""

    retry: int
    delay_s: float
    reason: str
    discard_partial: bool


@dataclass(frozen=True)
class Usage:
    """Tokens of one HTTP call to the model."""

    model: str
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int = 0
    estimated: bool = False


@dataclass(frozen=True)
class Completion:
    """The end of a successful call: the whole text, any tool calls, and why the model stopped."""

    text: str
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: str = "stop"
    usage: Usage | None = None


StreamItem = Union[TextDelta, Retrying, Usage, Completion]


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion request; `max_tokens` is always set because budget holds depend on it.

    `wait`, if given, is how the provider waits before a retry: the caller's own wait can stop early by raising
    (a cancelled job must not sit out a long Retry-After).
    """

    model: str
    messages: list[dict[str, Any]]
    max_tokens: int
    tools: list[dict[str, Any]] = field(default_factory=list)
    wait: Callable[[float], None] | None = field(default=None, compare=False, repr=False)


class Provider(Protocol):
    """Something that streams chat completions."""

    name: str
    base_url: str

    def stream(self, request: ChatRequest) -> Generator[StreamItem, None, None]:
        """Stream one completion, retrying transient failures; raises LLMError when it gives up."""
        ...


def backoff_delay(retry: int, *, base: float = 0.5, cap: float = 8.0, rand: float | None = None) -> float:
    """Seconds to wait before retry `retry` (1-based): "equal jitter", half to all of an exponential bound."""
    bound = min(cap, base * (2 ** (retry - 1)))
    r = random.random() if rand is None else rand
    return bound * (0.5 + r / 2)
