"""Schemathesis runs every check against the running API with an admin key and with a user key:
no 5xx, every status and body as the OpenAPI document says, schema-valid bodies accepted, invalid ones refused."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import create_user
from tests.stack import BIN, ROOT, RedisServer, Stack

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fuzz_stack(logdir: Path) -> Iterator[Stack]:
    server = RedisServer(logdir).start()
    stack = Stack(server.url, logdir, RATE_LIMIT_PER_MIN="0", OFFLINE_TOKEN_DELAY_MS="0")
    stack.events()
    stack.worker(concurrency=2)
    stack.api()
    yield stack
    stack.stop()
    server.stop()


@pytest.mark.parametrize("role", ["admin", "user"])
def test_schemathesis_finds_nothing_with_every_check(fuzz_stack: Stack, role: str) -> None:
    _, key = create_user(fuzz_stack.env["REDIS_URL"], role)
    argv = [
        str(BIN / "schemathesis"),
        "run",
        f"{fuzz_stack.url}/api/v1/openapi.json",
        "-H",
        f"Authorization: Bearer {key}",
        "--max-examples",
        "12",  # per operation and phase; with two roles the run stays near a minute (make test's 15-minute bound)
        "--request-timeout",
        "15",
        "--seed",
        "20261126",
        "--no-color",
    ]
    run = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600, env=fuzz_stack.env)
    tail = run.stdout[-4000:]
    failures = run.stdout.partition("FAILURES")[2][:12000]  # each failure with its reproducing curl
    assert run.returncode == 0, failures or tail
    assert " passed" in tail and "failures" not in tail.lower().split("summary")[-1], tail
    for proc in fuzz_stack.procs:
        assert key not in proc.log()
