"""The agent types a job may name, as the API sees them (it never imports agent code)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AgentInfo:
    """What the API needs to know about an agent: its name, purpose and most model calls per job."""

    name: str
    description: str
    max_llm_calls: int
    prompt_overhead_bytes: int = 1024  # system prompt and tool specs, sent with every call


AGENT_TYPES: dict[str, AgentInfo] = {
    info.name: info
    for info in (AgentInfo("query", "General questions, with a calculator and text statistics.", 3),)
}
