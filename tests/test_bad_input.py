"""Bad input gets the right 4xx with a clear message, in the one error shape, and never a 500."""

from __future__ import annotations

import asyncio
import json
from typing import Iterator

import httpx
import pytest
import redis
import redis.asyncio as aioredis

from api.users import UserStore
from tests.stack import SECRET, Stack

GOOD = {"agent_type": "query", "query": "hi"}


def post_raw(client: httpx.Client, content: bytes, content_type: str = "application/json") -> httpx.Response:
    return client.post("/api/v1/jobs", content=content, headers={"Content-Type": content_type})


@pytest.mark.parametrize(
    ("body", "status", "code", "mentions"),
    [
        (b"{not json", 400, "malformed_json", "not valid JSON"),
        (b"[1, 2]", 400, "invalid_request", "JSON object"),
        (b'{"agent_type": "query"}', 400, "invalid_field", "'query'"),
        (b'{"agent_type": "query", "query": 42}', 400, "invalid_field", "must be a string"),
        (b'{"agent_type": "query", "query": "   "}', 400, "invalid_field", "must not be empty"),
        (b'{"agent_type": "wizard", "query": "hi"}', 400, "invalid_field", "'wizard' is not allowed"),
        (b'{"agent_type": 7, "query": "hi"}', 400, "invalid_field", "'agent_type'"),
        (b'{"agent_type": "query", "query": "hi", "max_tokens": "9"}', 400, "invalid_field", "'max_tokens'"),
        (b'{"agent_type": "query", "query": "hi", "max_tokens": true}', 400, "invalid_field", "integer"),
        (b'{"agent_type": "query", "query": "hi", "max_tokens": 0}', 400, "invalid_field", "between 1 and"),
        (b'{"agent_type": "query", "query": "hi", "max_tokens": 999999}', 400, "invalid_field", "between 1 and"),
        (b'{"agent_type": "query", "query": "hi", "metadata": [1]}', 400, "invalid_field", "'metadata'"),
        (b'{"agent_type": "query", "query": "hi", "attachments": "x"}', 400, "invalid_field", "'attachments'"),
        (b'{"agent_type": "query", "query": "hi", "session_id": "a b"}', 400, "invalid_field", "'session_id'"),
        (b'{"agent_type": "query", "query": "hi", "quary": "typo"}', 400, "invalid_field", "'quary'"),
    ],
)
def test_bad_job_bodies_get_400_naming_the_problem(alice: httpx.Client, body, status, code, mentions) -> None:
    resp = post_raw(alice, body)
    assert resp.status_code == status, resp.text
    error = resp.json()
    assert set(error) >= {"title", "description", "code"}
    assert error["code"] == code
    assert mentions in error["description"]


def test_oversized_body_gets_413(alice: httpx.Client) -> None:
    resp = post_raw(alice, b'{"agent_type": "query", "query": "' + b"a" * 300_000 + b'"}')
    assert resp.status_code == 413
    assert resp.json()["code"] == "body_too_large"


def test_query_over_the_character_limit_gets_400(alice: httpx.Client) -> None:
    resp = alice.post("/api/v1/jobs", json={"agent_type": "query", "query": "a" * 40_000})
    assert resp.status_code == 400 and "at most 32000 characters" in resp.json()["description"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", ""])
def test_wrong_content_type_gets_415(alice: httpx.Client, content_type: str) -> None:
    resp = post_raw(alice, b'{"agent_type": "query", "query": "hi"}', content_type)
    assert resp.status_code == 415
    assert "application/json" in resp.json()["description"]


def test_bad_idempotency_key_gets_400(alice: httpx.Client) -> None:
    resp = alice.post("/api/v1/jobs", json=GOOD, headers={"Idempotency-Key": "x" * 300})
    assert resp.status_code == 400 and "Idempotency-Key" in resp.json()["description"]


@pytest.mark.parametrize("last_id", ["abc", "12-x", "-1", "1-2-3"])
def test_bad_last_event_id_gets_400(alice: httpx.Client, last_id: str) -> None:
    job = alice.post("/api/v1/jobs", json=GOOD).json()
    resp = alice.get(f"/api/v1/jobs/{job['id']}/events", headers={"Last-Event-ID": last_id})
    assert resp.status_code == 400 and resp.json()["code"] == "invalid_last_event_id"


@pytest.mark.parametrize("job_id", ["nope", "j_" + "0" * 32, "../../etc/passwd"])
def test_unknown_job_ids_get_404(alice: httpx.Client, job_id: str) -> None:
    for path in ("", "/events"):
        resp = alice.get(f"/api/v1/jobs/{job_id}{path}")
        assert resp.status_code == 404
    assert alice.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 404


def test_another_users_job_looks_like_no_job(alice: httpx.Client, user_factory, stack: Stack) -> None:
    job = alice.post("/api/v1/jobs", json=GOOD).json()
    _, key = user_factory("user")
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {key}"}) as mallory:
        for method, path in (("GET", ""), ("GET", "/events"), ("POST", "/cancel")):
            resp = mallory.request(method, f"/api/v1/jobs/{job['id']}{path}")
            assert resp.status_code == 404, (method, path)
            assert resp.json()["code"] == "job_not_found"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer sk_live_nope"},
        {"X-API-Key": "sk_live_" + "A" * 43},
    ],
)
def test_missing_or_unknown_keys_get_401(stack: Stack, headers: dict[str, str]) -> None:
    resp = httpx.post(f"{stack.url}/api/v1/jobs", json=GOOD, headers=headers)
    assert resp.status_code == 401
    assert resp.headers["www-authenticate"].startswith("Bearer")
    assert resp.json()["code"] == "unauthorized"


def test_revoked_key_gets_401_on_the_next_request(stack: Stack, alice: httpx.Client) -> None:
    assert alice.get("/api/v1/jobs").status_code == 200

    async def revoke() -> None:
        client = aioredis.Redis.from_url(stack.env["REDIS_URL"])
        store = UserStore(client, SECRET)
        [key] = await store.list_keys(alice.user_id)  # type: ignore[attr-defined]
        assert await store.revoke_key(alice.user_id, key["key_id"])  # type: ignore[attr-defined]
        await client.aclose()

    asyncio.run(revoke())
    resp = alice.get("/api/v1/jobs")
    assert resp.status_code == 401 and "revoked" in resp.json()["description"]


def test_readonly_role_cannot_submit_or_cancel(stack: Stack, user_factory) -> None:
    _, key = user_factory("readonly")
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {key}"}) as reader:
        resp = reader.post("/api/v1/jobs", json=GOOD)
        assert resp.status_code == 403 and "jobs:submit" in resp.json()["description"]
        assert reader.get("/api/v1/jobs").status_code == 200


def test_unsupported_method_gets_405(alice: httpx.Client) -> None:
    resp = alice.delete("/api/v1/jobs")
    assert resp.status_code == 405


def test_bad_list_parameters_get_400(alice: httpx.Client) -> None:
    assert alice.get("/api/v1/jobs", params={"status": "weird"}).status_code == 400
    assert alice.get("/api/v1/jobs", params={"limit": 0}).status_code == 400
    assert alice.get("/api/v1/jobs", params={"cursor": "zzz"}).status_code == 400
    assert alice.get("/api/v1/jobs/j_" + "0" * 32, params={"wait": "soon"}).status_code == 400


def _json_routes() -> list[tuple[str, str]]:
    from tests.test_security import ROUTES, concrete

    return [(method, concrete(path)) for path, method, _ in ROUTES if method in ("POST", "PUT")]


@pytest.fixture
def admin(user_factory, stack: Stack) -> Iterator[httpx.Client]:
    _, key = user_factory("admin")
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        yield client


@pytest.mark.parametrize(
    "body",
    [
        b'{"agent_type": "query", "query": "hi", "metadata": {"\\udc00": 1}}',
        b'{"agent_type": "query", "query": "hi", "metadata": {"a": "x\\ud800y"}}',
        b'{"agent_type": "query", "query": "\\udfff"}',
        b'{"agent_type": "query", "query": "hi", "metadata": {"a": [{"b": "\\ud83d"}]}}',
        b'{"agent_type": "query", "query": "hi", "attachments": [{"name": "\\udc80"}]}',
        b'{"agent_type": "query", "query": "hi", "metadata": {"a": NaN}}',
        b'{"agent_type": "query", "query": "hi", "metadata": {"a": Infinity}}',
        b'{"agent_type": "query", "query": "hi", "metadata": {"a": -Infinity}}',
        b'{"agent_type": "query", "query": "hi", "metadata": {"a": 1e999}}',
        b'{"agent_type": "query", "query": "hi", "max_tokens": 1e999}',
        b'{"agent_type": "query", "query": "hi", "metadata": {"a": ' + b"9" * 5000 + b"}}",
        b'{"agent_type": "query", "query": "hi\xff"}',
        b'{"agent_type": "query", "query": "hi", "metadata": ' + b'{"a": ' * 40 + b"1" + b"}" * 40 + b"}",
    ],
)
def test_text_that_is_not_valid_unicode_or_numbers_that_are_not_finite_are_refused_and_nothing_is_saved(
    alice: httpx.Client, body: bytes
) -> None:
    before = alice.get("/api/v1/jobs").json()["jobs"]
    resp = post_raw(alice, body)
    assert resp.status_code == 400, resp.text
    assert resp.json()["code"] in ("malformed_json", "invalid_field")
    assert alice.get("/api/v1/jobs").json()["jobs"] == before


def test_deeply_nested_json_is_refused_on_every_json_route(admin: httpx.Client) -> None:
    for depth in (100, 30_000):  # 30,000 levels still fit the body limit
        deep = b'{"a": ' * depth + b"1" + b"}" * depth
        for method, path in _json_routes():
            resp = admin.request(method, path, content=deep, headers={"Content-Type": "application/json"})
            uploads = path in ("/api/v1/documents", "/api/v1/attachments")  # multipart only: JSON is 415
            assert resp.status_code in ((415,) if uploads else (400, 404, 413)), (method, path, resp.status_code)
            assert resp.status_code != 500 and "Traceback" not in resp.text


def test_a_poisoned_record_in_redis_never_breaks_a_job_or_a_list(alice: httpx.Client, stack: Stack) -> None:
    job = alice.post("/api/v1/jobs", json=GOOD).json()["id"]
    alice.get(f"/api/v1/jobs/{job}", params={"wait": 30})
    # As an older version could have saved it: JSON escapes of lone surrogates, and bytes that are not UTF-8.
    raw = redis.Redis.from_url(stack.env["REDIS_URL"])
    raw.hset(
        f"job:{{{job}}}",
        mapping={
            "metadata": '{"\\udc00": "\\ud800"}',
            "query": b"bad \xff\xfe bytes",
            "usage": "not json",
            "created_at": "nan?",
        },
    )
    raw.close()
    one = alice.get(f"/api/v1/jobs/{job}")
    assert one.status_code == 200, one.text
    assert one.json()["id"] == job
    listed = alice.get("/api/v1/jobs")
    assert listed.status_code == 200 and job in [j["id"] for j in listed.json()["jobs"]]
    json.loads(listed.content.decode("utf-8"))  # valid UTF-8 and valid JSON


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/api/v1/jobs/{job}", {"wait": "nan"}),
        ("/api/v1/jobs/{job}", {"wait": "-0.0e5x"}),
        ("/api/v1/jobs/{job}", {"wait": "١"}),
        ("/api/v1/jobs", {"cursor": "nan:j_" + "0" * 32}),
        ("/api/v1/jobs", {"cursor": "inf:j_" + "0" * 32}),
        ("/api/v1/jobs", {"limit": "١٠"}),
        ("/api/v1/jobs", {"limit": "1_0"}),
        ("/api/v1/security/audit", {"since": "nan"}),
        ("/api/v1/security/audit", {"until": "NaN"}),
        ("/api/v1/security/audit", {"limit": "1e3"}),
        ("/api/v1/security/users/{user}/api-keys/0123456789abcdef/rotate", {"grace_s": "nan"}),
    ],
)
def test_numbers_in_query_parameters_must_be_finite_ascii_numbers(
    admin: httpx.Client, path: str, params: dict[str, str]
) -> None:
    job = admin.post("/api/v1/jobs", json=GOOD).json()["id"]
    target = path.format(job=job, user="nobody")
    method = "POST" if target.endswith("/rotate") else "GET"
    resp = admin.request(method, target, params=params)
    assert resp.status_code == 400, (target, params, resp.status_code, resp.text)


@pytest.mark.parametrize("token", ["1.é", "².x", "9" * 400 + ".x", "1.\x00", "٣.abc", "1..", "."])
def test_a_malformed_stream_token_gets_401_not_500(alice: httpx.Client, stack: Stack, token: str) -> None:
    job = alice.post("/api/v1/jobs", json=GOOD).json()["id"]
    resp = httpx.get(f"{stack.url}/api/v1/jobs/{job}/events", params={"token": token}, timeout=10)
    assert resp.status_code == 401, resp.text


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"user_id": "nobody-at-all", "limit_usd": "1.00"}, 404),
        ({"user_id": "{me}", "scope": "agent", "agent": "nope", "limit_usd": "1.00"}, 400),
        ({"user_id": "{me}", "scope": "session", "session_id": "a b", "limit_usd": "1.00"}, 400),
        ({"user_id": "{me}", "scope": "session", "session_id": "x" * 200, "limit_usd": "1.00"}, 400),
        ({"user_id": "{me}", "limit_usd": "NaN"}, 400),
        ({"user_id": "{me}", "limit_usd": "1e400"}, 400),
    ],
)
def test_budgets_are_only_set_for_users_agents_and_sessions_that_can_exist(
    admin: httpx.Client, alice: httpx.Client, body: dict, status: int
) -> None:
    body = {k: (alice.user_id if v == "{me}" else v) for k, v in body.items()}  # type: ignore[attr-defined]
    resp = admin.post("/api/v1/costs/budget", json=body)
    assert resp.status_code == status, resp.text


def test_tracking_usage_for_a_user_that_does_not_exist_gets_404(admin: httpx.Client) -> None:
    resp = admin.post(
        "/api/v1/costs/track", json={"user_id": "ghost-user", "model": "offline", "input_tokens": 1, "output_tokens": 1}
    )
    assert resp.status_code == 404


def test_tracking_more_cached_tokens_than_input_tokens_gets_400_not_a_silent_clamp(
    admin: httpx.Client, alice: httpx.Client
) -> None:
    body = {"user_id": alice.user_id, "model": "gpt-4o", "input_tokens": 1, "output_tokens": 1}  # type: ignore[attr-defined]
    resp = admin.post("/api/v1/costs/track", json={**body, "cached_input_tokens": 5})
    assert resp.status_code == 400 and "cached_input_tokens" in resp.json()["description"]
    assert admin.post("/api/v1/costs/track", json={**body, "cached_input_tokens": 1}).status_code in (200, 201)


@pytest.mark.parametrize("raw", ["/api/v1/jobs?status=%ff", "/api/v1/jobs?cursor=%ed%b0%80", "/api/v1/jobs/%ff%fe"])
def test_a_path_or_query_that_is_not_utf8_gets_400(alice: httpx.Client, raw: str) -> None:
    resp = alice.get(raw)
    assert resp.status_code == 400 and resp.json()["code"] == "invalid_encoding"


def test_a_damaged_user_record_never_breaks_the_user_list(admin: httpx.Client, stack: Stack, user_factory) -> None:
    victim, _ = user_factory("user")
    raw = redis.Redis.from_url(stack.env["REDIS_URL"])
    raw.hset(f"user:{victim}", mapping={"metadata": b"\xff{", "created_at": "soon", "agents": "[broken"})
    raw.close()
    listed = admin.get("/api/v1/security/users")
    assert listed.status_code == 200
    [shown] = [u for u in listed.json()["users"] if u["user_id"] == victim]
    assert shown["metadata"] == {} and shown["agents"] == []  # a damaged allow list allows nothing
