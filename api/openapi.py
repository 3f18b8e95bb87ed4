"""The OpenAPI 3.1 document, built from the live route table: each route's permission, docstrings, path
parameters and body schema (api/schemas.py), so it cannot drift from what is served."""

from __future__ import annotations

import inspect
import re
from typing import Any

import falcon

from api.costs import GROUPS, WINDOWS
from api.jobs import JOB_ID
from api.permissions import PUBLIC
from api.resources.health import VERSION
from api.resources.jobs import MAX_PAGE
from api.resources.security import AUDIT_PAGE_MAX, EPOCH_MAX, ROTATION_GRACE_MAX_S
from api.schemas import ERROR
from api.users import USER_ID
from events.catalog import AGENT_TYPES
from events.envelope import STREAM_ID
from events.jobs import STATUSES

SKIP = {"OPTIONS", "HEAD", "CONNECT", "TRACE"}
ASSETS = {"swagger-ui-bundle.js": "application/javascript", "swagger-ui.css": "text/css",
          "redoc.standalone.js": "application/javascript"}
SSE_PATHS = {"/api/v1/jobs/{job_id}/events", "/api/v1/stream/{agent}"}
HTML_PATHS = {"/docs", "/redoc", "/api/v1/stream/demo"}
# One event of a stream, as SSE clients see it: `data` is the event envelope as JSON text.
SSE_EVENT = {"type": "object", "properties": {"data": {"type": "string"}, "event": {"type": "string"},
                                             "id": {"type": "string"}, "retry": {"type": "integer"}}}


def path_params(path: str) -> list[dict[str, Any]]:
    """Path parameters with the same shapes the handlers accept."""
    shapes = {"user_id": {"type": "string", "pattern": USER_ID.pattern},
              "job_id": {"type": "string", "pattern": JOB_ID.pattern},
              "key_id": {"type": "string", "pattern": r"^[0-9a-f]{16}$"},
              "agent": {"type": "string", "enum": sorted(AGENT_TYPES)},
              "name": {"type": "string", "enum": sorted(ASSETS)}}
    return [{"name": name, "in": "path", "required": True, "schema": shapes.get(name, {"type": "string"})}
            for name in re.findall(r"\{([a-z_]+)\}", path)]


def _q(name: str, schema: dict[str, Any], description: str, *, blank: bool = False) -> dict[str, Any]:
    """A query parameter; `blank`: the handler reads ?name= (empty) as not given."""
    param = {"name": name, "in": "query", "required": False, "schema": schema, "description": description}
    if blank:
        param.update(schema={"anyOf": [schema, {"type": "string", "maxLength": 0}]}, allowEmptyValue=True)
    return param


_USER_Q = _q("user_id", {"type": "string", "pattern": USER_ID.pattern}, "Admins: whose figures (default: yours).",
             blank=True)
_CURSOR = {"type": "string", "pattern": r"^[0-9]{1,15}(\.[0-9]{1,9})?:j_[0-9a-f]{32}$"}
QUERY_PARAMS: dict[tuple[str, str], list[dict[str, Any]]] = {
    ("/api/v1/jobs", "GET"): [
        _q("status", {"enum": list(STATUSES)}, "Only jobs in this state."),
        _q("limit", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE}, "Page size (default 20)."),
        _q("cursor", _CURSOR, "next_cursor of the previous page.", blank=True),
        _q("all", {"type": "boolean"}, "Admins: false for only your own jobs.", blank=True)],
    ("/api/v1/jobs/{job_id}", "GET"): [
        _q("wait", {"type": "number", "minimum": 0, "maximum": 60}, "Long-poll up to this many seconds.")],
    ("/api/v1/jobs/{job_id}/events", "GET"): [
        _q("last_event_id", {"type": "string", "pattern": STREAM_ID.pattern}, "Resume after this event id.",
           blank=True),
        _q("token", {"type": "string"}, "The job-scoped token from stream_url (for EventSource).", blank=True)],
    ("/api/v1/costs/stats", "GET"): [
        _q("period", {"enum": [*WINDOWS, "all"]}, "Window (default week)."),
        _q("group_by", {"enum": list(GROUPS)}, "user is for admins."), _USER_Q,
        _q("all", {"type": "boolean"}, "Admins: everyone's figures.", blank=True)],
    ("/api/v1/costs/budget", "GET"): [_USER_Q],
    ("/api/v1/costs/forecast", "GET"): [_USER_Q],
    ("/api/v1/costs/recommendations", "GET"): [_USER_Q],
    ("/api/v1/security/audit", "GET"): [
        _q("actor", {"type": "string"}, "Only this actor's records.", blank=True),
        _q("action", {"type": "string"}, "Only this action (e.g. auth.failure).", blank=True),
        _q("since", {"type": "number", "minimum": 0, "maximum": EPOCH_MAX}, "From this time (epoch seconds)."),
        _q("until", {"type": "number", "minimum": 0, "maximum": EPOCH_MAX}, "Up to this time (epoch seconds)."),
        _q("cursor", {"type": "string", "pattern": STREAM_ID.pattern}, "next_cursor of the previous page.", blank=True),
        _q("limit", {"type": "integer", "minimum": 1, "maximum": AUDIT_PAGE_MAX}, "Page size (default 50).")],
    ("/api/v1/security/users/{user_id}/api-keys/{key_id}/rotate", "POST"): [
        _q("grace_s", {"type": "integer", "minimum": 0, "maximum": ROTATION_GRACE_MAX_S},
           "How long the old key keeps working (default KEY_ROTATION_GRACE_S).")],
}


def _success_body(path: str) -> dict[str, Any]:
    if path in SSE_PATHS:
        return {"text/event-stream": {"schema": SSE_EVENT}}
    if path in HTML_PATHS:
        return {"text/html": {"schema": {"type": "string"}}}
    if path == "/api/v1/monitoring/metrics":
        return {"text/plain": {"schema": {"type": "string"}, "example": "http_requests_total{...} 1.0"}}
    if path.endswith("{name}"):
        return {mime: {"schema": {"type": "string"}} for mime in sorted(set(ASSETS.values()))}
    return {"application/json": {"schema": {"type": "object"}}}


def route_table(app: falcon.asgi.App) -> list[tuple[str, str, Any, Any]]:
    """(template, method, resource, responder) for every route and method the app serves."""
    found: list[tuple[str, str, Any, Any]] = []
    stack: list[Any] = list(app._router._roots)
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        if node.resource is None or node.method_map is None:
            continue
        for method, responder in node.method_map.items():
            if method in SKIP or "not_allowed" in repr(responder) or not inspect.ismethod(responder):
                continue
            found.append((str(node.uri_template), method, node.resource, responder))
    return sorted(found, key=lambda r: (r[0], r[1]))


def _summary(text: str | None) -> str:
    return (text or "").strip().split("\n")[0]


def _operation(path: str, method: str, resource: Any, responder: Any, schemas: dict) -> dict[str, Any]:
    permission = (getattr(resource, "permissions", {}) or {}).get(method)
    codes = {"200": "OK", "400": "Bad request", "401": "No valid API key", "403": "Not permitted",
             "404": "Not found", "405": "Method not allowed", "409": "Conflict", "413": "Body too large",
             "415": "Not JSON", "422": "Unprocessable", "429": "Rate limited", "503": "Redis unavailable"}
    if method == "POST":
        codes.update({"201": "Created", "202": "Accepted", "402": "Budget exceeded"})
    if path.endswith("/events"):
        codes["204"] = "The stream is over"
    error = {"application/json": {"schema": ERROR}}
    responses: dict[str, Any] = {}
    for code, text in sorted(codes.items()):
        if code.startswith("2"):
            responses[code] = {"description": text, **({"content": _success_body(path)} if code != "204" else {})}
        else:
            responses[code] = {"description": text, "content": error}
    op: dict[str, Any] = {
        "operationId": f"{method.lower()}_{re.sub(r'[^a-z0-9]+', '_', path.lower()).strip('_')}",
        "summary": _summary(responder.__doc__) or _summary(type(resource).__doc__),
        "description": inspect.cleandoc(type(resource).__doc__ or ""),
        "tags": [path.split("/")[3] if len(path.split("/")) > 3 else "api"],
        "responses": responses,
        "x-permission": str(permission),
    }
    if permission == PUBLIC:
        op["security"] = []
    params = path_params(path) + QUERY_PARAMS.get((path, method), [])
    if params:
        op["parameters"] = params
    schema = schemas.get((path, method))
    if schema is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": schema}}}
    return op


def document(app: falcon.asgi.App, schemas: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    """The whole API as OpenAPI 3.1; `schemas` are the body schemas the API checks requests against."""
    paths: dict[str, dict[str, Any]] = {}
    for path, method, resource, responder in route_table(app):
        paths.setdefault(path, {})[method.lower()] = _operation(path, method, resource, responder, schemas)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Agentic job backend", "version": VERSION,
                 "description": "LLM agent jobs over HTTP, streamed over SSE, with budgets, keys and audit."},
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {"securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer", "description": "sk_live_… API key"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}}},
        "security": [{"bearer": []}, {"apiKey": []}],
    }
