"""The OpenAPI 3.1 document, built from the live route table: each route's permission, docstrings, path
parameters, and the body and query models the API checks requests against (api/models.py), so it cannot drift
from what is served."""

from __future__ import annotations

import inspect
import re
from typing import Any

import falcon
from pydantic import BaseModel

from api.job_service import JOB_ID
from api.models import IDEMPOTENCY_KEY, RequestModels
from api.permissions import PUBLIC
from api.resources import attachments, documents
from api.resources.health import VERSION
from api.users import USER_ID
from events.attachments import ATTACHMENT_ID, IMAGE_TYPES
from events.catalog import AGENT_TYPES
from events.documents.extract import MEDIA_TYPES
from events.documents.records import DOC_ID
from events.envelope import STREAM_ID

SKIP = {"OPTIONS", "HEAD", "CONNECT", "TRACE"}
ASSETS = {
    "swagger-ui-bundle.js": "application/javascript",
    "swagger-ui.css": "text/css",
    "redoc.standalone.js": "application/javascript",
}
SSE_PATHS = {"/api/v1/jobs/{job_id}/events", "/api/v1/stream/query", "/api/v1/stream/{agent}"}
HTML_PATHS = {"/docs", "/redoc", "/api/v1/stream/demo"}
# One event of a stream, as SSE clients see it: `data` is the event envelope as JSON text.
SSE_EVENT = {
    "type": "object",
    "properties": {
        "data": {"type": "string"},
        "event": {"type": "string"},
        "id": {"type": "string"},
        "retry": {"type": "integer"},
    },
}
# The multipart routes: what each one's `file` part may be (the same words and types their handlers check).
UPLOADS = {
    "/api/v1/documents": (documents.ACCEPTED, list(MEDIA_TYPES)),
    "/api/v1/attachments": (attachments.ACCEPTED, list(IMAGE_TYPES)),
}
ERROR = {
    "type": "object",
    "required": ["title"],
    "properties": {"title": {"type": "string"}, "description": {"type": "string"}, "code": {"type": "string"}},
}


def path_params(path: str) -> list[dict[str, Any]]:
    """Path parameters with the same shapes the handlers accept."""
    shapes = {
        "user_id": {"type": "string", "pattern": USER_ID.pattern},
        "job_id": {"type": "string", "pattern": JOB_ID.pattern},
        "doc_id": {"type": "string", "pattern": DOC_ID.pattern},
        "attachment_id": {"type": "string", "pattern": ATTACHMENT_ID.pattern},
        "key_id": {"type": "string", "pattern": r"^[0-9a-f]{16}$"},
        "agent": {"type": "string", "enum": sorted(set(AGENT_TYPES) - {"query"})},  # /stream/query is its own route
        "name": {"type": "string", "enum": sorted(ASSETS)},
    }
    return [
        {"name": name, "in": "path", "required": True, "schema": shapes.get(name, {"type": "string"})}
        for name in re.findall(r"\{([a-z_]+)\}", path)
    ]


def upload_body(path: str) -> dict[str, Any]:
    """The multipart request body of an upload route: one `file` part of the types that route reads."""
    accepted, media_types = UPLOADS[path]
    schema = {
        "type": "object",
        "required": ["file"],
        "properties": {"file": {"type": "string", "format": "binary", "description": accepted}},
    }
    content = {"schema": schema, "encoding": {"file": {"contentType": ", ".join(media_types)}}}
    return {"required": True, "content": {"multipart/form-data": content}}


def header_params(path: str, method: str) -> list[dict[str, Any]]:
    """Request headers a route reads, with the shapes its checks accept (api/models.py, api/job_service.py)."""
    if (path, method) == ("/api/v1/jobs", "POST"):
        return [
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "schema": {"type": "string", "pattern": IDEMPOTENCY_KEY.pattern, "minLength": 1, "maxLength": 255},
                "description": "A retry with the same key within a day returns the first job instead of a new one.",
            }
        ]
    if (path, method) == ("/api/v1/jobs/{job_id}/events", "GET"):
        return [
            {
                "name": "Last-Event-ID",
                "in": "header",
                "required": False,
                "schema": {"type": "string", "pattern": STREAM_ID.pattern},
                "description": "Resume after this event id (what EventSource sends when it reconnects).",
            }
        ]
    return []


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """A field's JSON Schema without pydantic's titles, and `anyOf [x, null]` as `x` (null means not given)."""
    schema = {k: v for k, v in schema.items() if k not in ("title", "default")}
    options = schema.pop("anyOf", None)
    if options is not None:
        kept = [o for o in options if o != {"type": "null"}]
        schema.update(kept[0] if len(kept) == 1 else {"anyOf": kept})
    return schema


def query_params(model: type[BaseModel]) -> list[dict[str, Any]]:
    """The query parameters of a query model; a blank value (?name=) is read as not given, so text and yes/no
    parameters also admit the empty string."""
    props = model.model_json_schema()["properties"]
    params = []
    for name, info in model.model_fields.items():
        schema = _inline(props[name])
        param: dict[str, Any] = {
            "name": name,
            "in": "query",
            "required": False,
            "schema": schema,
            "description": info.description or "",
            # One value each: with the default (form, exploded) an object-valued parameter would be sent as its
            # own keys, not under this name, and look like a request without it.
            "style": "form",
            "explode": False,
        }
        if schema.get("type") in ("string", "boolean") or "enum" in schema:
            param.update(schema={"anyOf": [schema, {"type": "string", "maxLength": 0}]}, allowEmptyValue=True)
        params.append(param)
    return params


def body_schema(model: type[BaseModel], components: dict[str, Any]) -> dict[str, Any]:
    """A body model's JSON Schema; the models it refers to go into `components`."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(schema.pop("$defs", {}))
    return schema


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


def _operation(
    path: str, method: str, resource: Any, responder: Any, models: RequestModels, components: dict[str, Any]
) -> dict[str, Any]:
    permission = (getattr(resource, "permissions", {}) or {}).get(method)
    codes = {
        "200": "OK",
        "400": "Bad request",
        "401": "No valid API key",
        "403": "Not permitted",
        "404": "Not found",
        "405": "Method not allowed",
        "409": "Conflict",
        "413": "Body too large",
        "415": "Not JSON",
        "422": "Unprocessable",
        "429": "Rate limited",
        "503": "Redis unavailable",
    }
    if method == "POST":
        codes.update({"201": "Created", "202": "Accepted", "402": "Budget exceeded"})
    if path in UPLOADS and method == "POST":
        codes.update(
            {
                "413": "The file is over MAX_UPLOAD_BYTES",
                "415": "Not a multipart/form-data body, or a file of a type this route does not read",
            }
        )
    if path.endswith("/events"):
        codes["204"] = "The stream is over"
    if method == "DELETE" and path.startswith("/api/v1/documents/"):
        codes["204"] = "Deleted"
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
    query = models.queries.get((path, method))
    params = path_params(path) + (query_params(query) if query else [])
    if params:
        op["parameters"] = params
    if headers := header_params(path, method):
        # An extension, not `parameters`: a fuzzer that sends one Idempotency-Key with different bodies is rightly
        # refused (422), and what the header means is not a shape a generator can respect.
        op["x-request-headers"] = headers
    body = models.bodies.get((path, method))
    if body is not None:
        op["requestBody"] = {
            "required": (path, method) not in models.optional_bodies,
            "content": {"application/json": {"schema": body_schema(body, components)}},
        }
    if path in UPLOADS and method == "POST":
        op["requestBody"] = upload_body(path)
    return op


def document(app: falcon.asgi.App, models: RequestModels) -> dict[str, Any]:
    """The whole API as OpenAPI 3.1, with the body and query models the API checks requests against."""
    paths: dict[str, dict[str, Any]] = {}
    components: dict[str, Any] = {}
    for path, method, resource, responder in route_table(app):
        paths.setdefault(path, {})[method.lower()] = _operation(path, method, resource, responder, models, components)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Agentic job backend",
            "version": VERSION,
            "description": "LLM agent jobs over HTTP, streamed over SSE, with budgets, keys and audit.",
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "sk_live_… API key"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
        "security": [{"bearer": []}, {"apiKey": []}],
    }
