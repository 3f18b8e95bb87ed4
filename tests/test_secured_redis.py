"""Redis secured end to end: a TLS-only redis-server (its CA made here with openssl) whose default user is off and
whose one user has a password and only the commands the system needs. The API, two workers, the events process,
Flower and the CLI are configured only by REDIS_URL=rediss://agentic@..., REDIS_PASSWORD_FILE, REDIS_TLS_CA_FILE
and AGENTIC_SECRET_KEY_FILE: a job runs and streams, the ledger and Flower work, and no process logs a secret. A
wrong password or CA stops a process at start-up with a clear message that does not show it; a plain connection
to the TLS port fails."""

from __future__ import annotations

import json
import runpy
import secrets
import ssl
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote

import httpx
import pytest
import redis
from redis.exceptions import NoPermissionError

from events.store.clients import access_problem
from tests.sse import read_events
from tests.stack import BIN, ROOT, Proc, RedisServer, Stack, TLSFiles, acl_user, free_port, make_tls, wait_for

USER = "agentic"
# What the system needs (docs/security.md, "Secured Redis", says how it was found): data, streams, pub/sub, Lua and
# transactions; no administration (CONFIG, ACL, DEBUG, SHUTDOWN, FLUSHALL, KEYS, INFO, MONITOR, FUNCTION...).
ACL_RULES = (
    "~* &* -@all +@connection +@keyspace +@read +@write +@pubsub +@scripting +@transaction +time "
    "-@dangerous -function -script|flush -script|kill"
)
PRICES = str(ROOT / "tests" / "data" / "prices.yaml")


@dataclass
class Secured:
    """The secured Redis, the stack against it, and the secrets they were given."""

    server: RedisServer
    stack: Stack
    tls: TLSFiles
    other_ca: Path
    password: str
    secret_key: str
    flower_port: int
    flower_auth: tuple[str, str]
    logdir: Path
    outputs: list[str] = field(default_factory=list)  # what CLIs and failed starts printed, checked for secrets

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every secret, as given and as it would look inside a URL."""
        return self.password, quote(self.password, safe=""), self.secret_key

    def env(self, **overrides: str) -> dict[str, str]:
        """The stack's environment with `overrides`."""
        return {**self.stack.env, **overrides}

    def cli(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """Run `agentic` (with `env` over the stack's), remembering what it printed."""
        done = subprocess.run(
            [str(BIN / "agentic"), *args], env=self.env(**env), cwd=ROOT, capture_output=True, text=True, timeout=30
        )
        self.outputs.append(done.stdout + done.stderr)
        return done


def private_file(path: Path, text: str) -> Path:
    """Write `text` to a new file only its owner may read."""
    path.write_text(text)
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    """The TLS + ACL Redis and the whole stack against it (two workers, Flower with basic auth)."""
    work = tmp_path_factory.mktemp("secured")
    logdir = work / "logs"
    logdir.mkdir()
    tls = make_tls(work / "tls")
    other_ca = make_tls(work / "other", name="other").ca
    token = secrets.token_urlsafe(18)
    password, secret_key = f"p@ss:w/rd%{token}", f"secret-key-{secrets.token_urlsafe(32)}"
    acl = private_file(work / "users.acl", f"user default off\n{acl_user(USER, password, ACL_RULES)}\n")
    server = RedisServer(logdir, tls=tls, acl_file=acl, login=(USER, password)).start()
    stack = Stack(
        server.url.replace("rediss://", f"rediss://{USER}@"),
        logdir,
        AGENTIC_SECRET_KEY="",  # from the file only
        AGENTIC_SECRET_KEY_FILE=str(private_file(work / "secret_key", secret_key + "\n")),
        REDIS_PASSWORD_FILE=str(private_file(work / "redis_password", password + "\n")),
        REDIS_TLS_CA_FILE=str(tls.ca),
        PRICES_FILE=PRICES,
    )
    flower_auth = ("ops", f"flower-{secrets.token_urlsafe(8)}")
    found = Secured(server, stack, tls, other_ca, password, secret_key, free_port(), flower_auth, logdir)
    try:
        stack.events(wait=False)
        for i in (1, 2):
            stack.worker(concurrency=1, name=f"s{i}", wait=False)
        stack.api(workers=1, wait=False)
        stack.flower(found.flower_port, ":".join(flower_auth), wait=False)
        stack.ready()
        yield found
    finally:
        stack.stop()
        server.stop()


def preflight() -> dict[str, Any]:
    """ops/preflight.py's names, as `make run` loads them."""
    return runpy.run_path(str(ROOT / "ops" / "preflight.py"))


def start_fails(secured: Secured, **env: str) -> str:
    """Start the events process with `env`; it must exit 1 at once. Returns what it printed."""
    done = subprocess.run(
        [sys.executable, "-m", "events"], env=secured.env(**env), cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    output = done.stdout + done.stderr
    secured.outputs.append(output)
    assert done.returncode == 1, output
    assert "cannot start" in output and "Traceback" not in output, output
    return output


def test_a_user_made_with_the_cli_runs_a_job_whose_stream_and_costs_arrive(secured: Secured) -> None:
    made = secured.cli("users", "create", "tls-alice", "--role", "user")
    assert made.returncode == 0, made.stderr
    key = json.loads(made.stdout)["api_key"]
    with httpx.Client(base_url=secured.stack.url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as api:
        resp = api.post("/api/v1/jobs", json={"agent_type": "query", "query": "What is (2+3)*4?"})
        assert resp.status_code == 202, resp.text
        job = resp.json()
        status, events = read_events(api, f"/api/v1/jobs/{job['id']}/events")
        assert status == 200
        types = [e.event for e in events]
        assert types[0] == "start" and types[-1] == "done"
        assert [e.data["seq"] for e in events] == list(range(len(events)))
        assert {"tool_start", "tool_end", "token", "usage"} <= set(types)
        done = api.get(f"/api/v1/jobs/{job['id']}", params={"wait": 30}).json()
        assert done["status"] == "succeeded" and "(2+3)*4 = 20" in done["result"]
        assert float(done["cost_usd"]) > 0
        # The ledger is written by the events process, from the usage events the worker sent.
        usage = wait_for(
            lambda: (u := api.get("/api/v1/costs/usage/tls-alice").json())["all_time"].get("calls") == 2 and u,
            what="the ledger",
        )
        assert usage["all_time"]["cost_usd"] == done["cost_usd"]


def test_flower_lists_both_workers_and_reads_the_queue_over_tls(secured: Secured) -> None:
    url, auth = f"http://127.0.0.1:{secured.flower_port}", secured.flower_auth
    assert httpx.get(f"{url}/api/workers").status_code == 401
    workers = wait_for(
        lambda: (
            len(w := httpx.get(f"{url}/api/workers", params={"refresh": 1}, auth=auth, timeout=10).json()) == 2 and w
        ),
        timeout=30,
        what="both workers in Flower",
    )
    assert sorted(name.split("@")[0] for name in workers) == ["s1", "s2"]
    assert all("agentic.run_agent" in info["registered"] for info in workers.values())
    # Each worker's configuration as Flower shows it: the broker URL masked by Celery, no secret anywhere.
    masked = f"rediss://{USER}:********@127.0.0.1:{secured.server.port}/0"
    assert {info["conf"]["broker_url"] for info in workers.values()} == {masked}
    assert not [s for s in secured.secrets if s in json.dumps(workers)]
    assert "flower_worker_online" in httpx.get(f"{url}/metrics", auth=auth).text
    # Flower's own Redis client (queue lengths, the Broker page) takes broker_use_ssl and the URL's credentials.
    queues = httpx.get(f"{url}/api/queues/length", auth=auth, timeout=10)
    assert queues.status_code == 200 and [q["name"] for q in queues.json()["active_queues"]] == ["agents"]
    broker = httpx.get(f"{url}/broker", auth=auth, timeout=10)
    assert broker.status_code == 200 and "agents" in broker.text


def test_monitoring_info_shows_the_redis_user_and_tls_files_but_no_secret(secured: Secured) -> None:
    made = secured.cli("users", "create", "tls-reader", "--role", "readonly")
    key = json.loads(made.stdout)["api_key"]
    resp = httpx.get(
        f"{secured.stack.url}/api/v1/monitoring/info", headers={"Authorization": f"Bearer {key}"}, timeout=10
    )
    assert resp.status_code == 200, resp.text
    shown = resp.json()["settings"]
    assert shown["redis_url"] == f"rediss://{USER}:***@127.0.0.1:{secured.server.port}/0"
    assert (shown["redis_tls_ca_file"], shown["redis_tls_verify"]) == (str(secured.tls.ca), "required")
    assert not [s for s in secured.secrets if s in resp.text]


def test_a_wrong_password_stops_the_cli_the_events_process_and_make_runs_check_without_showing_it(
    secured: Secured, tmp_path: Path
) -> None:
    wrong = f"wrong-{secrets.token_urlsafe(12)}"
    env = {"REDIS_PASSWORD_FILE": str(private_file(tmp_path / "wrong", wrong + "\n"))}
    cli = secured.cli("users", "list", **env)
    assert cli.returncode == 2 and "Traceback" not in cli.stderr, cli.stderr
    assert "Redis refused to let us in" in cli.stderr and "REDIS_PASSWORD_FILE" in cli.stderr
    assert "REDIS_PASSWORD_FILE" in start_fails(secured, **env)
    names = preflight()
    with pytest.raises(names["StartError"], match="refused our credentials \\(WRONGPASS\\)") as refused:
        names["ping"](names["RedisAddress"].from_env(secured.env(**env)))
    assert f"rediss://{USER}:***@127.0.0.1:{secured.server.port}/0" in str(refused.value)
    # A worker keeps retrying (a Redis ACL may be mended without restarting it), saying why, the URL masked.
    argv = [str(BIN / "celery"), "-A", "workers", "worker", "-n", "wrong@%h", "--without-mingle", "--without-gossip"]
    worker = Proc("worker-wrong-password", argv, secured.env(**env), tmp_path).start()
    try:
        wait_for(lambda: "Cannot connect to" in worker.log() or not worker.alive(), timeout=30, what="the worker")
    finally:
        worker.stop()
    text = worker.log()
    assert f"rediss://{USER}:**@127.0.0.1:{secured.server.port}/0" in text and "invalid username-password" in text
    secured.outputs += [cli.stderr, str(refused.value), text]
    assert not [out for out in secured.outputs if wrong in out]


def test_a_wrong_ca_stops_the_cli_the_events_process_and_make_runs_check_naming_the_variable(secured: Secured) -> None:
    env = {"REDIS_TLS_CA_FILE": str(secured.other_ca)}
    cli = secured.cli("users", "list", **env)
    assert cli.returncode == 2 and "Traceback" not in cli.stderr, cli.stderr
    assert "TLS certificate is not trusted" in cli.stderr and "REDIS_TLS_CA_FILE" in cli.stderr
    assert "REDIS_TLS_CA_FILE" in start_fails(secured, **env)
    names = preflight()
    with pytest.raises(names["StartError"], match="REDIS_TLS_CA_FILE") as untrusted:
        names["ping"](names["RedisAddress"].from_env(secured.env(**env)))
    secured.outputs.append(str(untrusted.value))


def test_a_plain_connection_to_the_tls_port_fails(secured: Secured) -> None:
    plain = redis.Redis(
        port=secured.server.port, username=USER, password=secured.password, socket_timeout=2, socket_connect_timeout=2
    )
    with pytest.raises(redis.ConnectionError):
        plain.ping()
    plain.close()
    url = f"redis://{USER}@127.0.0.1:{secured.server.port}/0"
    ignored = secured.cli("users", "list", REDIS_URL=url)  # a CA for a plain URL would be silently unused
    assert ignored.returncode == 1 and "REDIS_TLS_CA_FILE only applies to TLS" in ignored.stderr
    refused = secured.cli("users", "list", REDIS_URL=url, REDIS_TLS_CA_FILE="")
    assert refused.returncode == 2 and "cannot reach Redis" in refused.stderr, refused.stderr


def test_mutual_tls_works_with_the_client_certificate_and_fails_clearly_without(secured: Secured) -> None:
    server = RedisServer(secured.logdir, tls=secured.tls, mutual_tls=True).start()  # no ACL here: no password
    try:
        env = {"REDIS_URL": server.url, "REDIS_PASSWORD_FILE": ""}
        mutual = secured.cli(
            "users", "list", **env, REDIS_TLS_CERT_FILE=str(secured.tls.cert), REDIS_TLS_KEY_FILE=str(secured.tls.key)
        )
        assert mutual.returncode == 0 and json.loads(mutual.stdout) == [], mutual.stderr
        refused = secured.cli("users", "list", **env)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
        # Redis's refusal comes after the TLS 1.3 handshake: seen as an alert or, racing it, as a reset.
        assert "REDIS_TLS_CERT_FILE" in refused.stderr
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("error", "says"),
    [
        (redis.AuthenticationError("invalid username-password pair or user is disabled."), "REDIS_PASSWORD_FILE"),
        (NoPermissionError("this user has no permissions to run the 'xadd' command"), "'xadd'"),
        (redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused."), None),
        (redis.TimeoutError("Timeout reading from socket"), None),
    ],
)
def test_only_errors_that_waiting_cannot_mend_stop_a_process(error: Exception, says: str | None) -> None:
    problem = access_problem(error)
    assert problem is None if says is None else says in str(problem)


def test_a_tls_error_is_found_behind_redis_pys_wrapping_unless_the_peer_just_closed() -> None:
    def wrapped(cause: BaseException) -> redis.ConnectionError:
        try:
            raise cause
        except OSError:
            try:
                raise redis.ConnectionError("Error 1 connecting to 127.0.0.1:6380.")
            except redis.ConnectionError as ex:
                return ex
        raise AssertionError("unreachable")

    untrusted = ssl.SSLCertVerificationError(1, "certificate verify failed")
    untrusted.verify_message = "unable to get local issuer certificate"
    assert "REDIS_TLS_CA_FILE" in str(access_problem(wrapped(untrusted)))
    assert access_problem(wrapped(ssl.SSLEOFError(8, "EOF occurred in violation of protocol"))) is None


def test_the_default_user_is_off_and_ours_cannot_administer_redis(secured: Secured) -> None:
    anonymous = redis.Redis(port=secured.server.port, ssl=True, ssl_ca_certs=str(secured.tls.ca))
    with pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    anonymous.close()
    client = secured.server.client()
    try:
        for command in (
            ("FLUSHALL",),
            ("CONFIG", "SET", "appendonly", "no"),
            ("ACL", "LIST"),
            ("SWAPDB", "0", "1"),
            ("KEYS", "*"),
            ("FUNCTION", "FLUSH"),
            ("SCRIPT", "FLUSH"),
        ):
            with pytest.raises(NoPermissionError):
                client.execute_command(*command)
    finally:
        client.close()


def test_no_process_logged_a_secret_and_celery_and_flower_show_the_broker_masked(secured: Secured) -> None:
    logs = {path.stem: path.read_text(errors="replace") for path in secured.logdir.glob("*.log")}
    workers = sorted(name for name in logs if name.startswith("worker-"))
    assert len(workers) == 2 and {"events", f"api-{secured.stack.port}", "flower"} <= set(logs), sorted(logs)
    for name, text in [*logs.items(), *(("output", out) for out in secured.outputs)]:
        assert not [s for s in secured.secrets if s in text], f"a secret in {name}"
    masked = f"rediss://{USER}:**@127.0.0.1:{secured.server.port}/0"  # Celery's banner and Flower's start-up line
    assert all(masked in logs[name] for name in workers) and f"Broker: {masked}" in logs["flower"]
