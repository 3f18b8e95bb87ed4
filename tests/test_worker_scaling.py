"""The worker tier with real processes: a job whose Celery message is lost is sent again (never left queued), a
duplicate message runs nothing twice, workers shut down warm or cold without dropping a job, and `--autoscale`
grows and shrinks the pool.

One stack (redis-server with AOF, the events process with a 2 s bound on queued jobs, the API) serves the whole
module; each test starts the workers it needs and stops them. No worker runs between tests, so a job submitted
with none running stays in the queue list until a test starts one.
"""

from __future__ import annotations

import itertools
import os
import signal
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest
import redis
from kombu import Connection

from events.envelope import Event
from events.process.sweeper import Sweeper
from events.store import keyspace
from events.store.taskmsg import RUN_AGENT_TASK, task_message
from tests.conftest import create_user
from tests.stack import BIN, Proc, RedisServer, Stack, wait_for

pytestmark = pytest.mark.slow
BOUND_S = 2.0  # QUEUED_RECHECK_S of this module's events process
LONG_QUERY = "Tell me about " + " ".join(f"w{i}" for i in range(60))
_names = itertools.count(1)


@pytest.fixture(scope="module")
def scale(logdir: Path) -> Iterator[tuple[Stack, RedisServer, redis.Redis]]:
    server = RedisServer(logdir, appendonly=True).start()
    client = redis.Redis.from_url(server.url, decode_responses=True)
    # A group that never reads keeps the whole lifecycle stream (the events process trims what every group read),
    # so the tests can see each job's full lifecycle, and that an event is absent, not trimmed.
    client.xgroup_create(keyspace.LIFECYCLE_STREAM, "test-observer", id="0", mkstream=True)
    stack = Stack(server.url, logdir, QUEUED_RECHECK_S=str(BOUND_S), SSE_HEARTBEAT_S="0.5")
    stack.events()
    stack.api()
    yield stack, server, client
    stack.stop()
    client.close()
    server.stop()


@pytest.fixture
def api(scale: tuple[Stack, RedisServer, redis.Redis]) -> Iterator[httpx.Client]:
    stack, server, _ = scale
    _, key = create_user(server.url)
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        yield client


def start_worker(stack: Stack, *options: str, **env: str) -> Proc:
    """A Celery worker with `options` (e.g. --concurrency 1, --autoscale=4,1), stopped with the stack at the end."""
    name = f"scale{next(_names)}"
    argv = [str(BIN / "celery"), "-A", "workers", "worker", "-Q", stack.env.get("AGENT_QUEUE", "agents")]
    argv += ["-n", f"{name}@%h", "-l", "INFO", "--without-mingle", "--without-gossip", *options]
    proc = Proc(f"worker-{name}", argv, {**stack.env, **env}, stack.logdir)
    stack.procs.append(proc)
    proc.start()
    wait_for(lambda: "ready." in proc.log() or not proc.alive(), timeout=60, what="the worker")
    assert proc.alive(), proc.log()[-3000:]
    return proc


def exited(proc: Proc, timeout: float = 60) -> int:
    """Wait for `proc` to exit by itself; returns its exit code."""
    assert proc.popen is not None
    return proc.popen.wait(timeout=timeout)


def pool_processes(pid: int) -> int:
    """How many child processes `pid` has now (a prefork worker's pool)."""
    count = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:  # it exited meanwhile
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            count += 1
    return count


def submit(api: httpx.Client, query: str = "2+2") -> str:
    resp = api.post("/api/v1/jobs", json={"agent_type": "query", "query": query})
    assert resp.status_code == 202, resp.text
    return str(resp.json()["id"])


def finished(api: httpx.Client, job_id: str, timeout: float = 60) -> dict:
    """The job once it is terminal (the API may answer 503 while Redis restarts)."""

    def terminal() -> dict | None:
        resp = api.get(f"/api/v1/jobs/{job_id}", params={"wait": 5})
        job = resp.json() if resp.status_code == 200 else {}
        return job if job.get("status") in ("succeeded", "failed", "cancelled") else None

    return wait_for(terminal, timeout=timeout, interval=0.1, what=f"job {job_id} to end")


def job_events(r: redis.Redis, job_id: str) -> list[Event]:
    return [Event.from_fields(fields) for _, fields in r.xrange(keyspace.job_stream(job_id))]


def lifecycle(r: redis.Redis, job_id: str) -> list[str]:
    """The job's lifecycle statuses, in order."""
    events = (Event.from_fields(fields) for _, fields in r.xrange(keyspace.LIFECYCLE_STREAM))
    return [e.data["status"] for e in events if e.job_id == job_id]


def assert_ran_once(r: redis.Redis, job: dict, attempt: int = 1) -> None:
    """The job succeeded on `attempt` with one `start` per attempt, one `done`, and gap-free seqs."""
    assert job["status"] == "succeeded" and job["attempts"] == attempt, job
    events = job_events(r, job["id"])
    assert [e.attempt for e in events if e.type == "start"] == list(range(1, attempt + 1))
    assert [(e.type, e.attempt) for e in events if e.terminal] == [("done", attempt)]
    assert events[-1].type == "done"
    assert [e.seq for e in events] == list(range(len(events)))


def message_of(r: redis.Redis, job_id: str, queue: str = "agents") -> str:
    """The exact text of the job's current message, made again from the ids the job records."""
    task_id, origin, tag, attempt = r.hmget(keyspace.job(job_id), "msg_id", "msg_origin", "msg_tag", "attempt")
    args = [job_id, int(attempt)]
    return task_message(RUN_AGENT_TASK, args, queue, task_id=task_id, origin=origin, delivery_tag=tag)


# --- the message of a queued job -----------------------------------------------------------------------------


def test_a_lost_message_is_sent_again_while_a_long_queue_keeps_its_own(scale, api: httpx.Client) -> None:
    stack, _, r = scale
    lost = submit(api)  # the oldest job: its message is lost on the way to a worker
    assert r.lrem("agents", 0, message_of(r, lost)) == 1
    waiting = [submit(api, f"{i}+{i}") for i in range(60)]  # a long queue: every job older than the bound
    messages = {job_id: message_of(r, job_id) for job_id in waiting}
    wait_for(lambda: "reenqueued" in lifecycle(r, lost), timeout=30, what="the lost message to be sent again")

    # The lost job has a new message, at the front of the queue; every other job keeps its one message.
    assert r.hget(keyspace.job(lost), "msg_origin") == "sweeper"
    queue = r.lrange("agents", 0, -1)
    assert queue[-1] == message_of(r, lost) and len(queue) == len(waiting) + 1
    assert sorted(queue[:-1]) == sorted(messages.values())
    assert all(message_of(r, job_id) == messages[job_id] for job_id in waiting)
    assert all("reenqueued" not in lifecycle(r, job_id) for job_id in waiting)
    wait_for(lambda: r.hget(keyspace.JOB_COUNTS, "reenqueued") == "1", what="the lifecycle consumer to count it")

    worker = start_worker(stack, "--concurrency", "2", OFFLINE_TOKEN_DELAY_MS="0")
    try:
        for job_id in [lost, *waiting]:
            assert_ran_once(r, finished(api, job_id))
        assert r.llen("agents") == 0 and r.zcard(keyspace.QUEUED_JOBS) == 0
    finally:
        worker.stop()


def test_a_second_message_for_the_same_attempt_runs_nothing_twice(scale, api: httpx.Client) -> None:
    stack, _, r = scale
    job_id = submit(api)
    duplicate = task_message(RUN_AGENT_TASK, [job_id, 1], "agents", origin="sweeper")
    r.rpush("agents", duplicate)  # taken first: it starts the job, and the original is refused
    worker = start_worker(stack, "--concurrency", "2")
    try:
        assert_ran_once(r, finished(api, job_id))
        wait_for(lambda: f"skipped job {job_id} attempt 1" in worker.log(), what="the other message to be refused")
        wait_for(lambda: r.llen("agents") == 0 and r.hlen(keyspace.KOMBU_UNACKED) == 0, what="both acknowledged")
        assert_ran_once(r, finished(api, job_id))  # still: the refused message changed nothing
    finally:
        worker.stop()


def test_a_message_held_by_a_busy_worker_is_not_sent_again(scale, api: httpx.Client) -> None:
    stack, _, r = scale
    # One process, two messages taken at a time: the second waits in `unacked` while the first job runs.
    worker = start_worker(stack, "--concurrency", "1", "--prefetch-multiplier", "2", OFFLINE_TOKEN_DELAY_MS="300")
    try:
        busy = submit(api, LONG_QUERY)
        wait_for(lambda: r.hget(keyspace.job(busy), "status") == "running", what="the long job to start")
        held = submit(api)
        tag = r.hget(keyspace.job(held), "msg_tag")
        wait_for(lambda: r.hexists(keyspace.KOMBU_UNACKED, tag), what="the worker to take the second message")
        # The sweeper looks at it past the bound, finds it in `unacked`, and looks again a bound later.
        submitted = float(r.hget(keyspace.job(held), "created_at"))
        wait_for(
            lambda: (r.zscore(keyspace.QUEUED_JOBS, held) or 0) > submitted + 2 * BOUND_S,
            timeout=30,
            what="two looks at the held message",
        )
        assert r.hget(keyspace.job(busy), "status") == "running", "the long job must outlast the looks"
        assert r.hget(keyspace.job(held), "status") == "queued" and r.llen("agents") == 0
        assert_ran_once(r, finished(api, busy))
        job = finished(api, held)
        assert_ran_once(r, job)
        assert "reenqueued" not in lifecycle(r, held)
    finally:
        worker.stop()


def test_a_message_kombu_restores_to_the_queue_is_found_in_its_restored_form(scale) -> None:
    _, server, _ = scale
    url = server.url.rsplit("/", 1)[0] + "/12"  # a database of its own: its `unacked` and index are this test's
    r = redis.Redis.from_url(url, decode_responses=True)
    r.flushdb()
    job_id, now = "j_" + "e" * 32, time.time()
    message = task_message(RUN_AGENT_TASK, [job_id, 1], "agents", task_id=job_id)
    ids = message.ids
    r.hset(keyspace.job(job_id), mapping={"status": "queued", "attempt": "1", "msg_id": ids.task_id})
    r.hset(keyspace.job(job_id), mapping={"msg_origin": ids.origin, "msg_tag": ids.delivery_tag})
    r.zadd(keyspace.QUEUED_JOBS, {job_id: now - 60})
    r.lpush("agents", message)
    with Connection(url) as conn:  # a worker takes it, then hands it back (as at a warm shutdown)
        channel = conn.channel()
        assert channel.basic_get("agents", no_ack=False) is not None
        assert r.hexists(keyspace.KOMBU_UNACKED, ids.delivery_tag) and r.llen("agents") == 0
        channel.qos.restore_unacked()
    [restored] = r.lrange("agents", 0, -1)
    assert restored != message and '"redelivered": true' in restored
    sweeper = Sweeper(r, "agents", grace_s=1, job_ttl_s=60, stream_ttl_s=60, queued_recheck_s=30, clock=lambda: now)
    assert sweeper.recheck_queued() == {"waiting": 1}
    r.flushdb()
    r.close()


# --- shutdown and autoscale ----------------------------------------------------------------------------------


def test_sigterm_lets_the_running_job_finish_even_when_sent_twice(scale, api: httpx.Client) -> None:
    stack, _, r = scale
    worker = start_worker(stack, "--concurrency", "1", OFFLINE_TOKEN_DELAY_MS="60")
    job_id = submit(api, LONG_QUERY)
    wait_for(lambda: any(e.type == "token" for e in job_events(r, job_id)), what="the first token")
    os.kill(worker.pid, signal.SIGTERM)  # as Kubernetes does: to the main process only
    os.kill(worker.pid, signal.SIGTERM)  # a second one changes nothing: still a warm shutdown
    assert exited(worker) == 0
    job = finished(api, job_id, timeout=5)
    assert_ran_once(r, job)
    assert [e.type for e in job_events(r, job_id)].count("token") >= 2
    assert not r.exists(keyspace.job_lease(job_id)) and r.hlen(keyspace.KOMBU_UNACKED) == 0


def test_sigquit_hands_the_job_back_and_another_worker_runs_it_as_the_next_attempt(scale, api: httpx.Client) -> None:
    stack, _, r = scale
    cold = start_worker(stack, "--concurrency", "1", OFFLINE_TOKEN_DELAY_MS="60")
    job_id = submit(api, LONG_QUERY)
    wait_for(lambda: any(e.type == "token" for e in job_events(r, job_id)), what="the first token")
    os.kill(cold.pid, signal.SIGQUIT)  # cold shutdown: the running job is cancelled, not finished
    exited(cold)
    assert not any(e.terminal for e in job_events(r, job_id))  # nobody finished it
    rescuer = start_worker(stack, "--concurrency", "1")
    try:
        job = finished(api, job_id)
        assert_ran_once(r, job, attempt=2)
        notes = [e.data for e in job_events(r, job_id) if e.type == "metadata"]
        assert [n for n in notes if n.get("event") == "attempt_lost"] == [
            {"event": "attempt_lost", "attempt": 1, "next_attempt": 2}
        ]
        assert lifecycle(r, job_id).count("retried") == 1
    finally:
        rescuer.stop()


def test_autoscale_grows_the_pool_under_a_burst_and_shrinks_it_after(scale, api: httpx.Client) -> None:
    stack, _, r = scale
    # Celery reads AUTOSCALE_KEEPALIVE: how long the pool stays grown after the last task arrived (default 30 s).
    worker = start_worker(stack, "--autoscale=4,1", OFFLINE_TOKEN_DELAY_MS="150", AUTOSCALE_KEEPALIVE="2")
    try:
        wait_for(lambda: pool_processes(worker.pid) == 1, what="the pool at its minimum")
        jobs = [submit(api, LONG_QUERY) for _ in range(8)]
        seen = wait_for(lambda: (n := pool_processes(worker.pid)) == 4 and n, timeout=30, what="the pool at 4")
        for job_id in jobs:
            assert_ran_once(r, finished(api, job_id))
            seen = max(seen, pool_processes(worker.pid))
        wait_for(lambda: pool_processes(worker.pid) == 1, timeout=30, what="the pool back at 1")
        assert seen == 4  # never above --autoscale's maximum
    finally:
        worker.stop()


# --- a Redis outage while a worker takes a job (last: it restarts the module's Redis) -------------------------


def test_a_job_taken_by_a_worker_while_redis_goes_away_ends_done_not_queued(scale, api: httpx.Client) -> None:
    stack, server, r = scale
    worker = start_worker(stack, "--concurrency", "1")
    try:
        assert_ran_once(r, finished(api, submit(api)))  # the worker is warm
        for _ in range(3):  # kombu's BRPOP waits 1 s at a time: the stall must begin while one waits
            wait_for(lambda: any(c["cmd"] == "brpop" and "b" in c["flags"] for c in r.client_list()), what="a BRPOP")
            os.kill(worker.pid, signal.SIGSTOP)  # a stalled worker (CPU starvation, a paused VM) ...
            job_id = submit(api)  # ... whose waiting BRPOP Redis answers: the message leaves the queue for it
            if r.llen("agents") == 0:
                break
            os.kill(worker.pid, signal.SIGCONT)  # its BRPOP had just timed out: the job simply runs; again
            assert_ran_once(r, finished(api, job_id))
        assert r.llen("agents") == 0 and r.hlen(keyspace.KOMBU_UNACKED) == 0
        r.shutdown(nosave=True)  # Redis restarts (the AOF keeps every write) before the worker reads its message
        exited(server.proc, timeout=10)
        os.kill(worker.pid, signal.SIGCONT)
        wait_for(lambda: "Connection to broker lost" in worker.log(), what="the worker to notice")
        server.start()
        # The message is gone: not in the queue, not in `unacked`. Before the bound, the job stayed queued forever.
        assert r.hget(keyspace.job(job_id), "status") == "queued"
        assert r.llen("agents") == 0 and not r.hexists(keyspace.KOMBU_UNACKED, r.hget(keyspace.job(job_id), "msg_tag"))
        job = finished(api, job_id, timeout=60)
        assert_ran_once(r, job)
        assert lifecycle(r, job_id) == ["queued", "reenqueued", "running", "succeeded"]
    finally:
        os.kill(worker.pid, signal.SIGCONT)
        worker.stop()
