"""Reading a JSON request body: right content type, bounded size, an object at the top."""

from __future__ import annotations

import json
from typing import Any

import falcon


async def read_json(req: falcon.asgi.Request, max_bytes: int) -> dict[str, Any]:
    """The body as a dict; 415, 413 or 400 with a clear message otherwise."""
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
    return body


def _too_large(max_bytes: int) -> falcon.HTTPError:
    return falcon.HTTPContentTooLarge(title="Content Too Large",
                                      description=f"The body must be at most {max_bytes} bytes.",
                                      code="body_too_large")
