"""A whole stack whose model is the LLM simulator (tests/llmsim.py): the fixture body the model-path tests share."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import httpx

from tests.conftest import create_user
from tests.llmsim import SimControl, run_simulator
from tests.stack import RedisServer, Stack

PROVIDER_KEY = "sk-provider-secret-0123456789abcdef"  # never to be seen in a log, event or error body


@contextlib.contextmanager
def simulated_stack(logdir: Path, *, workers: int = 1, **env: str) -> Iterator[tuple[Stack, SimControl]]:
    """redis-server, the events process, a Celery worker (`workers` pool processes) and the API, with the
    simulator as their OpenAI-compatible service; `env` adds to or overrides the stack's settings."""
    with run_simulator() as base_url:
        server = RedisServer(logdir).start()
        stack = Stack(server.url, logdir, **{"OPENAI_API_KEY": PROVIDER_KEY, "OPENAI_BASE_URL": base_url, **env})
        control = SimControl(base_url)
        try:
            stack.events(wait=False)
            stack.worker(concurrency=workers, wait=False)
            stack.api(wait=False)
            stack.ready()
            yield stack, control
        finally:
            control.close()
            stack.stop()
            server.stop()


@contextlib.contextmanager
def fresh_user(stack: Stack, control: SimControl) -> Iterator[httpx.Client]:
    """A client for a new user, with the simulator reset to answer at once."""
    control.reset()
    control.config(tokens_per_s=0)
    _, key = create_user(stack.env["REDIS_URL"])
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        yield client
