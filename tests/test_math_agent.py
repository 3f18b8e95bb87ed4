"""The `math` agent: the whitelist parser (pure), reading requests in words (pure), the sympy tool in its limited
child process, and whole jobs offline and through the LLM simulator (real Redis, workers and API)."""

from __future__ import annotations

from typing import Iterator

import httpx
import pytest
import sympy

from tests.llmsim import SimControl
from tests.simstack import fresh_user
from tests.sse import read_events
from tests.stack import Stack
from workers.agents.math import read_request, run_sympy, sympy_tool
from workers.agents.mathparse import MathSyntaxError, parse

x, y = sympy.symbols("x y")


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("2+3*4", sympy.Integer(14)),
        ("2^10", sympy.Integer(1024)),
        ("2**3**2", sympy.Integer(512)),
        ("-x^2", -(x**2)),
        ("0.1 + 0.2", sympy.Rational(3, 10)),
        ("1e3", sympy.Integer(1000)),
        ("2x + 3(x+1)", 5 * x + 3),
        ("sin(x)*x^2", sympy.sin(x) * x**2),
        ("ln(e) + sqrt(8)", 1 + 2 * sympy.sqrt(2)),
        ("5!", sympy.Integer(120)),
        ("x^2 - 4 = 0", sympy.Eq(x**2 - 4, 0)),
        ("binomial(5, 2) * y", 10 * y),
        ("theta + pi", sympy.Symbol("theta") + sympy.pi),
    ],
)
def test_the_parser_builds_exact_sympy_objects(text: str, value: object) -> None:
    assert parse(text) == value


@pytest.mark.parametrize(
    ("text", "mentions"),
    [
        ("__import__('os').system('id')", "Unexpected character"),
        ("x.__class__", "Unexpected character '.'"),
        ("eval(1)", "Unknown name 'eval'"),
        ("import os", "Unknown name 'import'"),
        ("Symbol('x')", "Unknown name 'Symbol'"),
        ("xy + 1", "Unknown name 'xy'"),
        ("2^1001", "Exponents above 1000"),
        ("(10^999)^999", "exceed 100000 bits"),
        ("1001!", "Factorials above 1000!"),
        ("(" * 60 + "x" + ")" * 60, "nested more than 40"),
        ("x + " * 200 + "x", "longer than 500 characters"),
        ("1/0", "Division by zero"),
        ("2 +", "ended too soon"),
        ("(x", "Expected ')'"),
        ("sin(x) cos", "Expected '('"),
        ("", "no expression"),
    ],
)
def test_the_parser_refuses_anything_outside_its_whitelist_or_bounds(text: str, mentions: str) -> None:
    with pytest.raises(MathSyntaxError, match=mentions.replace("(", r"\(").replace("^", r"\^").replace(")", r"\)")):
        parse(text)


@pytest.mark.parametrize(
    ("text", "request_"),
    [
        ("solve x^2 - 4 = 0", {"operation": "solve", "expression": "x^2 - 4 = 0"}),
        ("differentiate sin(x)*x^2", {"operation": "differentiate", "expression": "sin(x)*x^2"}),
        (
            "integrate x^2 from 0 to 1",
            {"operation": "integrate", "expression": "x^2", "lower": "0", "upper": "1"},
        ),
        ("simplify (x^2-1)/(x-1)", {"operation": "simplify", "expression": "(x^2-1)/(x-1)"}),
        ("evaluate 2^100 / 3", {"operation": "evaluate", "expression": "2^100 / 3"}),
        ("What is 2 + 2?", {"operation": "evaluate", "expression": "2 + 2"}),
        (
            "What is the second derivative of x^3 with respect to x?",
            {"operation": "differentiate", "expression": "x^3", "variable": "x", "order": 2},
        ),
        (
            "limit of sin(x)/x as x -> 0",
            {"operation": "limit", "expression": "sin(x)/x", "variable": "x", "point": "0"},
        ),
        ("Solve 2y + 3 = 7 for y.", {"operation": "solve", "expression": "2y + 3 = 7", "variable": "y"}),
        ("the integral of 1/x dx", {"operation": "integrate", "expression": "1/x", "variable": "x"}),
        ("factor x^2 - 5x + 6", {"operation": "factor", "expression": "x^2 - 5x + 6"}),
        ("x^2 + 1", {"operation": "evaluate", "expression": "x^2 + 1"}),
    ],
)
def test_a_request_in_words_is_read_for_its_operation_expression_and_bounds(text: str, request_: dict) -> None:
    assert read_request({"expression": text}) == request_


def test_a_models_structured_arguments_are_kept() -> None:
    args = {"expression": "x^2", "operation": "integrate", "variable": "x", "lower": "0", "upper": "2"}
    assert read_request(args) == args


def test_a_request_with_no_maths_in_it_is_refused_with_an_example() -> None:
    with pytest.raises(MathSyntaxError, match=r"No mathematical expression found.*solve x\^2 - 4 = 0"):
        read_request({"expression": "what should I cook tonight?"})


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("solve x^2 - 4 = 0", "x^2 - 4 = 0: x = -2 or x = 2"),
        ("differentiate sin(x)*x^2", "d/dx [sin(x)*x^2] = x**2*cos(x) + 2*x*sin(x)"),
        ("integrate x^2 from 0 to 1", "integral of x^2 dx from 0 to 1 = 1/3 ≈ 0.3333333333333333"),
        ("simplify (x^2-1)/(x-1)", "(x^2-1)/(x-1) = x + 1"),
        ("evaluate 2^100 / 3", "2^100 / 3 = 1267650600228229401496703205376/3 ≈ 4.2255020007607644e+29"),
        (
            "integral of exp(-x^2) from -oo to oo",
            "integral of exp(-x^2) dx from -oo to oo = sqrt(pi) ≈ 1.772453850905516",
        ),
        ("solve x^2 + 1 = 0", "x^2 + 1 = 0: x = -I or x = I"),
        ("limit of sin(x)/x as x -> 0", "limit of sin(x)/x as x -> 0 = 1"),
    ],
)
def test_the_sympy_tool_answers_exactly(text: str, answer: str) -> None:
    assert sympy_tool({"expression": text}) == answer


def test_the_sympy_tool_reports_a_parse_error_from_the_child() -> None:
    with pytest.raises(ValueError, match="Unknown name 'exec'"):
        run_sympy({"operation": "evaluate", "expression": "exec(1)"})


def test_a_computation_past_its_cpu_limit_is_stopped() -> None:
    with pytest.raises(ValueError, match="more than 1 s of CPU time"):
        run_sympy({"operation": "expand", "expression": "(a+b+c+d+f+g)^40"}, cpu_s=1, wall_s=30)


def test_a_computation_past_its_wall_clock_limit_is_stopped() -> None:
    with pytest.raises(ValueError, match=r"took longer than 0\.2 s"):
        run_sympy({"operation": "expand", "expression": "(a+b+c+d+f+g)^40"}, cpu_s=10, wall_s=0.2)


def run_job(client: httpx.Client, query: str) -> tuple[dict, list]:
    job = client.post("/api/v1/jobs", json={"agent_type": "math", "query": query}).json()
    done = client.get(f"/api/v1/jobs/{job['id']}", params={"wait": 60}).json()
    _, events = read_events(client, f"/api/v1/jobs/{job['id']}/events")
    return done, events


def test_offline_the_agent_answers_exactly_from_its_tool(alice: httpx.Client) -> None:
    done, events = run_job(alice, "integrate x^2 from 0 to 1")
    assert done["status"] == "succeeded", done
    assert done["result"] == (
        "[offline model] From my tools: sympy: integral of x^2 dx from 0 to 1 = 1/3 ≈ 0.3333333333333333."
    )
    [start] = [e.data["data"] for e in events if e.event == "tool_start"]
    [end] = [e.data["data"] for e in events if e.event == "tool_end"]
    assert start["tool"] == end["tool"] == "sympy" and "integrate x^2" in start["arguments"]
    assert end["ok"] and end["result"].endswith("= 1/3 ≈ 0.3333333333333333")


def test_offline_a_request_without_maths_is_answered_with_what_to_write(alice: httpx.Client) -> None:
    done, events = run_job(alice, "tell me a story")
    assert done["status"] == "succeeded"
    [end] = [e.data["data"] for e in events if e.event == "tool_end"]
    assert not end["ok"] and "No mathematical expression found" in end["result"]
    assert "No mathematical expression found" in done["result"]


@pytest.fixture
def api(sim_default: tuple[Stack, SimControl]) -> Iterator[httpx.Client]:
    with fresh_user(*sim_default) as client:
        yield client


def test_with_a_model_the_tool_call_loop_runs_sympy_and_the_answer_uses_it(sim_default, api: httpx.Client) -> None:
    _, control = sim_default
    control.script(
        {"kind": "tool_call", "name": "sympy", "arguments": {"operation": "solve", "expression": "x^2 - 2 = 0"}},
        {"kind": "tool_call", "name": "sympy", "arguments": {"operation": "differentiate", "expression": "x^3"}},
    )
    done, events = run_job(api, "solve x^2 = 2, then differentiate x^3")
    assert done["status"] == "succeeded", done
    assert done["result"] == "Simulated answer using tool result: d/dx [x^3] = 3*x**2"
    ends = [e.data["data"] for e in events if e.event == "tool_end"]
    assert [e["result"] for e in ends] == [
        "x^2 - 2 = 0: x = -sqrt(2) ≈ -1.4142135623730951 or x = sqrt(2) ≈ 1.4142135623730951",
        "d/dx [x^3] = 3*x**2",
    ]
    requests = control.requests()
    assert len(requests) == 3 and all(r["body"]["tools"][0]["function"]["name"] == "sympy" for r in requests)
    assert requests[2]["body"]["messages"][-1]["content"] == "d/dx [x^3] = 3*x**2"


def test_with_a_model_that_never_stops_calling_tools_the_job_fails_at_the_step_limit(
    sim_default, api: httpx.Client
) -> None:
    _, control = sim_default
    control.script(*[{"kind": "tool_call", "name": "sympy", "arguments": {"expression": "1+1"}}] * 4)
    done, _ = run_job(api, "keep going")
    assert done["status"] == "failed" and done["error"]["code"] == "agent_error"
    assert "all 4 model calls" in done["error"]["message"]
    requests = control.requests()
    assert len(requests) == 4 and "tools" not in requests[3]["body"]  # the last call was offered no tools


def test_with_a_model_a_tool_error_goes_back_to_the_model_and_the_job_still_answers(
    sim_default, api: httpx.Client
) -> None:
    _, control = sim_default
    control.script({"kind": "tool_call", "name": "sympy", "arguments": {"expression": "__import__('os')"}})
    done, events = run_job(api, "break it")
    assert done["status"] == "succeeded"
    [end] = [e.data["data"] for e in events if e.event == "tool_end"]
    assert not end["ok"] and end["result"].startswith("error: ")
    assert done["result"] == f"Simulated answer using tool result: {end['result']}"
