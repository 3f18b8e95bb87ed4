"""The provider for OpenAI and OpenAI-compatible services, through the official `openai` client.

The client's own retries are off: this module retries 429s, 5xx, timeouts and broken streams itself, so the
caller sees every attempt (a `Retrying` item, a `Usage` per HTTP call) and can discard a partial answer.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Generator, Iterator, Sequence, cast
from urllib.parse import urlsplit

import openai
from opentelemetry.trace import SpanKind, StatusCode

from events.documents.dense import Embedded
from events.telemetry import tracing
from events.telemetry.metrics import LLM_ERRORS
from workers.llm.provider import (
    ChatRequest,
    Completion,
    LLMRateLimitedError,
    LLMRequestError,
    LLMUnavailableError,
    Retrying,
    StreamItem,
    TextDelta,
    ToolCall,
    Usage,
    backoff_delay,
)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
MAX_RETRY_AFTER_S = 30.0
# Services echo keys back in error text ("Incorrect API key provided: sk-ab***yz"); scrub anything key-like.
_KEY_LIKE = re.compile(r"\b(sk|rk|pk)-[A-Za-z0-9_\-*]{6,}")


class _Transient(Exception):
    """Raised inside one attempt when the failure is worth retrying."""

    def __init__(
        self, reason: str, detail: str, *, kind: str, rate_limited: bool = False, retry_after: float | None = None
    ):
        super().__init__(detail)
        self.reason, self.detail, self.rate_limited, self.retry_after = reason, detail, rate_limited, retry_after
        self.kind = kind  # the `kind` label of llm_errors_total: a handful of fixed words


@dataclass
class _Attempt:
    """What one HTTP call has streamed so far."""

    text: list[str] = field(default_factory=list)
    calls: dict[int, dict[str, str]] = field(default_factory=dict)
    deltas: int = 0
    finish_reason: str | None = None
    usage: Usage | None = None

    def add_tool_delta(self, delta: Any) -> None:
        """Merge one streamed tool-call fragment; fragments of one call share an index."""
        call = self.calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
        call["id"] = delta.id or call["id"]
        if delta.function is not None:
            call["name"] += delta.function.name or ""
            call["arguments"] += delta.function.arguments or ""

    def tool_calls(self) -> tuple[ToolCall, ...]:
        """The assembled tool calls, in index order."""
        return tuple(ToolCall(c["id"], c["name"], c["arguments"]) for _, c in sorted(self.calls.items()))


def retry_after_s(headers: Any) -> float | None:
    """Seconds from a `Retry-After` (or `retry-after-ms`) header, capped at 30 s; None when absent or unreadable."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name) if headers is not None else None
        if value:
            try:
                return min(MAX_RETRY_AFTER_S, max(0.0, float(value) * scale))
            except ValueError:
                continue  # an HTTP date: rare from LLM services, so fall back to our own backoff
    return None


def estimate_input_tokens(messages: list[dict[str, Any]]) -> int:
    """A rough prompt size for calls the service did not report: about four characters of JSON per token."""
    return max(1, len(json.dumps(messages, default=str)) // 4)


class OpenAIProvider:
    """Streams chat completions from an OpenAI-compatible service with its own retries and usage accounting."""

    name = "openai"

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str = "",
        timeout_s: float = 60.0,
        max_retries: int = 3,
        sleep: Callable[[float], None] = time.sleep,
        rand: float | Callable[[], float] | None = None,
    ) -> None:
        self.base_url = (base_url or DEFAULT_BASE_URL).rstrip("/")
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.sleep = sleep
        self.rand = rand
        self._api_key = api_key
        # The read timeout bounds the gap between streamed bytes, so a stalled stream fails after timeout_s.
        timeout = openai.Timeout(timeout_s, connect=min(timeout_s, 10.0))
        self._client = openai.OpenAI(api_key=api_key, base_url=self.base_url, timeout=timeout, max_retries=0)

    def close(self) -> None:
        """Close the HTTP connections."""
        self._client.close()

    def stream(self, request: ChatRequest) -> Generator[StreamItem, None, None]:
        """Stream one completion, retrying transient failures; raises LLMError when it gives up."""
        retry = 0
        while True:
            attempt = _Attempt()
            try:
                yield from self._traced_call(request, attempt)
            except _Transient as ex:
                LLM_ERRORS.labels(self.name, ex.kind).inc()
                yield attempt.usage or self._estimate(request, attempt)
                if retry >= self.max_retries:
                    raise self._give_up(ex, retry) from ex
                retry += 1
                delay = ex.retry_after if ex.retry_after is not None else self._backoff(retry)
                yield Retrying(retry, delay, ex.reason, discard_partial=bool(attempt.text))
                (request.wait or self.sleep)(delay)
                continue
            except LLMRequestError:
                LLM_ERRORS.labels(self.name, "bad_request").inc()
                yield self._estimate(request, attempt)
                raise
            usage = attempt.usage or self._estimate(request, attempt)
            yield usage
            yield Completion("".join(attempt.text), attempt.tool_calls(), attempt.finish_reason or "stop", usage)
            return

    def embed(self, model: str, texts: Sequence[str], wait: Callable[[float], None] | None = None) -> Embedded:
        """One vector per text from the service's `/embeddings`, retrying transient failures as `stream` does;
        raises LLMError when it gives up or the service rejects the request."""
        retry = 0
        while True:
            try:
                reply = self._client.embeddings.create(model=model, input=list(texts), encoding_format="float")
            except openai.APIStatusError as ex:
                failure = self._classify_status(ex)
            except openai.APITimeoutError:
                failure = _Transient("timed out", f"no answer within {self.timeout_s:g} s", kind="timeout")
            except openai.APIConnectionError as ex:
                cause = self._redact(str(ex.__cause__ or ex))
                failure = _Transient("connection failed", f"connection failed: {cause}", kind="connection")
            else:
                vectors = [d.embedding for d in sorted(reply.data, key=lambda d: d.index)]
                if len(vectors) != len(texts) or any(not v for v in vectors):
                    raise LLMRequestError(
                        f"The LLM service at {self.base_url} answered {len(vectors)} embeddings for {len(texts)} texts."
                    )
                tokens = reply.usage.prompt_tokens if reply.usage is not None else sum(len(t.encode()) for t in texts)
                return Embedded([list(v) for v in vectors], int(tokens))
            if not isinstance(failure, _Transient):
                LLM_ERRORS.labels(self.name, "bad_request").inc()
                raise failure
            LLM_ERRORS.labels(self.name, failure.kind).inc()
            if retry >= self.max_retries:
                raise self._give_up(failure, retry) from failure
            retry += 1
            (wait or self.sleep)(failure.retry_after if failure.retry_after is not None else self._backoff(retry))

    def _traced_call(self, request: ChatRequest, attempt: _Attempt) -> Iterator[TextDelta]:
        """`_call` in a CLIENT span that is the service's parent (via `traceparent`) and ends with the call.

        The span is never made current: this is a generator, and a context attached here would leak into the
        caller between items.
        """
        span = tracing.start_span(
            f"chat {request.model}",
            kind=SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.system": "openai",
                "gen_ai.request.model": request.model,
                "gen_ai.request.max_tokens": request.max_tokens,
                "server.address": urlsplit(self.base_url).hostname or "",
            },
        )
        try:
            yield from self._call(request, attempt, tracing.headers(span))
        except _Transient as ex:
            span.set_status(StatusCode.ERROR, ex.reason)
            span.set_attribute("error.type", ex.kind)
            raise
        except LLMRequestError:
            span.set_status(StatusCode.ERROR, "request rejected")
            span.set_attribute("error.type", "bad_request")
            raise
        finally:  # also when our caller closes the stream early (cancel, budget): the call ends here
            if attempt.usage is not None:
                span.set_attribute("gen_ai.usage.input_tokens", attempt.usage.input_tokens)
                span.set_attribute("gen_ai.usage.output_tokens", attempt.usage.output_tokens)
            if attempt.finish_reason:
                span.set_attribute("gen_ai.response.finish_reasons", [attempt.finish_reason])
            span.end()

    def _call(self, request: ChatRequest, attempt: _Attempt, headers: dict[str, str]) -> Iterator[TextDelta]:
        """Make one HTTP call, yielding text as it arrives; raises _Transient or LLMRequestError on failure."""
        stream = None
        try:
            stream = self._client.chat.completions.create(
                model=request.model,
                messages=cast(Any, request.messages),
                max_tokens=request.max_tokens,
                stream=True,
                stream_options={"include_usage": True},
                extra_headers=headers or None,
                tools=cast(Any, request.tools) if request.tools else openai.omit,
            )  # omit: some servers reject []
            for chunk in stream:
                if chunk.usage is not None:
                    attempt.usage = self._usage(request.model, chunk.usage)
                for choice in chunk.choices:
                    if choice.finish_reason:
                        attempt.finish_reason = choice.finish_reason
                    for tool_delta in choice.delta.tool_calls or ():
                        attempt.add_tool_delta(tool_delta)
                        attempt.deltas += 1
                    if choice.delta.content:
                        attempt.text.append(choice.delta.content)
                        attempt.deltas += 1
                        yield TextDelta(choice.delta.content)
        except openai.APIStatusError as ex:
            raise self._classify_status(ex) from ex
        except openai.APITimeoutError as ex:
            raise _Transient("timed out", f"no data within {self.timeout_s:g} s", kind="timeout") from ex
        except openai.APIConnectionError as ex:
            cause = self._redact(str(ex.__cause__ or ex))
            reason = "stream broke mid-way" if stream is not None else "connection failed"
            raise _Transient(reason, f"{reason}: {cause}", kind="connection") from ex
        except openai.APIError as ex:  # an error event inside the stream: the service failed mid-answer
            raise _Transient(
                "stream error", f"an error event mid-stream: {self._redact(ex.message)}", kind="stream_error"
            ) from ex
        finally:
            if stream is not None:
                stream.close()  # also aborts the HTTP call when our caller closes this generator early
        if attempt.finish_reason is None:
            # A clean end of the body without a finish reason means a proxy cut the answer short.
            raise _Transient("stream ended early", "the stream ended without a finish reason", kind="stream_error")

    def _classify_status(self, ex: openai.APIStatusError) -> Exception:
        message = self._redact(_service_message(ex))
        status = ex.status_code
        if status == 429:
            return _Transient(
                "rate limited (HTTP 429)",
                f"HTTP 429: {message}",
                kind="rate_limited",
                rate_limited=True,
                retry_after=retry_after_s(ex.response.headers),
            )
        if status >= 500 or status == 408:
            return _Transient(f"server error (HTTP {status})", f"HTTP {status}: {message}", kind="server_error")
        return LLMRequestError(
            f"The LLM service at {self.base_url} rejected the request with HTTP {status}: "
            f"{message}. Retrying cannot help; fix the request, the model name or the API key."
        )

    def _give_up(self, ex: _Transient, retries: int) -> Exception:
        tries = f"{retries + 1} attempt{'s' if retries else ''}"
        if ex.rate_limited:
            return LLMRateLimitedError(
                f"The LLM service at {self.base_url} still rate-limited after {tries}; the "
                f"last answer was {ex.detail}. Lower the load or raise the account's limit."
            )
        return LLMUnavailableError(
            f"The LLM service at {self.base_url} failed {tries}; the last failure was "
            f"{ex.detail}. Check that it is up, or raise LLM_TIMEOUT_S / LLM_MAX_RETRIES."
        )

    def _backoff(self, retry: int) -> float:
        rand = self.rand() if callable(self.rand) else self.rand
        return backoff_delay(retry, rand=rand)

    def _usage(self, model: str, usage: Any) -> Usage:
        details = getattr(usage, "prompt_tokens_details", None)
        cached = getattr(details, "cached_tokens", None) or 0
        return Usage(model, usage.prompt_tokens or 0, usage.completion_tokens or 0, cached)

    def _estimate(self, request: ChatRequest, attempt: _Attempt) -> Usage:
        return Usage(request.model, estimate_input_tokens(request.messages), attempt.deltas, estimated=True)

    def _redact(self, text: str) -> str:
        if self._api_key:
            text = text.replace(self._api_key, "[redacted]")
        return _KEY_LIKE.sub("[redacted]", text)


def _service_message(ex: openai.APIStatusError) -> str:
    """Return the service's message from OpenAI's `{"error": {"message": ...}}` shape, else the SDK's, sans period."""
    body = ex.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"]).rstrip(". ")
    return ex.message.rstrip(". ")
