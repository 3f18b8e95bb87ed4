"""The `math` agent (being built: no tools yet)."""

from __future__ import annotations

from events.catalog import AGENT_TYPES
from workers.agents.agent import AgentContext, tool_loop

SYSTEM = "You are a helpful assistant. Answer concisely."


class MathAgent:
    """Placeholder until its tools land."""

    spec = AGENT_TYPES["math"]
    name = spec.name

    def run(self, ctx: AgentContext) -> str:
        """Answer `ctx.query`."""
        return tool_loop(ctx, SYSTEM, [], self.spec)
