"""`make run` (ops/run.sh) as a user starts it: every process comes up on the ports it is given, a job runs and
Prometheus scrapes the stack; a killed process (Redis too) is restarted while the rest keeps running; one that
keeps crashing ends the run non-zero; busy ports, a second run on one VAR_DIR and a Redis that never answers are
refused before anything starts; SIGTERM stops it all with exit code 0. With API_INSTANCES=3, nginx fronts three
instances that SIGHUP restarts one at a time under load."""

from __future__ import annotations

import contextlib
import json
import os
import re
import runpy
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from stat import S_IMODE
from typing import Any

import httpx
import pytest

from tests.balancer import Load
from tests.stack import BIN, ROOT, SECRET, free_port, wait_for

pytestmark = pytest.mark.slow
FLOWER_AUTH = ("ops", "flower-pw-make-run")
PORTS = ("PORT", "REDIS_PORT", "FLOWER_PORT", "WORKER_METRICS_PORT", "PROMETHEUS_PORT")
NAMES = ("redis", "events", "worker", "api", "flower")


def listening(port: int) -> bool:
    """True while something accepts connections on 127.0.0.1:`port`."""
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def group_alive(pgid: int) -> bool:
    """True while a process of group `pgid` is left (zombies aside: they hold nothing)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _, group = stat.read_text().rpartition(")")[2].split()[:3]
        except (OSError, ValueError):
            continue
        if state != "Z" and int(group) == pgid:
            return True
    return False


def command_lines() -> list[str]:
    """The command line of every process on this host, as `ps` shows it to any user."""
    lines = []
    for path in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            lines.append(path.read_bytes().replace(b"\0", b" ").decode(errors="replace"))
    return lines


def run_env(tmp: Path, **overrides: str) -> dict[str, str]:
    """The environment of a user's `make run`: free ports, VAR_DIR under `tmp`, no REDIS_URL (its own Redis)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OPENAI_", "OTEL_", "PROMETHEUS_MULTIPROC", "PYTEST_")) and k != "REDIS_URL"
    }
    env.update({name: str(free_port()) for name in PORTS})
    env.update(
        VAR_DIR=str(tmp / "var"),
        AGENTIC_SECRET_KEY=SECRET,
        FLOWER_BASIC_AUTH=":".join(FLOWER_AUTH),
        WORKER_AUTOSCALE="2,1",
        WEB_CONCURRENCY="2",
        OFFLINE_TOKEN_DELAY_MS="1",
    )
    env.update(overrides)
    return env


class Run:
    """One `bash ops/run.sh` in its own session, its output (stdout and stderr) in a file."""

    def __init__(self, tmp: Path, env: dict[str, str], *args: str) -> None:
        self.env = env
        self.var = Path(env["VAR_DIR"])
        self.out_path = tmp / "run.out"
        self.key = ""
        with self.out_path.open("w") as out:
            self.popen = subprocess.Popen(
                ["bash", "ops/run.sh", *args],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def redis_url(self) -> str:
        """The Redis this run started."""
        return f"redis://127.0.0.1:{self.env['REDIS_PORT']}/0"

    def output(self) -> str:
        """What it printed so far."""
        return self.out_path.read_text()

    def pid(self, name: str) -> int:
        """The PID (and process group) of its process `name`, from the supervisor's pid file."""
        return int((self.var / "run" / f"{name}.pid").read_text())

    def log(self, name: str) -> str:
        """What process `name` logged so far."""
        return (self.var / "log" / f"{name}.log").read_text(errors="replace")

    def wait_up(self) -> None:
        """Wait for the banner; fail with the output if the run ends first."""
        wait_for(
            lambda: "Ctrl-C stops everything" in self.output() or self.popen.poll() is not None,
            timeout=120,
            what="make run to come up",
        )
        assert self.popen.poll() is None, self.output()

    def stop(self) -> int:
        """SIGTERM it and return its exit code; kill what it started, by process group, if it does not stop."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout=90)
        except subprocess.TimeoutExpired:
            for pgid in [self.popen.pid, *(int(f.read_text()) for f in (self.var / "run").glob("*.pid"))]:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
            raise


def job_succeeds(run: Run) -> dict[str, Any]:
    """Submit a job (waiting out 503s while Redis comes back) and wait until it succeeds."""
    with httpx.Client(
        base_url=f"http://127.0.0.1:{run.env['PORT']}", timeout=60, headers={"Authorization": f"Bearer {run.key}"}
    ) as api:

        def submit() -> Any:
            resp = api.post("/api/v1/jobs", json={"agent_type": "query", "query": "what is 6*7?"})
            return resp.status_code == 202 and resp.json()

        job = wait_for(submit, timeout=30, interval=0.5, what="the job accepted")
        done = api.get(f"/api/v1/jobs/{job['id']}", params={"wait": 45}).json()
    assert done["status"] == "succeeded", done
    return done


def new_user_key(run: Run, name: str) -> str:
    """The API key of a new user `name` (role user), made with the CLI against the run's Redis."""
    made = subprocess.run(
        [str(BIN / "agentic"), "users", "create", name, "--role", "user"],
        cwd=ROOT,
        env={**run.env, "REDIS_URL": run.redis_url},
        capture_output=True,
        text=True,
        timeout=30,
    )
    return str(json.loads(made.stdout)["api_key"])


@pytest.fixture(scope="module")
def make_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """One `make run` with every process, shared by the tests up to the one that stops it with SIGTERM."""
    tmp = tmp_path_factory.mktemp("make-run")
    run = Run(tmp, run_env(tmp))
    try:
        run.wait_up()
        run.key = new_user_key(run, "runner")
        yield run
    finally:
        run.stop()


@pytest.mark.timeout(300)
def test_make_run_starts_everything_runs_a_job_and_is_scraped(make_run: Run) -> None:
    banner, ports = make_run.output(), make_run.env
    assert f"http://127.0.0.1:{ports['PORT']}/api/v1/health" in banner
    assert f"starting redis-server on 127.0.0.1:{ports['REDIS_PORT']}" in banner
    assert all(group_alive(make_run.pid(name)) for name in NAMES)
    job_succeeds(make_run)

    flower = f"http://127.0.0.1:{ports['FLOWER_PORT']}"
    workers = wait_for(
        lambda: httpx.get(f"{flower}/api/workers", params={"refresh": 1}, auth=FLOWER_AUTH, timeout=10).json(),
        timeout=30,
        what="the worker in Flower",
    )
    assert len(workers) == 1
    # Flower's password reaches it (and prometheus-config) through the environment, never the command line.
    assert not [line for line in command_lines() if FLOWER_AUTH[1] in line]

    if shutil.which("prometheus"):
        prom = f"http://127.0.0.1:{ports['PROMETHEUS_PORT']}/api/v1"
        assert f"http://127.0.0.1:{ports['PROMETHEUS_PORT']}" in banner

        def all_up() -> bool:
            targets = httpx.get(f"{prom}/targets", timeout=5).json()["data"]["activeTargets"]
            return {t["labels"]["job"] for t in targets if t["health"] == "up"} == {
                "api",
                "workers",
                "flower",
                "prometheus",
            }

        # The file's interval is 15 s: allow for a first scrape of every target.
        wait_for(all_up, timeout=60, interval=1, what="every target up in Prometheus")
        query = 'sum(http_requests_total{route="/api/v1/jobs",status="202"})'
        wait_for(
            lambda: httpx.get(f"{prom}/query", params={"query": query}, timeout=5).json()["data"]["result"],
            timeout=40,
            interval=1,
            what="the submit counted in Prometheus",
        )


def test_a_killed_events_process_is_restarted_and_the_stack_keeps_running(make_run: Run) -> None:
    others = {name: make_run.pid(name) for name in NAMES if name != "events"}
    killed = make_run.pid("events")
    os.kill(killed, signal.SIGKILL)

    wait_for(
        lambda: "run: events exited with code -9; restarting in 1 s (restart 1)" in make_run.output(),
        timeout=10,
        what="the supervisor to report the crash",
    )
    wait_for(lambda: make_run.pid("events") != killed, timeout=10, what="a new events process")
    wait_for(
        lambda: make_run.log("events").count("events process started") == 2,
        timeout=30,
        what="the new events process to start",
    )
    job_succeeds(make_run)
    assert make_run.popen.poll() is None, make_run.output()
    assert {name: make_run.pid(name) for name in others} == others


def test_a_killed_redis_is_restarted_and_jobs_run_again_without_restarting_the_rest(make_run: Run) -> None:
    others = {name: make_run.pid(name) for name in NAMES if name != "redis"}
    killed = make_run.pid("redis")
    seen = len(make_run.output())
    os.kill(killed, signal.SIGKILL)

    wait_for(
        lambda: "run: redis exited with code -9; restarting in 1 s (restart 1)" in make_run.output(),
        timeout=10,
        what="the supervisor to report the crash",
    )
    wait_for(
        lambda: make_run.pid("redis") != killed and listening(int(make_run.env["REDIS_PORT"])),
        timeout=15,
        what="a new redis-server",
    )
    # The key made before the crash is still there (AOF).
    job_succeeds(make_run)
    assert make_run.popen.poll() is None, make_run.output()
    # Nothing alive was restarted: the API, events and Flower rode the outage out. The Celery worker may not:
    # when the connection drops while it acks a task, kombu's Redis transport can end it with an AttributeError
    # (exit code 1); then it was restarted like any process that exits, and the job above ran on the new one.
    exited = re.findall(r"run: (\w+) exited", make_run.output()[seen:])
    assert exited[0] == "redis" and set(exited[1:]) <= {"worker"}, make_run.output()[seen:]
    alive = [name for name in others if name not in exited]
    assert [make_run.pid(name) for name in alive] == [others[name] for name in alive]


def test_a_second_run_on_the_same_var_dir_is_refused(make_run: Run, tmp_path: Path) -> None:
    second = Run(tmp_path, run_env(tmp_path, VAR_DIR=str(make_run.var)))
    try:
        code = second.popen.wait(timeout=30)
    finally:
        second.stop()
    assert code == 1, second.output()
    assert f"another make run (pid {make_run.popen.pid}) is using VAR_DIR={make_run.var}" in second.output()
    assert not [name for name in PORTS if listening(int(second.env[name]))]
    assert make_run.popen.poll() is None


def test_sigterm_stops_everything_exits_zero_and_frees_every_port(make_run: Run) -> None:
    groups = [make_run.pid(name) for name in (*NAMES, "prometheus") if (make_run.var / "run" / f"{name}.pid").exists()]
    assert make_run.stop() == 0
    log = make_run.output()
    assert "run: stopped." in log, log[-2000:]
    wait_for(
        lambda: not any(listening(int(make_run.env[name])) for name in PORTS), timeout=20, what="every port released"
    )
    assert not [pgid for pgid in groups if group_alive(pgid)], "a process outlived make run"
    assert not list((make_run.var / "run").glob("*.pid"))


def test_a_process_that_keeps_crashing_makes_the_run_give_up_non_zero_naming_it(tmp_path: Path) -> None:
    # Only the worker reads WORKER_AUTOSCALE, and Celery rejects this one, so the worker alone crashes at start.
    env = run_env(tmp_path, WORKER_AUTOSCALE="8,x", PROMETHEUS="0")
    run = Run(tmp_path, env, "--restart-delay", "0.1", "--max-restarts", "3")
    try:
        code = run.popen.wait(timeout=90)
    finally:
        run.stop()
    out = run.output()
    assert code == 1, out
    for restart, delay in ((1, "0.1"), (2, "0.2"), (3, "0.4")):
        assert f"run: worker exited with code 1; restarting in {delay} s (restart {restart})" in out
    assert "run: giving up on worker: it exited with code 1 after 3 restarts in a row" in out
    assert str(run.var / "log" / "worker.log") in out
    assert "run: stopped." in out
    assert not [name for name in PORTS if listening(int(env[name]))]


@pytest.mark.parametrize("variable", ["REDIS_PORT", "PORT"])
def test_a_busy_port_fails_at_once_naming_the_variable_and_starts_nothing(tmp_path: Path, variable: str) -> None:
    env = run_env(tmp_path)
    with socket.socket() as holder:  # a listener of someone else's
        holder.bind(("127.0.0.1", int(env[variable])))
        holder.listen()
        done = subprocess.run(["bash", "ops/run.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"run: port {env[variable]} ({variable}) on 127.0.0.1 is already in use" in done.stderr
    if variable == "REDIS_PORT":  # how to pick another, or to share that Redis on purpose
        assert f"REDIS_PORT={int(env[variable]) + 1} make run" in done.stderr
        assert f"REDIS_URL=redis://127.0.0.1:{env[variable]}/0" in done.stderr
    assert not (Path(env["VAR_DIR"]) / "log").exists()
    assert not [name for name in PORTS if name != variable and listening(int(env[name]))]


def test_a_redis_url_that_never_answers_fails_after_the_wait_without_showing_its_password(tmp_path: Path) -> None:
    url = f"redis://:hunter2-secret@127.0.0.1:{free_port()}/0"
    env = run_env(tmp_path, REDIS_URL=url)
    done = subprocess.run(
        ["bash", "ops/run.sh", "--redis-wait", "1"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30
    )
    shown = url.replace("hunter2-secret", "***")
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"run: waiting for Redis at {shown}" in done.stdout
    assert f"run: Redis at {shown} did not answer within 1 s" in done.stderr
    assert "hunter2" not in done.stdout + done.stderr
    assert not (Path(env["VAR_DIR"]) / "log").exists()


def test_redis_credentials_without_a_redis_url_are_refused_before_anything_starts(tmp_path: Path) -> None:
    secret = tmp_path / "redis_password"
    secret.write_text("pw-of-a-redis-elsewhere\n")
    env = run_env(tmp_path, REDIS_PASSWORD_FILE=str(secret))
    done = subprocess.run(["bash", "ops/run.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "run: REDIS_PASSWORD_FILE set, but no REDIS_URL" in done.stderr
    assert "pw-of-a-redis-elsewhere" not in done.stdout + done.stderr
    assert not [name for name in PORTS if listening(int(env[name]))]


def _policy() -> Any:
    return runpy.run_path(str(ROOT / "ops" / "supervise.py"))["Policy"]()


@pytest.mark.parametrize(
    ("restart", "delay", "gives_up"),
    [(1, 1, False), (2, 2, False), (3, 4, False), (5, 16, False), (6, 30, True), (9, 30, True)],
)
def test_restart_delays_double_up_to_a_cap_and_the_sixth_quick_crash_is_the_last(
    restart: int, delay: float, gives_up: bool
) -> None:
    policy = _policy()
    assert policy.delay(restart) == delay
    # Before restart number n there have been n - 1 restarts; after five, the next crash is the end.
    assert policy.gives_up(restart - 1) is gives_up


def free_ports_above(count: int) -> int:
    """A free port with the `count` ports above it free too."""
    for _ in range(50):
        port = free_port()
        if port + count <= 65535 and not any(listening(port + i) for i in range(1, count + 1)):
            return port
    raise RuntimeError("no free run of ports")


@pytest.mark.timeout(400)
def test_api_instances_behind_nginx_share_the_load_and_restart_one_at_a_time_on_sighup(tmp_path: Path) -> None:
    """`API_INSTANCES=3 make run`: nginx on PORT in front of three instances; SIGHUP (make rolling-restart) restarts
    them one by one under steady load without one failed request, and Prometheus scrapes all three."""
    port = free_ports_above(3)
    env = run_env(tmp_path, API_INSTANCES="3", PORT=str(port), WEB_CONCURRENCY="1", RATE_LIMIT_PER_MIN="100000")
    run = Run(tmp_path, env)
    try:
        run.wait_up()
        banner = run.output()
        assert f"nginx in front of 3 instances on ports {port + 1}, {port + 2}, {port + 3}" in banner
        record = tmp_path / "var" / "nginx" / "temp.dir"  # as root: where nginx's workers spool uploads
        spool = Path(record.read_text().strip()) if record.exists() else None
        instances = [f"api{i}" for i in (1, 2, 3)]
        assert all(group_alive(run.pid(name)) for name in [*instances, "nginx"])
        run.key = new_user_key(run, "scaled")
        job_succeeds(run)  # through nginx

        before = {name: run.pid(name) for name in instances}
        with Load(f"http://127.0.0.1:{port}", run.key) as load:
            wait_for(lambda: load.requests >= 20, timeout=30, what="load")
            made_restart = subprocess.run(
                ["make", "rolling-restart"], cwd=ROOT, env=run.env, capture_output=True, text=True, timeout=30
            )
            assert made_restart.returncode == 0, made_restart.stdout + made_restart.stderr
            wait_for(lambda: "run: rolling restart done" in run.output(), timeout=180, what="the rolling restart")
            during = load.requests
            wait_for(lambda: load.requests >= during + 20, timeout=30, what="load after the restart")
        assert load.failures == []
        load.check_one_job_per_key(run.redis_url)
        out = run.output()
        assert [out.index(f"run: rolling restart: {name}") for name in instances] == sorted(
            out.index(f"run: rolling restart: {name}") for name in instances
        )
        assert all(run.pid(name) != before[name] for name in instances)
        logs = run.var / "nginx" / "logs"  # private: the error log may hold a stream's ?token=
        assert S_IMODE(logs.stat().st_mode) == 0o700
        assert {S_IMODE(p.stat().st_mode) for p in (logs / "error.log", logs / "access.log")} == {0o600}
        access = (logs / "access.log").read_text()
        assert all(f"up=127.0.0.1:{port + i} " in access for i in (1, 2, 3))

        if shutil.which("prometheus"):
            prom = f"http://127.0.0.1:{env['PROMETHEUS_PORT']}/api/v1"

            def api_targets_up() -> bool:
                targets = httpx.get(f"{prom}/targets", timeout=5).json()["data"]["activeTargets"]
                return sum(t["labels"]["job"] == "api" and t["health"] == "up" for t in targets) == 3

            wait_for(api_targets_up, timeout=60, interval=1, what="three API targets up in Prometheus")
        assert run.stop() == 0
        assert not [p for p in (port, port + 1, port + 2, port + 3) if listening(p)]
        assert spool is None or not spool.exists()  # removed with the run
    finally:
        run.stop()
