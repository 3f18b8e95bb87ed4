"""Shared fixtures: a real redis-server, the real API, workers and events process, and users with keys."""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import httpx
import pytest
import redis
import redis.asyncio as aioredis

from api.users import UserStore
from events import job_record
from events.store import keyspace
from events.store.scripts import Scripts
from tests.eventsdb import DB, NOW, uid
from tests.llmsim import SimControl
from tests.stack import SECRET, RedisServer, Stack

if TYPE_CHECKING:
    from playwright.sync_api import Browser

_names = itertools.count()
# The stack test_semantic_cache.py and test_hybrid_search.py share (`sim_semantic`): the response cache with semantic
# matching, and an embedding model the simulator serves.
SEMANTIC_THRESHOLD = 0.9
CACHE_MAX_ENTRIES = 4  # small, so a test can push an entry out of the response cache for real
EMBEDDING_MODEL = "text-embedding-3-small"  # priced in ops/prices.yaml at $0.02 per million input tokens
# The browser the Playwright tests drive (`browser`, test_openapi.py).
CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


@pytest.fixture(scope="session")
def logdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the processes of this run write their logs."""
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def redis_server(logdir: Path) -> Iterator[RedisServer]:
    """One throw-away redis-server for the session."""
    server = RedisServer(logdir).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def stack(redis_server: RedisServer, logdir: Path) -> Iterator[Stack]:
    """The API, two worker processes and the events process, offline provider."""
    stack = Stack(redis_server.url, logdir)
    stack.events(wait=False)
    stack.worker(concurrency=2, wait=False)
    stack.api(workers=1, wait=False)
    stack.ready()
    yield stack
    stack.stop()


def _simulated(logdir: Path, **settings: Any) -> Iterator[tuple[Stack, SimControl]]:
    from tests.simstack import simulated_stack  # it imports this module

    with simulated_stack(logdir, **settings) as both:
        yield both


# Stacks whose model is the LLM simulator, each shared by the modules that need its settings; started when a test
# first asks for one. Their tests reset the simulator before counting its requests, and each makes its own users.


@pytest.fixture(scope="session")
def sim_default(logdir: Path) -> Iterator[tuple[Stack, SimControl]]:
    """Default settings, one pool process: the math, code and admission tests."""
    yield from _simulated(logdir)


@pytest.fixture(scope="session")
def sim_gpt4o(logdir: Path) -> Iterator[tuple[Stack, SimControl]]:
    """DEFAULT_MODEL=gpt-4o: the session memory and vision tests."""
    yield from _simulated(logdir, DEFAULT_MODEL="gpt-4o")


@pytest.fixture(scope="session")
def sim_semantic(logdir: Path) -> Iterator[tuple[Stack, SimControl]]:
    """The response cache with semantic matching (a long TTL, few entries) and an embedding model, two pool
    processes, no retries of model calls: the semantic cache and hybrid search tests."""
    yield from _simulated(
        logdir,
        workers=2,
        DEFAULT_MODEL="gpt-4o-mini",
        LLM_MAX_RETRIES="0",
        LLM_TIMEOUT_S="5",
        CACHE_TTL_S="600",
        CACHE_MAX_ENTRIES=str(CACHE_MAX_ENTRIES),
        CACHE_SEMANTIC_THRESHOLD=str(SEMANTIC_THRESHOLD),
        EMBEDDING_MODEL=EMBEDDING_MODEL,
    )


@pytest.fixture
def r(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A plain client of the session's Redis."""
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def raw(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A non-decoding client of the session's Redis, as the workers use."""
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def own_redis(logdir: Path) -> Iterator[RedisServer]:
    """A redis-server for the asking module only: nothing else (e.g. the API's consumers) writes to it, so the
    module's tests can count or compare everything in it exactly."""
    server = RedisServer(logdir).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless, driven by Playwright; one per module."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield browser
        browser.close()


def create_user(redis_url: str, role: str = "user", prefix: str = "u") -> tuple[str, str]:
    """A new user with one key, made through the same store the CLI uses; returns (user_id, key)."""
    user_id = f"{prefix}{next(_names)}"

    async def make() -> str:
        client = aioredis.Redis.from_url(redis_url)
        try:
            store = UserStore(client, SECRET)
            await store.create_user(user_id, role)
            key, _ = await store.create_key(user_id)
            return key
        finally:
            await client.aclose()

    # In a thread of its own: a caller may already run an event loop (pytest-asyncio, Playwright).
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return user_id, pool.submit(lambda: asyncio.run(make())).result()


@pytest.fixture
def user_factory(redis_server: RedisServer) -> Callable[..., tuple[str, str]]:
    """Make users on the session's Redis."""
    return lambda role="user": create_user(redis_server.url, role)


@pytest.fixture
def alice(user_factory: Callable[..., tuple[str, str]], stack: Stack) -> Iterator[httpx.Client]:
    """An HTTP client of the session's API, authenticated as a fresh user."""
    user_id, key = user_factory("user")
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        client.user_id = user_id  # type: ignore[attr-defined]
        client.key = key  # type: ignore[attr-defined]
        yield client


@pytest.fixture
def client_for(user_factory: Callable[..., tuple[str, str]], stack: Stack):  # type: ignore[no-untyped-def]
    """Make HTTP clients of the session's API for new users (`client_for("admin")`); each knows its user_id."""
    made: list[httpx.Client] = []

    def make(role: str = "user") -> httpx.Client:
        user_id, key = user_factory(role)
        client = httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
        client.user_id = user_id  # type: ignore[attr-defined]
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


# The event runtime tests (test_publisher, test_consumer, test_lifecycle_counts, test_job_scripts, test_sweeper) use
# logical database `eventsdb.DB` of the session's redis-server.


@pytest.fixture
def db_url(redis_server: RedisServer) -> str:
    return redis_server.url.rsplit("/", 1)[0] + f"/{DB}"


@pytest.fixture
def db(db_url: str) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(db_url, decode_responses=True) as client:
        yield client


@pytest.fixture
def scripts(db: redis.Redis) -> Scripts:
    return Scripts(db)


@pytest.fixture
def new_job(db: redis.Redis) -> Iterator[Callable[..., str]]:
    """Saves queued jobs made by `job_record`; removes them, and their place in the running set, afterwards."""
    made: list[str] = []

    def make() -> str:
        job_id = uid("job")
        db.hset(
            keyspace.job(job_id),
            mapping=job_record.job_record(
                job_id=job_id, owner="tester", agent="query", model="offline", query="2+2", max_tokens=64, now=NOW
            ),
        )
        made.append(job_id)
        return job_id

    yield make
    for job_id in made:
        db.delete(keyspace.job(job_id), keyspace.job_stream(job_id), keyspace.job_lease(job_id))
        db.zrem(keyspace.RUNNING_JOBS, job_id)
