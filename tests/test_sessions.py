"""The `query` agent's session memory: earlier turns of the same user's same session_id, and no one else's."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import create_user
from tests.llmsim import SimControl
from tests.stack import Stack
from workers.agents.query import MAX_HISTORY_CHARS, MAX_TURN_CHARS, MAX_TURNS, history_messages, pick_turns

NEWEST_FIRST = [("s", "succeeded", f"q{i}", "a") for i in range(20, 0, -1)]


@pytest.mark.parametrize(
    ("rows", "turns"),
    [
        ([], []),
        ([("s", "succeeded", "q2", "a2"), ("s", "succeeded", "q1", "a1")], [("q1", "a1"), ("q2", "a2")]),
        ([("s", "failed", "q2", ""), ("t", "succeeded", "q1", "a1"), ("s", "cancelled", "q0", "x")], []),
        ([("s", "running", "q3", ""), ("s", "succeeded", "q2", "a2")], [("q2", "a2")]),
        (NEWEST_FIRST, [(f"q{i}", "a") for i in range(21 - MAX_TURNS, 21)]),
    ],
)
def test_pick_turns_keeps_the_sessions_succeeded_turns_newest_last(rows: list[Any], turns: list[Any]) -> None:
    assert pick_turns(rows, "s") == turns


def test_pick_turns_cuts_long_turns_and_bounds_the_whole_history() -> None:
    rows = [("s", "succeeded", "q" * 5000, "a" * 5000)] * 4
    picked = pick_turns(rows, "s")
    assert all(len(q) == len(a) == MAX_TURN_CHARS for q, a in picked)
    assert sum(len(q) + len(a) for q, a in picked) <= MAX_HISTORY_CHARS and len(picked) == 2
    assert history_messages(picked[:1]) == [
        {"role": "user", "content": picked[0][0]},
        {"role": "assistant", "content": picked[0][1]},
    ]


def ask(client: httpx.Client, query: str, session_id: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"agent_type": "query", "query": query}
    if session_id:
        body["session_id"] = session_id
    job = client.post("/api/v1/jobs", json=body).json()
    done = client.get(f"/api/v1/jobs/{job['id']}", params={"wait": 30}).json()
    assert done["status"] == "succeeded", done
    return done


def conversation(request: dict[str, Any]) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in request["body"]["messages"] if m["role"] != "system"]


def test_a_session_remembers_its_earlier_turns_and_no_one_elses(sim_gpt4o: tuple[Stack, SimControl]) -> None:
    stack, control = sim_gpt4o
    control.reset()
    clients = []
    for _ in range(2):
        _, key = create_user(stack.env["REDIS_URL"])
        clients.append(httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {key}"}, timeout=30))
    alice, bob = clients
    try:
        first = ask(alice, "My name is Ada.", "chat-1")
        ask(alice, "Unrelated question in another session.", "chat-2")
        ask(alice, "No session at all.", None)
        ask(bob, "My name is Bob.", "chat-1")  # the same session id, another user
        ask(alice, "What is my name?", "chat-1")
        ask(bob, "And mine?", "chat-1")
    finally:
        for client in clients:
            client.close()
    requests = control.requests()
    assert conversation(requests[0]) == [("user", "My name is Ada.")]
    assert conversation(requests[4]) == [
        ("user", "My name is Ada."),
        ("assistant", first["result"]),
        ("user", "What is my name?"),
    ]
    assert conversation(requests[5]) == [
        ("user", "My name is Bob."),
        ("assistant", "Simulated answer to: My name is Bob."),
        ("user", "And mine?"),
    ]
    assert conversation(requests[1]) == [("user", "Unrelated question in another session.")]
