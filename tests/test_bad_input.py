"""Bad input gets the right 4xx with a clear message, in the one error shape, and never a 500."""

from __future__ import annotations

import asyncio

import httpx
import pytest
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
    [{}, {"Authorization": "Bearer"}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer sk_live_nope"},
     {"X-API-Key": "sk_live_" + "A" * 43}],
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
