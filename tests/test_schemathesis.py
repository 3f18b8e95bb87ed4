"""Schemathesis runs every check against the running API with an admin key and with a user key:
no 5xx, every status and body as the OpenAPI document says, schema-valid bodies accepted, invalid ones refused."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import create_user
from tests.stack import BIN, ROOT, RedisServer, Stack

pytestmark = pytest.mark.slow
ROLES = ("admin", "user")


@dataclass(frozen=True)
class FuzzRun:
    """One schemathesis process, the stack it fuzzes, the key it sends and the file its output goes to."""

    stack: Stack
    key: str
    popen: subprocess.Popen[bytes]
    out: Path


@pytest.fixture(scope="module")
def fuzz_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, FuzzRun]]:
    """A stack of its own for each role (Redis, events, a worker, the API), fuzzed by a schemathesis run of its own:
    the runs go side by side (each mostly waits for its API, so on two cores both take little longer than one), and
    what one role's run does (an admin's deletes, say) never reaches the other's."""
    logdirs = {role: tmp_path_factory.mktemp(f"fuzz-{role}") for role in ROLES}
    servers = {role: RedisServer(logdirs[role]).start() for role in ROLES}
    stacks = {
        role: Stack(servers[role].url, logdirs[role], RATE_LIMIT_PER_MIN="0", OFFLINE_TOKEN_DELAY_MS="0")
        for role in ROLES
    }
    runs: dict[str, FuzzRun] = {}
    try:
        for stack in stacks.values():
            stack.events(wait=False)
            stack.worker(concurrency=2, wait=False)
            stack.api(wait=False)
        for role, stack in stacks.items():
            stack.ready()
            _, key = create_user(stack.env["REDIS_URL"], role)
            argv = [
                str(BIN / "schemathesis"),
                "run",
                f"{stack.url}/api/v1/openapi.json",
                "-H",
                f"Authorization: Bearer {key}",
                "--max-examples",
                "12",  # per operation and phase; the two roles' runs, side by side, take about a minute and a half
                "--request-timeout",
                "15",
                "--seed",
                "20261126",
                "--no-color",
            ]
            out = logdirs[role] / "schemathesis.out"
            with out.open("wb") as stdout, (logdirs[role] / "schemathesis.err").open("wb") as stderr:
                popen = subprocess.Popen(argv, cwd=ROOT, env=stack.env, stdout=stdout, stderr=stderr)
            runs[role] = FuzzRun(stack, key, popen, out)
        yield runs
    finally:
        for run in runs.values():
            if run.popen.poll() is None:  # its test failed before the run ended
                run.popen.kill()
                run.popen.wait()
        for role in ROLES:
            stacks[role].stop()
            servers[role].stop()


@pytest.mark.timeout(300)  # the run shares the machine with the other role's
@pytest.mark.parametrize("role", ROLES)
def test_schemathesis_finds_nothing_with_every_check(fuzz_runs: dict[str, FuzzRun], role: str) -> None:
    run = fuzz_runs[role]
    returncode = run.popen.wait(timeout=290)
    stdout = run.out.read_text()
    tail = stdout[-4000:]
    failures = stdout.partition("FAILURES")[2][:12000]  # each failure with its reproducing curl
    assert returncode == 0, failures or tail
    assert " passed" in tail and "failures" not in tail.lower().split("summary")[-1], tail
    for proc in run.stack.procs:
        assert run.key not in proc.log()
