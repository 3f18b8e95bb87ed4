"""The seed's Python RBAC API (api/rbac_service.py) on a Redis of its own: it creates users and keys, checks
permissions, and audits each step into the chain without ever writing the key."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Iterator

import pytest
import redis

from api.rbac_service import Permission, Role, get_rbac_service
from events.process.audit_chain import query, verify
from settings import Settings
from tests.stack import RedisServer, base_env
from tests.test_audit import run_group


@pytest.fixture
def own_redis(logdir: Path) -> Iterator[RedisServer]:
    """A redis-server for one test, so that its audit log holds only what that test wrote."""
    server = RedisServer(logdir).start()
    yield server
    server.stop()


def test_the_python_rbac_api_creates_users_and_keys_and_audits_them(own_redis: RedisServer) -> None:
    rbac = get_rbac_service(Settings.from_env(base_env(own_redis.url)))

    async def scenario() -> tuple[str, bool, bool]:
        await rbac.create_user(user_id="user_123", role=Role.USER, metadata={"email": "user@example.com"})
        key = await rbac.generate_api_key("user_123")
        may_submit = await rbac.check_permission(user_id="user_123", permission=Permission.JOBS_SUBMIT)
        may_admin = await rbac.check_permission(user_id="user_123", permission=Permission.USERS_ADMIN)
        await rbac.log_audit(user_id="user_123", action="query", resource="math_agent", result="success")
        await rbac.close()
        return key, may_submit, may_admin

    key, may_submit, may_admin = asyncio.run(scenario())
    assert key.startswith("sk_live_") and may_submit and not may_admin
    r = redis.Redis.from_url(own_redis.url, decode_responses=True)
    try:
        run_group(r)
        actions = [e["action"] for e in query(r, limit=10)["entries"]]
        assert actions == ["query", "key.create", "user.create"]
        assert key not in json.dumps(query(r, limit=10))
        assert verify(r)["ok"]
    finally:
        r.close()


def test_the_seeds_python_example_runs_with_query_agent(own_redis: RedisServer) -> None:
    settings = Settings.from_env(base_env(own_redis.url))

    async def seed_example() -> tuple[str, bool]:
        # The seed's "Example Usage", verbatim but for the module path and the settings of this test's Redis.
        rbac = get_rbac_service(settings)

        # Create user
        user = await rbac.create_user(user_id="user_123", role=Role.USER, metadata={"email": "user@example.com"})
        assert user["role"] == "user"

        # Generate API key
        api_key = await rbac.generate_api_key("user_123")
        # Returns: "sk_live_abc123..."

        # Check permission
        allowed = await rbac.check_permission(user_id="user_123", permission=Permission.QUERY_AGENT)

        # Log audit event
        await rbac.log_audit(user_id="user_123", action="query", resource="math_agent", result="success")
        await rbac.close()
        return api_key, allowed

    async def others() -> dict[str, bool]:
        rbac = get_rbac_service(settings)
        answers = {}
        for role in (Role.ADMIN, Role.READONLY):
            await rbac.create_user(user_id=f"{role}_1", role=role)
            answers[role.value] = await rbac.check_permission(f"{role}_1", Permission.QUERY_AGENT)
        await rbac.close()
        return answers

    api_key, allowed = asyncio.run(seed_example())
    assert api_key.startswith("sk_live_") and allowed
    assert asyncio.run(others()) == {"admin": True, "readonly": False}
    assert Permission.QUERY_AGENT is Permission.JOBS_SUBMIT and list(Permission).count(Permission.JOBS_SUBMIT) == 1
