"""A small Server-Sent Events reader for tests, over httpx."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterator

import httpx


@dataclass
class SSE:
    """One received event."""

    id: str
    event: str
    data: dict[str, Any]


def parse(lines: Iterator[str]) -> Iterator[SSE | str]:
    """Events from SSE lines; comments come through as strings. As in the SSE standard, an id holds until the next
    one (data-first streams send it in a block of its own); with no `event:` line the JSON's `type` names it."""
    fields: dict[str, str] = {}
    last_id = ""
    for line in lines:
        if line == "":
            last_id = fields.get("id", last_id)
            if "data" in fields:
                data = json.loads(fields["data"])
                name = fields.get("event") or (data.get("type") if isinstance(data, dict) else None) or "message"
                yield SSE(last_id, name, data)
            fields = {}
            continue
        if line.startswith(":"):
            yield line[1:].strip()
            continue
        name, _, value = line.partition(":")
        fields[name] = value[1:] if value.startswith(" ") else value


def read_events(
    client: httpx.Client,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    limit: int | None = None,
    timeout: float = 30,
) -> tuple[int, list[SSE]]:
    """Read a stream until it ends (or `limit` events); returns (status, events)."""
    events: list[SSE] = []
    with client.stream("GET", url, headers=headers, timeout=timeout) as resp:
        if resp.status_code != 200:
            resp.read()
            return resp.status_code, events
        for item in parse(resp.iter_lines()):
            if isinstance(item, SSE):
                events.append(item)
                if limit is not None and len(events) >= limit:
                    break
    return resp.status_code, events
