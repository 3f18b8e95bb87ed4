"""The agents a job can name as `agent_type`: one module each, limits in events/catalog.py."""

from __future__ import annotations

from workers.agents.agent import Agent
from workers.agents.code import CodeAgent
from workers.agents.math import MathAgent
from workers.agents.query import QueryAgent
from workers.agents.rag import RagAgent
from workers.agents.vision import VisionAgent

AGENTS: dict[str, Agent] = {
    agent.name: agent for agent in (QueryAgent(), MathAgent(), CodeAgent(), RagAgent(), VisionAgent())
}
