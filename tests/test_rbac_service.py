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
