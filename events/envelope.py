"""The one event envelope, as a typed dataclass. Pure: never imports redis.

Stream entries carry the fields `type`, `job_id`, `seq`, `ts`, `attempt`, `data` (JSON) and `v`.
Unknown fields are kept in `extra` and written back unchanged; unknown types pass through.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Mapping

import orjson

SCHEMA_VERSION = 1
STREAM_ID = re.compile(r"^[0-9]{1,15}-[0-9]{1,15}$")  # a Redis stream entry id of our era (ms, sequence)


def canonical_id(entry_id: str) -> str:
    """A stream id that matched STREAM_ID, without leading zeros ('00-0' -> '0-0'): Redis reads both alike but
    refuses '(00-0', and a comparison with '0-0' must not tell them apart."""
    ms, _, seq = entry_id.partition("-")
    return f"{int(ms)}-{int(seq)}"


class EventType(StrEnum):
    """What happened; job streams, usage, audit and lifecycle share these names."""

    START = "start"
    TOKEN = "token"
    TOOL_START = "tool_start"
    TOOL_END = "tool_end"
    METADATA = "metadata"
    USAGE = "usage"
    DONE = "done"
    ERROR = "error"
    CANCELLED = "cancelled"
    LIFECYCLE = "lifecycle"
    AUDIT = "audit"


TERMINAL_TYPES = frozenset({"done", "error", "cancelled"})
_NAMES = ("type", "job_id", "seq", "ts", "attempt", "data", "v")  # in the order from_fields reads them
_BYTE_NAMES = tuple(name.encode() for name in _NAMES)
_KNOWN = frozenset(_NAMES)


class EnvelopeError(ValueError):
    """Raised when a stream entry lacks the fields every event must have."""


def text(value: Any) -> str:
    """A Redis reply as str, whether the client decodes replies or not; bytes that are not UTF-8 become U+FFFD."""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def text_map(raw: Mapping[Any, Any]) -> dict[str, str]:
    """A Redis hash or stream entry as str → str."""
    return {text(k): text(v) for k, v in raw.items()}


@dataclass(frozen=True)
class Event:
    """One event. `type` is a plain string so that unknown types survive a round trip."""

    type: str
    job_id: str = ""
    seq: int = 0
    ts: float = 0.0
    attempt: int = 0
    data: Mapping[str, Any] = field(default_factory=dict)
    v: int = SCHEMA_VERSION
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def terminal(self) -> bool:
        """True for the events after which a job's stream ends."""
        return self.type in TERMINAL_TYPES

    def to_fields(self) -> dict[str, str]:
        """The stream entry's fields, every value a string."""
        fields = dict(self.extra)
        fields.update(
            type=self.type,
            job_id=self.job_id,
            seq=str(self.seq),
            ts=f"{self.ts:.6f}",
            attempt=str(self.attempt),
            data=json.dumps(self.data, separators=(",", ":"), ensure_ascii=False),
            v=str(self.v),
        )
        return fields

    @classmethod
    def from_fields(cls, raw: Mapping[bytes | str, bytes | str]) -> Event:
        """Decode a stream entry; raises EnvelopeError when it has no type or bad numbers."""
        return cls(*_read(raw))

    def to_json(self) -> dict[str, Any]:
        """What SSE clients receive as `data:`. A token also carries its text as top-level `content`, where the
        seed's JavaScript client reads it (`data.data.text` stays)."""
        return _json(self.type, self.job_id, self.seq, self.ts, self.attempt, dict(self.data), self.v)

    @staticmethod
    def json_of_fields(raw: Mapping[bytes | str, bytes | str]) -> dict[str, Any]:
        """`from_fields(raw).to_json()` without the Event in between (the relay's hot path); raises as
        from_fields does."""
        return _json(*_read(raw)[:7])


Fields = tuple[str, str, int, float, int, dict[str, Any], int, dict[str, str]]  # Event's, in its order


def _read(raw: Mapping[bytes | str, bytes | str]) -> Fields:
    """A stream entry's fields as Event's, in its order. Fields are looked up by the keys the client returned
    (bytes, or str from a decoding client), numbers and the JSON `data` are parsed from the raw values, and only the
    strings kept are decoded: on every hot path (the ledger, the relay)."""
    names = _BYTE_NAMES if isinstance(next(iter(raw), ""), bytes) else _NAMES
    known = [raw.get(name) for name in names]
    etype, job_id, seq, ts, attempt, data, v = known
    if etype is None:
        raise EnvelopeError("The entry has no 'type' field.")
    found = len(known) - known.count(None)
    extra = {text(k): text(val) for k, val in raw.items() if text(k) not in _KNOWN} if len(raw) > found else {}
    try:
        decoded = orjson.loads(data or b"{}")
        return (
            text(etype),
            text(job_id) if job_id is not None else "",
            int(seq or 0),
            float(ts or 0.0),
            int(attempt or 0),
            decoded if isinstance(decoded, dict) else {"value": decoded},
            int(v or SCHEMA_VERSION),
            extra,
        )
    except ValueError as ex:
        raise EnvelopeError(f"The entry has a malformed field: {ex}.") from ex


def _json(etype: str, job_id: str, seq: int, ts: float, attempt: int, data: dict[str, Any], v: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": etype,
        "job_id": job_id,
        "seq": seq,
        "ts": ts,
        "attempt": attempt,
        "data": data,
        "v": v,
    }
    if etype == EventType.TOKEN:
        out["content"] = data.get("text", "")
    return out
