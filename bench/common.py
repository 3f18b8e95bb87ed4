"""What the benchmarks share: a fresh stack per benchmark, percentiles, and the report format."""

from __future__ import annotations

import statistics
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from celery import Celery

from tests.conftest import create_user
from tests.stack import RedisServer, Stack

LOGDIR = Path(tempfile.mkdtemp(prefix="bench-"))


@contextmanager
def fresh_stack(**env: str) -> Iterator[tuple[Stack, RedisServer]]:
    """A new redis-server and an (empty) stack on it; the caller starts the processes it needs."""
    server = RedisServer(LOGDIR).start()
    # The load comes from one key: the per-key rate limit would measure itself. Its counter still runs in
    # the auth benchmark, which counts requests as the API does.
    stack = Stack(server.url, LOGDIR, **{"RATE_LIMIT_PER_MIN": "0", **env})
    try:
        yield stack, server
    finally:
        stack.stop()
        server.stop()


def celery_app(redis_url: str) -> Celery:
    """A plain Celery client of `redis_url`, configured like ours (the baseline's producer)."""
    app = Celery("bench", broker=redis_url)
    app.config_from_object("celeryconfig")
    app.conf.broker_url = redis_url
    return app


def user_key(stack: Stack, role: str = "user") -> str:
    """A fresh user's API key."""
    return create_user(stack.env["REDIS_URL"], role, prefix="bench")[1]


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by the nearest-rank method."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def median(values: list[float]) -> float:
    """The median."""
    return statistics.median(values)


def line(name: str, value: str, baseline: str, verdict: str) -> None:
    """Print one result beside its same-run baseline."""
    print(f"  {name:<44} {value:>22}   baseline {baseline:>22}   {verdict}", flush=True)
