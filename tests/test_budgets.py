"""Budgets as pure logic (events/money/budgets.py): the scopes a job counts against, what makes a budget valid,
and the worst case a hold must cover. No Redis (holds on Redis are in test_spending.py and test_scripts.py)."""

from __future__ import annotations

import json

import pytest

from events.catalog import AgentSpec
from events.money.budgets import (
    IMAGE_TOKENS,
    BudgetError,
    call_cost_bound,
    check_budget,
    first_call_micros,
    job_scopes,
    prompt_bytes,
    scope_name,
)
from events.money.prices import PriceBook

BOOK = PriceBook()


def test_a_job_counts_against_its_user_session_and_agent_and_malformed_budgets_are_refused() -> None:
    assert job_scopes("s1", "query") == ["user", "session:s1", "agent:query"] and job_scopes("", "") == ["user"]
    assert scope_name("agent", "query") == "agent:query" and scope_name("user") == "user"
    for bad in (
        lambda: scope_name("planet"),
        lambda: scope_name("session"),
        lambda: check_budget("user", 1, "hourly", 80),
        lambda: check_budget("user", -1, "daily", 80),
        lambda: check_budget("user", 1, "daily", 0),
    ):
        with pytest.raises(BudgetError):
            bad()


def test_the_submit_hold_is_the_first_calls_worst_case_only() -> None:
    price = BOOK.price("gpt-4o")
    one = call_cost_bound(price, prompt_bytes=1000, max_tokens=100)
    assert one == 2500 + 1000  # 1,000 bytes × $2.5/M + 100 × $10/M
    spec = AgentSpec("test", "", max_llm_calls=3, prompt_overhead_bytes=900)
    # The query as the request carries it: 96 x, a quote escaped as two bytes, the two quotes around it: 100 bytes.
    assert first_call_micros(price, spec, query="x" * 96 + '"', max_tokens=100) == one
    assert first_call_micros(BOOK.price("offline"), spec, query="x" * 10**6, max_tokens=10**4) == 0


def test_an_image_counts_as_its_bound_not_its_bytes() -> None:
    tiny = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 100}}
    huge = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 10**6}}
    text = {"type": "text", "text": "What is in it?"}
    bare = [{"role": "user", "content": [text, {"type": "image_url"}]}]
    expected = len(json.dumps(bare).encode()) + len(json.dumps([]).encode()) + IMAGE_TOKENS
    for image in (tiny, huge):
        assert prompt_bytes([{"role": "user", "content": [text, image]}], []) == expected
    plain = [{"role": "user", "content": "hi"}]
    assert prompt_bytes(plain, [{"x": 1}]) == len(json.dumps(plain)) + len(json.dumps([{"x": 1}]))
