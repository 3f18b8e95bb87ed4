"""The ledger's codec (events/money/ledger_codec.py): the names its writer gives counters read back as the same
figures, whatever a member's name holds. Pure."""

from __future__ import annotations

import pytest

from events.money.ledger_codec import (
    TOTAL_FIELDS,
    Field,
    add_up,
    member_field,
    member_fields,
    parse_field,
    query_fields,
    repeated_queries,
    total_field,
)


@pytest.mark.parametrize(
    ("group", "member", "figure"),
    [
        ("model", "gpt-4o", "cost"),
        ("model", "ollama:llama3:8b", "in"),
        ("agent", "query", "calls"),
        ("session", "s:1", "cost"),
        ("user", "alice@example.org", "cached"),
    ],
)
def test_a_member_field_reads_back_as_its_group_member_and_figure(group: str, member: str, figure: str) -> None:
    assert parse_field(member_field(group, member, figure)) == Field(group, member, figure)


def test_a_members_fields_come_in_the_order_of_the_figures_asked_and_totals_in_the_order_of_all() -> None:
    assert member_fields("agent", "query", ("cost", "calls")) == ("a:query:cost", "a:query:calls")
    assert tuple(total_field(figure) for figure in ("cost", "in", "out", "cached", "calls")) == TOTAL_FIELDS


@pytest.mark.parametrize("name", ["", "m:", "m::cost", "x:gpt-4o:cost", "m:gpt-4o:bogus", "n:abc", "c:abc", "spent"])
def test_fields_it_does_not_write_are_not_read(name: str) -> None:
    assert parse_field(name) is None


def test_adding_up_gives_totals_and_one_groups_members_by_api_name() -> None:
    hours = [
        {
            total_field("cost"): 10,
            member_field("model", "a", "cost"): 4,
            member_field("model", "b", "cost"): 6,
            member_field("agent", "query", "cost"): 10,
            "junk": 99,
        },
        {total_field("cost"): 5, total_field("calls"): 2, member_field("model", "a", "cost"): 5},
    ]
    totals, models = add_up(hours, "model")
    assert totals["cost_micros"] == 15 and totals["calls"] == 2 and totals["input_tokens"] == 0
    assert {name: figures["cost_micros"] for name, figures in models.items()} == {"a": 9, "b": 6}
    assert add_up(hours, None)[1] == {}


def test_queries_run_more_than_once_are_listed_with_their_jobs_and_cost() -> None:
    jobs, cost = query_fields("q1")
    raw = {jobs: 3, cost: 900, query_fields("q2")[0]: 1, query_fields("q2")[1]: 50}
    assert repeated_queries(raw) == [{"query_hash": "q1", "jobs": 3, "cost_micros": 900}]
