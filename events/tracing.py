"""Optional OpenTelemetry tracing, and the W3C trace context that every job carries.

Tracing is off unless OTEL_EXPORTER_OTLP_ENDPOINT is set; then `configure()` gives the process an SDK tracer
provider that sends its spans in batches to the collector over OTLP/HTTP. With tracing off every helper here is
a cheap no-op and nothing connects anywhere. Either way each job gets a `traceparent` at submit, so its events and
log lines share one trace id that a client can quote.
"""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
from typing import TYPE_CHECKING, Iterator, Mapping

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags
from opentelemetry.util.types import AttributeValue

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

    from settings import Settings

log = logging.getLogger("events.tracing")

EXPORT_DELAY_MS = 500  # spans reach the collector about half a second after they end
EXPORT_TIMEOUT_S = 5.0  # one export's bound, so a dead collector holds up a process's exit only briefly
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")

_provider: TracerProvider | None = None
_tracer: trace.Tracer | None = None


def configure(settings: Settings, component: str) -> bool:
    """Turn tracing on for this process if `settings.otlp_endpoint` is set; returns whether it is on.

    Call it after any fork: the batch processor's export thread belongs to the process that started it.
    The service name is `{service_name}-{component}`, e.g. `agentic-api` or `agentic-worker`.
    """
    global _provider, _tracer
    if not settings.otlp_endpoint:
        return False
    # Imported here: a process with tracing off never loads the SDK or the exporter's HTTP stack.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    shutdown()  # configured again (tests build several apps in one process): the old exporter stops first
    endpoint = f"{settings.otlp_endpoint.rstrip('/')}/v1/traces"
    provider = TracerProvider(resource=Resource.create({"service.name": f"{settings.service_name}-{component}"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, timeout=EXPORT_TIMEOUT_S),
                                                   schedule_delay_millis=EXPORT_DELAY_MS))
    _provider, _tracer = provider, provider.get_tracer("agentic")
    log.info("tracing on: spans go to %s", endpoint, extra={"service": f"{settings.service_name}-{component}"})
    return True


def shutdown() -> None:
    """Send the spans still queued and stop exporting (before a process exits)."""
    global _provider, _tracer
    provider, _provider, _tracer = _provider, None, None
    if provider is not None:
        provider.shutdown()


def enabled() -> bool:
    """True once `configure()` turned tracing on in this process."""
    return _tracer is not None


def parse(traceparent: str | None) -> SpanContext | None:
    """The remote span context a W3C `traceparent` names, or None if it is absent or malformed."""
    found = _TRACEPARENT.fullmatch(traceparent.strip()) if traceparent else None
    if found is None:
        return None
    flags = TraceFlags(int(found[3], 16) & TraceFlags.SAMPLED)  # the one flag W3C level 1 defines
    context = SpanContext(int(found[1], 16), int(found[2], 16), is_remote=True, trace_flags=flags)
    return context if context.is_valid else None


def format_traceparent(context: SpanContext) -> str:
    """The W3C `traceparent` header of a span context."""
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


def trace_id(traceparent: str | None) -> str:
    """The trace id (32 hex digits) of a `traceparent`, or "" if it is absent or malformed."""
    context = parse(traceparent)
    return f"{context.trace_id:032x}" if context else ""


def new_traceparent(incoming: str | None = None) -> str:
    """The `traceparent` of a new job: the current span's, else a valid `incoming` header, else fresh ids.

    Fresh ids are marked sampled, so a worker with tracing on still records a job whose API had tracing off.
    """
    current = trace.get_current_span().get_span_context()
    if current.is_valid:
        return format_traceparent(current)
    remote = parse(incoming)
    if remote is not None:
        return format_traceparent(remote)
    return f"00-{_random_hex(128)}-{_random_hex(64)}-01"


def _random_hex(bits: int) -> str:
    return f"{secrets.randbits(bits) or 1:0{bits // 4}x}"  # all zeros is the one invalid id


def start_span(name: str, *, kind: SpanKind, parent: str | None = None,
               attributes: Mapping[str, AttributeValue] | None = None) -> trace.Span:
    """Start a span (not made current), child of the `parent` traceparent if given, else of the current span.

    A `parent` that is empty or malformed starts a new trace. With tracing off this is the invalid span, whose
    methods do nothing.
    """
    if _tracer is None:
        return trace.INVALID_SPAN
    context: Context | None = None
    if parent is not None:
        remote = parse(parent)
        context = trace.set_span_in_context(NonRecordingSpan(remote), Context()) if remote else Context()
    return _tracer.start_span(name, context=context, kind=kind, attributes=attributes)


@contextlib.contextmanager
def in_span(name: str, *, kind: SpanKind, parent: str | None = None,
            attributes: Mapping[str, AttributeValue] | None = None) -> Iterator[trace.Span]:
    """A span that is current inside the `with` block and ends with it; an exception marks it failed."""
    span = start_span(name, kind=kind, parent=parent, attributes=attributes)
    with trace.use_span(span, end_on_exit=True):
        yield span


def span_trace_id(span: trace.Span) -> str:
    """The span's trace id as 32 hex digits, or "" for the invalid span."""
    context = span.get_span_context()
    return f"{context.trace_id:032x}" if context.is_valid else ""


def headers(span: trace.Span) -> dict[str, str]:
    """The `traceparent` header that makes `span` the parent of a downstream service's spans ({} when off)."""
    context = span.get_span_context()
    return {"traceparent": format_traceparent(context)} if enabled() and context.is_valid else {}


def log_ids() -> dict[str, str]:
    """`trace_id` and `span_id` of the current span, for log lines; {} when no span is active."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return {}
    return {"trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}"}
