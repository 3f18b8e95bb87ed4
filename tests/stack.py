"""Starting the real processes for tests and benchmarks: redis-server (plain, or TLS and ACL), the API, workers,
events.

Each runs as a child in its own session, bound to 127.0.0.1 on a free port, and is stopped by PID.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import redis

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SECRET = "test-secret-" + "x" * 40


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02, what: str = "") -> Any:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as ex:  # the thing may not be up yet
            last_error = ex
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what or condition}: {last_error!r}")


def run_all(threads: list[threading.Thread]) -> None:
    """Start the threads together and wait for every one of them."""
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


class Proc:
    """One child process with its log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], logdir: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = logdir / f"{name}.log"
        self.log_start = 0
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        """Start it (again)."""
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        self.log_start = log.tell()  # another process of the same name may have logged here before
        self.popen = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        """The child's PID."""
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        """True while it runs."""
        return self.popen is not None and self.popen.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to its whole process group (a worker's children too) and reap it."""
        if self.send(sig):
            self.reap()

    def send(self, sig: int) -> bool:
        """Send `sig` to its whole process group; False if it had already ended."""
        if not self.alive():
            return False
        assert self.popen is not None
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            return False
        return True

    def reap(self) -> None:
        """Wait until it has ended; SIGKILL its group if it takes more than 15 s."""
        assert self.popen is not None
        try:
            self.popen.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=5)

    def stop(self) -> None:
        """Stop it gracefully (SIGTERM), forcefully if it lingers."""
        self.kill(signal.SIGTERM)

    def log(self) -> str:
        """What it printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_since_start(self) -> str:
        """What it printed since it was last started."""
        with self.log_path.open("rb") as log:
            log.seek(self.log_start)
            return log.read().decode(errors="replace")


def answering(url: str, what: str) -> Callable[[], None]:
    """A wait until GET `url` answers 200 (30 s at most)."""

    def ready() -> None:
        import httpx

        wait_for(lambda: httpx.get(url, timeout=1).status_code == 200, timeout=30, what=what)

    return ready


@dataclass(frozen=True)
class TLSFiles:
    """A CA and a certificate it signed for 127.0.0.1 and localhost, with its key (PEM files)."""

    ca: Path
    cert: Path
    key: Path


def make_tls(directory: Path, name: str = "test") -> TLSFiles:
    """A fresh CA and server certificate in `directory`, made with openssl (valid for a day)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = directory / f"{name}-ca.crt", directory / f"{name}-ca.key"
    cert, key, csr = directory / f"{name}-server.crt", directory / f"{name}-server.key", directory / f"{name}.csr"
    ext = directory / f"{name}-san.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    days, san = ["-days", "1"], ["-extfile", ext]
    for argv in (
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca, *days, "-subj", f"/CN={name}"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert, *days, *san],
    ):
        subprocess.run(["openssl", *map(str, argv)], check=True, capture_output=True, timeout=30)
    return TLSFiles(ca, cert, key)


def acl_user(name: str, password: str, rules: str) -> str:
    """An ACL file line for user `name`: on, its password stored as a SHA-256 hash (never in clear), `rules`."""
    return f"user {name} on #{hashlib.sha256(password.encode()).hexdigest()} {rules}"


class RedisServer:
    """A throw-away redis-server on a free port; with `tls`, TLS only (no plain port; with `mutual_tls`, clients
    must show a certificate of the same CA), and with `acl_file`, its users from that file (`login` is the user
    and password the server is pinged with)."""

    def __init__(
        self,
        logdir: Path,
        *,
        appendonly: bool = False,
        fsync_always: bool = False,
        tls: TLSFiles | None = None,
        mutual_tls: bool = False,
        acl_file: Path | None = None,
        login: tuple[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="redis-", dir=logdir))
        self.tls = tls
        self.mutual_tls = mutual_tls
        self.login = login
        listen = ["--port", str(self.port)]
        if tls:
            listen = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(tls.cert)]
            listen += ["--tls-key-file", str(tls.key), "--tls-ca-cert-file", str(tls.ca)]
            listen += ["--tls-auth-clients", "yes" if mutual_tls else "no"]
        argv = [
            shutil.which("redis-server") or "redis-server",
            *listen,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes" if appendonly else "no",
            "--dir",
            str(self.dir),
            "--maxmemory-policy",
            "noeviction",
            "--appendfsync",
            "always" if fsync_always else "everysec",
        ]
        if acl_file:
            argv += ["--aclfile", str(acl_file)]
        self.proc = Proc(f"redis-{self.port}", argv, dict(os.environ), logdir)

    @property
    def url(self) -> str:
        """Its URL, database 0 (rediss:// with TLS; never with credentials)."""
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    def client(self, **options: Any) -> redis.Redis:
        """A client of it, logged in as `login`, trusting its CA (and showing its certificate for mutual TLS)."""
        if self.tls:
            options = {"ssl": True, "ssl_ca_certs": str(self.tls.ca), **options}
        if self.tls and self.mutual_tls:
            options = {"ssl_certfile": str(self.tls.cert), "ssl_keyfile": str(self.tls.key), **options}
        if self.login:
            options = {"username": self.login[0], "password": self.login[1], **options}
        return redis.Redis(port=self.port, **options)

    def start(self) -> RedisServer:
        """Start it and wait until it answers PING."""
        self.proc.start()
        client = self.client(socket_connect_timeout=0.5)
        wait_for(client.ping, what="redis-server")
        client.close()
        return self

    def stop(self) -> None:
        """Stop it."""
        self.proc.kill(signal.SIGKILL)


def base_env(redis_url: str, **overrides: str) -> dict[str, str]:
    """Environment for our processes: the test Redis, a fixed secret, quick leases."""
    # Each process picks its own metrics directory; one inherited from here would be shared by all of them.
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "PYTEST_", "OTEL_", "PROMETHEUS_MULTIPROC"))
    }
    env.update(
        REDIS_URL=redis_url,
        AGENTIC_SECRET_KEY=SECRET,
        JOB_HEARTBEAT_S="0.25",
        JOB_LEASE_S="1.5",
        OFFLINE_TOKEN_DELAY_MS="20",
        CONSUMER_CLAIM_IDLE_MS="1000",
        LOG_LEVEL="INFO",
        PYTHONUNBUFFERED="1",
        WORKER_METRICS_PORT="0",  # Stack.worker(metrics_port=...) turns it on
        AUTH_FAILURES_PER_WINDOW="100000",  # tests fail authentication on purpose, all from 127.0.0.1
        # Tests submit the same query again and again and count runs, attempts and charges: each job runs. The
        # response cache and in-flight sharing have their own stack (tests/test_cache.py sets CACHE_TTL_S).
        CACHE_TTL_S="0",
    )
    env.update(overrides)
    return env


class Stack:
    """The API (gunicorn + uvicorn), Celery workers and the events process against one Redis."""

    def __init__(self, redis_url: str, logdir: Path, **env: str) -> None:
        self.env = base_env(redis_url, **env)
        self.logdir = logdir
        self.port = free_port()
        self.procs: list[Proc] = []
        self._workers = 0
        self._starting: list[Callable[[], None]] = []

    @property
    def url(self) -> str:
        """The API's base URL."""
        return f"http://127.0.0.1:{self.port}"

    def _proc(self, name: str, argv: list[str], **env: str) -> Proc:
        proc = Proc(name, argv, {**self.env, **env}, self.logdir)
        self.procs.append(proc)
        return proc.start()

    def _started(self, proc: Proc, ready: Callable[[], None], wait: bool) -> Proc:
        """Wait until `proc` is ready now, or (`wait=False`) leave that to `ready()`."""
        if wait:
            ready()
        else:
            self._starting.append(ready)
        return proc

    def ready(self) -> Stack:
        """Wait until every process started with `wait=False` is ready: they start side by side meanwhile."""
        starting, self._starting = self._starting, []
        for ready in starting:
            ready()
        return self

    def api(self, workers: int = 1, port: int | None = None, *, wait: bool = True) -> Proc:
        """Start an API instance and wait until it is ready (with `wait=False`, at `ready()`)."""
        port = port or self.port
        proc = self._proc(
            f"api-{port}",
            [str(BIN / "gunicorn"), "-c", "ops/gunicorn.conf.py", "api.asgi:app"],
            PORT=str(port),
            WEB_CONCURRENCY=str(workers),
        )
        return self._started(proc, answering(f"http://127.0.0.1:{port}/api/v1/monitoring/live", "the API"), wait)

    def worker(
        self, concurrency: int = 2, name: str | None = None, metrics_port: int = 0, *, wait: bool = True, **env: str
    ) -> Proc:
        """Start a Celery worker (serving its metrics on `metrics_port` if not 0) and wait until it consumes (with
        `wait=False`, at `ready()`)."""
        self._workers += 1
        name = name or f"w{self._workers}"
        proc = self._proc(
            f"worker-{name}-{self._workers}",
            [
                str(BIN / "celery"),
                "-A",
                "workers",
                "worker",
                "-Q",
                self.env.get("AGENT_QUEUE", "agents"),
                "--concurrency",
                str(concurrency),
                "-n",
                f"{name}@%h",
                "-l",
                "INFO",
                "--without-mingle",
                "--without-gossip",
            ],
            WORKER_METRICS_PORT=str(metrics_port),
            **env,
        )

        def consuming() -> None:
            wait_for(lambda: "ready." in proc.log_since_start() or not proc.alive(), timeout=60, what="the worker")
            assert proc.alive(), proc.log()[-3000:]

        return self._started(proc, consuming, wait)

    def events(self, *, wait: bool = True) -> Proc:
        """Start the events process and wait until it runs (with `wait=False`, at `ready()`)."""
        proc = self._proc("events", [sys.executable, "-m", "events"])

        def started() -> None:
            wait_for(
                lambda: "events process started" in proc.log_since_start() or not proc.alive(),
                timeout=30,
                what="events",
            )
            assert proc.alive(), proc.log()[-3000:]

        return self._started(proc, started, wait)

    def flower(self, port: int, basic_auth: str, *, wait: bool = True) -> Proc:
        """Start Flower with basic auth and wait until it answers (with `wait=False`, at `ready()`)."""
        proc = self._proc(
            "flower",
            [
                str(BIN / "celery"),
                "-A",
                "workers",
                "flower",
                "--address=127.0.0.1",
                f"--port={port}",
            ],
            FLOWER_BASIC_AUTH=basic_auth,  # not an argument, which `ps` would show
        )
        return self._started(proc, answering(f"http://127.0.0.1:{port}/healthcheck", "Flower"), wait)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run the `agentic` command."""
        return subprocess.run(
            [str(BIN / "agentic"), *args], env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=30
        )

    def stop(self) -> None:
        """Stop everything it started: SIGTERM to every process at once, then wait for each to end."""
        stopping = [proc for proc in reversed(self.procs) if proc.send(signal.SIGTERM)]
        for proc in stopping:
            proc.reap()
