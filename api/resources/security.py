"""Routes of /api/v1/security: users, roles, keys, permission checks, authentication, audit, stats."""

from __future__ import annotations

import asyncio
from typing import Any

import falcon

from api import credentials
from api.address import client_ip
from api.audit import AuditLog
from api.auth import principal_of
from api.body import printable
from api.http_errors import not_found
from api.models import AuditQuery, KeyCreate, PermissionCheck, RoleChange, UserCreate
from api.permissions import DESCRIPTIONS, ROLE_PERMISSIONS, Permission, Role, allowed
from api.users import KEEP, USER_ID, Principal, UserStore
from events.process import audit_chain
from events.store.clients import sync_client
from settings import Settings


class _Security:
    def __init__(self, users: UserStore, audit: AuditLog, settings: Settings) -> None:
        self.users = users
        self.audit = audit
        self.settings = settings

    async def note(self, req: falcon.asgi.Request, action: str, resource: str, **details: Any) -> None:
        await self.audit.record(
            principal_of(req).user_id, action, resource=resource, ip=client_ip(req), details=details
        )

    async def self_or_admin(self, req: falcon.asgi.Request, user_id: str) -> Principal:
        """The caller, if they are `user_id` or an admin; 404 otherwise (other users' ids reveal nothing), and
        asking about another user without the right is audited as `access.denied`."""
        principal = principal_of(req)
        if not USER_ID.fullmatch(user_id):
            raise not_found(f"There is no user {printable(user_id)!r}.", code="user_not_found")
        if principal.user_id != user_id and not allowed(principal.role, Permission.USERS_ADMIN):
            await self.audit.access_denied(req, f"users/{user_id}")
            raise not_found(f"There is no user {user_id!r} that you can see.", code="user_not_found")
        return principal


class UsersResource(_Security):
    """POST creates a user; GET lists them (admins)."""

    permissions = {"POST": Permission.USERS_ADMIN, "GET": Permission.USERS_ADMIN}

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Body: {user_id, role, metadata?, agents?}; 201 with the user (create a key separately)."""
        body: UserCreate = req.context.body
        user = await self.users.create_user(body.user_id, body.role, body.metadata or {}, body.agents)
        await self.note(req, "user.create", user["user_id"], role=user["role"], agents=user["agents"])
        resp.status = falcon.HTTP_201
        resp.location = f"/api/v1/security/users/{user['user_id']}"
        resp.media = user

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Every user."""
        users = await self.users.list_users()
        resp.media = {"users": users, "count": len(users)}


class UserResource(_Security):
    """GET one user: yourself, or anyone for admins."""

    permissions = {"GET": Permission.SECURITY_READ}

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, user_id: str) -> None:
        """The user's profile and permissions."""
        await self.self_or_admin(req, user_id)
        user = await self.users.get_user(user_id)
        user["permissions"] = sorted(p.value for p in ROLE_PERMISSIONS.get(Role(user["role"]), frozenset()))
        resp.media = user


class RoleResource(_Security):
    """PUT changes a user's role (admins); effective on the user's next request, on every key."""

    permissions = {"PUT": Permission.USERS_ADMIN}

    async def on_put(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, user_id: str) -> None:
        """Body: {role, agents?}."""
        body: RoleChange = req.context.body
        agents = body.agents if "agents" in body.model_fields_set else KEEP
        user = await self.users.update(user_id, role=body.role, agents=agents)
        await self.note(req, "user.role", user_id, role=user["role"], agents=user["agents"])
        resp.media = user


class KeysResource(_Security):
    """POST creates a key (shown once); GET lists a user's keys without secrets. Yourself, or admins anyone."""

    permissions = {"POST": Permission.KEYS_OWN, "GET": Permission.KEYS_OWN}

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, user_id: str) -> None:
        """Body (optional): {name?, expires_in_days?}."""
        await self.self_or_admin(req, user_id)
        body: KeyCreate = req.context.body
        days = body.expires_in_days
        key, info = await self.users.create_key(user_id, name=body.name, expires_in_s=days * 86400 if days else None)
        await self.note(req, "key.create", user_id, key_id=info["key_id"], prefix=info["prefix"])
        resp.status = falcon.HTTP_201
        resp.media = {"api_key": key, "key": info, "note": "Store this key now; it is not shown again."}

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, user_id: str) -> None:
        """The user's keys: ids, prefixes, expiry, revoked."""
        await self.self_or_admin(req, user_id)
        resp.media = {"user_id": user_id, "keys": await self.users.list_keys(user_id)}


class KeyResource(_Security):
    """DELETE revokes a key (effective on the next request, everywhere); POST .../rotate replaces it."""

    permissions = {"DELETE": Permission.KEYS_OWN, "POST": Permission.KEYS_OWN}

    async def on_delete(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, user_id: str, key_id: str) -> None:
        """Revoke."""
        await self.self_or_admin(req, user_id)
        if not await self.users.revoke_key(user_id, key_id):
            raise not_found(f"User {user_id!r} has no key {key_id!r}.", code="key_not_found")
        await self.note(req, "key.revoke", user_id, key_id=key_id)
        resp.media = {"revoked": key_id}

    async def on_post_rotate(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, user_id: str, key_id: str
    ) -> None:
        """A new key; the old one keeps working for KEY_ROTATION_GRACE_S (or ?grace_s=) seconds."""
        await self.self_or_admin(req, user_id)
        given = req.context.query.grace_s
        grace = self.settings.key_rotation_grace_s if given is None else given
        key, info = await self.users.rotate_key(user_id, key_id, grace)
        await self.note(req, "key.rotate", user_id, old_key_id=key_id, new_key_id=info["key_id"], grace_s=grace)
        resp.status = falcon.HTTP_201
        resp.media = {"api_key": key, "key": info, "old_key_id": key_id, "old_key_valid_for_s": grace}


class CheckPermissionResource(_Security):
    """POST: may this user (default: you) do this, optionally with this agent?"""

    permissions = {"POST": Permission.SECURITY_READ}

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Body: {permission, user_id?, agent?}."""
        body: PermissionCheck = req.context.body
        user_id = body.user_id or principal_of(req).user_id
        await self.self_or_admin(req, user_id)
        agent, permission = body.agent, Permission(body.permission)
        user = await self.users.get_user(user_id)
        ok = allowed(user["role"], permission)
        if ok and agent is not None:
            ok = user["agents"] is None or agent in user["agents"]
        resp.media = {
            "user_id": user_id,
            "role": user["role"],
            "permission": permission.value,
            "agent": agent,
            "allowed": ok,
        }


class AuthenticateResource(_Security):
    """POST: is this API key valid, and whose is it? (Admins check any key; anyone checks their own.)"""

    permissions = {"POST": Permission.SECURITY_READ}

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Body: {api_key}; never echoes the key."""
        key = req.context.body.api_key
        principal = await self.users.authenticate(key)
        caller = principal_of(req)
        if (
            principal is not None
            and principal.user_id != caller.user_id
            and not allowed(caller.role, Permission.USERS_ADMIN)
        ):
            principal = None  # a user learns nothing about other users' keys
        if principal is None:
            await self.audit.record(
                caller.user_id,
                "auth.check",
                result="failure",
                ip=client_ip(req),
                details={
                    "key_prefix": credentials.display_prefix(key) if credentials.looks_like_key(key) else "malformed"
                },
            )
            resp.media = {"valid": False}
            return
        resp.media = {"valid": True, "user_id": principal.user_id, "role": principal.role, "key_id": principal.key_id}


class PermissionsResource(_Security):
    """GET: every permission, what it allows, and which roles have it."""

    permissions = {"GET": Permission.SECURITY_READ}

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """The role table."""
        resp.media = {
            "permissions": [
                {
                    "name": p.value,
                    "description": DESCRIPTIONS[p],
                    "roles": [r.value for r in Role if p in ROLE_PERMISSIONS[r]],
                }
                for p in Permission
            ],
            "roles": {r.value: sorted(p.value for p in ROLE_PERMISSIONS[r]) for r in Role},
        }


class _Chain(_Security):
    """Audit routes read the chain with a plain (sync) client in a thread: they are rare admin reads."""

    def __init__(self, users: UserStore, audit: AuditLog, settings: Settings) -> None:
        super().__init__(users, audit, settings)
        self.sync = sync_client(settings.redis, socket_timeout=10, connect_timeout=1, decode_responses=True)


class AuditResource(_Chain):
    """GET the audit log, newest first: ?actor=, ?action=, ?since=, ?until= (epoch s), ?cursor=, ?limit=."""

    permissions = {"GET": Permission.AUDIT_READ}

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """A page of audit records."""
        resp.media = await self._query(req)

    async def _query(self, req: falcon.asgi.Request) -> dict[str, Any]:
        q: AuditQuery = req.context.query
        return await asyncio.to_thread(
            audit_chain.query,
            self.sync,
            actor=q.actor or q.user_id,
            action=q.action,
            since=q.since,
            until=q.until,
            cursor=q.cursor,
            limit=q.limit,
        )


class AuditVerifyResource(_Chain):
    """GET: recompute the audit hash chain and report the first broken link."""

    permissions = {"GET": Permission.AUDIT_READ}

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """The verification result."""
        resp.media = await asyncio.to_thread(audit_chain.verify, self.sync)


class SecurityStatsResource(_Security):
    """GET (admins): users by role, keys active and revoked."""

    permissions = {"GET": Permission.USERS_ADMIN}

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Counts."""
        users = await self.users.list_users()
        by_role = {r.value: 0 for r in Role}
        active = revoked = 0
        for user in users:
            by_role[user["role"]] = by_role.get(user["role"], 0) + 1
            for key in await self.users.list_keys(user["user_id"]):
                revoked += key["revoked"]
                active += not key["revoked"]
        resp.media = {
            "users": len(users),
            "users_by_role": by_role,
            "keys_active": active,
            "keys_revoked": revoked,
            "rate_limit_per_min": self.settings.rate_limit_per_min,
            "admin_ip_allowlist": list(self.settings.admin_ip_allowlist),
        }


class SecurityHealthResource(_Security):
    """GET: the security subsystem answers (Redis reachable; settings that matter)."""

    permissions = {"GET": Permission.SECURITY_READ}

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Report."""
        await self.users.client.ping()
        resp.media = {
            "status": "ok",
            "key_hashing": "HMAC-SHA256 with the server secret",
            "rate_limit_per_min": self.settings.rate_limit_per_min,
            "cors_origins": list(self.settings.cors_origins),
            "admin_ip_allowlist": bool(self.settings.admin_ip_allowlist),
        }
