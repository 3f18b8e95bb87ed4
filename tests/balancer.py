"""nginx in front of API instances for tests, from the configuration `make run` renders (ops/nginx_conf.py),
throw-away TLS certificates made with openssl, and a steady load of idempotent requests."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis

from events.store import keyspace
from tests.stack import ROOT, Proc, free_port, wait_for

sys.path.insert(0, str(ROOT / "ops"))
import nginx_conf

NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin") or "nginx"


def make_certificate(out: Path, host: str = "127.0.0.1") -> tuple[Path, Path, Path]:
    """A CA and a server certificate for `host` signed by it; returns (ca, cert, key) PEM paths."""
    out.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert = (out / n for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem"))
    ext = out / "server.ext"
    ext.write_text(f"subjectAltName=IP:{host}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n")

    def run(*argv: str) -> None:
        subprocess.run(["openssl", *argv], check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca), "-days", "2",
        "-subj", "/CN=agentic test CA")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={host}")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial", "-out", str(cert),
        "-days", "2", "-extfile", str(ext))  # fmt: skip
    return ca, cert, key


class Nginx:
    """One nginx, configured like `make run` does, in a directory of its own."""

    def __init__(
        self, out: Path, instances: list[int], *, tls: tuple[Path, Path] | None = None, fail_timeout_s: int = 10
    ) -> None:
        self.out = out
        self.port = free_port()
        self.tls_port = free_port() if tls else None
        self.conf = nginx_conf.render(
            out,
            listen=f"127.0.0.1:{self.port}",
            instances=[f"127.0.0.1:{p}" for p in instances],
            tls=nginx_conf.Tls(f"127.0.0.1:{self.tls_port}", *tls) if tls else None,
            fail_timeout_s=fail_timeout_s,
        )
        self.proc = Proc(f"nginx-{self.port}", nginx_conf.argv(NGINX, out, self.conf), {}, out)

    @property
    def url(self) -> str:
        """The plain-HTTP address."""
        return f"http://127.0.0.1:{self.port}"

    def check(self) -> subprocess.CompletedProcess[str]:
        """`nginx -t` on this configuration."""
        return subprocess.run(
            nginx_conf.argv(NGINX, self.out, self.conf, test=True), capture_output=True, text=True, timeout=30
        )

    def start(self) -> Nginx:
        """Start it and wait until it answers."""
        self.proc.start()
        wait_for(lambda: httpx.get(f"{self.url}/nginx/health", timeout=1).status_code == 200, what="nginx")
        return self

    def access_log(self) -> list[dict[str, str]]:
        """The access log so far: each line's method, path, status, and the instances tried (`a, b` when nginx went
        on to another) with their statuses."""
        path = self.out / "logs" / "access.log"
        pattern = re.compile(r'"(?P<method>\S+) (?P<path>\S+)" (?P<status>\d+) .* up=(?P<up>.+?) us=(?P<us>.+?) ut=')
        return [m.groupdict() for m in map(pattern.search, path.read_text().splitlines()) if m]

    def stop(self) -> None:
        """Stop it, and remove the temporary directory a root run's render made for it."""
        self.proc.stop()
        nginx_conf.remove_temp(self.out)


@dataclass
class Load:
    """Steady load: each thread submits a job with an Idempotency-Key, then reads it back, until stopped.

    Every answer must be a success; `failures` lists the others. On exit the jobs still waiting are cancelled, so
    they do not keep the workers busy for whatever runs next.
    """

    url: str
    key: str
    threads: int = 4
    stop: threading.Event = field(default_factory=threading.Event)
    failures: list[str] = field(default_factory=list)
    keys: dict[str, str] = field(default_factory=dict)  # Idempotency-Key -> job id
    requests: int = 0
    in_flight: dict[int, float] = field(default_factory=dict)  # thread -> when its current request began
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def client(self, timeout: float = 20) -> httpx.Client:
        """A client of `url` with the load's key."""
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.key}"}, timeout=timeout)

    def stuck(self, seconds: float) -> bool:
        """True when some request has been waiting for its answer for `seconds`."""
        now = time.monotonic()
        return any(now - began >= seconds for began in list(self.in_flight.values()))

    def _run(self) -> None:
        me = threading.get_ident()
        with self.client() as c:
            while not self.stop.is_set():
                key = uuid.uuid4().hex
                self.in_flight[me] = time.monotonic()
                try:
                    body = {"agent_type": "query", "query": "load"}
                    resp = c.post("/api/v1/jobs", json=body, headers={"Idempotency-Key": key})
                    if resp.status_code not in (200, 201, 202):
                        self._fail(f"POST {resp.status_code} {resp.text[:200]}")
                        continue
                    job_id = resp.json()["id"]
                    with self._lock:
                        self.keys[key] = job_id
                    self.in_flight[me] = time.monotonic()
                    got = c.get(f"/api/v1/jobs/{job_id}")
                    if got.status_code != 200:
                        self._fail(f"GET {got.status_code} {got.text[:200]}")
                    with self._lock:
                        self.requests += 2
                except httpx.HTTPError as ex:
                    self._fail(f"{type(ex).__name__}: {ex}")
                finally:
                    self.in_flight.pop(me, None)
                    time.sleep(0.05)

    def _fail(self, what: str) -> None:
        with self._lock:
            self.failures.append(what)

    def __enter__(self) -> Load:
        self._workers = [threading.Thread(target=self._run, daemon=True) for _ in range(self.threads)]
        for thread in self._workers:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self._workers:
            thread.join(timeout=60)
        with self.client() as c:
            for job_id in self.keys.values():
                c.post(f"/api/v1/jobs/{job_id}/cancel")

    def check_one_job_per_key(self, redis_url: str) -> None:
        """Every Idempotency-Key made exactly one job, and that job exists."""
        assert len(set(self.keys.values())) == len(self.keys)
        r = redis.Redis.from_url(redis_url, decode_responses=True)
        try:
            missing = [job_id for job_id in self.keys.values() if not r.exists(keyspace.job(job_id))]
        finally:
            r.close()
        assert missing == []
