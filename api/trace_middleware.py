"""`TracingMiddleware`: one OpenTelemetry SERVER span per request, added by `create_app()` when tracing is on."""

from __future__ import annotations

from typing import Any

import falcon.asgi
from opentelemetry import context, trace
from opentelemetry.trace import SpanKind, StatusCode

from events.telemetry import tracing


class TracingMiddleware:
    """Starts a span per request (child of an incoming `traceparent`), current while the responder runs.

    Falcon's ASGI app calls process_request and process_response in the same task, so the context attached in
    one is detached in the other. A streamed body (SSE) is sent after process_response: its span covers the
    request up to the start of the stream.
    """

    async def process_request(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Start the request's span and make it current."""
        span = tracing.start_span(
            req.method,
            kind=SpanKind.SERVER,
            parent=req.get_header("traceparent") or "",
            parent_state=req.get_header("tracestate"),
            attributes={"http.request.method": req.method, "url.path": req.path, "url.scheme": req.scheme},
        )
        req.context.trace_span = span
        req.context.trace_token = context.attach(trace.set_span_in_context(span))

    async def process_response(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, resource: Any, req_succeeded: bool
    ) -> None:
        """Name the span by route template, note the status, and end it."""
        span = getattr(req.context, "trace_span", None)
        if span is None:  # an earlier middleware answered before ours ran
            return
        context.detach(req.context.trace_token)
        if req.uri_template:
            span.update_name(f"{req.method} {req.uri_template}")
            span.set_attribute("http.route", req.uri_template)
        span.set_attribute("http.response.status_code", resp.status_code)
        if resp.status_code >= 500:
            span.set_status(StatusCode.ERROR)
        span.end()

    async def process_shutdown(self, scope: dict[str, Any], event: dict[str, Any]) -> None:
        """Send the spans still queued before the server process exits."""
        tracing.shutdown()
