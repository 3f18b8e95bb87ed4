"""A stand-in OTLP/HTTP trace receiver (the collector or Jaeger in tests), speaking the real protocol.

`POST /v1/traces` takes an `ExportTraceServiceRequest` as application/x-protobuf and answers with an encoded
`ExportTraceServiceResponse`, as a collector does; the spans it received are kept for tests to read.
"""

from __future__ import annotations

import gzip
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanProto
from opentelemetry.proto.trace.v1.trace_pb2 import Status as StatusProto

PROTOBUF = "application/x-protobuf"


@dataclass(frozen=True)
class Span:
    """One received span, ids as hex ("" for a root span's parent)."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: str  # SERVER, CLIENT, CONSUMER, ...
    service: str
    status: str  # UNSET, OK or ERROR
    attributes: dict[str, Any] = field(default_factory=dict)


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind) if kind else None


def decode(body: bytes) -> list[Span]:
    """The spans of one encoded ExportTraceServiceRequest."""
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    found = []
    for resource_spans in request.resource_spans:
        resource = {kv.key: _value(kv.value) for kv in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                found.append(
                    Span(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        name=span.name,
                        kind=SpanProto.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_"),
                        service=str(resource.get("service.name", "")),
                        status=StatusProto.StatusCode.Name(span.status.code).removeprefix("STATUS_CODE_"),
                        attributes={kv.key: _value(kv.value) for kv in span.attributes},
                    )
                )
    return found


class Receiver:
    """A threaded OTLP/HTTP receiver on 127.0.0.1 and a free port; use as a context manager."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.requests = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="otlp-receiver", daemon=True)

    @property
    def endpoint(self) -> str:
        """The base URL to put in OTEL_EXPORTER_OTLP_ENDPOINT (the exporter adds /v1/traces)."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def received(self) -> list[Span]:
        """A copy of every span received so far."""
        with self._lock:
            return list(self.spans)

    def wait_for(self, condition: Callable[[list[Span]], Any], timeout: float = 15.0) -> Any:
        """Wait until `condition(spans)` is truthy and return its value; fail after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            value = condition(self.received())
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"no spans matched within {timeout} s; received: {self.received()}")
            time.sleep(0.05)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Encoding") == "gzip":  # OTEL_EXPORTER_OTLP_COMPRESSION=gzip
                    body = gzip.decompress(body)
                if self.path != "/v1/traces":
                    return self._answer(404, b"", "text/plain")
                if self.headers.get("Content-Type") != PROTOBUF:
                    return self._answer(415, b"", "text/plain")
                try:
                    spans = decode(body)
                except Exception:  # protobuf's DecodeError: a malformed body is the sender's fault
                    return self._answer(400, b"", "text/plain")
                with receiver._lock:
                    receiver.spans.extend(spans)
                    receiver.requests += 1
                return self._answer(200, ExportTraceServiceResponse().SerializeToString(), PROTOBUF)

            def _answer(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: the tests read the spans, not an access log

        return Handler
