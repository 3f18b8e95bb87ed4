"""The seed's own JavaScript client, verbatim, in Chromium against POST /api/v1/stream/query (plus a key)."""

from __future__ import annotations

import json

import httpx
from playwright.sync_api import Browser

from tests.sse import SSE, parse
from tests.stack import Stack

# From ../shared/seed/PHASE6_IMPLEMENTATION.md, "Example Usage", unchanged but for the Authorization header (the
# seed's example has no auth) and the two names it assumes exist: `responseDiv` and the key.
SEED_CLIENT = """
async ([key]) => {
const responseDiv = document.createElement('div');
const response = await fetch('/api/v1/stream/query', {
    method: 'POST',
    headers: {'Content-Type': 'application/json', 'Authorization': 'Bearer ' + key},
    body: JSON.stringify({query: 'What is 2+2?', agent_type: 'math'})
});

const reader = response.body.getReader();
const decoder = new TextDecoder();

while (true) {
    const {done, value} = await reader.read();
    if (done) break;

    const chunk = decoder.decode(value);
    const lines = chunk.split('\\n\\n');

    for (const line of lines) {
        if (line.startsWith('data: ')) {
            const data = JSON.parse(line.substring(6));

            if (data.type === 'token') {
                responseDiv.textContent += data.content;
            }
        }
    }
}
return responseDiv.textContent;
}
"""


def test_seed_javascript_client_prints_the_streamed_answer(browser: Browser, stack: Stack, alice: httpx.Client) -> None:
    page = browser.new_page()
    try:
        page.goto(f"{stack.url}/api/v1/stream/demo")  # any page of the API: the seed's fetch uses a relative URL
        printed = page.evaluate(SEED_CLIENT, [alice.key])  # type: ignore[attr-defined]
    finally:
        page.close()
    [job] = alice.get("/api/v1/jobs").json()["jobs"]
    job = alice.get(f"/api/v1/jobs/{job['id']}", params={"wait": 10}).json()
    assert job["status"] == "succeeded"
    assert printed == job["result"] and "2+2 = 4" in printed


def test_every_data_block_of_a_post_stream_is_json_alone_and_tokens_carry_content(alice: httpx.Client) -> None:
    with alice.stream("POST", "/api/v1/stream/query", json={"query": "What is 6*7?"}) as resp:
        body = resp.read().decode()
    blocks = [b for b in body.split("\n\n") if b.startswith("data: ")]
    envelopes = [json.loads(b[len("data: ") :]) for b in blocks]  # raises if anything follows the JSON
    assert envelopes[0]["type"] == "job" and envelopes[-1]["type"] == "done"
    tokens = [e for e in envelopes if e["type"] == "token"]
    assert tokens and all(e["content"] == e["data"]["text"] for e in tokens)
    assert "".join(e["content"] for e in tokens) == envelopes[-1]["data"]["result"]
    events = [e for e in parse(iter(body.split("\n"))) if isinstance(e, SSE)]  # a standard reader sees the ids
    assert [e.id for e in events[1:]] == [e["id"] for e in envelopes[1:]]
    assert [e.event for e in events] == [e["type"] for e in envelopes]


def test_job_events_stay_typed_for_event_source(alice: httpx.Client) -> None:
    job = alice.post("/api/v1/jobs", json={"agent_type": "query", "query": "What is 1+1?"}).json()
    with alice.stream("GET", f"/api/v1/jobs/{job['id']}/events") as resp:
        body = resp.read().decode()
    block = next(b for b in body.split("\n\n") if "event: token" in b)
    name, event_id, data = block.split("\n")
    assert name == "event: token" and event_id.startswith("id: ")
    envelope = json.loads(data.removeprefix("data: "))
    assert envelope["content"] == envelope["data"]["text"] and envelope["id"] == event_id.removeprefix("id: ")
