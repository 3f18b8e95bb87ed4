"""The `code` agent: finding the Python in a request (pure), the run_python tool in the real sandbox, and whole
jobs offline and through the LLM simulator (real Redis, workers and API)."""

from __future__ import annotations

from typing import Iterator

import httpx
import pytest

from tests.llmsim import SimControl
from tests.simstack import fresh_user
from tests.sse import read_events
from tests.stack import SECRET, Stack
from workers.agents.code import find_code, run_code


@pytest.mark.parametrize(
    ("text", "what", "code"),
    [
        ("what is 2**100?", "`2**100`", "_value = (\n2**100\n)\nif _value is not None:\n    print(repr(_value))\n"),
        ("Run this:\n```python\nfor i in range(3):\n    print(i)\n```\nthanks", "a program of 2 lines", None),
        ("```\nprint(1)\n```", "`print(1)`", "print(1)\n"),
        ("import sys; print(sys.version_info[:2])", "a program of 1 line", "import sys; print(sys.version_info[:2])"),
        ("please run `len('abc')`", "`len('abc')`", None),
        ("what does [x for x in range(5) if x % 2] give?", "`[x for x in range(5) if x % 2]`", None),
        ("what is math.sqrt(2) * 2?", "`math.sqrt(2) * 2`", None),
        ("Can you tell me what is 17 * 23 please", "`17 * 23`", None),
        ("print('hi')", "`print('hi')`", "print('hi')\n"),
    ],
)
def test_the_python_in_a_request_is_found(text: str, what: str, code: str | None) -> None:
    found = find_code(text)
    assert found is not None and found.what == what
    if code is not None:
        assert found.code == code


def test_an_expression_naming_a_standard_module_imports_it() -> None:
    found = find_code("what is math.sqrt(2) * 2?")
    assert found is not None and found.code.startswith("import math\n")


@pytest.mark.parametrize("text", ["hello", "hello there", "what is the meaning of life?", "", "what is it"])
def test_plain_words_are_not_taken_for_python(text: str) -> None:
    assert find_code(text) is None


def test_the_tool_runs_an_expression_and_reports_its_value() -> None:
    assert run_code({"code": "what is 2**100?"}).startswith("Ran `2**100`: exit status 0 (success); ")
    assert run_code({"code": "what is 2**100?"}).endswith(
        "sandbox: bwrap\nstdout:\n1267650600228229401496703205376\n\nstderr: (empty)"
    )


def test_the_tool_reports_an_exception_with_its_traceback() -> None:
    report = run_code({"code": "```python\nraise ValueError('boom')\n```"})
    assert report.startswith("Ran a program of 1 line: exit status 1 (an error: see stderr); ")
    assert "stdout: (empty)" in report and report.endswith("ValueError: boom\n")


def test_the_tool_says_what_to_write_when_there_is_no_python() -> None:
    assert run_code({"code": "hello there"}) == (
        "No Python found to run (as a whole, the text is not valid Python: invalid syntax, line 1): put the program "
        "in a ```python fenced block, or ask about one expression, e.g. 'what is sum(range(10))?'."
    )


def run_job(client: httpx.Client, query: str) -> tuple[dict, list]:
    job = client.post("/api/v1/jobs", json={"agent_type": "code", "query": query}).json()
    done = client.get(f"/api/v1/jobs/{job['id']}", params={"wait": 60}).json()
    _, events = read_events(client, f"/api/v1/jobs/{job['id']}/events")
    return done, events


def tool_ends(events: list) -> list[dict]:
    return [e.data["data"] for e in events if e.event == "tool_end"]


def test_offline_the_agent_runs_the_expression_in_the_query(alice: httpx.Client) -> None:
    done, events = run_job(alice, "what is sum(i * i for i in range(10))?")
    assert done["status"] == "succeeded", done
    assert done["result"].startswith("[offline model] From my tools: run_python: Ran `sum(i * i for i in range(10))`:")
    assert "exit status 0 (success)" in done["result"] and "stdout:\n285" in done["result"]
    [end] = tool_ends(events)
    assert end["ok"] and "stdout:\n285\n" in end["result"]


def test_offline_a_program_in_the_query_sees_no_network_and_no_secret(alice: httpx.Client) -> None:
    program = (
        "```python\nimport os, socket\nprint(sorted(os.environ))\nprint(list(os.environ.values()))\n"
        "socket.create_connection(('127.0.0.1', 6379), timeout=2)\n```"
    )
    done, events = run_job(alice, f"Run this please:\n{program}")
    assert done["status"] == "succeeded", done
    [end] = tool_ends(events)
    assert end["ok"] and end["result"].startswith("Ran a program of 4 lines: exit status 1 (an error: see stderr)")
    assert "ConnectionRefusedError" in end["result"] and SECRET not in end["result"]
    assert "REDIS_URL" not in end["result"] and "AGENTIC_SECRET_KEY" not in end["result"]


@pytest.fixture
def api(sim_default: tuple[Stack, SimControl]) -> Iterator[httpx.Client]:
    with fresh_user(*sim_default) as client:
        yield client


def test_with_a_model_the_program_it_writes_runs_and_a_failure_can_be_fixed(sim_default, api: httpx.Client) -> None:
    _, control = sim_default
    control.script(
        {"kind": "tool_call", "name": "run_python", "arguments": {"code": "print(sum(range(10))"}},
        {"kind": "tool_call", "name": "run_python", "arguments": {"code": "print(sum(range(10)))"}},
    )
    done, events = run_job(api, "add the numbers below ten")
    assert done["status"] == "succeeded", done
    first, second = tool_ends(events)
    assert first["ok"] and first["result"].startswith(
        "No Python found to run (as a whole, the text is not valid Python:"
    )
    assert "'(' was never closed, line 1" in first["result"]
    assert second["result"].startswith("Ran `print(sum(range(10)))`: exit status 0 (success)")
    assert done["result"].startswith("Simulated answer using tool result: Ran `print(sum(range(10)))`: exit status 0")
    assert done["result"].endswith("stdout:\n45\n\nstderr: (empty)")
    requests = control.requests()
    assert len(requests) == 3 and requests[2]["body"]["messages"][-1]["content"] == second["result"]


def test_with_a_model_a_refused_program_goes_back_to_the_model_and_the_job_still_answers(
    sim_default, api: httpx.Client
) -> None:
    _, control = sim_default
    control.script({"kind": "tool_call", "name": "run_python", "arguments": {"code": "x = 1\n" * 11_000}})
    done, events = run_job(api, "run a long program")
    assert done["status"] == "succeeded", done
    [end] = tool_ends(events)
    assert not end["ok"] and end["result"] == "error: The program is longer than 64000 characters; shorten it."
    assert done["result"] == f"Simulated answer using tool result: {end['result']}"
