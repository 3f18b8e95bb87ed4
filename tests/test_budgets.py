"""Budgets as pure logic (events/money/budgets.py): the scopes a job counts against, what makes a budget valid,
and the worst case a hold must cover. No Redis (holds on Redis are in test_spending.py and test_scripts.py)."""

from __future__ import annotations

import pytest

from events.catalog import AgentSpec
from events.money.budgets import BudgetError, call_cost_bound, check_budget, job_scopes, scope_name, worst_case_micros
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


def test_a_hold_covers_every_call_with_the_conversation_growing() -> None:
    price = BOOK.price("gpt-4o")
    one = call_cost_bound(price, prompt_bytes=1000, max_tokens=100)
    assert one == 2500 + 1000  # 1,000 bytes × $2.5/M + 100 × $10/M
    spec = AgentSpec("test", "", max_llm_calls=3, prompt_overhead_bytes=0)
    three = worst_case_micros(price, spec, query_bytes=1000, max_tokens=100)
    assert three > 3 * one
    assert worst_case_micros(BOOK.price("offline"), spec, query_bytes=10**6, max_tokens=10**4) == 0
