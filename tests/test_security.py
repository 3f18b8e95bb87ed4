"""Security over HTTP: every route closed without a key, each role exactly its permissions, users, roles,
keys (rotate, revoke, expiry), rate limits, CORS, and no secret in any log."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
import redis

from api.app import create_app
from api.auth import required_permission
from api.openapi import route_table
from api.permissions import PUBLIC, Permission, allowed
from api.users import UserStore
from events.store.clients import async_client
from settings import Settings
from tests.conftest import create_user
from tests.stack import SECRET, RedisServer, Stack, base_env, wait_for

_n = itertools.count()


def routes() -> list[tuple[str, str, Any]]:
    """(path template, method, declared permission) for every route of the real app."""
    app = create_app(Settings.from_env(base_env("redis://127.0.0.1:1/0")))
    return [(path, method, required_permission(resource, method)) for path, method, resource, _ in route_table(app)]


ROUTES = routes()


def concrete(template: str) -> str:
    return re.sub(
        r"\{[a-z_]+\}", lambda m: {"{job_id}": "j_" + "0" * 32, "{agent}": "query"}.get(m.group(), "zz"), template
    )


@pytest.fixture(scope="module")
def sec_stack(logdir: Path) -> Iterator[tuple[Stack, redis.Redis]]:
    server = RedisServer(logdir).start()
    stack = Stack(
        server.url,
        logdir,
        RATE_LIMIT_PER_MIN="1000",
        CORS_ORIGINS="https://app.example",
        AUTH_FAILURES_PER_WINDOW="100000",
    )
    stack.events()
    stack.api()
    r = redis.Redis.from_url(server.url, decode_responses=True)
    yield stack, r
    r.close()
    stack.stop()
    server.stop()


def test_the_route_table_declares_a_permission_for_every_route() -> None:
    assert len(ROUTES) >= 30
    for path, method, permission in ROUTES:
        assert permission is not None, f"{method} {path} declares no permission"
        assert permission == PUBLIC or isinstance(permission, Permission), (path, method)
    public = {(p, m) for p, m, perm in ROUTES if perm == PUBLIC}
    assert {p for p, _ in public} <= {
        "/api/v1/health",
        "/api/v1/monitoring/live",
        "/api/v1/monitoring/ready",
        "/api/v1/monitoring/health",
        "/api/v1/stream/demo",
        "/api/v1/stream/health",
        "/api/v1/openapi.json",
        "/docs",
        "/redoc",
        "/api/v1/docs-assets/{name}",
    }


def test_every_route_but_health_rejects_a_request_without_a_valid_key(sec_stack) -> None:
    stack, _ = sec_stack
    with httpx.Client(base_url=stack.url, timeout=10) as anonymous:
        for path, method, permission in ROUTES:
            if permission == PUBLIC:
                continue
            for headers in ({}, {"Authorization": "Bearer sk_live_" + "A" * 43}):
                resp = anonymous.request(method, concrete(path), headers=headers, json={})
                assert resp.status_code == 401, (method, path, resp.status_code)


@pytest.mark.parametrize("role", ["admin", "user", "readonly"])
def test_each_role_gets_exactly_its_permissions(sec_stack, role: str) -> None:
    stack, _ = sec_stack
    _, key = create_user(stack.env["REDIS_URL"], role)
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {key}"}, timeout=10) as client:
        for path, method, permission in ROUTES:
            if permission == PUBLIC or path.endswith("/events") or path.startswith("/api/v1/stream/{"):
                continue  # streams stay open; their permission is checked the same way in the jobs tests
            resp = client.request(method, concrete(path), json={})
            denied = resp.status_code == 403 and resp.json().get("code") == "forbidden"
            assert denied is not allowed(role, permission), (role, method, path, resp.status_code, resp.text)


def audit_records(r: redis.Redis) -> list[dict[str, Any]]:
    """Every audit record written so far: those already chained into audit:log, then those still waiting."""
    chained = {f["source"]: json.loads(f["record"]) for _, f in r.xrange("audit:log")}
    waiting = {entry_id: json.loads(f["data"]) for entry_id, f in r.xrange("stream:audit")}
    return list({**chained, **waiting}.values())


def admin_client(stack: Stack) -> httpx.Client:
    _, key = create_user(stack.env["REDIS_URL"], "admin")
    return httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {key}"}, timeout=10)


def test_users_roles_and_keys_lifecycle(sec_stack) -> None:
    stack, r = sec_stack
    name = f"sec{next(_n)}"
    with admin_client(stack) as admin:
        created = admin.post(
            "/api/v1/security/users", json={"user_id": name, "role": "readonly", "metadata": {"email": "x@example.com"}}
        )
        assert created.status_code == 201 and created.json()["role"] == "readonly"
        assert admin.post("/api/v1/security/users", json={"user_id": name, "role": "user"}).status_code == 409
        assert admin.post("/api/v1/security/users", json={"user_id": "bad id", "role": "user"}).status_code == 400
        issued = admin.post(f"/api/v1/security/users/{name}/api-key", json={"name": "laptop"})
        assert issued.status_code == 201
        key = issued.json()["api_key"]
        assert re.fullmatch(r"sk_live_[A-Za-z0-9]{43}", key)
        user = httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {key}"}, timeout=10)
        assert user.post("/api/v1/jobs", json={"agent_type": "query", "query": "hi"}).status_code == 403
        assert admin.put(f"/api/v1/security/users/{name}/role", json={"role": "user"}).json()["role"] == "user"
        assert user.post("/api/v1/jobs", json={"agent_type": "query", "query": "hi"}).status_code == 202
        listed = admin.get(f"/api/v1/security/users/{name}/api-keys").json()["keys"]
        assert [k["name"] for k in listed] == ["laptop"] and key not in str(listed)
        assert key not in str(r.keys("*"))  # stored only as a keyed hash
        key_id = listed[0]["key_id"]
        rotated = user.post(f"/api/v1/security/users/{name}/api-keys/{key_id}/rotate", params={"grace_s": 0})
        assert rotated.status_code == 201
        new_key = rotated.json()["api_key"]
        wait_for(lambda: user.get("/api/v1/jobs").status_code == 401, timeout=5, what="the old key to lapse")
        fresh = httpx.Client(base_url=stack.url, headers={"X-API-Key": new_key}, timeout=10)
        assert fresh.get("/api/v1/jobs").status_code == 200
        new_id = rotated.json()["key"]["key_id"]
        assert fresh.delete(f"/api/v1/security/users/{name}/api-keys/{new_id}").status_code == 200
        assert fresh.get("/api/v1/jobs").status_code == 401  # revoked: refused on the very next request
        user.close()
        fresh.close()


def test_a_rotated_key_keeps_working_through_its_grace_period(sec_stack) -> None:
    stack, _ = sec_stack
    user_id, key = create_user(stack.env["REDIS_URL"], "user")
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {key}"}, timeout=10) as user:
        [info] = user.get(f"/api/v1/security/users/{user_id}/api-keys").json()["keys"]
        rotated = user.post(f"/api/v1/security/users/{user_id}/api-keys/{info['key_id']}/rotate")
        assert rotated.status_code == 201 and rotated.json()["old_key_valid_for_s"] == 86400
        assert user.get("/api/v1/jobs").status_code == 200


def test_permission_checks_authentication_and_the_permission_table(sec_stack) -> None:
    stack, _ = sec_stack
    user_id, key = create_user(stack.env["REDIS_URL"], "user")
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {key}"}, timeout=10) as user:
        check = user.post("/api/v1/security/check-permission", json={"permission": "jobs:submit"}).json()
        assert check["allowed"] is True and check["user_id"] == user_id
        assert (
            user.post("/api/v1/security/check-permission", json={"permission": "users:admin"}).json()["allowed"]
            is False
        )
        assert user.post("/api/v1/security/check-permission", json={"permission": "nope"}).status_code == 400
        who = user.post("/api/v1/security/authenticate", json={"api_key": key}).json()
        assert who == {"valid": True, "user_id": user_id, "role": "user", "key_id": who["key_id"]}
        assert user.post("/api/v1/security/authenticate", json={"api_key": "sk_live_x"}).json() == {"valid": False}
        table = user.get("/api/v1/security/permissions").json()
        assert "jobs:submit" in table["roles"]["user"] and "users:admin" not in table["roles"]["user"]
        assert user.get(f"/api/v1/security/users/{user_id}").json()["permissions"] == sorted(table["roles"]["user"])


def test_an_agent_allow_list_limits_what_a_user_may_run(sec_stack) -> None:
    stack, _ = sec_stack
    name = f"sec{next(_n)}"
    with admin_client(stack) as admin:
        admin.post("/api/v1/security/users", json={"user_id": name, "role": "user", "agents": []})
        key = admin.post(f"/api/v1/security/users/{name}/api-key").json()["api_key"]
        with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {key}"}, timeout=10) as user:
            refused = user.post("/api/v1/jobs", json={"agent_type": "query", "query": "hi"})
            assert refused.status_code == 403 and refused.json()["code"] == "agent_not_allowed"
            admin.put(f"/api/v1/security/users/{name}/role", json={"role": "user", "agents": ["query"]})
            assert user.post("/api/v1/jobs", json={"agent_type": "query", "query": "hi"}).status_code == 202


def test_rate_limit_answers_429_with_retry_after_and_headers(logdir: Path) -> None:
    server = RedisServer(logdir).start()
    stack = Stack(server.url, logdir, RATE_LIMIT_PER_MIN="5")
    try:
        stack.api()
        _, key = create_user(server.url)
        with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {key}"}, timeout=10) as user:
            answers = [user.get("/api/v1/jobs") for _ in range(7)]
        statuses = [a.status_code for a in answers]
        if statuses.count(429) < 2:  # the minute turned over mid-run; the window restarted
            pytest.skip(f"window boundary crossed: {statuses}")
        assert statuses[:5] == [200] * 5 and statuses[5:] == [429, 429]
        limited = answers[-1]
        assert int(limited.headers["retry-after"]) >= 1 and limited.headers["ratelimit-remaining"] == "0"
        assert limited.json()["code"] == "rate_limited"
        assert answers[0].headers["ratelimit-limit"] == "5" and answers[0].headers["ratelimit-remaining"] == "4"
    finally:
        stack.stop()
        server.stop()


def test_cors_allows_only_the_listed_origins(sec_stack) -> None:
    stack, _ = sec_stack
    ok = httpx.options(
        f"{stack.url}/api/v1/jobs", headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    )
    assert ok.headers.get("access-control-allow-origin") == "https://app.example"
    other = httpx.options(
        f"{stack.url}/api/v1/jobs", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    )
    assert "access-control-allow-origin" not in other.headers


def test_admin_routes_refuse_addresses_outside_the_allow_list(logdir: Path) -> None:
    server = RedisServer(logdir).start()
    stack = Stack(server.url, logdir, ADMIN_IP_ALLOWLIST="10.9.9.0/24")
    try:
        stack.api()
        _, key = create_user(server.url, "admin")
        with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {key}"}, timeout=10) as admin:
            denied = admin.get("/api/v1/security/users")
            assert denied.status_code == 403 and "address" in denied.json()["description"]
            assert admin.get("/api/v1/jobs").status_code == 200  # not an admin route
    finally:
        stack.stop()
        server.stop()


def test_auth_failures_and_changes_are_audited_and_no_key_reaches_a_log(sec_stack) -> None:
    stack, r = sec_stack
    name = f"sec{next(_n)}"
    with admin_client(stack) as admin:
        admin.post("/api/v1/security/users", json={"user_id": name, "role": "user"})
        key = admin.post(f"/api/v1/security/users/{name}/api-key").json()["api_key"]
        httpx.get(f"{stack.url}/api/v1/jobs", headers={"Authorization": "Bearer sk_live_" + "B" * 43})
        with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {key}"}) as user:
            user.get("/api/v1/security/users")  # denied
            user.post("/api/v1/jobs", json={"agent_type": "query", "query": "audited"})
    actions = {record["action"] for record in audit_records(r)}
    for action in ("user.create", "key.create", "permission.denied", "job.submit"):
        assert action in actions, action
    for proc in stack.procs:
        assert key not in proc.log() and "B" * 43 not in proc.log(), proc.name


def test_the_audit_endpoints_list_and_verify_the_chain(sec_stack) -> None:
    stack, _ = sec_stack
    names = [f"sec{next(_n)}" for _ in range(3)]
    name = names[-1]
    with admin_client(stack) as admin:
        for each in names:
            admin.post("/api/v1/security/users", json={"user_id": each, "role": "user"})
        wait_for(
            lambda: any(
                e["resource"] == name
                for e in admin.get("/api/v1/security/audit", params={"action": "user.create"}).json()["entries"]
            ),
            timeout=15,
            what="the chain to hold the record",
        )
        page = admin.get("/api/v1/security/audit", params={"limit": 3}).json()
        assert len(page["entries"]) == 3 and page["next_cursor"]
        verified = admin.get("/api/v1/security/audit/verify").json()
        assert verified["ok"] is True and verified["checked"] >= 3 and verified["first_broken"] is None
        stats = admin.get("/api/v1/security/stats").json()
        assert stats["users"] >= 1 and stats["keys_active"] >= 1


async def _create_keys(url: str, key: str, user_id: str, n: int) -> list[str]:
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60, limits=httpx.Limits(max_connections=50)
    ) as client:
        answers = await asyncio.gather(*(client.post(f"/api/v1/security/users/{user_id}/api-key") for _ in range(n)))
    return [a.json()["api_key"] for a in answers if a.status_code == 201]


def test_a_role_change_racing_key_creation_in_the_store_leaves_every_key_with_the_new_role(sec_stack) -> None:
    stack, r = sec_stack
    user_id, _ = create_user(stack.env["REDIS_URL"], "admin")

    async def race() -> None:
        client = async_client(stack.env["REDIS_URL"], socket_timeout=10, max_connections=32, pool_timeout=30)
        store = UserStore(client, SECRET)
        creating = [store.create_key(user_id) for _ in range(100)]
        await asyncio.gather(*creating[:50], store.set_role(user_id, "readonly"), *creating[50:])
        await client.aclose()

    asyncio.run(race())
    roles = [r.hget(f"apikey:{hashed}", "role") for hashed in r.hvals(f"user:{user_id}:keys")]
    assert len(roles) == 101 and set(roles) == {"readonly"}, {role: roles.count(role) for role in set(roles)}


def test_a_demotion_racing_key_creation_leaves_no_key_with_the_old_role(sec_stack) -> None:
    stack, r = sec_stack
    for _ in range(2):
        user_id, key = create_user(stack.env["REDIS_URL"], "admin")
        with admin_client(stack) as admin:
            racing = threading.Thread(target=asyncio.run, args=(_create_keys(stack.url, key, user_id, 150),))
            racing.start()
            made = f"user:{user_id}:keys"
            wait_for(lambda made=made: r.hlen(made) >= 20, timeout=20, what="keys being made")
            assert admin.put(f"/api/v1/security/users/{user_id}/role", json={"role": "user"}).status_code == 200
            racing.join()
        roles = {r.hget(f"apikey:{hashed}", "role") for hashed in r.hvals(f"user:{user_id}:keys")}
        assert roles == {"user"}, f"a key kept another role after the demotion: {roles}"
        with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {key}"}, timeout=10) as demoted:
            assert demoted.get("/api/v1/security/users").status_code == 403
            assert demoted.post("/api/v1/security/authenticate", json={"api_key": key}).json()["role"] == "user"


@pytest.fixture(scope="module")
def proxy_stacks(logdir: Path) -> Iterator[tuple[dict[str, Stack], redis.Redis]]:
    """Two API instances on one Redis, admin routes for 10.0.0.0/8 only: one trusts no proxy, one trusts 127.0.0.1."""
    server = RedisServer(logdir).start()
    stacks = {
        trusted: Stack(server.url, logdir, ADMIN_IP_ALLOWLIST="10.0.0.0/8", TRUSTED_PROXIES=trusted)
        for trusted in ("", "127.0.0.1")
    }
    for stack in stacks.values():
        stack.api()
    r = redis.Redis.from_url(server.url, decode_responses=True)
    yield stacks, r
    r.close()
    for stack in stacks.values():
        stack.stop()
    server.stop()


@pytest.mark.parametrize(
    ("trusted", "headers", "admitted", "seen_as"),
    [
        ("", {"X-Forwarded-For": "10.1.2.3"}, False, "127.0.0.1"),
        ("", {"Forwarded": "for=10.1.2.3"}, False, "127.0.0.1"),
        ("", {"X-Real-IP": "10.1.2.3"}, False, "127.0.0.1"),
        ("127.0.0.1", {"X-Forwarded-For": "10.1.2.3"}, True, "10.1.2.3"),
        ("127.0.0.1", {"X-Forwarded-For": "10.1.2.3, 203.0.113.9"}, False, "203.0.113.9"),
        ("127.0.0.1", {"X-Forwarded-For": "203.0.113.9, 10.1.2.3, 127.0.0.1"}, True, "10.1.2.3"),
        # Only X-Forwarded-For counts: many proxies pass a client's own `Forwarded` through untouched.
        ("127.0.0.1", {"Forwarded": 'for="10.1.2.3:4711";proto=https'}, False, "127.0.0.1"),
        ("127.0.0.1", {"X-Forwarded-For": "203.0.113.9", "Forwarded": "for=10.1.2.3"}, False, "203.0.113.9"),
        ("127.0.0.1", {"X-Forwarded-For": "not-an-address"}, False, "127.0.0.1"),
    ],
)
def test_forwarded_headers_count_only_from_trusted_proxies(
    proxy_stacks, trusted: str, headers: dict[str, str], admitted: bool, seen_as: str
) -> None:
    stacks, r = proxy_stacks
    stack = stacks[trusted]
    _, key = create_user(stack.env["REDIS_URL"], "admin")
    name = f"fwd{next(_n)}"
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {key}", **headers}, timeout=10) as admin:
        made = admin.post("/api/v1/security/users", json={"user_id": name, "role": "admin"})
    assert (made.status_code == 201) is admitted, made.text
    action, resource = ("user.create", name) if admitted else ("permission.denied", "/api/v1/security/users")
    entries = audit_records(r)
    mine = [e for e in entries if e["action"] == action and e["resource"] == resource and e["actor"] != "anonymous"]
    assert mine and mine[-1]["ip"] == seen_as


def test_failed_authentication_is_limited_per_address_and_counted_not_logged_each(logdir: Path) -> None:
    server = RedisServer(logdir).start()
    stack = Stack(server.url, logdir, AUTH_FAILURES_PER_WINDOW="10", AUTH_FAILURE_WINDOW_S="3")
    r = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        stack.events()
        stack.api()
        _, key = create_user(server.url, "user")
        with httpx.Client(base_url=stack.url, timeout=10) as anonymous:
            window = wait_for(lambda: time.time() % 3 < 1 and int(time.time() // 3), timeout=5, interval=0.01)
            answers = [
                anonymous.get("/api/v1/jobs", headers={"Authorization": f"Bearer sk_live_{i:043d}"}) for i in range(30)
            ]
            statuses = [a.status_code for a in answers]
            assert statuses[:10] == [401] * 10 and set(statuses[10:]) == {429}, statuses
            assert int(answers[-1].headers["retry-after"]) >= 1
            assert answers[-1].json()["code"] == "too_many_auth_failures"
            # Even a valid key from this address waits out the window: guesses learn nothing meanwhile.
            assert anonymous.get("/api/v1/jobs", headers={"Authorization": f"Bearer {key}"}).status_code == 429
            during = audit_records(r)
            assert [e["action"] for e in during] == ["auth.failure"]  # the first in full, the rest counted
            wait_for(lambda: int(time.time() // 3) > window, timeout=5)
            assert anonymous.get("/api/v1/jobs", headers={"Authorization": f"Bearer {key}"}).status_code == 200

        def summary() -> list[dict]:
            return [d for d in audit_records(r) if d["action"] == "auth.failures"]

        [counted] = wait_for(summary, timeout=15, what="the failures summarised")
        assert counted["ip"] == "127.0.0.1" and counted["details"]["count"] == 31
        assert len(audit_records(r)) == 2  # 31 failures: one record in full, one count
    finally:
        r.close()
        stack.stop()
        server.stop()


def test_cross_user_probes_anonymous_requests_and_tracked_usage_are_audited(sec_stack) -> None:
    stack, r = sec_stack
    owner_id, owner_key = create_user(stack.env["REDIS_URL"], "user")
    prober_id, prober_key = create_user(stack.env["REDIS_URL"], "user")
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {owner_key}"}, timeout=10) as owner:
        job = owner.post("/api/v1/jobs", json={"agent_type": "query", "query": "mine"}).json()["id"]
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {prober_key}"}, timeout=10) as prober:
        assert prober.get(f"/api/v1/jobs/{job}").status_code == 404
        assert prober.post(f"/api/v1/jobs/{job}/cancel").status_code == 404
        assert prober.get(f"/api/v1/costs/usage/{owner_id}").status_code == 404
        assert prober.get(f"/api/v1/security/users/{owner_id}").status_code == 404
    window = f"authfail:{int(time.time() // 60)}"  # sec_stack counts failures per minute
    before = int(r.hget(window, "127.0.0.1") or 0)
    anonymous = httpx.get(f"{stack.url}/api/v1/jobs/{job}", timeout=10)
    assert anonymous.status_code == 401
    # Audited in full if it was this minute's first failure from the address, else counted for the summary.
    assert int(r.hget(window, "127.0.0.1") or 0) == before + 1 or time.time() // 60 != int(window.split(":")[1])
    with admin_client(stack) as admin:
        tracked = admin.post(
            "/api/v1/costs/track",
            json={"user_id": owner_id, "model": "offline", "input_tokens": 10, "output_tokens": 5},
        )
        assert tracked.status_code == 201
    entries = audit_records(r)
    probes = [e for e in entries if e["actor"] == prober_id and e["action"] == "access.denied"]
    assert {e["resource"] for e in probes} >= {job, f"costs/{owner_id}", f"users/{owner_id}"}
    assert len([e for e in probes if e["resource"] == job]) == 2  # the read and the cancel
    assert any(e["action"] == "costs.track" and e["resource"] == owner_id for e in entries)


def test_a_stream_url_stops_working_once_the_key_that_made_it_is_revoked(sec_stack) -> None:
    stack, _ = sec_stack
    user_id, key = create_user(stack.env["REDIS_URL"], "user")
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {key}"}, timeout=10) as owner:
        job = owner.post("/api/v1/jobs", json={"agent_type": "query", "query": "stream me"}).json()
        [info] = owner.get(f"/api/v1/security/users/{user_id}/api-keys").json()["keys"]
        url = f"{stack.url}{job['stream_url']}"
        with httpx.stream("GET", url, timeout=10) as before:
            assert before.status_code == 200
        assert owner.delete(f"/api/v1/security/users/{user_id}/api-keys/{info['key_id']}").status_code == 200
    refused = httpx.get(url, timeout=10)
    assert refused.status_code == 401 and refused.json()["code"] == "unauthorized"
