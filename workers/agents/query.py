"""The general `query` agent: answers any question, with a calculator and text statistics at hand, and with the
earlier turns of its session (same user, same `session_id`) as the conversation so far."""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Sequence

from events.catalog import AGENT_TYPES
from events.envelope import text
from events.store import keyspace
from workers.agents.agent import AgentContext, tool_loop
from workers.agents.redis_client import agent_redis
from workers.agents.tools import CALCULATOR, TEXT_STATS

SYSTEM = (
    "You are a helpful assistant. Use the calculator for any arithmetic and text_stats when asked about "
    "the text itself. Earlier turns of this conversation come before the question. Answer concisely."
)
MAX_TURNS = 6  # earlier turns given as context
MAX_TURN_CHARS = 2000  # each query and each answer is cut to this
MAX_HISTORY_CHARS = 8000  # all turns together; the oldest go first
SCAN_JOBS = 200  # how far back through the user's jobs to look for the session's turns
_FIELDS = ("session_id", "status", "query", "result")

Turn = tuple[str, str]  # (query, answer)
Lookup = Callable[[Mapping[str, str]], list[Turn]]


def _cut(value: str) -> str:
    return value if len(value) <= MAX_TURN_CHARS else value[: MAX_TURN_CHARS - 1] + "…"


def pick_turns(rows: Iterable[Sequence[str]], session_id: str) -> list[Turn]:
    """The session's turns from the user's earlier jobs (rows of `_FIELDS`, newest first): succeeded jobs of the
    same session only, at most MAX_TURNS and MAX_HISTORY_CHARS, returned oldest first (newest last)."""
    turns: list[Turn] = []
    used = 0
    for session, status, query, result in rows:
        if session != session_id or status != "succeeded" or not result:
            continue
        turn = (_cut(query), _cut(result))
        used += len(turn[0]) + len(turn[1])
        if used > MAX_HISTORY_CHARS or len(turns) == MAX_TURNS:
            break
        turns.append(turn)
    return turns[::-1]


def session_turns(job: Mapping[str, str]) -> list[Turn]:
    """The earlier turns of the job's session, read from its owner's job index (never another user's)."""
    session_id, owner = job.get("session_id", ""), job.get("owner", "")
    if not session_id or not owner:
        return []
    client = agent_redis()
    before = f"({job.get('created_at') or '+inf'}"  # strictly earlier: not this job, nor anything after it
    ids = client.zrevrangebyscore(keyspace.user_jobs(owner), before, "-inf", start=0, num=SCAN_JOBS)
    pipe = client.pipeline(transaction=False)
    for job_id in ids:
        pipe.hmget(keyspace.job(text(job_id)), *_FIELDS)
    rows = ([text(v) if v is not None else "" for v in row] for row in pipe.execute())
    return pick_turns(rows, session_id)


def history_messages(turns: list[Turn]) -> list[dict[str, Any]]:
    """Turns as chat messages: each earlier question and its answer."""
    messages: list[dict[str, Any]] = []
    for query, answer in turns:
        messages += [{"role": "user", "content": query}, {"role": "assistant", "content": answer}]
    return messages


class QueryAgent:
    """General questions: tool use, then the answer, within the limits of its catalog entry."""

    spec = AGENT_TYPES["query"]
    name = spec.name

    def __init__(self, lookup: Lookup = session_turns) -> None:
        self.lookup = lookup

    def run(self, ctx: AgentContext) -> str:
        """Answer `ctx.query`, after the session's earlier turns."""
        history = history_messages(self.lookup(ctx.job))
        return tool_loop(ctx, SYSTEM, [CALCULATOR, TEXT_STATS], self.spec, history=history)
