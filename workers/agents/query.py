"""The general `query` agent: answers any question, with a calculator and text statistics at hand."""

from __future__ import annotations

from events.catalog import AGENT_TYPES
from workers.agents.agent import AgentContext, tool_loop
from workers.agents.tools import CALCULATOR, TEXT_STATS

SYSTEM = (
    "You are a helpful assistant. Use the calculator for any arithmetic and text_stats when asked about "
    "the text itself. Answer concisely."
)


class QueryAgent:
    """General questions: tool use, then the answer, within the limits of its catalog entry."""

    spec = AGENT_TYPES["query"]
    name = spec.name

    def run(self, ctx: AgentContext) -> str:
        """Answer `ctx.query`."""
        return tool_loop(ctx, SYSTEM, [CALCULATOR, TEXT_STATS], self.spec)
