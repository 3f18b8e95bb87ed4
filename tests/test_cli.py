"""The `agentic` console script, run as an operator would, against the session's Redis."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import uuid
from typing import Callable

import pytest
import redis
import yaml

from api import credentials
from events.store import keyspace
from tests.stack import BIN, ROOT, SECRET, RedisServer, base_env, free_port

KEY = re.compile(r"^sk_live_[A-Za-z0-9]{43}$")
Run = Callable[..., subprocess.CompletedProcess[str]]


def agentic(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "agentic"), *args], env=base_env(redis_url), cwd=ROOT, capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def cli(redis_server: RedisServer) -> Run:
    return lambda *args: agentic(redis_server.url, *args)


@pytest.fixture
def name() -> str:
    return f"cli-{uuid.uuid4().hex[:10]}"


def ok(result: subprocess.CompletedProcess[str]) -> object:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def everything_stored(url: str) -> str:
    """Every key name and value in the database, as one text (binary values decoded leniently)."""
    r = redis.Redis.from_url(url)
    parts: list[bytes] = []
    for key in r.scan_iter(count=1000):
        kind = r.type(key)
        parts.append(key)
        if kind == b"string":
            parts.append(r.get(key) or b"")
        elif kind == b"hash":
            parts.extend(k + b"=" + v for k, v in r.hgetall(key).items())
        elif kind in (b"set", b"list", b"zset"):
            parts.extend(
                r.smembers(key) if kind == b"set" else r.lrange(key, 0, -1) if kind == b"list" else r.zrange(key, 0, -1)
            )
        elif kind == b"stream":
            parts.extend(v for _, fields in r.xrange(key, count=10_000) for v in fields.values())
    r.close()
    return b"\n".join(parts).decode(errors="replace")


def test_users_create_prints_a_key_once_and_stores_only_its_keyed_hash(
    cli: Run, name: str, r: redis.Redis, redis_server: RedisServer
) -> None:
    result = cli("users", "create", name, "--role", "admin")
    out = ok(result)
    assert KEY.match(out["api_key"])
    assert "not shown again" in result.stderr
    assert (out["user"]["user_id"], out["user"]["role"], out["key"]["user_id"]) == (name, "admin", name)
    assert out["key"]["prefix"] == out["api_key"][:14] + "…" and out["key"]["revoked"] is False
    hashed = credentials.key_hash(SECRET, out["api_key"])
    assert r.hgetall(keyspace.apikey(hashed))["role"] == "admin"
    assert r.hgetall(keyspace.user_keys(name)) == {out["key"]["key_id"]: hashed}
    stored = everything_stored(redis_server.url)
    assert out["api_key"] not in stored and out["api_key"][8:] not in stored


def test_creating_an_existing_user_fails_with_a_message(cli: Run, name: str) -> None:
    ok(cli("users", "create", name))
    again = cli("users", "create", name)
    assert again.returncode == 1 and again.stdout == ""
    assert "already exists" in again.stderr and name in again.stderr
    assert "Traceback" not in again.stderr


def test_an_unknown_role_is_rejected_by_the_argument_parser(cli: Run, name: str, r: redis.Redis) -> None:
    result = cli("users", "create", name, "--role", "root")
    assert result.returncode == 2 and "invalid choice" in result.stderr
    assert not r.exists(keyspace.user(name))


def test_keys_can_be_created_listed_without_secrets_and_revoked(cli: Run, name: str) -> None:
    first = ok(cli("users", "create", name))
    second = ok(cli("keys", "create", name, "--name", "laptop", "--expires-days", "30"))
    assert KEY.match(second["api_key"]) and second["api_key"] != first["api_key"]
    assert second["key"]["name"] == "laptop" and second["key"]["expires_at"] is not None
    listing = cli("keys", "list", name)
    assert first["api_key"] not in listing.stdout and second["api_key"] not in listing.stdout
    assert {k["key_id"] for k in ok(listing)} == {first["key"]["key_id"], second["key"]["key_id"]}
    key_id = second["key"]["key_id"]
    assert ok(cli("keys", "revoke", name, key_id)) == {"revoked": key_id}
    assert {k["key_id"]: k["revoked"] for k in ok(cli("keys", "list", name))} == {
        first["key"]["key_id"]: False,
        key_id: True,
    }
    unknown = cli("keys", "revoke", name, "0123456789abcdef")
    assert unknown.returncode == 1 and "0123456789abcdef" in unknown.stderr


def test_keys_for_an_unknown_user_fail_with_a_message(cli: Run, name: str) -> None:
    result = cli("keys", "create", name)
    assert result.returncode == 1 and "no user" in result.stderr and "Traceback" not in result.stderr


def test_an_unreachable_redis_exits_2_naming_redis_url_without_a_traceback(name: str) -> None:
    result = agentic(f"redis://127.0.0.1:{free_port()}/0", "users", "create", name)
    assert result.returncode == 2, result.stderr
    assert "REDIS_URL" in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""


def test_prometheus_config_writes_a_checked_config_and_keeps_a_working_key(logdir, tmp_path) -> None:
    server = RedisServer(logdir).start()
    password = logdir / "flower.pw"  # from a file: an argument would show in `ps`
    password.write_text("pw-1\n")
    try:
        args = (
            "prometheus-config",
            "--out",
            str(tmp_path),
            "--api",
            "127.0.0.1:8001",
            "--api",
            "127.0.0.1:8002",
            "--workers",
            "127.0.0.1:9541",
            "--flower",
            "127.0.0.1:5556",
            "--flower-password-file",
            str(password),
            "--self",
            "127.0.0.1:9091",
            "--interval",
            "5s",
        )
        first = ok(agentic(server.url, *args))
        config = yaml.safe_load((tmp_path / "prometheus.yml").read_text())
        targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
        assert (
            targets
            == first["targets"]
            == {
                "api": ["127.0.0.1:8001", "127.0.0.1:8002"],
                "workers": ["127.0.0.1:9541"],
                "flower": ["127.0.0.1:5556"],
                "prometheus": ["127.0.0.1:9091"],
            }
        )
        assert config["global"]["scrape_interval"] == "5s" and (tmp_path / "alerts.yml").exists()
        key = (tmp_path / "secrets" / "api_key").read_text().strip()
        assert KEY.match(key) and (tmp_path / "secrets" / "flower_password").read_text() == "pw-1\n"
        assert (tmp_path / "secrets" / "api_key").stat().st_mode & 0o777 == 0o600
        assert ok(agentic(server.url, "keys", "list", "prometheus"))  # a readonly user of its own
        assert [u["role"] for u in ok(agentic(server.url, "users", "list")) if u["user_id"] == "prometheus"] == [
            "readonly"
        ]
        promtool = shutil.which("promtool")
        if promtool:
            check = subprocess.run(
                [promtool, "check", "config", str(tmp_path / "prometheus.yml")],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert check.returncode == 0, check.stdout + check.stderr
        # Run again: the key still works, so it is kept; once revoked, a new one replaces it.
        ok(agentic(server.url, *args))
        assert (tmp_path / "secrets" / "api_key").read_text().strip() == key
        [listed] = ok(agentic(server.url, "keys", "list", "prometheus"))
        ok(agentic(server.url, "keys", "revoke", "prometheus", listed["key_id"]))
        ok(agentic(server.url, *args))
        assert (tmp_path / "secrets" / "api_key").read_text().strip() != key
    finally:
        server.stop()


def test_prometheus_config_refuses_a_scraper_user_with_more_than_readonly(logdir, tmp_path) -> None:
    server = RedisServer(logdir).start()
    try:
        ok(agentic(server.url, "users", "create", "prometheus", "--role", "admin"))
        refused = agentic(server.url, "prometheus-config", "--out", str(tmp_path), "--api", "127.0.0.1:8001")
        assert refused.returncode == 1 and "readonly" in refused.stderr
        assert not (tmp_path / "prometheus.yml").exists()
    finally:
        server.stop()
