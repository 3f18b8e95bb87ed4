"""Checking a job submission field by field; every error names the field and what to send."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from events.catalog import AGENT_TYPES

SESSION_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
MODEL = re.compile(r"^[A-Za-z0-9_./:@-]{1,128}$")
IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
FIELDS = {"agent_type", "query", "model", "max_tokens", "session_id", "metadata", "attachments"}
MAX_METADATA_BYTES = 4096
MAX_ATTACHMENTS = 8


class InvalidFieldError(ValueError):
    """Raised when a submitted field is missing, of the wrong type or out of range."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"Field '{name}': {message}")
        self.field = name


@dataclass(frozen=True)
class Submission:
    """A valid job submission."""

    agent_type: str
    query: str
    model: str | None
    max_tokens: int
    session_id: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    attachments: list[Any] = field(default_factory=list)


def whole(value: Any) -> Any:
    """1.0 as 1 (JSON Schema, and so our OpenAPI document, counts it as an integer); anything else as it is."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _string(body: dict[str, Any], name: str, *, required: bool = False) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise InvalidFieldError(name, "is required.")
        return None
    if not isinstance(value, str):
        raise InvalidFieldError(name, f"must be a string, not {type(value).__name__}.")
    return value


def parse_submission(body: dict[str, Any], *, max_query_chars: int, max_tokens_default: int,
                     max_tokens_limit: int) -> Submission:
    """Validate a POST /jobs body; raises InvalidFieldError for the first problem found."""
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise InvalidFieldError(unknown[0], f"is not a known field; send only {', '.join(sorted(FIELDS))}.")
    agent = _string(body, "agent_type", required=True) or ""
    if agent not in AGENT_TYPES:
        raise InvalidFieldError("agent_type", f"unknown agent {agent!r}; use one of: {', '.join(sorted(AGENT_TYPES))}.")
    query = _string(body, "query", required=True) or ""
    if not query.strip():
        raise InvalidFieldError("query", "must not be empty.")
    if len(query) > max_query_chars:
        raise InvalidFieldError("query", f"must be at most {max_query_chars} characters.")
    model = _string(body, "model")
    if model is not None and not MODEL.fullmatch(model):
        raise InvalidFieldError("model", "must be 1 to 128 letters, digits or ._/:@- characters.")
    max_tokens = whole(body.get("max_tokens", max_tokens_default))
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
        raise InvalidFieldError("max_tokens", "must be an integer.")
    if not 1 <= max_tokens <= max_tokens_limit:
        raise InvalidFieldError("max_tokens", f"must be between 1 and {max_tokens_limit}.")
    session_id = _string(body, "session_id") or ""
    if session_id and not SESSION_ID.fullmatch(session_id):
        raise InvalidFieldError("session_id", "must be 1 to 128 letters, digits or ._:- characters.")
    metadata = body.get("metadata")
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, dict):
        raise InvalidFieldError("metadata", "must be a JSON object.")
    if len(json.dumps(metadata)) > MAX_METADATA_BYTES:
        raise InvalidFieldError("metadata", f"must be at most {MAX_METADATA_BYTES} bytes as JSON.")
    attachments = body.get("attachments")
    attachments = [] if attachments is None else attachments
    if not isinstance(attachments, list) or not all(isinstance(a, dict) for a in attachments):
        raise InvalidFieldError("attachments", "must be a list of objects.")
    if len(attachments) > MAX_ATTACHMENTS:
        raise InvalidFieldError("attachments", f"must hold at most {MAX_ATTACHMENTS} items.")
    return Submission(agent, query, model, max_tokens, session_id, metadata, attachments)


def check_idempotency_key(value: str) -> str:
    """Return the key if it is 1 to 255 visible ASCII characters, else raise InvalidFieldError."""
    if not IDEMPOTENCY_KEY.fullmatch(value):
        raise InvalidFieldError("Idempotency-Key", "must be 1 to 255 visible ASCII characters.")
    return value
