"""Optional OpenTelemetry tracing, and the W3C trace context that every job carries.

Tracing is off unless OTEL_EXPORTER_OTLP_ENDPOINT is set; then `configure()` gives the process an SDK tracer
provider that sends its spans in batches to the collector over OTLP/HTTP. With tracing off every helper here is
a cheap no-op and nothing connects anywhere. Either way each job gets a `traceparent` at submit, so its events and
log lines share one trace id that a client can quote.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from typing import TYPE_CHECKING, Iterator, Mapping

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

    from settings import Settings

log = logging.getLogger("events.telemetry.tracing")

EXPORT_DELAY_MS = 500  # spans reach the collector about half a second after they end
EXPORT_TIMEOUT_S = 5.0  # one export's bound, so a dead collector holds up a process's exit only briefly
_PROPAGATOR = TraceContextTextMapPropagator()

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
    provider.add_span_processor(
        BatchSpanProcessor(
            OTLPSpanExporter(endpoint=endpoint, timeout=EXPORT_TIMEOUT_S), schedule_delay_millis=EXPORT_DELAY_MS
        )
    )
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


def parse(traceparent: str | None, tracestate: str | None = None) -> SpanContext | None:
    """The remote span context a W3C `traceparent` (and `tracestate`) name, or None if absent or malformed.

    Read by OpenTelemetry's own W3C propagator, so a vendor's `tracestate` travels on with the trace.
    """
    if not traceparent:
        return None
    carrier = {"traceparent": traceparent, **({"tracestate": tracestate} if tracestate else {})}
    context = trace.get_current_span(_PROPAGATOR.extract(carrier)).get_span_context()
    return context if context.is_valid else None


def carrier(context: SpanContext) -> dict[str, str]:
    """The `traceparent` (and `tracestate`, when it has one) headers of a span context."""
    out: dict[str, str] = {}
    _PROPAGATOR.inject(out, context=trace.set_span_in_context(NonRecordingSpan(context)))
    return out


def format_traceparent(context: SpanContext) -> str:
    """The W3C `traceparent` header of a span context."""
    return carrier(context)["traceparent"]


def trace_id(traceparent: str | None) -> str:
    """The trace id (32 hex digits) of a `traceparent`, or "" if it is absent or malformed."""
    context = parse(traceparent)
    return f"{context.trace_id:032x}" if context else ""


def new_trace_context(incoming: str | None = None, incoming_state: str | None = None) -> dict[str, str]:
    """The trace context of a new job (`traceparent`, and `tracestate` when there is one): the current span's,
    else a valid `incoming` header's, else fresh ids.

    Fresh ids are marked sampled, so a worker with tracing on still records a job whose API had tracing off.
    """
    current = trace.get_current_span().get_span_context()
    if current.is_valid:
        return carrier(current)
    remote = parse(incoming, incoming_state)
    if remote is not None:
        return carrier(remote)
    return {"traceparent": f"00-{_random_hex(128)}-{_random_hex(64)}-01"}


def new_traceparent(incoming: str | None = None) -> str:
    """The `traceparent` of a new job (see new_trace_context)."""
    return new_trace_context(incoming)["traceparent"]


def _random_hex(bits: int) -> str:
    return f"{secrets.randbits(bits) or 1:0{bits // 4}x}"  # all zeros is the one invalid id


def start_span(
    name: str,
    *,
    kind: SpanKind,
    parent: str | None = None,
    parent_state: str | None = None,
    attributes: Mapping[str, AttributeValue] | None = None,
) -> trace.Span:
    """Start a span (not made current), child of the `parent` traceparent (with its `tracestate`) if given, else
    of the current span.

    A `parent` that is empty or malformed starts a new trace. With tracing off this is the invalid span, whose
    methods do nothing.
    """
    if _tracer is None:
        return trace.INVALID_SPAN
    context: Context | None = None
    if parent is not None:
        remote = parse(parent, parent_state)
        context = trace.set_span_in_context(NonRecordingSpan(remote), Context()) if remote else Context()
    return _tracer.start_span(name, context=context, kind=kind, attributes=attributes)


@contextlib.contextmanager
def in_span(
    name: str,
    *,
    kind: SpanKind,
    parent: str | None = None,
    parent_state: str | None = None,
    attributes: Mapping[str, AttributeValue] | None = None,
) -> Iterator[trace.Span]:
    """A span that is current inside the `with` block and ends with it; an exception marks it failed."""
    span = start_span(name, kind=kind, parent=parent, parent_state=parent_state, attributes=attributes)
    with trace.use_span(span, end_on_exit=True):
        yield span


def span_trace_id(span: trace.Span) -> str:
    """The span's trace id as 32 hex digits, or "" for the invalid span."""
    context = span.get_span_context()
    return f"{context.trace_id:032x}" if context.is_valid else ""


def headers(span: trace.Span) -> dict[str, str]:
    """The `traceparent` (and `tracestate`) headers that make `span` the parent of a downstream service's spans
    ({} when tracing is off)."""
    context = span.get_span_context()
    return carrier(context) if enabled() and context.is_valid else {}


def log_ids() -> dict[str, str]:
    """`trace_id` and `span_id` of the current span, for log lines; {} when no span is active."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return {}
    return {"trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}"}
