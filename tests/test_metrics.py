"""The metric families in one process: the seed's helper, its bounds, LLM errors by kind, the price cache, and
how /monitoring/summary reads an exposition."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterator

import pytest
from prometheus_client import REGISTRY

from api.resources.monitoring import quantile, summarize
from events.money.prices import PriceBook
from events.telemetry import metrics
from events.telemetry.metrics import MetricError, check_labels, check_name
from tests.llmsim import SimControl, run_simulator
from workers.llm.openai_provider import OpenAIProvider
from workers.llm.provider import ChatRequest, LLMRequestError


def value(name: str, labels: dict[str, str] | None = None) -> float:
    """A sample's value in this process (0 when it was never touched)."""
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def test_the_seed_helper_works_as_the_seed_shows() -> None:
    from api.prometheus_service import metrics as seed_import

    assert seed_import is metrics.metrics
    labels = {"event_type": "signup", "source": "web"}
    before = value("custom_events_total", labels)
    metrics.metrics.increment_counter("custom_events_total", labels)
    metrics.metrics.increment_counter("custom_events_total", labels, 2)
    assert value("custom_events_total", labels) == before + 3

    with metrics.metrics.timer("database_query_duration", {"table": "users"}):
        pass
    with pytest.raises(ZeroDivisionError), metrics.metrics.timer("database_query_duration", {"table": "users"}):
        _ = 1 / 0
    assert value("database_query_duration_count", {"table": "users"}) == 2
    assert value("database_query_duration_sum", {"table": "users"}) >= 0

    metrics.metrics.set_gauge("queue_size", 42)
    metrics.metrics.set_gauge("queue_size", 41)
    assert value("queue_size") == 41


@pytest.mark.parametrize(
    "name, kind, family",
    [
        ("signups_total", "counter", "signups"),
        ("signups", "counter", "signups"),
        ("queue_size", "gauge", "queue_size"),
        ("db_query_seconds", "histogram", "db_query_seconds"),
    ],
)
def test_names_map_to_their_family(name: str, kind: str, family: str) -> None:
    assert check_name(name, kind) == family


@pytest.mark.parametrize(
    "name, kind",
    [
        ("", "counter"),
        ("9lives", "counter"),
        ("has-dash", "counter"),
        ("x" * 101, "counter"),
        ("http_requests_total", "counter"),
        ("api_cost_dollars_total", "counter"),
        ("active_sessions", "gauge"),
        ("agentic_anything", "gauge"),
        ("process_cpu", "gauge"),
        ("up", "gauge"),
        ("__secret", "counter"),
        ("depth_total", "gauge"),
        ("latency_sum", "gauge"),
        ("latency_bucket", "histogram"),
        ("x_total_total", "counter"),
    ],
)
def test_system_and_malformed_names_are_refused(name: str, kind: str) -> None:
    with pytest.raises(MetricError):
        check_name(name, kind)


@pytest.mark.parametrize(
    "labels",
    [
        {f"l{i}": "v" for i in range(metrics.MAX_LABELS + 1)},
        {"le": "1"},
        {"quantile": "0.5"},
        {"__x": "1"},
        {"bad-name": "1"},
        {"ok": "v" * (metrics.MAX_LABEL_VALUE + 1)},
        {"ok": None},
        {"ok": ["list"]},
    ],
)
def test_bad_label_sets_are_refused(labels: dict[str, Any]) -> None:
    with pytest.raises(MetricError):
        check_labels(labels)


def test_kinds_label_names_and_series_are_bounded() -> None:
    helper = metrics.metrics
    helper.increment_counter("bounded_events_total", {"tenant": "t0"})
    with pytest.raises(MetricError, match="is a counter"):
        helper.set_gauge("bounded_events", 1)
    with pytest.raises(MetricError, match="has labels"):
        helper.increment_counter("bounded_events_total", {"other": "x"})
    with pytest.raises(MetricError, match="only goes up"):
        helper.increment_counter("bounded_events_total", {"tenant": "t0"}, -1)
    for i in range(1, metrics.MAX_SERIES):
        helper.increment_counter("bounded_events_total", {"tenant": f"t{i}"})
    with pytest.raises(MetricError, match="label sets"):
        helper.increment_counter("bounded_events_total", {"tenant": "one-too-many"})
    helper.increment_counter("bounded_events_total", {"tenant": "t5"})  # a known series still counts
    assert value("bounded_events_total", {"tenant": "t5"}) == 2


@pytest.fixture(scope="module")
def sim_url() -> Iterator[str]:
    with run_simulator() as url:
        yield url


@pytest.mark.parametrize(
    "steps, kind, raises",
    [
        ([{"kind": "error", "status": 500}], "server_error", None),
        ([{"kind": "error", "status": 429, "retry_after": 0}], "rate_limited", None),
        ([{"kind": "drop", "after_tokens": 1}], "connection", None),
        ([{"kind": "error", "status": 400, "message": "bad"}], "bad_request", LLMRequestError),
    ],
)
def test_llm_errors_are_counted_by_kind(
    sim_url: str, steps: list[dict[str, Any]], kind: str, raises: type[Exception] | None
) -> None:
    control = SimControl(sim_url)
    control.reset()
    control.script(*steps)
    provider = OpenAIProvider(
        api_key="sk-test", base_url=sim_url, timeout_s=5, max_retries=2, sleep=lambda _: None, rand=0.0
    )
    labels = {"provider": "openai", "kind": kind}
    before = value("llm_errors_total", labels)
    request = ChatRequest(model="gpt-sim", messages=[{"role": "user", "content": "hi"}], max_tokens=20)
    try:
        if raises is None:
            list(provider.stream(request))  # fails once, then the retry succeeds
        else:
            with pytest.raises(raises):
                list(provider.stream(request))
    finally:
        provider.close()
        control.close()
    assert value("llm_errors_total", labels) == before + 1


def test_price_lookups_count_cache_misses_then_hits(tmp_path: Path) -> None:
    book = PriceBook(None)
    hits, misses = ({"operation": "price_lookup", "result": r} for r in ("hit", "miss"))
    before_hit, before_miss = value("cache_operations_total", hits), value("cache_operations_total", misses)
    book.price("gpt-4o")
    book.price("gpt-4o")
    book.price("gpt-4o")
    assert value("cache_operations_total", misses) == before_miss + 1
    assert value("cache_operations_total", hits) == before_hit + 2
    assert value("cache_size_bytes", {"cache": "prices"}) > 0  # the book's own size, set on each new entry


EXPOSITION = """\
# TYPE http_requests_total counter
http_requests_total{method="GET",route="/a",status="200"} 6.0
http_requests_total{method="GET",route="/a",status="503"} 2.0
# TYPE http_request_duration_seconds histogram
http_request_duration_seconds_bucket{le="0.1",method="GET",route="/a"} 4.0
http_request_duration_seconds_bucket{le="1.0",method="GET",route="/a"} 7.0
http_request_duration_seconds_bucket{le="+Inf",method="GET",route="/a"} 8.0
http_request_duration_seconds_sum{method="GET",route="/a"} 2.0
http_request_duration_seconds_count{method="GET",route="/a"} 8.0
# TYPE auth_attempts_total counter
auth_attempts_total{method="api_key",result="failure"} 3.0
auth_attempts_total{method="none",result="failure"} 1.0
"""


def test_summary_reads_requests_errors_latency_and_auth_from_an_exposition() -> None:
    summary = summarize(EXPOSITION)
    assert summary["requests"] == 8
    assert summary["requests_by_status"] == {"2xx": 6, "5xx": 2}
    assert summary["error_rate"] == 0.25
    assert summary["latency_avg_s"] == 0.25
    assert summary["latency_p50_s"] == 0.1
    assert summary["latency_p95_s"] is None  # above the largest finite bucket
    assert summary["auth"] == {"success": 0, "failure": 4}


@pytest.mark.parametrize(
    "buckets, q, expected",
    [
        ({0.1: 5.0, 1.0: 10.0, math.inf: 10.0}, 0.5, 0.1),
        ({0.1: 5.0, 1.0: 10.0, math.inf: 10.0}, 0.51, 1.0),
        ({0.1: 0.0, math.inf: 0.0}, 0.5, None),
        ({}, 0.5, None),
    ],
)
def test_quantile_is_the_bucket_bound_at_or_above(
    buckets: dict[float, float], q: float, expected: float | None
) -> None:
    assert quantile(buckets, q) == expected
