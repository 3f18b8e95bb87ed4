"""Pure logic, tested with tables and no Redis: envelopes, task messages, validation, keys, tools, settings."""

from __future__ import annotations

import base64
import json
import math
import os
import stat
from pathlib import Path

import celery
import pytest

from api import credentials
from api.permissions import Permission, allowed
from api.relay import decode_entry, parse_id
from events.envelope import EnvelopeError, Event
from events.store.taskmsg import RUN_AGENT_TASK, task_message
from settings import Settings, SettingsError
from workers.agents.tools import CALCULATOR, TEXT_STATS, calculate, text_stats
from workers.llm.offline import OfflineProvider, compose_answer, plan_tool_calls
from workers.llm.provider import ChatRequest, Completion, TextDelta, Usage, backoff_delay

SECRET = "s" * 40


def test_event_survives_a_round_trip_through_stream_fields_with_unknown_fields_kept() -> None:
    event = Event("tool_end", "j1", 7, 1700000000.123456, 2, {"ok": True, "text": "héllo"}, extra={"trace": "t-9"})
    fields = event.to_fields()
    assert all(isinstance(v, str) for v in fields.values())
    assert fields["trace"] == "t-9"
    raw = {k.encode(): v.encode() for k, v in fields.items()}  # what a bytes client returns
    assert Event.from_fields(raw) == event
    assert Event.from_fields(fields) == event


def test_unknown_event_types_pass_through_unchanged() -> None:
    event = Event.from_fields({"type": "telemetry_v9", "seq": "3", "data": '{"x":1}'})
    assert (event.type, event.seq, event.data) == ("telemetry_v9", 3, {"x": 1})
    assert Event.from_fields(event.to_fields()) == event


def test_data_that_is_not_an_object_is_wrapped_as_value() -> None:
    assert Event.from_fields({"type": "token", "data": "[1,2]"}).data == {"value": [1, 2]}


@pytest.mark.parametrize(
    "fields",
    [
        {"job_id": "j", "seq": "1"},
        {"type": "token", "seq": "one"},
        {"type": "token", "ts": "yesterday"},
        {"type": "token", "attempt": "1.5"},
        {"type": "token", "v": "x"},
        {"type": "token", "data": "{not json"},
    ],
)
def test_entries_without_type_or_with_bad_numbers_raise_envelope_error(fields: dict[str, str]) -> None:
    with pytest.raises(EnvelopeError):
        Event.from_fields(fields)


@pytest.mark.parametrize(
    ("etype", "terminal"),
    [
        ("done", True),
        ("error", True),
        ("cancelled", True),
        ("token", False),
        ("start", False),
        ("lifecycle", False),
        ("mystery", False),
    ],
)
def test_only_done_error_and_cancelled_are_terminal(etype: str, terminal: bool) -> None:
    assert Event(etype).terminal is terminal


SAME_HEADERS = [
    "lang",
    "task",
    "id",
    "shadow",
    "eta",
    "expires",
    "group",
    "group_index",
    "retries",
    "timelimit",
    "root_id",
    "parent_id",
    "kwargsrepr",
    "replaced_task_nesting",
    "stamped_headers",
    "stamps",
]


def test_task_message_matches_what_celery_itself_builds() -> None:
    args = ["job-1", 2]
    ours = json.loads(task_message(RUN_AGENT_TASK, args, "agents", task_id="tid-1", origin="sweeper"))
    theirs = celery.Celery(set_as_current=False).amqp.as_task_v2("tid-1", RUN_AGENT_TASK, args=args)
    # origin, ignore_result and argsrepr are informational (and intentionally differ); every other header matches.
    assert set(ours["headers"]) == set(theirs.headers)
    assert {k: ours["headers"][k] for k in SAME_HEADERS} == {k: theirs.headers[k] for k in SAME_HEADERS}
    assert ours["headers"]["origin"] == "sweeper"
    body = json.loads(base64.b64decode(ours["body"]))
    assert body == json.loads(json.dumps(theirs.body))
    assert body[0] == args
    for name, value in theirs.properties.items():
        assert ours["properties"][name] == value


def test_task_message_carries_what_the_redis_transport_needs() -> None:
    message = json.loads(task_message(RUN_AGENT_TASK, ["j", 1], "q-test"))
    props = message["properties"]
    assert props["delivery_info"]["routing_key"] == "q-test"
    assert props["body_encoding"] == "base64"
    assert props["priority"] == 0
    assert props["delivery_tag"]
    assert (message["content-type"], message["content-encoding"]) == ("application/json", "utf-8")
    other = json.loads(task_message(RUN_AGENT_TASK, ["j", 1], "q-test"))
    assert other["headers"]["id"] != message["headers"]["id"]
    assert other["properties"]["delivery_tag"] != props["delivery_tag"]


def test_new_keys_have_the_documented_shape_and_256_bits_of_randomness() -> None:
    made = {credentials.new_key() for _ in range(500)}
    assert len(made) == 500
    for key in made:
        assert credentials.looks_like_key(key) and len(key) == len("sk_live_") + 43
    assert credentials.KEY_BODY_LENGTH * math.log2(62) >= 256
    assert len(set("".join(made)[8:])) > 50  # draws from the whole alphabet


def test_key_hash_is_a_keyed_hash_that_depends_on_the_secret() -> None:
    key = credentials.new_key()
    assert credentials.key_hash(SECRET, key) == credentials.key_hash(SECRET, key)
    assert credentials.key_hash(SECRET, key) != credentials.key_hash(SECRET + "!", key)
    assert key not in credentials.key_hash(SECRET, key) and len(credentials.key_hash(SECRET, key)) == 64


@pytest.mark.parametrize(
    ("key", "ok"),
    [
        ("sk_live_" + "A1b2" * 10 + "xyz", True),
        ("sk_live_" + "a" * 42, False),
        ("sk_live_" + "a" * 44, False),
        ("sk_test_" + "a" * 43, False),
        ("sk_live_" + "a" * 42 + "-", False),
        ("", False),
        ("Bearer x", False),
    ],
)
def test_looks_like_key(key: str, ok: bool) -> None:
    assert credentials.looks_like_key(key) is ok


def test_stream_token_is_valid_for_its_job_until_it_expires_and_names_its_key() -> None:
    token = credentials.stream_token(
        SECRET, "job-1", 60, user_id="alice@example.org", key_id="0123456789abcdef", now=1000.0
    )
    assert credentials.check_stream_token(SECRET, "job-1", token, now=1000.0) == (
        "alice@example.org",
        "0123456789abcdef",
    )
    assert credentials.check_stream_token(SECRET, "job-1", token, now=1060.0)
    assert not credentials.check_stream_token(SECRET, "job-1", token, now=1061.0)
    assert not credentials.check_stream_token(SECRET, "job-2", token, now=1000.0)
    assert not credentials.check_stream_token(SECRET + "!", "job-1", token, now=1000.0)


def test_tampered_or_malformed_stream_tokens_are_refused() -> None:
    token = credentials.stream_token(SECRET, "job-1", 60, user_id="alice", key_id="0123456789abcdef", now=1000.0)
    expires, key_id, holder, mac = token.split(".")
    flipped = mac[:-1] + ("A" if mac[-1] != "A" else "B")
    other_user = credentials.stream_token(SECRET, "job-1", 60, user_id="mallory", key_id=key_id, now=1000.0)
    for bad in [
        f"{int(expires) + 3600}.{key_id}.{holder}.{mac}",
        f"{expires}.{key_id}.{holder}.{flipped}",
        f"{expires}.fedcba9876543210.{holder}.{mac}",
        f"{expires}.{key_id}.{other_user.split('.')[2]}.{mac}",
        expires,
        f"{expires}.",
        f"x.{mac}",
        "",
        "1.é",
        "².x",
        f"{expires}.{key_id}.{holder}.{mac}\n",
        "٣" + token[1:],
    ]:
        assert not credentials.check_stream_token(SECRET, "job-1", bad, now=1000.0), bad


GRANTS = {
    "admin": set(Permission),
    "user": {
        Permission.JOBS_SUBMIT,
        Permission.JOBS_READ,
        Permission.JOBS_CANCEL,
        Permission.COSTS_READ,
        Permission.CACHE_READ,
        Permission.METRICS_READ,
        Permission.DOCS_UPLOAD,
        Permission.KEYS_OWN,
        Permission.SECURITY_READ,
    },
    "readonly": {
        Permission.JOBS_READ,
        Permission.COSTS_READ,
        Permission.CACHE_READ,
        Permission.METRICS_READ,
        Permission.SECURITY_READ,
    },
    "superuser": set(),
    "": set(),
}


@pytest.mark.parametrize("role", list(GRANTS))
@pytest.mark.parametrize("permission", list(Permission))
def test_each_role_grants_exactly_its_permissions(role: str, permission: Permission) -> None:
    assert allowed(role, permission) is (permission in GRANTS[role])


@pytest.mark.parametrize(
    ("expression", "answer"),
    [
        ("2+3*4", "2+3*4 = 14"),
        ("(2+3)*4", "(2+3)*4 = 20"),
        ("2^10", "2^10 = 1024"),
        ("2**3**2", "2**3**2 = 512"),
        ("7/2", "7/2 = 3.5"),
        ("8/2", "8/2 = 4"),
        ("7//2 + 7%3", "7//2 + 7%3 = 4"),
        ("-3+5", "-3+5 = 2"),
        ("1/0", "1/0 is undefined (division by zero)"),
        ("What is 12 * 3, please?", "12 * 3 = 36"),
        ("  (1 + 1) * 21  ", "(1 + 1) * 21 = 42"),
        ("hello there", "no arithmetic expression found"),
        ("", "no arithmetic expression found"),
        ("the year 2024", "no arithmetic expression found"),
        ("__import__('os').system('id')", "no arithmetic expression found"),
        ("2 + __import__('os')", "no arithmetic expression found"),
    ],
)
def test_calculator_answers(expression: str, answer: str) -> None:
    assert calculate({"expression": expression}) == answer


@pytest.mark.parametrize(
    ("expression", "mentions"),
    [
        ("2+*3", "Cannot evaluate"),
        ("((2)", "Cannot evaluate"),
        ("2^1001", "Exponents above 1000"),
        ("9^(10^4)", "Exponents above 1000"),
        ("((9^999)^999)^9", "exceed 10000 bits"),
        ("10^999*10^999*10^999*10^999*10^999", "exceed 10000 bits"),
    ],
)
def test_calculator_refuses_what_it_cannot_or_must_not_evaluate(expression: str, mentions: str) -> None:
    with pytest.raises(ValueError, match=mentions.replace("(", r"\(")):
        calculate({"expression": expression})


def test_calculator_keeps_scientific_notation_whole() -> None:
    assert calculate({"expression": "what is 1e3+1?"}) == "1e3+1 = 1001"


def test_text_stats_counts_words_sentences_and_key_terms() -> None:
    assert text_stats({"text": "The cat sat. The cat ran! Dogs bark?"}) == (
        "8 words, 3 sentences, 36 characters; key terms: dogs, bark"
    )
    assert text_stats({}) == "0 words, 0 sentences, 0 characters; key terms: none"


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


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"PORT": "http"}, "PORT"),
        ({"PORT": "70000"}, "PORT"),
        ({"LLM_MAX_RETRIES": "-1"}, "LLM_MAX_RETRIES"),
        ({"LLM_TIMEOUT_S": "soon"}, "LLM_TIMEOUT_S"),
        ({"TOKEN_FLUSH_MS": "51"}, "TOKEN_FLUSH_MS"),
        ({"TASK_SOFT_TIME_LIMIT_S": "600", "TASK_HARD_TIME_LIMIT_S": "600"}, "TASK_SOFT_TIME_LIMIT_S"),
        ({"BROKER_VISIBILITY_TIMEOUT_S": "600"}, "BROKER_VISIBILITY_TIMEOUT_S"),
        ({"JOB_LEASE_S": "4", "JOB_HEARTBEAT_S": "2"}, "JOB_LEASE_S"),
        ({"MAX_TOKENS_DEFAULT": "9000"}, "MAX_TOKENS_DEFAULT"),
        ({"LOG_LEVEL": "chatty"}, "LOG_LEVEL"),
        ({"AGENTIC_SECRET_KEY": "short"}, "AGENTIC_SECRET_KEY"),
        pytest.param({"LLM_TIMEOUT_S": "nan"}, "LLM_TIMEOUT_S"),
    ],
)
def test_bad_settings_fail_naming_the_variable(env: dict[str, str], name: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({"AGENTIC_SECRET_KEY": SECRET, **env})


def test_defaults_are_consistent_and_values_are_read() -> None:
    settings = Settings.from_env({"AGENTIC_SECRET_KEY": SECRET, "PORT": "9001", "LOG_LEVEL": "debug"})
    assert (settings.port, settings.log_level, settings.provider_mode) == (9001, "DEBUG", "offline")
    assert Settings.from_env({"AGENTIC_SECRET_KEY": SECRET, "OPENAI_API_KEY": "k"}).provider_mode == "openai"


def test_secret_file_is_made_once_with_owner_only_permissions(tmp_path: Path) -> None:
    env = {"AGENTIC_SECRET_FILE": str(tmp_path / "sub" / "secret")}
    first, second = Settings.from_env(env), Settings.from_env(env)
    assert len(first.secret_key) >= 32 and first.secret_key == second.secret_key
    assert stat.S_IMODE(os.stat(env["AGENTIC_SECRET_FILE"]).st_mode) == 0o600


def test_public_settings_and_repr_never_show_secrets() -> None:
    settings = Settings.from_env({"AGENTIC_SECRET_KEY": SECRET, "OPENAI_API_KEY": "sk-openai-very-secret"})
    public = settings.public()
    assert "secret_key" not in public and "openai_api_key" not in public and "port" in public
    for text in (json.dumps(public), repr(settings)):
        assert SECRET not in text and "sk-openai-very-secret" not in text


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:hunter2@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("redis://ops:hunter2@127.0.0.1:6379/0", "redis://ops:***@127.0.0.1:6379/0"),
        ("redis://127.0.0.1:6379/3", "redis://127.0.0.1:6379/3"),
        pytest.param("redis://127.0.0.1:6379/0?password=hunter2", None),
    ],
)
def test_public_settings_hide_the_redis_password(url: str, shown: str | None) -> None:
    public = Settings.from_env({"AGENTIC_SECRET_KEY": SECRET, "REDIS_URL": url}).public()
    assert "hunter2" not in json.dumps(public)
    assert shown is None or public["redis_url"] == shown


@pytest.mark.parametrize(
    ("entry_id", "pair"), [("1700000000000-0", (1700000000000, 0)), ("5-12", (5, 12)), ("0-0", (0, 0)), ("42", (42, 0))]
)
def test_parse_id_reads_stream_ids(entry_id: str, pair: tuple[int, int]) -> None:
    assert parse_id(entry_id) == pair
    assert parse_id("1-2") < parse_id("1-10") < parse_id("2-0")


@pytest.mark.parametrize("entry_id", ["", "abc", "1-", "-1", "1-x", "1-2-3", "$", "+1-0"])
def test_parse_id_refuses_malformed_ids(entry_id: str) -> None:
    with pytest.raises(ValueError):
        parse_id(entry_id)


def test_decode_entry_serialises_events_and_skips_non_events() -> None:
    delivery = decode_entry("1-0", {b"type": b"done", b"job_id": b"j", b"seq": b"4", b"data": b'{"result":"ok"}'})
    assert delivery is not None and delivery.terminal
    assert json.loads(delivery.payload) == {
        "id": "1-0",
        "type": "done",
        "job_id": "j",
        "seq": 4,
        "ts": 0.0,
        "attempt": 0,
        "data": {"result": "ok"},
        "v": 1,
    }
    assert decode_entry("2-0", {b"w": b"1"}) is None
