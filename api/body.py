"""Reading a JSON request body: right content type, bounded size, an object at the top."""

from __future__ import annotations

import json
import math
from typing import Any
from urllib.parse import unquote_to_bytes

import falcon

from api.http_errors import bad_request
from events.errors import ContentTooLargeError, DomainError, UnsupportedMediaError

MAX_DEPTH = 32  # objects and lists nested deeper than this are refused: no real request needs more


class BadTextError(ValueError):
    """Raised when a JSON body holds text that is not valid Unicode, a number that is not finite, or is too deep."""


def _no_constant(name: str) -> Any:
    raise BadTextError(f"{name} is not a number JSON allows; send a finite number")


def _finite(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise BadTextError(f"{literal[:20]} is too large to be a finite number")
    return value


def printable(name: str) -> str:
    """`name` as it can be shown in an error: broken Unicode escaped, so the error itself stays valid text."""
    return name.encode("utf-8", "backslashreplace").decode("utf-8")


def _check_string(value: str, where: str) -> None:
    if value.isascii():
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as ex:
        raise BadTextError(
            f"{printable(where)} holds a lone surrogate (\\u{ord(value[ex.start]):04x}), which is not "
            "Unicode text; send valid UTF-8"
        ) from None


def check_json(value: Any) -> None:
    """Raise BadTextError if any string (key or value) is not valid Unicode or nesting passes MAX_DEPTH."""
    stack: list[tuple[Any, int, str]] = [(value, 0, "(body)")]
    while stack:
        item, depth, where = stack.pop()
        if isinstance(item, str):
            _check_string(item, where)
        elif isinstance(item, (dict, list)):
            if depth >= MAX_DEPTH:
                raise BadTextError(f"{where} is nested more than {MAX_DEPTH} levels deep")
            pairs = item.items() if isinstance(item, dict) else enumerate(item)
            for key, child in pairs:
                name = f"{where}/{key}" if where != "(body)" else str(key)
                if isinstance(key, str):
                    _check_string(key, f"a field name under {where}")
                stack.append((child, depth + 1, name))


def parse_json(raw: bytes) -> Any:
    """Parse a request body strictly: valid UTF-8, finite numbers only, no lone surrogates, bounded nesting."""
    try:
        body = json.loads(raw, parse_constant=_no_constant, parse_float=_finite)
    except RecursionError:
        raise BadTextError(f"the body is nested more than {MAX_DEPTH} levels deep") from None
    check_json(body)
    return body


async def read_json(req: falcon.asgi.Request, max_bytes: int) -> dict[str, Any]:
    """The body as a dict; 415, 413 or 400 with a clear message otherwise (read once, then kept)."""
    kept = getattr(req.context, "json", None)
    if kept is not None:
        return kept
    media_type = (req.content_type or "").split(";")[0].strip().lower()
    if media_type != "application/json":
        raise UnsupportedMediaError(
            f"Send the body as application/json (got {printable(media_type) or 'no content type'})."
        )
    if req.content_length is not None and req.content_length > max_bytes:
        raise _too_large(max_bytes)
    raw = await req.stream.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise _too_large(max_bytes)
    try:
        body = parse_json(raw)
    except BadTextError as ex:
        raise bad_request(f"The body is refused: {ex}.", code="invalid_field") from ex
    except (ValueError, UnicodeDecodeError) as ex:
        raise bad_request(f"The body is not valid JSON: {ex}.", code="malformed_json") from ex
    if not isinstance(body, dict):
        raise bad_request("The body must be a JSON object.")
    req.context.json = body
    return body


class TextMiddleware:
    """Refuses, with 400, a request whose path or query string is not valid UTF-8 once percent-decoded.

    (Falcon would quietly turn such bytes into U+FFFD; a parameter the client did not send must not be acted on.)
    """

    async def process_request(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Check the raw path and query string."""
        for part, raw in (("path", req.scope.get("raw_path")), ("query string", req.scope.get("query_string"))):
            try:
                unquote_to_bytes(raw or b"").decode("utf-8")
            except UnicodeDecodeError:
                why = f"The {part} is not valid UTF-8 once percent-decoded."
                raise bad_request(why, code="invalid_encoding") from None


def _too_large(max_bytes: int) -> DomainError:
    return ContentTooLargeError(f"The body must be at most {max_bytes} bytes.", code="body_too_large")
