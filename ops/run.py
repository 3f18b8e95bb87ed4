"""`make run`: Redis, the API, a Celery worker, the events process, Flower and Prometheus, kept running.

With API_INSTANCES=N (N > 1) the API runs as N instances on PORT+1 .. PORT+N behind nginx on PORT (ops/nginx.conf),
the scaled set-up of docs/SCALING_GUIDE.md on one host. SIGHUP to this process restarts the instances one at a
time, each drained and back before the next (`make rolling-restart`).

Checks come first (the lock on VAR_DIR, every port, Redis); then each process starts in its own process group,
logging to $VAR_DIR/log/<name>.log with its PID in $VAR_DIR/run/<name>.pid, and is restarted with backoff
when it exits (ops/supervise.py). Exits 0 after Ctrl-C or SIGTERM, 1 when a check fails or a process keeps
crashing. Standard library only; `ops/run.sh` runs it with the venv's Python.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import nginx_conf
from preflight import RedisAddress, StartError, check_ports, hold_lock, ping
from supervise import Child, Policy, Supervisor

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
REDIS_START_S = 10.0
API_START_S = 30.0
MAX_INSTANCES = 32
SECURED_REDIS = (  # what only a Redis of your own can use (settings.py)
    "REDIS_PASSWORD",
    "REDIS_PASSWORD_FILE",
    "REDIS_USERNAME",
    "REDIS_TLS_CA_FILE",
    "REDIS_TLS_CERT_FILE",
    "REDIS_TLS_KEY_FILE",
)


def _port(env: Mapping[str, str], name: str, default: int, *, zero_is_off: bool = False) -> int:
    value = env.get(name) or str(default)
    if not value.isdigit() or not (0 if zero_is_off else 1) <= int(value) <= 65535:
        raise StartError(
            f"{name} must be a port number from 1 to 65535{' (or 0: off)' if zero_is_off else ''}, not {value!r}."
        )
    return int(value)


@dataclass(frozen=True)
class Config:
    """What to start and where, from the environment variables `make run` has always read."""

    var: Path
    port: int
    api_host: str
    flower_port: int
    worker_metrics_port: int
    worker_metrics_host: str
    prometheus_port: int
    prometheus: bool
    redis: RedisAddress
    redis_url: str
    own_redis_port: int | None
    worker_autoscale: str
    queue: str
    flower_auth: str
    flower_auth_made: bool
    api_instances: int = 1
    nginx: str = ""
    max_body_bytes: int | None = None
    max_upload_bytes: int | None = None

    @property
    def instance_ports(self) -> list[int]:
        """Where the API instances listen: PORT alone, or PORT+1 .. PORT+N behind nginx on PORT."""
        if self.api_instances == 1:
            return [self.port]
        return [self.port + i for i in range(1, self.api_instances + 1)]

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Config:
        """Read the settings; REDIS_URL unset means we start our own redis-server on REDIS_PORT."""
        own_redis_port = None if env.get("REDIS_URL") else _port(env, "REDIS_PORT", 6379)
        if own_redis_port is not None:
            given = [name for name in SECURED_REDIS if env.get(name)]
            if given:
                raise StartError(
                    f"{', '.join(given)} set, but no REDIS_URL: make run would start its own plain Redis, which has "
                    "no password or TLS. Set REDIS_URL to your secured Redis, or unset these."
                )
        redis_url = env.get("REDIS_URL") or f"redis://127.0.0.1:{own_redis_port}/0"
        flower_auth = env.get("FLOWER_BASIC_AUTH") or f"admin:{secrets.token_urlsafe(12)}"
        instances = env.get("API_INSTANCES") or "1"
        if not instances.isdigit() or not 1 <= int(instances) <= MAX_INSTANCES:
            raise StartError(f"API_INSTANCES must be a whole number from 1 to {MAX_INSTANCES}, not {instances!r}.")
        nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin") or ""
        if int(instances) > 1 and not nginx:
            raise StartError(
                "API_INSTANCES above 1 runs nginx in front of them: apt-get install nginx (or make install)."
            )
        body = env.get("MAX_BODY_BYTES") or ""
        upload = env.get("MAX_UPLOAD_BYTES") or ""
        port = _port(env, "PORT", 8000)
        if int(instances) > 1 and port + int(instances) > 65535:
            raise StartError(f"PORT {port} leaves no room for {instances} instances above it (PORT+1 .. PORT+N).")
        return cls(
            var=(ROOT / (env.get("VAR_DIR") or "var")).resolve(),
            port=port,
            api_host=env.get("HOST") or "127.0.0.1",  # where ops/gunicorn.conf.py binds
            flower_port=_port(env, "FLOWER_PORT", 5555),
            worker_metrics_port=_port(env, "WORKER_METRICS_PORT", 9540, zero_is_off=True),
            worker_metrics_host=env.get("WORKER_METRICS_HOST") or "127.0.0.1",
            prometheus_port=_port(env, "PROMETHEUS_PORT", 9090),
            prometheus=env.get("PROMETHEUS", "1") != "0" and shutil.which("prometheus") is not None,
            redis=RedisAddress.from_env({**env, "REDIS_URL": redis_url}),  # with its password and TLS files
            redis_url=redis_url,
            own_redis_port=own_redis_port,
            worker_autoscale=env.get("WORKER_AUTOSCALE") or "8,2",
            queue=env.get("AGENT_QUEUE") or "agents",
            flower_auth=flower_auth,
            flower_auth_made=not env.get("FLOWER_BASIC_AUTH"),
            api_instances=int(instances),
            nginx=nginx,
            max_body_bytes=int(body) if body.isdigit() else None,  # the API itself rejects a bad value
            max_upload_bytes=int(upload) if upload.isdigit() else None,
        )

    def listeners(self) -> list[tuple[str, str, int]]:
        """(variable, host, port) for every port this run will listen on."""
        ports = [("PORT", self.api_host, self.port), ("FLOWER_PORT", "127.0.0.1", self.flower_port)]
        if self.api_instances > 1:
            ports += [(f"PORT+{i} (API instance {i})", "127.0.0.1", p) for i, p in enumerate(self.instance_ports, 1)]
        if self.own_redis_port is not None:
            ports.insert(0, ("REDIS_PORT", "127.0.0.1", self.own_redis_port))
        if self.worker_metrics_port:
            ports.append(("WORKER_METRICS_PORT", self.worker_metrics_host, self.worker_metrics_port))
        if self.prometheus:
            ports.append(("PROMETHEUS_PORT", "127.0.0.1", self.prometheus_port))
        return ports


def api_live(port: int) -> bool:
    """True when the API's liveness endpoint answers 200."""
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through an http_proxy
    try:
        with direct.open(f"http://127.0.0.1:{port}/api/v1/monitoring/live", timeout=1) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def private_logs(logs: Path) -> None:
    """Make nginx's log directory 0700 and its logs 0600 before nginx opens them (it keeps a file's mode).

    nginx's error log records a failed request's line, a stream's `?token=` included, and cannot redact it.
    """
    logs.mkdir(parents=True, exist_ok=True)
    logs.chmod(0o700)
    for name in ("error.log", "access.log"):
        (logs / name).touch(mode=0o600)
        (logs / name).chmod(0o600)


class Stack:
    """The processes of `make run`, started in order under one supervisor."""

    def __init__(self, config: Config, supervisor: Supervisor) -> None:
        self.config = config
        self.supervisor = supervisor
        self.apis: list[Child] = []
        self.env = {
            k: v
            for k, v in os.environ.items()
            # The API and the worker each make their own metrics directory; a shared one counts twice.
            if k != "PROMETHEUS_MULTIPROC_DIR"
        }
        self.env.update(
            PORT=str(config.port), REDIS_URL=config.redis_url, WORKER_METRICS_PORT=str(config.worker_metrics_port)
        )

    def log(self, name: str) -> Path:
        """Where process `name` logs."""
        return self.config.var / "log" / f"{name}.log"

    def _start(self, name: str, argv: list[str], *, stops_last: bool = False, **env: str) -> Child:
        pid_path = self.config.var / "run" / f"{name}.pid"
        for path in (pid_path, self.log(name)):
            path.parent.mkdir(exist_ok=True)
        try:
            return self.supervisor.start(
                Child(name, argv, {**self.env, **env}, self.log(name), pid_path, stops_last=stops_last)
            )
        except OSError as ex:
            raise StartError(f"cannot start {name} ({argv[0]}): {ex.strerror}. Is `make install` done?") from ex

    def start(self, redis_wait_s: float) -> bool:
        """Start every process, each once what it needs answers; False when a stop came first."""
        config, supervisor = self.config, self.supervisor
        if not self._redis(redis_wait_s):
            return False
        if config.flower_auth_made:
            print(f"run: FLOWER_BASIC_AUTH not set; Flower's login for this run is {config.flower_auth}")
        celery = [str(BIN / "celery"), "-A", "workers"]
        self._start("events", [sys.executable, "-m", "events"])
        self._start(
            "worker", [*celery, "worker", "-Q", config.queue, f"--autoscale={config.worker_autoscale}", "-lINFO"]
        )
        self._start_apis()
        flower = [*celery, "flower", "--address=127.0.0.1", f"--port={config.flower_port}"]
        # From the environment (Flower reads FLOWER_<OPTION>): on the command line `ps` would show the password.
        self._start("flower", flower, FLOWER_BASIC_AUTH=config.flower_auth)
        up = supervisor.supervise(lambda: all(api_live(p) for p in config.instance_ports), timeout=API_START_S)
        if supervisor.stop_requested or supervisor.failure:
            return False
        if not up:  # slow, not failed: go on; should it exit, it is restarted like any other
            print(f"run: the API does not answer yet after {API_START_S:g} s; see {self.log('api')}", file=sys.stderr)
        if config.api_instances > 1:
            self._start_nginx()
        if config.prometheus:
            prom = config.var / "prometheus"
            self._prometheus_config(prom)
            listen = f"--web.listen-address=127.0.0.1:{config.prometheus_port}"
            self._start(
                "prometheus",
                ["prometheus", f"--config.file={prom}/prometheus.yml", f"--storage.tsdb.path={prom}/data", listen],
            )
        return not supervisor.stop_requested

    def _start_apis(self) -> None:
        """One API (gunicorn) on PORT, or one per instance port behind nginx, trusting its forwarded headers."""
        config = self.config
        gunicorn = [str(BIN / "gunicorn"), "-c", "ops/gunicorn.conf.py", "api.asgi:app"]
        if config.api_instances == 1:
            self.apis = [self._start("api", gunicorn)]
            return
        trusted = self.env.get("TRUSTED_PROXIES") or "127.0.0.1"  # nginx, on this host
        self.apis = [
            self._start(f"api{i}", gunicorn, PORT=str(port), HOST="127.0.0.1", TRUSTED_PROXIES=trusted)
            for i, port in enumerate(config.instance_ports, 1)
        ]

    def _start_nginx(self) -> None:
        """nginx on HOST:PORT in front of the instances (ops/nginx.conf, rendered into $VAR_DIR/nginx)."""
        config = self.config
        out = config.var / "nginx"
        conf = nginx_conf.render(
            out,
            listen=f"{config.api_host}:{config.port}",
            instances=[f"127.0.0.1:{p}" for p in config.instance_ports],
            max_body_bytes=config.max_body_bytes,
            max_upload_bytes=config.max_upload_bytes,
        )
        private_logs(out / "logs")
        check = subprocess.run(nginx_conf.argv(config.nginx, out, conf, test=True), capture_output=True, text=True)
        if check.returncode:
            last = (check.stderr.strip().splitlines() or ["no message"])[-1]
            raise StartError(f"nginx -t failed for {conf}: {last}")
        self._start("nginx", nginx_conf.argv(config.nginx, out, conf))
        up = self.supervisor.supervise(lambda: api_live(config.port), timeout=API_START_S)
        if not (up or self.supervisor.stop_requested or self.supervisor.failure):
            print(f"run: nginx does not answer yet on port {config.port}; see {out}/logs", file=sys.stderr)

    def rolling_restart(self) -> bool:
        """Restart the API instances one at a time: each drains (SIGTERM), starts again and answers before the
        next goes. False when a stop or a failure came first."""
        for n, (child, port) in enumerate(zip(self.apis, self.config.instance_ports, strict=True)):
            if n:  # nginx takes an instance that failed back only after its fail_timeout
                self.supervisor.supervise(timeout=nginx_conf.FAIL_TIMEOUT_S)
                if self.supervisor.stop_requested or self.supervisor.failure:
                    return False
            print(f"run: rolling restart: {child.name}", flush=True)
            if not self.supervisor.restart(child, lambda p=port: api_live(p), timeout=API_START_S):
                if self.supervisor.stop_requested or self.supervisor.failure:
                    return False
                print(f"run: {child.name} does not answer after {API_START_S:g} s; going on", file=sys.stderr)
        print("run: rolling restart done", flush=True)
        return True

    def _redis(self, wait_s: float) -> bool:
        """Start our redis-server, or wait for the one REDIS_URL names, until it answers PING."""
        config, supervisor = self.config, self.supervisor
        if config.own_redis_port is None:
            print(f"run: using the Redis at {config.redis.shown} (REDIS_URL: shared on purpose)")
            if ping(config.redis):
                return True
            print(f"run: waiting for Redis at {config.redis.shown} (up to {wait_s:g} s)...", flush=True)
            if supervisor.supervise(lambda: ping(config.redis), timeout=wait_s, interval=0.5):
                return True
            if supervisor.stop_requested:
                return False
            raise StartError(
                f"Redis at {config.redis.shown} did not answer within {wait_s:g} s. Start it or correct REDIS_URL, "
                "or unset REDIS_URL to have make run start its own."
            )
        port = config.own_redis_port
        print(f"run: starting redis-server on 127.0.0.1:{port} (data in {config.var}/redis)")
        (config.var / "redis").mkdir(exist_ok=True)
        # AOF, fsync once a second, and no eviction: the queue and the ledger must not lose keys.
        flags = f"--port {port} --bind 127.0.0.1 --appendonly yes --appendfsync everysec --maxmemory-policy noeviction"
        self._start(
            "redis", ["redis-server", *flags.split(), "--save", "", "--dir", str(config.var / "redis")], stops_last=True
        )
        if supervisor.supervise(lambda: ping(config.redis), timeout=REDIS_START_S):
            return True
        if supervisor.stop_requested or supervisor.failure:
            return False
        raise StartError(
            f"redis-server did not answer on 127.0.0.1:{port} within {REDIS_START_S:g} s. See {self.log('redis')}"
        )

    def _prometheus_config(self, out: Path) -> None:
        """Its config, rules and scrape secrets (a readonly user's key, Flower's password) for this run's ports."""
        config = self.config
        user = config.flower_auth.partition(":")[0]
        targets = "".join(f"--api 127.0.0.1:{port} " for port in config.instance_ports) + (
            f"--workers 127.0.0.1:{config.worker_metrics_port} "
            f"--flower 127.0.0.1:{config.flower_port} --self 127.0.0.1:{config.prometheus_port}"
        )
        argv = [str(BIN / "agentic"), "prometheus-config", "--out", str(out), *targets.split()]
        argv += ["--flower-user", user]  # the password from FLOWER_BASIC_AUTH: not in argv, where `ps` shows it
        try:
            done = subprocess.run(
                argv,
                env={**self.env, "FLOWER_BASIC_AUTH": config.flower_auth},
                capture_output=True,
                text=True,
                timeout=60,
                start_new_session=True,
            )
        except subprocess.TimeoutExpired as ex:
            raise StartError("agentic prometheus-config did not finish within 60 s.") from ex
        if done.returncode:
            last = (done.stderr.strip().splitlines() or ["no message"])[-1]  # its own errors are one line
            raise StartError(f"agentic prometheus-config failed: {last} (PROMETHEUS=0 leaves Prometheus out).")

    def banner(self) -> str:
        """What the terminal shows once everything is started."""
        c = self.config
        if c.prometheus:
            prometheus = f"http://127.0.0.1:{c.prometheus_port}   (scrapes the API, the worker and Flower)"
        elif shutil.which("prometheus"):
            prometheus = "off (PROMETHEUS=0)"
        else:
            prometheus = "not installed (apt-get install prometheus); see ops/README.md"
        if c.api_instances > 1:
            ports = ", ".join(str(p) for p in c.instance_ports)
            api = f"""http://127.0.0.1:{c.port}/api/v1/health     docs: http://127.0.0.1:{c.port}/docs
             nginx in front of {c.api_instances} instances on ports {ports}
             rolling restart: make rolling-restart (or kill -HUP {os.getpid()})"""
        else:
            api = f"http://127.0.0.1:{c.port}/api/v1/health     docs: http://127.0.0.1:{c.port}/docs"
        metrics_port = c.instance_ports[0]
        return f"""
  API        {api}
  Metrics    http://127.0.0.1:{metrics_port}/api/v1/monitoring/metrics (API key with metrics:read; each instance)
             http://127.0.0.1:{c.worker_metrics_port}/metrics (the worker's pool)
  Flower     http://127.0.0.1:{c.flower_port}   (basic auth from FLOWER_BASIC_AUTH)
  Prometheus {prometheus}
  Grafana    provisioning and dashboard in ops/grafana (ops/README.md)
  Redis      {c.redis.shown}
  Logs       {c.var}/log/*.log
  PIDs       {c.var}/run/*.pid   (a process that exits is restarted: see docs/operations.md)

  Make a key:  .venv/bin/agentic users create alice --role user
  Ctrl-C stops everything.
"""


OPTIONS = (  # the supervision policy; everything else comes from the environment
    ("--restart-delay", Policy.first_delay_s, "seconds before a first restart, doubled for each further one"),
    ("--max-restart-delay", Policy.max_delay_s, "the longest wait before a restart"),
    ("--stable-after", Policy.stable_after_s, "seconds up after which a process's restarts count from 0 again"),
    ("--max-restarts", Policy.max_restarts, "restarts in a row before giving up on a process (and on the run)"),
    ("--stop-timeout", Policy.stop_timeout_s, "seconds a process gets to stop before SIGKILL"),
    ("--redis-wait", 30.0, "seconds to wait at start-up for the Redis that REDIS_URL names"),
)


def parser() -> argparse.ArgumentParser:
    """The command line (`bash ops/run.sh --help`)."""
    top = argparse.ArgumentParser(prog="ops/run.sh", description=__doc__.splitlines()[0])
    for flag, default, text in OPTIONS:
        top.add_argument(flag, type=type(default), default=default, help=f"{text} (default: %(default)s)")
    return top


def main(argv: list[str] | None = None) -> int:
    """Check, start, supervise until Ctrl-C/SIGTERM or a process fails for good, stop; return the exit code."""
    args = parser().parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    os.chdir(ROOT)
    supervisor = Supervisor(
        Policy(args.restart_delay, args.max_restart_delay, args.stable_after, args.max_restarts, args.stop_timeout)
    )
    supervisor.install_signals()
    code = 0
    config: Config | None = None
    try:
        config = Config.from_env(os.environ)
        config.var.mkdir(parents=True, exist_ok=True)
        hold_lock(config.var)  # held until this process exits
        check_ports(config.listeners())
        stack = Stack(config, supervisor)
        if stack.start(args.redis_wait):
            print(stack.banner())
            while supervisor.supervise(lambda: supervisor.reload_requested):
                supervisor.reload_requested = False
                if not stack.rolling_restart():
                    break
    except StartError as ex:
        for line in str(ex).splitlines():
            print(f"run: {line}", file=sys.stderr, flush=True)
        code = 1
    finally:
        if supervisor.failure:
            print(supervisor.failure, file=sys.stderr, flush=True)
            code = 1
        supervisor.stop()
        if config is not None:
            nginx_conf.remove_temp(config.var / "nginx")  # a root run's spool for uploads, once nginx has stopped
    return code


if __name__ == "__main__":
    sys.exit(main())
