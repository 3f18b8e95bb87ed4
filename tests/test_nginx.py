"""nginx in front of three API instances (ops/nginx.conf as `make run` renders it), with real processes: the
configuration checks, TLS with HTTP/2, load sharing, forwarded addresses, nginx's own limits, unbuffered SSE, and
the faults: an instance killed under load, a stream whose instance dies, a rolling restart under load."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import ssl
import subprocess
import threading
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
import redis

from api.uploads import FORM_OVERHEAD
from events.store import keyspace
from settings import Settings
from tests.balancer import NGINX, Load, Nginx, make_certificate, nginx_conf
from tests.conftest import create_user
from tests.sse import SSE, parse
from tests.stack import Proc, RedisServer, Stack, free_port, wait_for


@dataclass
class Balanced:
    """Redis, the events process, a worker, three API instances and nginx (HTTP and HTTPS)."""

    stack: Stack
    redis_url: str
    nginx: Nginx
    ports: list[int]
    apis: list[Proc]
    ca: Path
    key: str = ""
    user_id: str = ""

    def instance(self, i: int) -> str:
        """The address of instance `i`."""
        return f"http://127.0.0.1:{self.ports[i]}"

    def restart(self, i: int) -> None:
        """Start instance `i` again (killing it first if a failed test left it frozen), and wait until it answers."""
        self.apis[i].kill()
        self.apis[i].start()
        wait_for(lambda: live(self.instance(i)), timeout=30, what=f"instance {i}")


def live(base: str) -> bool:
    """True when an instance (or nginx) answers its liveness check."""
    try:
        return httpx.get(f"{base}/api/v1/monitoring/live", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def balanced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Balanced]:
    """The module's stack; tests that kill an instance start it again before they end."""
    logdir = tmp_path_factory.mktemp("nginx-logs")
    server = RedisServer(logdir).start()
    stack = Stack(
        server.url,
        logdir,
        TRUSTED_PROXIES="127.0.0.1",  # nginx, on this host
        RATE_LIMIT_PER_MIN="100000",
        OFFLINE_TOKEN_DELAY_MS="60",
        SSE_HEARTBEAT_S="1",
    )
    ca, cert, key = make_certificate(tmp_path_factory.mktemp("tls"))
    try:
        stack.events(wait=False)
        stack.worker(concurrency=4, wait=False)
        ports = [free_port() for _ in range(3)]
        apis = [stack.api(workers=1, port=port, wait=False) for port in ports]
        stack.ready()
        nginx = Nginx(tmp_path_factory.mktemp("nginx"), ports, tls=(cert, key), fail_timeout_s=2)
        nginx.start()
        balanced = Balanced(stack, server.url, nginx, ports, apis, ca)
        balanced.user_id, balanced.key = create_user(server.url, "user", prefix="lb")
        yield balanced
        nginx.stop()
    finally:
        stack.stop()
        server.stop()


def client(balanced: Balanced, **options: Any) -> httpx.Client:
    """A client of nginx, authenticated as the module's user."""
    headers = {"Authorization": f"Bearer {balanced.key}"}
    return httpx.Client(base_url=balanced.nginx.url, headers=headers, **{"timeout": 30, **options})


# --- the configuration -----------------------------------------------------------------------------------------


def test_the_shipped_configuration_passes_nginx_t(tmp_path: Path) -> None:
    """ops/nginx.conf with the files beside it, as a deployment would run it (TLS: the module's nginx)."""
    for name in ("logs", "temp"):
        (tmp_path / name).mkdir()
    shipped = nginx_conf.TEMPLATE
    check = subprocess.run(nginx_conf.argv(NGINX, tmp_path, shipped, test=True), capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert "test is successful" in check.stderr


def test_the_body_limit_matches_what_the_api_accepts() -> None:
    """nginx must not refuse a body the API takes, and buffers the whole of it so a retry can send it again."""
    text = nginx_conf.TEMPLATE.read_text()
    limit = Settings.max_body_bytes // 1024
    assert f"client_max_body_size {limit}k;" in text
    assert f"client_body_buffer_size {limit}k;" in text
    uploads = nginx_conf.PARTS.joinpath("locations.conf").read_text()
    # documents, attachments: the file plus the multipart framing the API allows around it
    assert f"client_max_body_size {-(-(Settings.max_upload_bytes + FORM_OVERHEAD) // 1024)}k;" in uploads


def test_a_rendered_configuration_follows_max_body_bytes(tmp_path: Path) -> None:
    conf = nginx_conf.render(
        tmp_path, listen="127.0.0.1:1", instances=["127.0.0.1:2"], max_body_bytes=1_000_001, max_upload_bytes=2 << 20
    )
    assert "client_max_body_size 977k;" in conf.read_text()
    assert "client_max_body_size 2112k;" in (conf.parent / "nginx" / "locations.conf").read_text()  # + 64 KiB
    check = subprocess.run(nginx_conf.argv(NGINX, tmp_path, conf, test=True), capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    nginx_conf.remove_temp(tmp_path)


def block(conf: str, location: str) -> str:
    """The body of the `location` block in `conf` (blocks end with a `}` at the start of a line)."""
    found = re.search(rf"^location {re.escape(location)} {{\n(.*?)^}}", conf, re.MULTILINE | re.DOTALL)
    assert found, f"no location {location}"
    return found.group(1)


def test_a_keyed_stream_post_keeps_the_stream_settings_and_every_keyed_post_is_rate_limited() -> None:
    """A keyed POST leaves its location by `return 418` before limit_req runs: the named location must limit it
    again, and a keyed POST /api/v1/stream/{agent} must not fall back to the server's 90 s, buffered proxying."""
    conf = nginx_conf.PARTS.joinpath("locations.conf").read_text()
    streams = block(conf, "~ ^/api/v1/(jobs/[^/]+/events|stream/[^/]+)/?$")
    assert "error_page 418 = @idempotent_stream;" in streams
    keyed = block(conf, "@idempotent_stream")
    for directive in ("proxy_buffering off;", "proxy_read_timeout 1h;", "proxy_send_timeout 1h;", "gzip off;"):
        assert directive in streams and directive in keyed, directive
    assert "non_idempotent;" in keyed
    for named in ("@idempotent_post", "@idempotent_stream"):
        assert "limit_req zone=per_client burst=100 nodelay;" in block(conf, named), named


def test_tls_serves_http2_with_tls_1_2_and_later_only(balanced: Balanced) -> None:
    port = balanced.nginx.tls_port
    assert port is not None
    url = f"https://127.0.0.1:{port}/api/v1/health"
    curl = ["curl", "-sS", "--http2", "--cacert", str(balanced.ca), "-o", "/dev/null"]
    done = subprocess.run(
        [*curl, "-w", "%{http_version} %{http_code}", url], capture_output=True, text=True, timeout=30
    )
    assert done.stdout == "2 200", done.stderr
    # Through the certificate chain, from Python too: the API's answer, over HTTPS.
    with httpx.Client(verify=ssl.create_default_context(cafile=str(balanced.ca))) as https:
        body = https.get(url).json()
    assert body["status"] == "ok"
    # A client that offers only TLS 1.1 or older is refused by the server (the client itself would allow it).
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname = False
    old.verify_mode = ssl.CERT_NONE
    old.set_ciphers("ALL:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # which is the point
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as sock,
        pytest.raises(ssl.SSLError, match="PROTOCOL_VERSION"),  # the server's alert
    ):
        old.wrap_socket(sock, server_hostname="127.0.0.1")
    # TLS 1.3 is offered, with HTTP/2 chosen by ALPN.
    modern = ssl.create_default_context(cafile=str(balanced.ca))
    modern.set_alpn_protocols(["h2", "http/1.1"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as sock,
        modern.wrap_socket(sock, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.version() == "TLSv1.3"
        assert tls.selected_alpn_protocol() == "h2"


# --- what nginx does for every request ---------------------------------------------------------------------------


def test_requests_are_shared_by_the_three_instances(balanced: Balanced) -> None:
    before = len(balanced.nginx.access_log())
    with client(balanced) as c:
        for _ in range(30):
            assert c.get("/api/v1/jobs", params={"limit": 1}).status_code == 200
    served = [line["up"] for line in balanced.nginx.access_log()[before:] if line["path"] == "/api/v1/jobs"]
    assert len(served) == 30
    counts = {f"127.0.0.1:{port}": served.count(f"127.0.0.1:{port}") for port in balanced.ports}
    assert all(count >= 5 for count in counts.values()), counts


def test_health_is_passed_through_and_nginx_answers_for_itself(balanced: Balanced) -> None:
    health = httpx.get(f"{balanced.nginx.url}/api/v1/health", timeout=10)
    assert health.status_code == 200 and health.json()["redis"]["status"] == "ok"
    assert httpx.get(f"{balanced.nginx.url}/nginx/health", timeout=10).json() == {"status": "ok"}
    status = httpx.get(f"{balanced.nginx.url}/nginx/status", timeout=10)
    assert status.status_code == 200 and "Active connections" in status.text


def test_a_body_over_the_limit_gets_nginx_json_413(balanced: Balanced) -> None:
    big = b"x" * (Settings.max_body_bytes + 1)
    with client(balanced) as c:
        for headers in ({}, {"Idempotency-Key": "big"}):  # the two ways a POST goes through nginx
            resp = c.post("/api/v1/jobs", content=big, headers={"Content-Type": "text/plain", **headers})
            assert resp.status_code == 413
            assert resp.json()["code"] == "body_too_large"


def test_uploads_over_the_memory_buffer_reach_the_api_with_or_without_a_trailing_slash(balanced: Balanced) -> None:
    """A document over client_body_buffer_size is spooled to a temporary file: as root, by a worker running as
    `nobody`, which must be able to write it (it answered 500 under pytest's 0700 directory). With a trailing slash
    (the app strips it) the upload location applies too, not the 256 KiB body limit."""
    text = ("Tea is steeped in water just off the boil for three to five minutes.\n\n" * 5000).encode()
    assert len(text) > Settings.max_body_bytes
    log_from = len(balanced.nginx.access_log())
    with client(balanced) as c:
        for path in ("/api/v1/documents", "/api/v1/documents/"):
            resp = c.post(path, files={"file": ("tea.txt", text, "text/plain")})
            assert resp.status_code == 202, (path, resp.status_code, resp.text)
            assert resp.json()["id"] and resp.json()["bytes"] == len(text)
    served = [line for line in balanced.nginx.access_log()[log_from:] if line["path"].startswith("/api/v1/documents")]
    assert len(served) == 2 and all(line["status"] == "202" for line in served), served
    assert all(line["up"].startswith("127.0.0.1:") for line in served), served  # an instance answered


def test_a_file_of_max_upload_bytes_in_a_form_reaches_the_api_and_one_over_is_refused(balanced: Balanced) -> None:
    """The multipart framing around a file of exactly MAX_UPLOAD_BYTES takes the body past that: nginx passes it
    (the API reads it and refuses it as no image, 415), and nginx's own 413 comes only past the API's allowance."""
    with client(balanced) as c:
        full = b"x" * Settings.max_upload_bytes
        resp = c.post("/api/v1/attachments", files={"file": ("x.png", full, "image/png")})
        assert resp.status_code == 415, resp.text  # the API's answer: the bytes are not an image
        assert resp.json()["code"] == "unsupported_media_type"
        huge = b"x" * (Settings.max_upload_bytes + FORM_OVERHEAD + 1)
        refused = c.post("/api/v1/attachments", content=huge, headers={"Content-Type": "image/png"})
        assert refused.status_code == 413 and refused.json()["code"] == "body_too_large"


def test_no_instance_answering_gets_json_503_with_retry_after(tmp_path: Path) -> None:
    nginx = Nginx(tmp_path, [free_port()]).start()  # nothing listens there
    try:
        for method, headers in (("GET", {}), ("POST", {}), ("POST", {"Idempotency-Key": "k"})):
            resp = httpx.request(method, f"{nginx.url}/api/v1/jobs", headers=headers, json={}, timeout=30)
            assert resp.status_code == 503, (method, headers)
            assert resp.json()["code"] == "no_upstream" and resp.headers["Retry-After"] == "2"
    finally:
        nginx.stop()
        nginx_conf.remove_temp(tmp_path)


def test_one_address_past_its_rate_gets_429_with_retry_after_and_others_are_unaffected(balanced: Balanced) -> None:
    """nginx's per-address limit (50/s, bursts of 100); 127.0.0.2 stands for a client on another host."""
    other = httpx.HTTPTransport(local_address="127.0.0.2")
    statuses = []
    with httpx.Client(base_url=balanced.nginx.url, transport=other, timeout=10) as c:
        for _ in range(250):
            resp = c.get("/api/v1/monitoring/live")
            statuses.append(resp.status_code)
            if resp.status_code == 429:
                limited = resp
    assert 429 in statuses and 200 in statuses
    assert limited.json()["code"] == "rate_limited" and limited.headers["Retry-After"] == "1"
    assert httpx.get(f"{balanced.nginx.url}/api/v1/monitoring/live", timeout=10).status_code == 200


@pytest.mark.parametrize(
    ("address", "path"),
    [("127.0.0.3", "/api/v1/monitoring/live"), ("127.0.0.4", "/api/v1/stream/no_such_agent")],
    ids=["post", "stream"],
)
def test_keyed_posts_past_the_rate_get_429_too(balanced: Balanced, address: str, path: str) -> None:
    """An Idempotency-Key sends a POST to a named location; the per-address limit applies there as well. The API's
    own answers (405, 404) cost nothing; each address stands for a client on another host."""
    statuses = []
    with client(balanced, transport=httpx.HTTPTransport(local_address=address), timeout=10) as c:
        for i in range(250):
            resp = c.post(path, json={"query": "q"}, headers={"Idempotency-Key": f"flood-{i}"})
            statuses.append(resp.status_code)
            if resp.status_code == 429:
                limited = resp
    assert statuses.count(429) >= 50, statuses
    assert limited.json()["code"] == "rate_limited" and limited.headers["Retry-After"] == "1"


def test_the_api_sees_the_client_behind_nginx_and_never_a_forged_address(balanced: Balanced) -> None:
    """A client on 127.0.0.2 sends forged X-Forwarded-For and Forwarded; the audit record names 127.0.0.2."""
    marker = f"/api/v1/jobs/j_{uuid.uuid4().hex}"
    forged = {"X-Forwarded-For": "6.6.6.6", "Forwarded": "for=7.7.7.7", "Authorization": "Bearer sk_live_wrong"}
    transport = httpx.HTTPTransport(local_address="127.0.0.2")
    with httpx.Client(base_url=balanced.nginx.url, transport=transport, timeout=10) as c:
        assert c.get(marker, headers=forged).status_code == 401
    r = redis.Redis.from_url(balanced.redis_url, decode_responses=True)

    def record() -> dict[str, Any] | None:
        for _, fields in r.xrevrange(keyspace.AUDIT_STREAM, count=200):
            data = json.loads(fields.get("data", "{}"))
            if data.get("resource") == marker:
                return data
        return None

    found = wait_for(record, timeout=10, what="the auth.failure record")
    r.close()
    assert found["ip"] == "127.0.0.2", found


def test_events_reach_the_client_while_the_job_runs_not_at_its_end(balanced: Balanced) -> None:
    with client(balanced) as c:
        job = c.post("/api/v1/jobs", json={"agent_type": "query", "query": "unbuffered " * 30}).json()
        with c.stream("GET", f"/api/v1/jobs/{job['id']}/events") as resp:
            for item in parse(resp.iter_lines()):
                if isinstance(item, SSE) and item.event == "token":
                    break
        # The first token arrived through nginx while the job still had tokens to write.
        assert c.get(f"/api/v1/jobs/{job['id']}").json()["status"] == "running"


@pytest.mark.parametrize("keyed", [False, True], ids=["plain", "keyed"])
def test_a_post_to_a_stream_route_streams_tokens_while_the_job_runs(balanced: Balanced, keyed: bool) -> None:
    """POST /api/v1/stream/query through nginx, with and without an Idempotency-Key (which takes nginx's named
    location for keyed stream POSTs): the first token arrives while the job still has tokens to write."""
    headers = {"Idempotency-Key": f"keyed-stream-{uuid.uuid4().hex}"} if keyed else {}
    with client(balanced) as c:
        body = {"query": "unbuffered " * 30}
        with c.stream("POST", "/api/v1/stream/query", json=body, headers=headers) as resp:
            assert resp.status_code == 200, resp.read()
            job = resp.headers["Location"]
            seen = []
            for item in parse(resp.iter_lines()):
                if isinstance(item, SSE):
                    seen.append(item.event)
                    if item.event == "token":
                        break
        assert "done" not in seen and seen[-1] == "token", seen
        assert c.get(job).json()["status"] == "running"


# --- faults ------------------------------------------------------------------------------------------------------


def test_an_instance_killed_under_load_loses_no_idempotent_request(balanced: Balanced) -> None:
    """Instance 1 freezes (SIGSTOP) so that requests are certainly in flight on it, then dies (SIGKILL): nginx sends
    them again to the others (GETs, and POSTs with an Idempotency-Key), and each key still makes one job."""
    log_from = len(balanced.nginx.access_log())
    victim = f"127.0.0.1:{balanced.ports[1]}"
    try:
        with Load(balanced.nginx.url, balanced.key) as load:
            wait_for(lambda: load.requests >= 40, timeout=30, what="load")
            os.killpg(balanced.apis[1].pid, signal.SIGSTOP)
            wait_for(lambda: load.stuck(0.5), timeout=30, what="a request in flight on the frozen instance")
            balanced.apis[1].kill()  # SIGKILL: the connections in flight are reset
            killed_at = load.requests
            wait_for(lambda: load.requests >= killed_at + 60, timeout=60, what="load after the kill")
    finally:
        balanced.restart(1)
    assert load.failures == []
    load.check_one_job_per_key(balanced.redis_url)
    # Sent again after the victim failed, each reached a live instance and got its answer: a job (the load's
    # requests), or for the cancels the load sends as it ends, 409 when the job had already finished.
    retried = [line for line in balanced.nginx.access_log()[log_from:] if line["up"].startswith(f"{victim}, ")]
    answered = {"200", "201", "202"} | {"409"}
    assert retried and all(line["status"] in answered for line in retried), [
        (line["method"], line["path"], line["status"], line["up"], line["us"]) for line in retried
    ]
    assert all(line["status"] in ("200", "201", "202") for line in retried if not line["path"].endswith("/cancel"))


@dataclass
class Follower:
    """Follows one job's events through nginx to the end, reconnecting with Last-Event-ID when a stream ends early."""

    balanced: Balanced
    job_id: str
    events: list[SSE] = field(default_factory=list)
    reconnects: int = 0
    handovers: int = 0  # streams a stopping instance ended with its hand-over comment
    error: str = ""

    def run(self) -> None:
        headers = {"Authorization": f"Bearer {self.balanced.key}"}
        deadline = time.monotonic() + 120
        with httpx.Client(base_url=self.balanced.nginx.url, timeout=30) as c:
            while time.monotonic() < deadline:
                if self.events:
                    headers["Last-Event-ID"] = self.events[-1].id
                try:
                    with c.stream("GET", f"/api/v1/jobs/{self.job_id}/events", headers=headers) as resp:
                        if resp.status_code == 204:
                            return
                        if resp.status_code != 200:
                            self.error = f"status {resp.status_code}"
                            return
                        for item in parse(resp.iter_lines()):
                            if isinstance(item, SSE):
                                self.events.append(item)
                                if item.event in ("done", "error", "cancelled"):
                                    return
                            elif item.startswith("handover"):
                                self.handovers += 1
                except httpx.HTTPError:
                    pass  # the instance died mid-stream
                self.reconnects += 1
        self.error = "did not finish"

    def check_exactly_once_in_order(self) -> None:
        """Every event once, in order, ending with `done`."""
        assert self.error == "", self.error
        seqs = [event.data["seq"] for event in self.events]
        assert seqs == list(range(len(seqs))), seqs
        ids = [tuple(map(int, event.id.split("-"))) for event in self.events]
        assert ids == sorted(set(ids))
        assert self.events[-1].event == "done"


def holding(balanced: Balanced) -> int | None:
    """The instance holding an open stream, if one does."""
    return next((i for i in range(len(balanced.ports)) if holding_on(balanced, i)), None)


def long_job(c: httpx.Client) -> str:
    """A job that takes some seconds to stream (the stack's offline model writes a token every 60 ms)."""
    resp = c.post("/api/v1/jobs", json={"agent_type": "query", "query": "a long answer " * 40})
    assert resp.status_code in (200, 201, 202), resp.text
    return str(resp.json()["id"])


def test_a_stream_whose_instance_dies_resumes_through_nginx_exactly_once(balanced: Balanced) -> None:
    with client(balanced) as c:
        follower = Follower(balanced, long_job(c))
    thread = threading.Thread(target=follower.run, daemon=True)
    thread.start()
    wait_for(lambda: any(e.event == "token" for e in follower.events), timeout=30, what="the first tokens")
    victim = wait_for(lambda: [i for i in [holding(balanced)] if i is not None], timeout=10, what="the instance")[0]
    balanced.apis[victim].kill()
    try:
        thread.join(timeout=120)
    finally:
        balanced.restart(victim)
    assert follower.reconnects >= 1
    follower.check_exactly_once_in_order()


def test_a_rolling_restart_under_load_fails_no_request_and_hands_every_stream_over(balanced: Balanced) -> None:
    """Each instance in turn gets SIGTERM while it serves requests and a stream, drains, and starts again."""
    followers: list[Follower] = []
    threads: list[threading.Thread] = []
    stop = threading.Event()

    feeder_errors: list[str] = []

    def keep_streams_open() -> None:
        with client(balanced) as c:
            while not stop.is_set():
                if sum(t.is_alive() for t in threads) < 3:
                    try:
                        follower = Follower(balanced, long_job(c))
                    except (AssertionError, httpx.HTTPError) as ex:
                        feeder_errors.append(repr(ex))
                        continue
                    thread = threading.Thread(target=follower.run, daemon=True)
                    followers.append(follower)
                    threads.append(thread)
                    thread.start()
                time.sleep(0.2)

    feeder = threading.Thread(target=keep_streams_open, daemon=True)
    with Load(balanced.nginx.url, balanced.key) as load:
        feeder.start()
        try:
            for i in range(len(balanced.apis)):
                wait_for(lambda i=i: holding_on(balanced, i), timeout=30, what=f"a stream on instance {i}")
                balanced.apis[i].stop()  # SIGTERM; returns once it has exited
                balanced.restart(i)
        finally:
            stop.set()
            feeder.join(timeout=30)
    for thread in threads:
        thread.join(timeout=120)
    assert feeder_errors == []
    assert load.failures == []
    load.check_one_job_per_key(balanced.redis_url)
    # Each instance drained: its streams ended with a hand-over (not cut by a kill) and resumed elsewhere.
    assert sum(f.handovers for f in followers) >= len(balanced.apis)
    for follower in followers:
        follower.check_exactly_once_in_order()


def holding_on(balanced: Balanced, i: int) -> bool:
    """True when instance `i` holds an open stream."""
    try:
        return httpx.get(f"{balanced.instance(i)}/api/v1/stream/health", timeout=2).json()["streams_open"] > 0
    except httpx.HTTPError:
        return False
