"""The seed's Python API for users, keys, permissions and audit, backed by the same Redis as the HTTP API.

rbac = get_rbac_service()
user = await rbac.create_user(user_id="user_123", role=Role.USER, metadata={"email": "user@example.com"})
api_key = await rbac.generate_api_key("user_123")            # "sk_live_…", shown once
allowed = await rbac.check_permission(user_id="user_123", permission=Permission.QUERY_AGENT)
await rbac.log_audit(user_id="user_123", action="query", resource="math_agent", result="success")
"""

from __future__ import annotations

import time
from typing import Any, Callable

from api.audit import AuditLog
from api.permissions import Permission, Role, allowed
from api.users import UnknownUserError, UserStore
from events.store.clients import async_client
from settings import Settings

__all__ = ["Permission", "RBACService", "Role", "get_rbac_service"]


class RBACService:
    """Users, keys, permission checks and audit records."""

    def __init__(self, users: UserStore, audit: AuditLog) -> None:
        self.users = users
        self.audit = audit

    async def create_user(
        self,
        user_id: str,
        role: Role | str = Role.USER,
        metadata: dict[str, Any] | None = None,
        agents: list[str] | None = None,
    ) -> dict[str, Any]:
        """Create a user (audited); raises UserExistsError if the id is taken."""
        user = await self.users.create_user(user_id, Role(role).value, metadata, agents)
        await self.audit.record("python-api", "user.create", resource=user_id, details={"role": user["role"]})
        return user

    async def generate_api_key(self, user_id: str, *, name: str = "", expires_in_s: int | None = None) -> str:
        """A new key for the user (audited by id and prefix, never the key); returns the key, once."""
        key, info = await self.users.create_key(user_id, name=name, expires_in_s=expires_in_s)
        await self.audit.record(
            "python-api", "key.create", resource=user_id, details={"key_id": info["key_id"], "prefix": info["prefix"]}
        )
        return key

    async def check_permission(self, user_id: str, permission: Permission | str, agent: str | None = None) -> bool:
        """True when the user's role grants `permission` (and their allow list admits `agent`)."""
        try:
            user = await self.users.get_user(user_id)
        except UnknownUserError:
            return False
        if not allowed(user["role"], Permission(permission)):
            return False
        return agent is None or user["agents"] is None or agent in user["agents"]

    async def log_audit(
        self,
        user_id: str,
        action: str,
        resource: str = "",
        result: str = "success",
        details: dict[str, Any] | None = None,
    ) -> None:
        """Append an audit record (chained by the audit consumer)."""
        await self.audit.record(user_id, action, resource=resource, result=result, details=details)

    async def close(self) -> None:
        """Close the Redis connections."""
        await self.users.client.aclose()


_service: RBACService | None = None


def get_rbac_service(settings: Settings | None = None, *, clock: Callable[[], float] = time.time) -> RBACService:
    """The process's service (made on first use); pass settings to make a separate one."""
    global _service
    if settings is not None:
        return _make(settings, clock)
    if _service is None:
        _service = _make(Settings.from_env(), clock)
    return _service


def _make(settings: Settings, clock: Callable[[], float]) -> RBACService:
    client = async_client(settings.redis, socket_timeout=5, max_connections=8, pool_timeout=5)
    return RBACService(UserStore(client, settings.secret_key, clock), AuditLog(client, clock))
