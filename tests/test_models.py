"""The request models: what a body or query string must be, the defaults it gets, and the sentence a violation
becomes. Pure: no server (the same models answer over HTTP in test_bad_input.py)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from api.http_errors import DomainError
from api.models import (
    AuditQuery,
    BudgetSet,
    JobsQuery,
    MetricRecord,
    RequestModels,
    check_idempotency_key,
    explain,
    job_models,
)
from settings import Settings
from tests.stack import base_env

SETTINGS = Settings.from_env(
    base_env("redis://127.0.0.1:1/0", MAX_QUERY_CHARS="100", MAX_TOKENS_DEFAULT="50", MAX_TOKENS_LIMIT="200")
)
JobSubmit, StreamQuery, StreamSubmit = job_models(SETTINGS)


def test_a_minimal_submission_gets_the_defaults() -> None:
    job = JobSubmit.model_validate({"agent_type": "query", "query": "hi"})
    assert (job.agent_type, job.query, job.model, job.max_tokens, job.session_id, job.metadata, job.attachments) == (
        "query",
        "hi",
        None,
        50,
        None,
        None,
        None,
    )


def test_a_full_submission_keeps_every_field_and_a_whole_float_counts_as_an_integer() -> None:
    body = {
        "agent_type": "query",
        "query": "q",
        "model": "gpt-4o-mini",
        "max_tokens": 200.0,
        "session_id": "s:1",
        "metadata": {"a": 1},
        "attachments": [{"type": "image", "attachment_id": "att_" + "a" * 22, "name": "x"}],
    }
    job = JobSubmit.model_validate(body)
    assert (job.model, job.max_tokens, job.session_id, job.metadata, job.attachments) == (
        "gpt-4o-mini",
        200,
        "s:1",
        {"a": 1},
        [{"type": "image", "attachment_id": "att_" + "a" * 22, "name": "x"}],
    )
    assert isinstance(job.max_tokens, int)


@pytest.mark.parametrize(
    ("change", "name"),
    [
        ({"quary": "typo"}, "quary"),
        ({"agent_type": None}, "agent_type"),
        ({"agent_type": 7}, "agent_type"),
        ({"agent_type": "wizard"}, "agent_type"),
        ({"query": None}, "query"),
        ({"query": ["hi"]}, "query"),
        ({"query": " \n\t"}, "query"),
        ({"query": "a" * 101}, "query"),
        ({"model": "gpt 4"}, "model"),
        ({"model": "gpt-4o\n"}, "model"),  # a pattern that only searched would pass this
        ({"model": "m" * 129}, "model"),
        ({"model": 4}, "model"),
        ({"max_tokens": "9"}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"max_tokens": 1.5}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 201}, "max_tokens"),
        ({"session_id": "a b"}, "session_id"),
        ({"session_id": "s1\n"}, "session_id"),
        ({"session_id": 5}, "session_id"),
        ({"metadata": [1]}, "metadata"),
        ({"metadata": []}, "metadata"),
        ({"metadata": {"k": "v" * 5000}}, "metadata"),
        ({"attachments": "x"}, "attachments"),
        ({"attachments": [1]}, "attachments"),
        ({"attachments": [{}] * 9}, "attachments"),
    ],
)
def test_an_invalid_submission_is_explained_naming_its_field(change: dict[str, Any], name: str) -> None:
    body = {k: v for k, v in {"agent_type": "query", "query": "hi", **change}.items() if v is not None}
    with pytest.raises(ValidationError) as info:
        JobSubmit.model_validate(body)
    assert explain(info.value, JobSubmit).startswith(f"Field '{name}")


def test_ranges_are_explained_with_both_bounds() -> None:
    with pytest.raises(ValidationError) as info:
        JobSubmit.model_validate({"agent_type": "query", "query": "hi", "max_tokens": 0})
    assert explain(info.value, JobSubmit) == "Field 'max_tokens': must be between 1 and 200."


def test_the_stream_route_takes_its_agent_from_the_path_and_the_seeds_route_from_the_body() -> None:
    assert StreamQuery.model_validate({"query": "hi"}).agent_type is None
    assert StreamQuery.model_validate({"query": "hi", "agent_type": "math"}).agent_type == "math"
    with pytest.raises(ValidationError):
        StreamSubmit.model_validate({"query": "hi", "agent_type": "math"})


@pytest.mark.parametrize(
    ("body", "ok"),
    [
        ({"user_id": "a", "limit_usd": "12.50"}, 12_500_000),
        ({"user_id": "a", "limit_usd": 3}, 3_000_000),
        ({"user_id": "a", "limit_usd": None}, None),
        ({"user_id": "a", "limit_usd": "1e3"}, "limit_usd"),
        ({"user_id": "a", "limit_usd": "NaN"}, "limit_usd"),
        ({"user_id": "a", "limit_usd": -1}, "limit_usd"),
        ({"user_id": "a", "limit_usd": True}, "limit_usd"),
        ({"user_id": "a"}, "limit_usd"),
        ({"user_id": "a", "limit_usd": 1, "scope": "session"}, "session_id"),
        ({"user_id": "a", "limit_usd": 1, "scope": "agent", "agent": "nope"}, "agent"),
        ({"user_id": "a", "limit_usd": 1, "scope": "agent"}, "agent"),
    ],
)
def test_a_budget_is_dollars_as_a_number_or_decimal_text_for_a_scope_that_can_exist(body: dict, ok: Any) -> None:
    if isinstance(ok, str):
        with pytest.raises(ValidationError) as info:
            BudgetSet.model_validate(body)
        assert explain(info.value, BudgetSet).startswith(f"Field '{ok}':")
    else:
        assert BudgetSet.model_validate(body).limit_usd == ok


@pytest.mark.parametrize(
    ("params", "bad"),
    [
        ({"limit": "10"}, None),
        ({"limit": "١٠"}, "limit"),
        ({"limit": "1_0"}, "limit"),
        ({"limit": "0"}, "limit"),
        ({"all": "maybe"}, "all"),
        ({"all": "false"}, None),
        ({"status": "weird"}, "status"),
        ({"cursor": "nan:j_" + "0" * 32}, "cursor"),
    ],
)
def test_query_strings_take_only_plain_ascii_numbers_and_known_words(params: dict[str, str], bad: str | None) -> None:
    if bad is None:
        JobsQuery.model_validate(params)
        return
    with pytest.raises(ValidationError) as info:
        JobsQuery.model_validate(params)
    assert explain(info.value, JobsQuery).startswith(f"Field '{bad}':")


@pytest.mark.parametrize("since", ["nan", "inf", "-1", "1e12", "٣"])
def test_audit_times_are_finite_epochs(since: str) -> None:
    with pytest.raises(ValidationError):
        AuditQuery.model_validate({"since": since})


def test_custom_metric_values_are_finite_numbers_and_labels_bounded() -> None:
    assert MetricRecord.model_validate({"name": "signups", "value": 3}).value == 3.0
    for bad in (
        {"name": "x", "value": True},
        {"name": "x", "value": "3"},
        {"name": "1x"},
        {"name": "x", "labels": {"a": "1", "b": "2", "c": "3", "d": "4", "e": "5", "f": "6"}},
        {"name": "x", "labels": {"bad-name": "1"}},
        {"name": "x", "kind": "summary"},
    ):
        with pytest.raises(ValidationError):
            MetricRecord.model_validate(bad)


def test_every_route_with_a_body_or_query_has_one_model_and_the_schemas_are_json() -> None:
    models = RequestModels(SETTINGS)
    for model in [*models.bodies.values(), *models.queries.values()]:
        schema = model.model_json_schema()
        assert schema["type"] == "object" and schema["properties"]
    assert models.optional_bodies <= set(models.bodies)


@pytest.mark.parametrize("key", ["a", "order-42/retry", "~" * 255, "!#$%&'*+.^_`|"])
def test_visible_ascii_idempotency_keys_are_accepted(key: str) -> None:
    assert check_idempotency_key(key) == key


@pytest.mark.parametrize("key", ["", "x" * 256, "has space", "tab\there", "caf\u00e9", "nul\x00"])
def test_other_idempotency_keys_are_refused(key: str) -> None:
    with pytest.raises(DomainError) as info:
        check_idempotency_key(key)
    assert "Idempotency-Key" in str(info.value)
