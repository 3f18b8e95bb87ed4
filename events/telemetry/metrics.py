"""Every Prometheus metric family the processes keep, and the seed's `metrics` helper for custom ones.

Families kept per process (requests, auth, agents, tokens, cost, LLM errors) are plain prometheus-client
objects. Where processes fork (gunicorn's workers, Celery's pool) the start-up hook sets up a shared directory
(events/telemetry/multiprocess.py) before this module is imported, each process writes its samples to files
there, and the process that serves `/metrics` adds them up (`render`). State that lives in Redis (queue depth,
consumer lag, holds, ...) is read at scrape time by `api.system_state` and is the same from every instance:
aggregate it with `max`, not `sum`.
"""

from __future__ import annotations

import re
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Mapping

from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from events.errors import DomainError
from events.telemetry.multiprocess import in_use

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # what generate_latest writes; Prometheus 2 and 3 both read it
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
AGENT_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)

# The seed's families.
HTTP_REQUESTS = Counter(
    "http_requests_total",
    "HTTP requests answered, by method, route template and status.",
    ["method", "route", "status"],
)
HTTP_DURATION = Histogram(
    "http_request_duration_seconds",
    "Time to answer an HTTP request (SSE: until headers).",
    ["method", "route"],
    buckets=HTTP_BUCKETS,
)
AGENT_QUERIES = Counter(
    "agent_queries_total", "Job attempts that ended, by agent type and outcome.", ["agent_type", "status"]
)
AGENT_DURATION = Histogram(
    "agent_query_duration_seconds", "Run time of a job attempt, by agent type.", ["agent_type"], buckets=AGENT_BUCKETS
)
COST = Counter("api_cost_dollars", "Money charged for model calls, in US dollars, by model.", ["model"])
TOKENS = Counter("api_tokens", "Tokens of model calls, by model and type (input or output).", ["model", "type"])
# operation: price_lookup (hit, miss); response_lookup (hit, miss, joined: shares an identical job's run, bypass:
# cache off for the request); response_store (stored, too_large); response_evict (evicted past a bound, expired);
# inflight_share (ended: a waiting job got its leader's outcome). docs/cache.md.
CACHE_OPS = Counter("cache_operations_total", "Cache operations, by operation and result.", ["operation", "result"])
CACHE_SIZE = Gauge(
    "cache_size_bytes",
    "Bytes held by a cache, as last reported (prices: one process's price book; responses: the Redis cache).",
    ["cache"],
    multiprocess_mode="mostrecent",
)
AUTH_ATTEMPTS = Counter(
    "auth_attempts_total", "Authentication attempts, by credential and result.", ["method", "result"]
)
PERMISSION_CHECKS = Counter(
    "permission_checks_total", "Permission checks, by permission and result.", ["permission", "result"]
)
ACTIVE_REQUESTS = Gauge("active_requests", "HTTP requests being answered now.", multiprocess_mode="livesum")
# Ours.
SSE_STREAMS = Gauge("agentic_sse_streams_open", "Server-Sent Event streams open now.", multiprocess_mode="livesum")
LLM_ERRORS = Counter(
    "llm_errors_total", "Failed LLM calls (each retry counts), by provider and kind.", ["provider", "kind"]
)
LLM_CALLS = Counter("llm_calls_total", "LLM calls made, by provider and model.", ["provider", "model"])
RATE_LIMITED = Counter("agentic_rate_limited_total", "Requests refused by the per-key rate limit.")


def count_usage(model: str, input_tokens: int, output_tokens: int, cost_micros: int) -> None:
    """Add one model call's tokens and cost (integer micro-dollars inside, dollars in the metric)."""
    TOKENS.labels(model, "input").inc(input_tokens)
    TOKENS.labels(model, "output").inc(output_tokens)
    COST.labels(model).inc(cost_micros / 1_000_000)


BUILTIN_NAMES = frozenset(
    {
        "http_requests",
        "http_request_duration_seconds",
        "agent_queries",
        "agent_query_duration_seconds",
        "api_cost_dollars",
        "api_tokens",
        "cache_operations",
        "cache_size_bytes",
        "auth_attempts",
        "permission_checks",
        "active_requests",
        "active_sessions",
        "llm_errors",
        "llm_calls",
        "up",
        "scrape_duration_seconds",
    }
)
RESERVED_PREFIXES = ("agentic_", "process_", "python_", "flower_", "celery_", "prometheus_", "scrape_")


def registry(*extra: Any) -> CollectorRegistry:
    """What a scrape shows: every process's samples (multiprocess) or this process's, plus `extra` collectors."""
    if in_use():
        reg = CollectorRegistry()
        multiprocess.MultiProcessCollector(reg)
    elif not extra:
        return REGISTRY
    else:
        reg = CollectorRegistry()
        reg.register(_Forward(REGISTRY))
    for collector in extra:
        reg.register(collector)
    return reg


def render(*extra: Any) -> bytes:
    """The Prometheus text exposition of `registry(*extra)`."""
    return generate_latest(registry(*extra))


class _Forward:
    """Shows another registry's metrics inside a new one."""

    def __init__(self, source: CollectorRegistry) -> None:
        self.source = source

    def collect(self) -> Iterable[Any]:
        """The source's metric families."""
        return self.source.collect()


# --- the seed's helper: custom metrics, validated and bounded ---------------------------------------------

NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]{0,99}$")
LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]{0,49}$")
MAX_FAMILIES = 100
MAX_LABELS = 5
MAX_SERIES = 100
MAX_LABEL_VALUE = 128
KINDS = ("counter", "gauge", "histogram")
SAMPLE_SUFFIXES = ("_total", "_count", "_sum", "_bucket", "_created", "_info")


class MetricError(DomainError):
    """Raised when a custom metric's name, labels, kind or value is not allowed; the message says why."""

    code = "invalid_metric"


class MetricLimitError(MetricError):
    """Raised when this process cannot make one more custom metric or label set (its own bound), or a name is
    already taken here by a metric of another kind or labels."""

    status = 422
    code = "metric_limit"


def family_name(name: str, kind: str = "counter") -> str:
    """The family a metric name belongs to (a counter's `_total` belongs to its samples, not its family)."""
    return name[:-6] if kind == "counter" and name.endswith("_total") else name


def check_name(name: str, kind: str = "counter") -> str:
    """Return the family name of a custom metric of `kind`, or raise MetricError."""
    if not NAME.fullmatch(name or ""):
        raise MetricError(
            f"Metric name {name!r} is not valid: use letters, digits and _ (not first), at most 100 characters."
        )
    family = family_name(name, kind)
    if family in BUILTIN_NAMES or family.startswith(RESERVED_PREFIXES) or name.startswith("__"):
        raise MetricError(f"Metric name {name!r} belongs to the system; pick another name for a custom metric.")
    if family.endswith(SAMPLE_SUFFIXES):
        raise MetricError(
            f"Metric name {name!r} ends like a sample of another metric ({', '.join(SAMPLE_SUFFIXES)}"
            "); only a counter's name may end in _total."
        )
    return family


def check_labels(labels: Mapping[str, Any] | None) -> dict[str, str]:
    """Validate label names and values; returns them as strings, or raises MetricError."""
    labels = dict(labels or {})
    if len(labels) > MAX_LABELS:
        raise MetricError(f"A custom metric may have at most {MAX_LABELS} labels; got {len(labels)}.")
    out = {}
    for key, value in labels.items():
        if not isinstance(key, str) or not LABEL.fullmatch(key) or key.startswith("__") or key in ("le", "quantile"):
            raise MetricError(f"Label name {key!r} is not valid: letters, digits and _, not le/quantile/__*.")
        if not isinstance(value, (str, int, float, bool)) or len(str(value)) > MAX_LABEL_VALUE:
            raise MetricError(f"Label {key!r} needs a string value of at most {MAX_LABEL_VALUE} characters.")
        out[key] = str(value)
    return out


class Metrics:
    """Custom counters, gauges and timers by name, created on first use and bounded in number and series."""

    def __init__(self) -> None:
        self._families: dict[str, tuple[str, tuple[str, ...], Any]] = {}
        self._series: dict[str, set[tuple[str, ...]]] = {}
        self._lock = threading.Lock()

    def _child(self, kind: str, name: str, labels: Mapping[str, Any] | None) -> Any:
        family = check_name(name, kind)
        values = check_labels(labels)
        names = tuple(sorted(values))
        with self._lock:
            known = self._families.get(family)
            if known is None:
                if len(self._families) >= MAX_FAMILIES:
                    raise MetricLimitError(f"There are already {MAX_FAMILIES} custom metrics; reuse one with labels.")
                known = (kind, names, _make(kind, family, names))
                self._families[family] = known
                self._series[family] = set()
            if known[0] != kind:
                raise MetricLimitError(f"Metric {family!r} is a {known[0]}, not a {kind}.")
            if known[1] != names:
                raise MetricLimitError(f"Metric {family!r} has labels {list(known[1])}; got {list(names)}.")
            series = tuple(values[n] for n in names)
            seen = self._series[family]
            if series not in seen:
                if len(seen) >= MAX_SERIES:
                    raise MetricLimitError(f"Metric {family!r} already has {MAX_SERIES} label sets; use fewer values.")
                seen.add(series)
        return known[2].labels(*series) if names else known[2]

    def increment_counter(self, name: str, labels: Mapping[str, Any] | None = None, value: float = 1.0) -> None:
        """Add `value` (default 1) to a counter."""
        if value < 0:
            raise MetricError("A counter only goes up; send a value of 0 or more.")
        self._child("counter", name, labels).inc(value)

    def set_gauge(self, name: str, value: float, labels: Mapping[str, Any] | None = None) -> None:
        """Set a gauge to `value` (the most recent value wins across processes)."""
        self._child("gauge", name, labels).set(value)

    def observe(self, name: str, value: float, labels: Mapping[str, Any] | None = None) -> None:
        """Record one observation (seconds, for timers) in a histogram."""
        self._child("histogram", name, labels).observe(value)

    @contextmanager
    def timer(self, name: str, labels: Mapping[str, Any] | None = None) -> Iterator[None]:
        """Time the block and record it in seconds, also when it raises."""
        child = self._child("histogram", name, labels)
        started = time.perf_counter()
        try:
            yield
        finally:
            child.observe(time.perf_counter() - started)


def _make(kind: str, family: str, labels: tuple[str, ...]) -> Any:
    doc = f"Custom {kind} {family}."
    try:
        if kind == "counter":
            return Counter(family, doc, labels)
        if kind == "gauge":
            return Gauge(family, doc, labels, multiprocess_mode="mostrecent")
        if kind == "histogram":
            return Histogram(family, doc, labels)
    except ValueError as ex:  # its sample names clash with a metric this process already has
        raise MetricLimitError(f"Metric {family!r} cannot be made here: {ex}.") from ex
    raise MetricError(f"Metric kind {kind!r} is not one of {', '.join(KINDS)}.")


metrics = Metrics()
