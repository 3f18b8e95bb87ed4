"""JSON Schemas of the request bodies: the OpenAPI document shows them and the API checks bodies against them.

They are built from the same constants the handlers' own checks use, so the document, the schema check and
the handlers agree on what a valid request is.
"""

from __future__ import annotations

from typing import Any

from api.permissions import Permission, Role
from api.users import USER_ID
from api.validation import FIELDS, MAX_ATTACHMENTS, MODEL, SESSION_ID
from events import metrics
from events.catalog import AGENT_TYPES
from events.periods import PERIODS
from settings import Settings

MAX_USD = 1_000_000_000
MONEY = {"anyOf": [{"type": "number", "minimum": 0, "maximum": MAX_USD},
                   {"type": "string", "pattern": r"^[0-9]{1,9}(\.[0-9]{1,6})?$"}]}
USER = {"type": "string", "pattern": USER_ID.pattern}
SESSION = {"type": "string", "pattern": SESSION_ID.pattern}
AGENT = {"type": "string", "enum": sorted(AGENT_TYPES)}
MAX_TOKENS_PER_CALL = 1_000_000_000
TOKENS = {"type": "integer", "minimum": 0, "maximum": MAX_TOKENS_PER_CALL}


def job_submit(settings: Settings, *, path_agent: bool = False) -> dict[str, Any]:
    """POST /jobs (or /stream/{agent}, where the path names the agent)."""
    props: dict[str, Any] = {
        "agent_type": {"type": "string", "enum": sorted(AGENT_TYPES)},
        "query": {"type": "string", "minLength": 1, "maxLength": settings.max_query_chars, "pattern": r"\S"},
        "model": {"type": "string", "pattern": MODEL.pattern},
        "max_tokens": {"type": "integer", "minimum": 1, "maximum": settings.max_tokens_limit},
        "session_id": {"type": "string", "pattern": SESSION_ID.pattern},
        "metadata": {"type": "object"},
        "attachments": {"type": "array", "items": {"type": "object"}, "maxItems": MAX_ATTACHMENTS},
    }
    assert set(props) == FIELDS
    required = ["query"] if path_agent else ["agent_type", "query"]
    return {"type": "object", "properties": props, "required": required, "additionalProperties": False}


def request_schemas(settings: Settings) -> dict[tuple[str, str], dict[str, Any]]:
    """(route template, method) → the JSON Schema its body must meet."""
    # Whether a model has a price is the price book's state, not the request's shape: unpriced ones get 400.
    model = {"type": "string", "minLength": 1, "description": "A model with a price (GET /api/v1/costs/models)."}
    return {
        ("/api/v1/jobs", "POST"): job_submit(settings),
        ("/api/v1/stream/{agent}", "POST"): job_submit(settings, path_agent=True),
        ("/api/v1/costs/budget", "POST"): {
            "type": "object", "required": ["user_id", "limit_usd"],
            "properties": {"user_id": USER, "scope": {"enum": ["user", "session", "agent"]},
                           "session_id": SESSION, "agent": AGENT,
                           "limit_usd": {"anyOf": [MONEY, {"type": "null"}]}, "period": {"enum": list(PERIODS)},
                           "alert_pct": {"type": "integer", "minimum": 1, "maximum": 100}},
            "allOf": [
                {"if": {"properties": {"scope": {"const": "session"}}, "required": ["scope"]},
                 "then": {"required": ["session_id"], "properties": {"session_id": {"minLength": 1}}}},
                {"if": {"properties": {"scope": {"const": "agent"}}, "required": ["scope"]},
                 "then": {"required": ["agent"], "properties": {"agent": {"minLength": 1}}}},
            ]},
        ("/api/v1/costs/track", "POST"): {
            "type": "object", "required": ["user_id", "model", "input_tokens", "output_tokens"],
            "properties": {"user_id": USER, "model": model,
                           "input_tokens": TOKENS, "output_tokens": TOKENS, "cached_input_tokens": TOKENS,
                           "session_id": {"anyOf": [SESSION, {"const": ""}]},
                           "agent": {"anyOf": [AGENT, {"const": ""}]}}},
        ("/api/v1/security/users", "POST"): {
            "type": "object", "required": ["user_id"],
            "properties": {"user_id": USER, "role": {"enum": [r.value for r in Role]}, "metadata": {"type": "object"},
                           "agents": {"anyOf": [{"type": "array", "items": {"enum": sorted(AGENT_TYPES)}},
                                                {"type": "null"}]}}},
        ("/api/v1/security/users/{user_id}/role", "PUT"): {
            "type": "object", "required": ["role"],
            "properties": {"role": {"enum": [r.value for r in Role]},
                           "agents": {"anyOf": [{"type": "array", "items": {"enum": sorted(AGENT_TYPES)}},
                                                {"type": "null"}]}}},
        ("/api/v1/security/check-permission", "POST"): {
            "type": "object", "required": ["permission"],
            "properties": {"permission": {"enum": [p.value for p in Permission]}, "user_id": USER,
                           "agent": AGENT}},
        ("/api/v1/monitoring/record", "POST"): {
            "type": "object", "required": ["name"], "additionalProperties": False,
            "properties": {
                "name": {"type": "string", "pattern": metrics.NAME.pattern},
                "kind": {"enum": list(metrics.KINDS)},
                "value": {"type": "number", "minimum": -1e300, "maximum": 1e300},
                "labels": {"type": "object", "maxProperties": metrics.MAX_LABELS,
                           "propertyNames": {"pattern": metrics.LABEL.pattern},
                           "additionalProperties": {"type": "string", "maxLength": metrics.MAX_LABEL_VALUE}}}},
        ("/api/v1/security/authenticate", "POST"): {
            "type": "object", "required": ["api_key"], "properties": {"api_key": {"type": "string"}}},
    }


ERROR = {"type": "object", "required": ["title"],
         "properties": {"title": {"type": "string"}, "description": {"type": "string"}, "code": {"type": "string"}}}
