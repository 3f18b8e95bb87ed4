"""The agents a job can name as `agent_type`."""

from __future__ import annotations

from workers.agents.agent import Agent
from workers.agents.query import QueryAgent

AGENTS: dict[str, Agent] = {agent.name: agent for agent in (QueryAgent(),)}
