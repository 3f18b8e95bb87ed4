"""The agents a job may name, and the limits each one works within: the one place they are declared.

The API reads these to check a submission and to size a job's budget hold (it never imports agent code); each
agent in workers/agents reads its own entry and obeys it. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AgentSpec:
    """What one agent is: its name, purpose and limits."""

    name: str
    description: str
    max_llm_calls: int  # model calls per job (tool steps plus the answer)
    tool_results_per_call: int = 2  # at most this many tool calls are run after one model call
    max_tool_result_chars: int = 2000  # a tool's result is cut to this before the model sees it
    # The first request's bytes beyond its query (system prompt, tool specs, JSON framing): the hold at submit
    # counts on it. tests/test_admission.py checks each against the agent's real first request.
    prompt_overhead_bytes: int = 1024


AGENT_TYPES: dict[str, AgentSpec] = {
    spec.name: spec
    for spec in (
        AgentSpec(
            "query",
            "General questions, with a calculator and text statistics.",
            max_llm_calls=3,
            prompt_overhead_bytes=768,
        ),
        AgentSpec(
            "math",
            "Exact mathematics with sympy: evaluate, solve, simplify, differentiate, integrate.",
            4,
            prompt_overhead_bytes=1440,  # the sympy tool's spec is about 1,100 bytes
        ),
        AgentSpec(
            "code",
            "Writes Python and runs it in a sandbox; reports stdout, stderr and exit status.",
            4,
            max_tool_result_chars=4000,  # a run's status line, then its stdout and stderr
            prompt_overhead_bytes=800,
        ),
        AgentSpec(
            "rag",
            "Answers from your uploaded documents, citing document, chunk and score.",
            3,
            max_tool_result_chars=3200,  # four passages of about 600 characters, each with its citation
            prompt_overhead_bytes=624,
        ),
        AgentSpec(
            "vision",
            "Describes an attached image (a vision model, or its facts offline).",
            2,
            prompt_overhead_bytes=688,  # without the image: the hold counts each as budgets.IMAGE_TOKENS
        ),
    )
}
