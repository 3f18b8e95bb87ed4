"""Reading a JSON request body: right content type, bounded size, an object at the top."""

from __future__ import annotations

import json
import re
from typing import Any

import falcon
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match


async def read_json(req: falcon.asgi.Request, max_bytes: int) -> dict[str, Any]:
    """The body as a dict; 415, 413 or 400 with a clear message otherwise (read once, then kept)."""
    kept = getattr(req.context, "body", None)
    if kept is not None:
        return kept
    media_type = (req.content_type or "").split(";")[0].strip().lower()
    if media_type != "application/json":
        raise falcon.HTTPUnsupportedMediaType(
            title="Unsupported Media Type",
            description=f"Send the body as application/json (got {media_type or 'no content type'}).",
            code="unsupported_media_type",
        )
    if req.content_length is not None and req.content_length > max_bytes:
        raise _too_large(max_bytes)
    raw = await req.stream.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise _too_large(max_bytes)
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as ex:
        raise falcon.HTTPBadRequest(title="Malformed JSON", description=f"The body is not valid JSON: {ex}.",
                                    code="malformed_json") from ex
    if not isinstance(body, dict):
        raise falcon.HTTPBadRequest(title="Bad Request", description="The body must be a JSON object.",
                                    code="invalid_request")
    req.context.body = body
    return body


class SchemaMiddleware:
    """Checks a request's JSON body against its route's schema (api/schemas.py) before the responder runs."""

    def __init__(self, schemas: dict[tuple[str, str], dict[str, Any]], max_bytes: int) -> None:
        self.validators = {route: Draft202012Validator(schema) for route, schema in schemas.items()}
        self.max_bytes = max_bytes

    async def process_resource(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, resource: Any,
                               params: dict[str, Any]) -> None:
        """400 naming the first field that breaks the schema."""
        validator = self.validators.get((req.uri_template or "", req.method))
        if validator is None or resource is None:
            return
        body = await read_json(req, self.max_bytes)
        error = best_match(validator.iter_errors(body))
        if error is not None:
            raise falcon.HTTPBadRequest(title="Bad Request", code="invalid_field", description=explain(error))


TYPE_WORDS = {"string": "a string", "integer": "an integer", "number": "a number", "object": "a JSON object",
              "array": "a list", "boolean": "true or false", "null": "null"}


def explain(error: ValidationError) -> str:
    """A schema violation as a sentence naming the field and what to send."""
    field = "/".join(str(p) for p in error.absolute_path) or "(body)"
    rule, want, got, schema = error.validator, error.validator_value, error.instance, error.schema
    if rule in ("required", "additionalProperties"):
        names = re.findall(r"'([^']+)'", error.message)
        name = names[0] if names else field
        if rule == "required":
            return f"Field '{name}': is required."
        known = ", ".join(sorted(schema.get("properties", {})))
        return f"Field '{name}': is not a known field; send only {known}."
    if rule == "type":
        return f"Field '{field}': must be {TYPE_WORDS.get(str(want), want)}, not {type(got).__name__}."
    if rule == "enum":
        return f"Field '{field}': {got!r} is not allowed; use one of: {', '.join(map(str, want))}."
    if rule in ("minimum", "maximum"):
        return f"Field '{field}': must be between {schema.get('minimum', 0)} and {schema.get('maximum', 'more')}."
    if rule == "maxLength":
        return f"Field '{field}': must be at most {want} characters."
    if rule in ("minLength", "pattern") and schema.get("pattern") == r"\S":
        return f"Field '{field}': must not be empty."
    if rule == "pattern":
        return f"Field '{field}': has characters that are not allowed (pattern {want})."
    if rule == "maxItems":
        return f"Field '{field}': must hold at most {want} items."
    return f"Field '{field}': {error.message}."


def _too_large(max_bytes: int) -> falcon.HTTPError:
    return falcon.HTTPContentTooLarge(title="Content Too Large",
                                      description=f"The body must be at most {max_bytes} bytes.",
                                      code="body_too_large")
