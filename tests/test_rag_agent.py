"""The `rag` agent end to end: documents uploaded over HTTP, ingested by one worker process and searched by the
job's (the session's worker pool has two), answers offline with citations of the owner's documents only."""

from __future__ import annotations

from typing import Any

import httpx

from tests.sse import read_events
from tests.stack import wait_for

TEA = (
    "Brewing guide. Green tea is brewed with water at about 80 degrees Celsius for two minutes; hotter water "
    "makes it bitter. Black tea wants boiling water and four minutes of steeping."
)
BIKES = "Bicycle maintenance: oil the chain every 300 kilometres and check the tyre pressure weekly."
BOB_TEA = "Bob's notes: green tea tastes best with water at 70 degrees Celsius, brewed for three minutes."


def add_document(client: httpx.Client, name: str, text: str) -> str:
    resp = client.post("/api/v1/documents", files={"file": (name, text.encode(), "text/plain")})
    assert resp.status_code == 202, resp.text
    doc_id = resp.json()["id"]
    wait_for(
        lambda: client.get(f"/api/v1/documents/{doc_id}").json()["status"] == "ready",
        timeout=30,
        what=f"{name} to be ready",
    )
    return doc_id


def ask(client: httpx.Client, question: str) -> dict[str, Any]:
    resp = client.post("/api/v1/jobs", json={"agent_type": "rag", "query": question, "cache": False})
    assert resp.status_code == 202, resp.text
    done = client.get(f"/api/v1/jobs/{resp.json()['id']}", params={"wait": 30}).json()
    assert done["status"] == "succeeded", done
    return done


def test_rag_answers_from_the_owners_documents_with_citations(client_for) -> None:  # type: ignore[no-untyped-def]
    alice, bob = client_for(), client_for()
    tea = add_document(alice, "tea-guide.txt", TEA)
    bikes = add_document(alice, "bikes.txt", BIKES)
    bobs = add_document(bob, "bob-tea.txt", BOB_TEA)

    answer = ask(alice, "What water temperature for green tea?")["result"]
    assert answer.startswith("[offline model]")
    assert f'[1] "tea-guide.txt" ({tea}), chunk 0, score' in answer and "80 degrees Celsius" in answer
    assert bikes not in answer  # no shared word: not a match at all
    assert bobs not in answer and "70 degrees" not in answer  # a similar document of another user: invisible

    bob_answer = ask(bob, "What water temperature for green tea?")["result"]
    assert f'"bob-tea.txt" ({bobs}), chunk 0' in bob_answer and tea not in bob_answer


def test_rag_streams_the_search_as_tool_events_and_citations(client_for) -> None:  # type: ignore[no-untyped-def]
    alice = client_for()
    tea = add_document(alice, "tea-guide.txt", TEA)
    job = alice.post(
        "/api/v1/jobs", json={"agent_type": "rag", "query": "How long to steep black tea?", "cache": False}
    ).json()
    status, events = read_events(alice, f"/api/v1/jobs/{job['id']}/events")
    assert status == 200 and events[-1].event == "done"
    start = next(e for e in events if e.event == "tool_start")
    assert start.data["data"]["tool"] == "search_documents"
    end = next(e for e in events if e.event == "tool_end")
    assert end.data["data"]["ok"] and tea in end.data["data"]["result"]
    cited = next(e for e in events if e.event == "metadata" and e.data["data"].get("event") == "citations")
    first = cited.data["data"]["citations"][0]
    assert first["document_id"] == tea and first["document"] == "tea-guide.txt" and first["chunk"] == 0
    assert first["score"] > 0


def test_a_deleted_document_is_gone_from_the_next_search(client_for) -> None:  # type: ignore[no-untyped-def]
    alice = client_for()
    tea = add_document(alice, "tea-guide.txt", TEA)
    question = "What water temperature for green tea?"
    for _ in range(2):  # warm both worker processes' in-memory indexes (the jobs may land on either)
        assert tea in ask(alice, question)["result"]
    assert alice.delete(f"/api/v1/documents/{tea}").status_code == 204
    for _ in range(3):
        answer = ask(alice, question)["result"]
        assert tea not in answer and "No passage of your documents matches" in answer


def test_rag_without_documents_says_how_to_add_them(client_for) -> None:  # type: ignore[no-untyped-def]
    answer = ask(client_for(), "Anything about tea?")["result"]
    assert "POST /api/v1/documents" in answer
