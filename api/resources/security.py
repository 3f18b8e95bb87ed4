"""Routes of /api/v1/security: users, roles, keys, permission checks, authentication, audit, stats."""

from __future__ import annotations

import asyncio
from typing import Any

import falcon
import redis

from api import keys as apikeys
from api import params
from api.address import client_ip
from api.audit import AuditLog
from api.auth import principal_of
from api.body import printable, read_json
from api.errors import bad_request, not_found
from api.permissions import DESCRIPTIONS, ROLE_PERMISSIONS, Permission, Role, allowed
from api.users import USER_ID, Principal, UnknownUserError, UserError, UserExistsError, UserStore
from events import audit as chain
from events.catalog import AGENT_TYPES
from events.clients import sync_client
from settings import Settings

EPOCH_MAX = 1e11  # seconds: far beyond any real timestamp, and within what Redis stream ids can hold
AUDIT_PAGE_MAX = 500
ROTATION_GRACE_MAX_S = 30 * 86400


def _agents(body: dict[str, Any]) -> list[str] | None:
    agents = body.get("agents")
    if agents is None:
        return None
    if not isinstance(agents, list) or not all(isinstance(a, str) for a in agents):
        raise bad_request("Field 'agents': must be a list of agent names, or null for all.", code="invalid_field")
    unknown = sorted(set(agents) - set(AGENT_TYPES))
    if unknown:
        raise bad_request(f"Field 'agents': unknown agents {unknown}; use: {', '.join(sorted(AGENT_TYPES))}.",
                          code="invalid_field")
    return list(agents)


def _days(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 3650:
        raise bad_request(f"Field '{name}': must be a whole number of days from 1 to 3650.", code="invalid_field")
    return value


class _Security:
    def __init__(self, users: UserStore, audit: AuditLog, settings: Settings) -> None:
        self.users = users
        self.audit = audit
        self.settings = settings

    async def note(self, req: falcon.asgi.Request, action: str, resource: str, **details: Any) -> None:
        await self.audit.record(principal_of(req).user_id, action, resource=resource, ip=client_ip(req),
                                details=details)

    async def self_or_admin(self, req: falcon.asgi.Request, user_id: str) -> Principal:
        """The caller, if they are `user_id` or an admin; 404 otherwise (other users' ids reveal nothing), and
        asking about another user without the right is audited as `access.denied`."""
        principal = principal_of(req)
        if not USER_ID.fullmatch(user_id):
            raise not_found(f"There is no user {printable(user_id)!r}.", code="user_not_found")
        if principal.user_id != user_id and not allowed(principal.role, Permission.USERS_ADMIN):
            await self.audit.record(principal.user_id, "access.denied", resource=f"users/{user_id}",
                                    result="denied", ip=client_ip(req), details={"path": req.path,
                                                                                 "method": req.method})
            raise not_found(f"There is no user {user_id!r} that you can see.", code="user_not_found")
        return principal


class UsersResource(_Security):
    """POST creates a user; GET lists them (admins)."""

    permissions = {"POST": Permission.USERS_ADMIN, "GET": Permission.USERS_ADMIN}

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Body: {user_id, role, metadata?, agents?}; 201 with the user (create a key separately)."""
        body = await read_json(req, self.settings.max_body_bytes)
        metadata = body.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise bad_request("Field 'metadata': must be a JSON object.", code="invalid_field")
        try:
            user = await self.users.create_user(str(body.get("user_id") or ""), str(body.get("role") or "user"),
                                                metadata, _agents(body))
        except UserExistsError as ex:
            raise falcon.HTTPConflict(title="Conflict", description=str(ex), code="user_exists") from ex
        except UserError as ex:
            raise bad_request(str(ex), code="invalid_field") from ex
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
        try:
            user = await self.users.get_user(user_id)
        except UnknownUserError as ex:
            raise not_found(str(ex), code="user_not_found") from ex
        user["permissions"] = sorted(p.value for p in ROLE_PERMISSIONS.get(Role(user["role"]), frozenset()))
        resp.media = user


class RoleResource(_Security):
    """PUT changes a user's role (admins); effective on the user's next request, on every key."""

    permissions = {"PUT": Permission.USERS_ADMIN}

    async def on_put(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, user_id: str) -> None:
        """Body: {role, agents?}."""
        body = await read_json(req, self.settings.max_body_bytes)
        try:
            user = await self.users.set_role(user_id, str(body.get("role") or ""))
            if "agents" in body:
                user = await self.users.set_agents(user_id, _agents(body))
        except UnknownUserError as ex:
            raise not_found(str(ex), code="user_not_found") from ex
        except UserError as ex:
            raise bad_request(str(ex), code="invalid_field") from ex
        await self.note(req, "user.role", user_id, role=user["role"], agents=user["agents"])
        resp.media = user


class KeysResource(_Security):
    """POST creates a key (shown once); GET lists a user's keys without secrets. Yourself, or admins anyone."""

    permissions = {"POST": Permission.KEYS_OWN, "GET": Permission.KEYS_OWN}

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, user_id: str) -> None:
        """Body (optional): {name?, expires_in_days?}."""
        await self.self_or_admin(req, user_id)
        body = await read_json(req, self.settings.max_body_bytes) if req.content_length else {}
        days = _days(body, "expires_in_days")
        try:
            key, info = await self.users.create_key(user_id, name=str(body.get("name") or "")[:64],
                                                    expires_in_s=days * 86400 if days else None)
        except UnknownUserError as ex:
            raise not_found(str(ex), code="user_not_found") from ex
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

    async def on_delete(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, user_id: str,
                        key_id: str) -> None:
        """Revoke."""
        await self.self_or_admin(req, user_id)
        if not await self.users.revoke_key(user_id, key_id):
            raise not_found(f"User {user_id!r} has no key {key_id!r}.", code="key_not_found")
        await self.note(req, "key.revoke", user_id, key_id=key_id)
        resp.media = {"revoked": key_id}

    async def on_post_rotate(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, user_id: str,
                             key_id: str) -> None:
        """A new key; the old one keeps working for KEY_ROTATION_GRACE_S (or ?grace_s=) seconds."""
        await self.self_or_admin(req, user_id)
        grace = params.integer(req, "grace_s", low=0, high=ROTATION_GRACE_MAX_S,
                               default=self.settings.key_rotation_grace_s)
        try:
            key, info = await self.users.rotate_key(user_id, key_id, grace)
        except UnknownUserError as ex:
            raise not_found(str(ex), code="key_not_found") from ex
        except UserError as ex:
            raise falcon.HTTPConflict(title="Conflict", description=str(ex), code="key_revoked") from ex
        await self.note(req, "key.rotate", user_id, old_key_id=key_id, new_key_id=info["key_id"], grace_s=grace)
        resp.status = falcon.HTTP_201
        resp.media = {"api_key": key, "key": info, "old_key_id": key_id, "old_key_valid_for_s": grace}


class CheckPermissionResource(_Security):
    """POST: may this user (default: you) do this, optionally with this agent?"""

    permissions = {"POST": Permission.SECURITY_READ}

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Body: {permission, user_id?, agent?}."""
        body = await read_json(req, self.settings.max_body_bytes)
        user_id = str(body.get("user_id") or principal_of(req).user_id)
        await self.self_or_admin(req, user_id)
        agent = body.get("agent")
        if agent is not None and agent not in AGENT_TYPES:
            raise bad_request(f"Field 'agent': unknown agent {printable(str(agent))!r}; use one of: "
                              f"{', '.join(sorted(AGENT_TYPES))}.", code="invalid_field")
        try:
            permission = Permission(str(body.get("permission")))
        except ValueError:
            raise bad_request(f"Unknown permission {body.get('permission')!r}; GET /api/v1/security/permissions "
                              "lists them.", code="invalid_field") from None
        try:
            user = await self.users.get_user(user_id)
        except UnknownUserError as ex:
            raise not_found(str(ex), code="user_not_found") from ex
        ok = allowed(user["role"], permission)
        if ok and agent is not None:
            ok = user["agents"] is None or agent in user["agents"]
        resp.media = {"user_id": user_id, "role": user["role"], "permission": permission.value, "agent": agent,
                      "allowed": ok}


class AuthenticateResource(_Security):
    """POST: is this API key valid, and whose is it? (Admins check any key; anyone checks their own.)"""

    permissions = {"POST": Permission.SECURITY_READ}

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Body: {api_key}; never echoes the key."""
        body = await read_json(req, self.settings.max_body_bytes)
        key = body.get("api_key")
        if not isinstance(key, str):
            raise bad_request("Field 'api_key': is required.", code="invalid_field")
        principal = await self.users.authenticate(key)
        caller = principal_of(req)
        if principal is not None and principal.user_id != caller.user_id and \
                not allowed(caller.role, Permission.USERS_ADMIN):
            principal = None  # a user learns nothing about other users' keys
        if principal is None:
            await self.audit.record(caller.user_id, "auth.check", result="failure", ip=client_ip(req),
                                    details={"key_prefix": apikeys.display_prefix(key)
                                             if apikeys.looks_like_key(key) else "malformed"})
            resp.media = {"valid": False}
            return
        resp.media = {"valid": True, "user_id": principal.user_id, "role": principal.role,
                      "key_id": principal.key_id}


class PermissionsResource(_Security):
    """GET: every permission, what it allows, and which roles have it."""

    permissions = {"GET": Permission.SECURITY_READ}

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """The role table."""
        resp.media = {
            "permissions": [{"name": p.value, "description": DESCRIPTIONS[p],
                             "roles": [r.value for r in Role if p in ROLE_PERMISSIONS[r]]} for p in Permission],
            "roles": {r.value: sorted(p.value for p in ROLE_PERMISSIONS[r]) for r in Role},
        }


class _Chain(_Security):
    """Audit routes read the chain with a plain (sync) client in a thread: they are rare admin reads."""

    def __init__(self, users: UserStore, audit: AuditLog, settings: Settings) -> None:
        super().__init__(users, audit, settings)
        self.sync = sync_client(settings.redis_url, socket_timeout=10, connect_timeout=1, decode_responses=True)


class AuditResource(_Chain):
    """GET the audit log, newest first: ?actor=, ?action=, ?since=, ?until= (epoch s), ?cursor=, ?limit=."""

    permissions = {"GET": Permission.AUDIT_READ}

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """A page of audit records."""
        try:
            resp.media = await self._query(req)
        except (chain.AuditQueryError, redis.ResponseError) as ex:  # a malformed cursor, or one Redis refuses
            raise bad_request(f"The cursor is not one this API gave out ({ex}).", code="invalid_cursor") from ex

    async def _query(self, req: falcon.asgi.Request) -> dict[str, Any]:
        return await asyncio.to_thread(
            chain.query, self.sync, actor=req.get_param("actor") or req.get_param("user_id"),
            action=req.get_param("action"), since=params.number(req, "since", low=0, high=EPOCH_MAX),
            until=params.number(req, "until", low=0, high=EPOCH_MAX), cursor=req.get_param("cursor"),
            limit=params.integer(req, "limit", low=1, high=AUDIT_PAGE_MAX, default=50))


class AuditVerifyResource(_Chain):
    """GET: recompute the audit hash chain and report the first broken link."""

    permissions = {"GET": Permission.AUDIT_READ}

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """The verification result."""
        resp.media = await asyncio.to_thread(chain.verify, self.sync)


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
        resp.media = {"users": len(users), "users_by_role": by_role, "keys_active": active, "keys_revoked": revoked,
                      "rate_limit_per_min": self.settings.rate_limit_per_min,
                      "admin_ip_allowlist": list(self.settings.admin_ip_allowlist)}


class SecurityHealthResource(_Security):
    """GET: the security subsystem answers (Redis reachable; settings that matter)."""

    permissions = {"GET": Permission.SECURITY_READ}

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Report."""
        await self.users.client.ping()
        resp.media = {"status": "ok", "key_hashing": "HMAC-SHA256 with the server secret",
                      "rate_limit_per_min": self.settings.rate_limit_per_min,
                      "cors_origins": list(self.settings.cors_origins),
                      "admin_ip_allowlist": bool(self.settings.admin_ip_allowlist)}


