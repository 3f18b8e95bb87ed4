"""OpenAIProvider against the LLM simulator over real HTTP, through the real `openai` client; first the pure parts
it relies on: the simulator's tokens, the Retry-After header, and the backoff between retries
(workers/llm/provider.py)."""

from __future__ import annotations

import json
import time
from typing import Any, Callable, Iterator

import httpx
import openai
import pytest

from tests.llmsim import (
    SimControl,
    count_prompt_tokens,
    cut_tokens,
    default_reply,
    free_port,
    run_simulator,
    split_tokens,
)
from workers.llm.openai_provider import OpenAIProvider, estimate_input_tokens, retry_after_s
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

pytestmark = pytest.mark.timeout(60)

KEY = "sk-test-SECRET0123456789abcdef"
QUESTION = "what is two plus two"
CALCULATOR = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "Evaluates arithmetic.",
        "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]},
    },
}


class Sleeps:
    """A stand-in for time.sleep that records the delays instead of waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def wait_until(condition: Callable[[], Any], timeout_s: float = 5.0) -> Any:
    """Poll `condition` until it returns something truthy, failing the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"condition not met within {timeout_s} s"
        time.sleep(0.02)


def request(max_tokens: int = 100, **kw: Any) -> ChatRequest:
    messages = kw.pop("messages", [{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION}])
    return ChatRequest(model="gpt-sim", messages=messages, max_tokens=max_tokens, **kw)


def of(items: list[StreamItem], kind: type) -> list[Any]:
    return [item for item in items if isinstance(item, kind)]


@pytest.fixture(scope="module")
def sim_url() -> Iterator[str]:
    with run_simulator() as url:
        yield url


@pytest.fixture
def sim(sim_url: str) -> Iterator[SimControl]:
    control = SimControl(sim_url)
    control.reset()
    yield control
    control.close()


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def make_provider(sim_url: str, sleeps: Sleeps) -> Iterator[Callable[..., OpenAIProvider]]:
    made: list[OpenAIProvider] = []

    def make(**kw: Any) -> OpenAIProvider:
        options = {
            "api_key": KEY,
            "base_url": sim_url,
            "timeout_s": 5.0,
            "max_retries": 3,
            "sleep": sleeps,
            "rand": 0.0,
            **kw,
        }
        made.append(OpenAIProvider(**options))
        return made[-1]

    yield make
    for provider in made:
        provider.close()


# The pure parts: the simulator's tokens, Retry-After, backoff.


@pytest.mark.parametrize(
    "text, tokens",
    [
        ("Simulated answer to: hi", ["Simulated", " answer", " to:", " hi"]),
        ("  two  spaces ", ["  two", "  spaces", " "]),
        ("", []),
    ],
)
def test_simulator_splits_text_into_words_with_leading_spaces_that_join_back(text: str, tokens: list[str]) -> None:
    assert split_tokens(text) == tokens
    assert "".join(split_tokens(text)) == text


@pytest.mark.parametrize("limit, kept, finish", [(None, 3, "stop"), (5, 3, "stop"), (3, 3, "stop"), (2, 2, "length")])
def test_simulator_cuts_answers_at_max_tokens_with_finish_reason_length(
    limit: int | None, kept: int, finish: str
) -> None:
    assert cut_tokens(["a", " b", " c"], limit) == (["a", " b", " c"][:kept], finish)


def test_simulator_default_reply_echoes_the_question_or_the_tool_result() -> None:
    asked = [{"role": "user", "content": "hi there"}]
    assert default_reply(asked) == "Simulated answer to: hi there"
    assert (
        default_reply([*asked, {"role": "tool", "tool_call_id": "c1", "content": "8"}])
        == "Simulated answer using tool result: 8"
    )
    assert count_prompt_tokens(asked) == 2 + 3


@pytest.mark.parametrize(
    "headers, expected",
    [
        ({"retry-after": "2"}, 2.0),
        ({"retry-after": "120"}, 30.0),
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, None),
        ({}, None),
    ],
)
def test_retry_after_header_is_read_in_seconds_and_capped(headers: dict[str, str], expected: float | None) -> None:
    assert retry_after_s(headers) == expected


@pytest.mark.parametrize(
    ("retry", "rand", "kwargs", "delay"),
    [
        (1, 0.0, {}, 0.25),
        (1, 1.0, {}, 0.5),
        (2, 1.0, {}, 1.0),
        (3, 0.5, {}, 1.5),
        (5, 1.0, {}, 8.0),
        (12, 1.0, {}, 8.0),
        (12, 0.0, {}, 4.0),
        (3, 1.0, {"base": 1.0, "cap": 3.0}, 3.0),
    ],
)
def test_backoff_delay_grows_exponentially_with_jitter_up_to_the_cap(retry, rand, kwargs, delay) -> None:
    assert backoff_delay(retry, rand=rand, **kwargs) == pytest.approx(delay)


def test_simulator_rejects_requests_without_a_key_in_openai_error_shape(sim_url: str) -> None:
    response = httpx.post(f"{sim_url}/chat/completions", json={"model": "m", "messages": []})
    assert response.status_code == 401
    assert set(response.json()["error"]) >= {"message", "type", "code"}


def test_simulator_answers_non_streaming_requests_with_usage(sim: SimControl, sim_url: str) -> None:
    with openai.OpenAI(api_key=KEY, base_url=sim_url, max_retries=0) as client:
        completion = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert completion.choices[0].message.content == "Simulated answer to: hi"
    assert completion.usage is not None and completion.usage.completion_tokens == 4


# The provider.


def test_streams_the_text_and_usage_the_simulator_sent(sim: SimControl, make_provider: Callable) -> None:
    req = request()
    items = list(make_provider().stream(req))
    reply = f"Simulated answer to: {QUESTION}"
    assert [d.text for d in of(items, TextDelta)] == split_tokens(reply)
    usage = Usage("gpt-sim", count_prompt_tokens(req.messages), len(split_tokens(reply)), 0, estimated=False)
    assert of(items, Usage) == [usage]
    assert items[-1] == Completion(reply, (), "stop", usage)


def test_every_request_carries_max_tokens_and_asks_for_usage(sim: SimControl, make_provider: Callable) -> None:
    provider = make_provider()
    list(provider.stream(request(max_tokens=77)))
    list(provider.stream(request(max_tokens=5, tools=[CALCULATOR])))
    records = sim.requests()
    assert [r["body"]["max_tokens"] for r in records] == [77, 5]
    assert all(r["body"]["stream"] and r["body"]["stream_options"] == {"include_usage": True} for r in records)
    assert ["tools" in r["body"] for r in records] == [False, True]
    assert all(r["has_authorization"] for r in records)
    assert KEY not in json.dumps(records)


def test_answer_longer_than_max_tokens_stops_with_finish_reason_length(
    sim: SimControl, make_provider: Callable
) -> None:
    items = list(make_provider().stream(request(max_tokens=3)))
    assert len(of(items, TextDelta)) == 3
    assert items[-1].finish_reason == "length"
    assert items[-1].usage.output_tokens == 3


def test_streamed_tool_call_is_assembled_with_its_name_and_arguments(sim: SimControl, make_provider: Callable) -> None:
    arguments = {"expression": "(2 + 2) * 3 - 1", "precision": 2}
    sim.script({"kind": "tool_call", "name": "calculator", "arguments": arguments, "id": "call_42"})
    items = list(make_provider().stream(request(tools=[CALCULATOR])))
    completion = items[-1]
    assert completion.tool_calls == (ToolCall("call_42", "calculator", json.dumps(arguments)),)
    assert json.loads(completion.tool_calls[0].arguments) == arguments
    assert (completion.text, completion.finish_reason) == ("", "tool_calls")
    assert not of(items, TextDelta) and not of(items, Retrying)


def test_tool_result_in_the_conversation_shapes_the_default_answer(sim: SimControl, make_provider: Callable) -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "calculator", "arguments": "{}"}}
    messages = [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "4"},
    ]
    completion = list(make_provider().stream(request(messages=messages)))[-1]
    assert completion.text == "Simulated answer using tool result: 4"


def test_429_with_retry_after_is_retried_after_that_delay(
    sim: SimControl, make_provider: Callable, sleeps: Sleeps
) -> None:
    sim.script({"kind": "error", "status": 429, "retry_after": 2})
    items = list(make_provider().stream(request()))
    assert of(items, Retrying) == [Retrying(1, 2.0, "rate limited (HTTP 429)", discard_partial=False)]
    assert sleeps.delays == [2.0]
    first, second = of(items, Usage)
    assert (
        first.estimated and first.output_tokens == 0 and first.input_tokens == estimate_input_tokens(request().messages)
    )
    assert not second.estimated
    assert items[-1].text == f"Simulated answer to: {QUESTION}" and items[-1].usage == second
    assert items.index(first) < items.index(of(items, Retrying)[0]) < items.index(of(items, TextDelta)[0])


def test_500_is_retried_after_a_backoff_delay(sim: SimControl, make_provider: Callable, sleeps: Sleeps) -> None:
    sim.script({"kind": "error", "status": 500})
    items = list(make_provider().stream(request()))
    assert [r.reason for r in of(items, Retrying)] == ["server error (HTTP 500)"]
    assert sleeps.delays == [backoff_delay(1, rand=0.0)]
    assert isinstance(items[-1], Completion) and len(of(items, Usage)) == 2


def test_persistent_503_gives_up_as_unavailable_after_max_retries(
    sim: SimControl, make_provider: Callable, sleeps: Sleeps
) -> None:
    sim.script(*[{"kind": "error", "status": 503}] * 3)
    items: list[StreamItem] = []
    with pytest.raises(LLMUnavailableError, match="503"):
        items.extend(make_provider(max_retries=2).stream(request()))
    assert len(sim.requests()) == 3
    assert [r.retry for r in of(items, Retrying)] == [1, 2]
    assert sleeps.delays == [backoff_delay(1, rand=0.0), backoff_delay(2, rand=0.0)]
    assert len(of(items, Usage)) == 3 and all(u.estimated for u in of(items, Usage))


def test_persistent_429_gives_up_as_rate_limited(sim: SimControl, make_provider: Callable) -> None:
    sim.script(*[{"kind": "error", "status": 429, "retry_after": 120}] * 4)
    retries: list[Retrying] = []
    with pytest.raises(LLMRateLimitedError):
        retries.extend(i for i in make_provider().stream(request()) if isinstance(i, Retrying))
    assert [r.delay_s for r in retries] == [30.0, 30.0, 30.0]
    assert len(sim.requests()) == 4


def test_400_fails_at_once_with_the_services_message(sim: SimControl, make_provider: Callable, sleeps: Sleeps) -> None:
    sim.script({"kind": "error", "status": 400, "message": "Unknown parameter: 'foo'."})
    items: list[StreamItem] = []
    with pytest.raises(LLMRequestError, match="Unknown parameter: 'foo'"):
        items.extend(make_provider().stream(request()))
    assert not of(items, Retrying) and not sleeps.delays and len(sim.requests()) == 1
    assert len(of(items, Usage)) == 1


def test_stall_longer_than_the_timeout_is_retried(sim: SimControl, make_provider: Callable) -> None:
    sim.script({"kind": "stall", "after_tokens": 2, "seconds": 1.5})
    items = list(make_provider(timeout_s=0.5).stream(request()))
    assert [(r.reason, r.discard_partial) for r in of(items, Retrying)] == [("timed out", True)]
    assert items[-1].text == f"Simulated answer to: {QUESTION}"


def test_stall_shorter_than_the_timeout_is_waited_out(sim: SimControl, make_provider: Callable) -> None:
    sim.script({"kind": "stall", "after_tokens": 2, "seconds": 0.2})
    items = list(make_provider(timeout_s=2.0).stream(request()))
    assert not of(items, Retrying) and items[-1].text == f"Simulated answer to: {QUESTION}"


def test_dropped_connection_mid_stream_is_retried_discarding_the_partial_text(
    sim: SimControl, make_provider: Callable
) -> None:
    sim.script({"kind": "drop", "after_tokens": 3})
    items = list(make_provider().stream(request()))
    (retrying,) = of(items, Retrying)
    assert (retrying.reason, retrying.discard_partial) == ("stream broke mid-way", True)
    after = items[items.index(retrying) + 1 :]
    reply = f"Simulated answer to: {QUESTION}"
    assert "".join(d.text for d in of(after, TextDelta)) == reply and items[-1].text == reply
    assert [u.estimated for u in of(items, Usage)] == [True, False]
    assert of(items, Usage)[0].output_tokens == 3
    assert [r["outcome"] for r in sim.requests()] == ["dropped", "completed"]


def test_dropped_connection_before_any_text_keeps_nothing_to_discard(sim: SimControl, make_provider: Callable) -> None:
    sim.script({"kind": "drop", "after_tokens": 0})
    (retrying,) = of(list(make_provider().stream(request())), Retrying)
    assert (retrying.reason, retrying.discard_partial) == ("stream broke mid-way", False)


def test_unreachable_service_gives_up_as_unavailable(make_provider: Callable) -> None:
    with pytest.raises(LLMUnavailableError, match="connection failed"):
        list(make_provider(base_url=f"http://127.0.0.1:{free_port()}/v1", max_retries=1).stream(request()))


def test_closing_the_stream_after_the_first_token_aborts_the_request(sim: SimControl, make_provider: Callable) -> None:
    sim.script({"kind": "text", "text": "word " * 400, "tokens_per_s": 20})
    stream = make_provider().stream(request(max_tokens=1000))
    assert isinstance(next(stream), TextDelta)
    stream.close()
    wait_until(lambda: sim.requests()[-1]["outcome"] == "disconnected")


@pytest.mark.parametrize(
    "status, error",
    [(400, LLMRequestError), (401, LLMRequestError), (503, LLMUnavailableError), (429, LLMRateLimitedError)],
)
def test_api_key_never_appears_in_error_messages(
    sim: SimControl, make_provider: Callable, status: int, error: type
) -> None:
    # A service or proxy that echoes the key back, in full and masked the way OpenAI does.
    message = f"Incorrect API key provided: {KEY} (sk-test-SE****cdef)."
    sim.script(*[{"kind": "error", "status": status, "message": message}] * 2)
    with pytest.raises(error) as caught:
        list(make_provider(max_retries=1).stream(request()))
    assert KEY not in str(caught.value) and "sk-test" not in str(caught.value)
    assert "[redacted]" in str(caught.value)
