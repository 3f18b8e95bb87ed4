"""The same request answered from the response cache against a miss that runs it: submit to done, over HTTP."""

from __future__ import annotations

import time

import httpx

from bench.common import fresh_stack, line, median, percentile, user_key

MISSES = 12
HITS = 60


def _submit_to_done(client: httpx.Client, query: str) -> tuple[float, bool]:
    """Seconds from POST /jobs to the job's end (long-polled), and whether it was answered from the cache."""
    started = time.perf_counter()
    job = client.post("/api/v1/jobs", json={"agent_type": "query", "query": query}).raise_for_status().json()
    if job["status"] != "succeeded":
        job = client.get(f"/api/v1/jobs/{job['id']}", params={"wait": 30}).raise_for_status().json()
    elapsed = time.perf_counter() - started
    if job["status"] != "succeeded":
        raise RuntimeError(f"The benchmark job {job['id']} ended {job['status']}: {job.get('error')}")
    return elapsed, bool(job.get("cached"))


def run() -> None:
    """Measure and print."""
    with fresh_stack(CACHE_TTL_S="3600") as (stack, _):  # the test stacks run with the cache off
        stack.events()
        stack.worker(concurrency=2)
        stack.api(workers=2)
        key = user_key(stack)
        with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
            _submit_to_done(client, "warm-up: what is 6*7?")
            misses = [_submit_to_done(client, f"what is {n}*7?") for n in range(MISSES)]
            hits = [_submit_to_done(client, f"what is {n % MISSES}*7?") for n in range(HITS)]
    assert not any(cached for _, cached in misses) and all(cached for _, cached in hits)
    miss = [s for s, _ in misses]
    hit = [s for s, _ in hits]
    line(
        "cache hit, submit to done (median)",
        f"{median(hit) * 1000:,.1f} ms",
        f"{median(miss) * 1000:,.1f} ms miss",
        f"{median(miss) / median(hit):,.0f}x faster, no model call",
    )
    line(
        "cache hit, submit to done (p95)",
        f"{percentile(hit, 95) * 1000:,.1f} ms",
        f"{percentile(miss, 95) * 1000:,.1f} ms miss",
        f"{len(hit)} hits, {len(miss)} misses",
    )
