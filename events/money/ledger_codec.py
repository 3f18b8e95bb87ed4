"""How the ledger names its counters: the one codec its writer (the ledger consumer) and its readers (the cost
endpoints) share. Pure.

A ledger hash (one hour of one user, or of everyone, or all time) holds, per figure, a total field (`cost`,
`in`, `out`, `cached`, `calls`) and fields per member of a group: `m:{model}:{figure}`, `a:{agent}:{figure}`,
`s:{session}:{figure}`, `u:{user}:{figure}`. A member's name may itself hold ':' (`ollama:llama3`); the figure
is always the last part. A user's query hash keeps `n:{query hash}` (jobs) and `c:{query hash}` (cost).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

# Figure names in Redis -> what the API calls them.
FIGURES = {
    "cost": "cost_micros",
    "in": "input_tokens",
    "out": "output_tokens",
    "cached": "cached_input_tokens",
    "calls": "calls",
}
GROUPS = {"model": "m", "agent": "a", "session": "s", "user": "u"}
_PREFIX_GROUP = {prefix: group for group, prefix in GROUPS.items()}


def total_field(figure: str) -> str:
    """The field of a total, e.g. 'cost'."""
    return figure


def member_field(group: str, member: str, figure: str) -> str:
    """The field of one group member's figure, e.g. member_field('model', 'gpt-4o', 'cost') = 'm:gpt-4o:cost'."""
    return f"{GROUPS[group]}:{member}:{figure}"


def member_fields(group: str, member: str, figures: Sequence[str]) -> tuple[str, ...]:
    """One group member's fields of `figures`, in their order."""
    return tuple(member_field(group, member, figure) for figure in figures)


TOTAL_FIELDS = tuple(total_field(figure) for figure in FIGURES)  # every total, in the order of FIGURES


@dataclass(frozen=True)
class Field:
    """A decoded ledger field: a total (group None) or a group member's figure."""

    group: str | None
    member: str
    figure: str


def parse_field(name: str) -> Field | None:
    """Decode a field name; None for a field this codec does not know."""
    if name in FIGURES:
        return Field(None, "", name)
    prefix, _, rest = name.partition(":")
    member, _, figure = rest.rpartition(":")
    if prefix in _PREFIX_GROUP and member and figure in FIGURES:
        return Field(_PREFIX_GROUP[prefix], member, figure)
    return None


def zero() -> dict[str, int]:
    """Every figure at 0, by its API name."""
    return dict.fromkeys(FIGURES.values(), 0)


def add_up(rows: Iterable[Mapping[str, int]], group: str | None) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """Sum ledger hashes (decoded to str -> int): the totals, and per member of `group` when one is asked for."""
    totals = zero()
    members: dict[str, dict[str, int]] = {}
    for row in rows:
        for name, value in row.items():
            found = parse_field(name)
            if found is None:
                continue
            if found.group is None:
                totals[FIGURES[found.figure]] += value
            elif found.group == group:
                members.setdefault(found.member, zero())[FIGURES[found.figure]] += value
    return totals, members


def query_fields(query_hash: str) -> tuple[str, str]:
    """The (jobs, cost) fields of one query hash in a user's query hash."""
    return f"n:{query_hash}", f"c:{query_hash}"


def repeated_queries(raw: Mapping[str, int], at_least: int = 2) -> list[dict[str, int | str]]:
    """Queries run `at_least` times, with their job count and cost, from a user's query hash."""
    found: list[dict[str, int | str]] = []
    for name, jobs in raw.items():
        if name.startswith("n:") and jobs >= at_least:
            query_hash = name[2:]
            found.append(
                {"query_hash": query_hash, "jobs": jobs, "cost_micros": raw.get(query_fields(query_hash)[1], 0)}
            )
    return found
