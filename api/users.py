"""Users and their API keys in Redis (async). The `agentic` CLI and the API share this code.

Each key's hash record carries its user's role too, so authenticating a request is one round trip. Making a key
reads the role in the same script that writes the key, and a role change rewrites the user and every key record
in one script that first checks no key appeared meanwhile: no key ever keeps a role its user lost.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any, Callable

from api import credentials
from api.permissions import Role
from events.envelope import text, text_map
from events.errors import DomainError
from events.store import keyspace, user_scripts
from events.store.fields import float_field, json_field
from events.store.scripts import AsyncScripts
from events.store.user_scripts import Updated

USER_ID = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")


class UserError(DomainError):
    """Raised when a user or key operation cannot be done as asked."""

    code = "invalid_field"


class UserExistsError(UserError):
    """Raised when creating a user whose id is taken."""

    status = 409
    code = "user_exists"


class UnknownUserError(UserError):
    """Raised when a user id names nobody."""

    status = 404
    code = "user_not_found"


class UnknownKeyError(UserError):
    """Raised when a user has no key with the id given."""

    status = 404
    code = "key_not_found"


class KeyRevokedError(UserError):
    """Raised when rotating a key that was revoked."""

    status = 409
    code = "key_revoked"


@dataclass(frozen=True)
class Principal:
    """Who a request acts as; `agents` None means every agent is allowed."""

    user_id: str
    role: str
    key_id: str
    agents: tuple[str, ...] | None = None
    window_count: int = 0  # requests made with this key in the current rate-limit window

    def may_use(self, agent: str) -> bool:
        """True when the user's allow list admits `agent`."""
        return self.agents is None or agent in self.agents


def _agents(raw: str | None) -> tuple[str, ...] | None:
    """A stored allow list; empty means every agent. A damaged one allows none: it fails closed."""
    if not raw:
        return None
    found = json_field(raw, None)
    return tuple(str(a) for a in found) if isinstance(found, list) else ()


def check_user_id(user_id: str) -> str:
    """Return `user_id` if well formed, else raise UserError saying what is allowed."""
    if not USER_ID.fullmatch(user_id):
        raise UserError("A user id is 1 to 64 letters, digits, '_', '.', '@' or '-'.")
    return user_id


def check_role(role: str) -> str:
    """Return `role` if it is a known role, else raise UserError listing them."""
    try:
        return Role(role).value
    except ValueError:
        raise UserError(f"Unknown role {role!r}; use one of: {', '.join(r.value for r in Role)}.") from None


@dataclass(frozen=True)
class KeyCheck:
    """What authenticating a key found: its principal (None: unknown, revoked or expired) and how many failed
    authentications the client's address has in the current window (when asked)."""

    principal: Principal | None
    failures: int = 0


KEEP = object()  # an update that leaves a field as it is
UPDATE_ATTEMPTS = 20  # a role change retries this often while keys keep appearing under it


class UserStore:
    """Users and keys; `client` is a redis.asyncio client."""

    def __init__(self, client: Any, secret: str, clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self.secret = secret
        self.clock = clock
        self.scripts = AsyncScripts(client)

    async def create_user(
        self, user_id: str, role: str, metadata: dict[str, Any] | None = None, agents: list[str] | None = None
    ) -> dict[str, Any]:
        """Create a user (`agents`: an allow list, None for all); raises UserExistsError if the id is taken."""
        check_user_id(user_id)
        role = check_role(role)
        record = {
            "user_id": user_id,
            "role": role,
            "created_at": f"{self.clock():.6f}",
            "metadata": json.dumps(metadata or {}),
            "disabled": "0",
            "agents": json.dumps(sorted(agents)) if agents is not None else "",
        }
        if not await self.client.hsetnx(keyspace.user(user_id), "user_id", user_id):
            raise UserExistsError(f"User {user_id!r} already exists.")
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(keyspace.user(user_id), mapping=record)
        pipe.sadd(keyspace.USERS, user_id)
        await pipe.execute()
        return self._user_view(record)

    async def exists(self, user_id: str) -> bool:
        """True when `user_id` names a user."""
        return bool(await self.client.exists(keyspace.user(user_id)))

    async def get_user(self, user_id: str) -> dict[str, Any]:
        """A user's profile; raises UnknownUserError."""
        record = text_map(await self.client.hgetall(keyspace.user(user_id)))
        if not record:
            raise UnknownUserError(f"There is no user {user_id!r}.")
        return self._user_view(record)

    async def list_users(self) -> list[dict[str, Any]]:
        """Every user, sorted by id."""
        ids = sorted(text(u) for u in await self.client.smembers(keyspace.USERS))
        pipe = self.client.pipeline(transaction=False)
        for user_id in ids:
            pipe.hgetall(keyspace.user(user_id))
        return [self._user_view(text_map(r)) for r in await pipe.execute() if r]

    async def create_key(self, user_id: str, *, expires_in_s: int | None = None, name: str = "") -> tuple[str, dict]:
        """A new key for `user_id`: returns the key (shown once) and its public record.

        The key takes its user's role and agents in the same script that writes it.
        """
        key = credentials.new_key()
        hashed = credentials.key_hash(self.secret, key)
        now = self.clock()
        record = {
            "key_id": credentials.key_id(hashed),
            "user_id": user_id,
            "name": name,
            "prefix": credentials.display_prefix(key),
            "created_at": f"{now:.6f}",
            "expires_at": f"{now + expires_in_s:.6f}" if expires_in_s else "",
            "revoked": "0",
        }
        made = await self.scripts.run(
            user_scripts.create_key(user_id=user_id, key_hash=hashed, key_id=record["key_id"], record=record)
        )
        if not made:
            raise UnknownUserError(f"There is no user {user_id!r}.")
        return key, self._key_view(record)

    async def list_keys(self, user_id: str) -> list[dict[str, Any]]:
        """A user's keys, without secrets."""
        hashes = [text(h) for h in (await self.client.hgetall(keyspace.user_keys(user_id))).values()]
        pipe = self.client.pipeline(transaction=False)
        for hashed in hashes:
            pipe.hgetall(keyspace.apikey(hashed))
        records = [text_map(r) for r in await pipe.execute() if r]
        return sorted((self._key_view(r) for r in records), key=lambda r: r["created_at"])

    async def revoke_key(self, user_id: str, key_id: str) -> bool:
        """Revoke one of a user's keys; effective on the very next request. False if no such key."""
        hashed = await self.client.hget(keyspace.user_keys(user_id), key_id)
        if hashed is None:
            return False
        await self.client.hset(
            keyspace.apikey(text(hashed)), mapping={"revoked": "1", "revoked_at": f"{self.clock():.6f}"}
        )
        return True

    async def authenticate(self, key: str) -> Principal | None:
        """The principal a key stands for, or None if it is unknown, revoked or expired."""
        return (await self.check_key(key)).principal

    async def check_key(self, key: str, *, window_s: int = 0, failures: tuple[str, str] | None = None) -> KeyCheck:
        """Authenticate `key` in one round trip.

        With `window_s`, the same round trip counts the request in the key's rate-limit window; with `failures`
        (the window's counts hash and the client's address) it reads how often that address failed lately.
        """
        hashed = credentials.key_hash(self.secret, key) if credentials.looks_like_key(key) else None
        pipe = self.client.pipeline(transaction=False)
        if failures:
            pipe.hget(*failures)
        if hashed:
            pipe.hgetall(keyspace.apikey(hashed))
            if window_s:
                counter = keyspace.rate_limit(credentials.key_id(hashed), int(self.clock() // window_s))
                pipe.incr(counter)
                pipe.expire(counter, window_s * 2)
        replies = iter(await pipe.execute() if failures or hashed else [])
        failed = int(next(replies) or 0) if failures else 0
        record = text_map(next(replies)) if hashed else {}
        principal = self._principal(record, int(next(replies)) if hashed and window_s else 0)
        return KeyCheck(principal, failed)

    async def key_principal(self, user_id: str, key_id: str) -> Principal | None:
        """The principal of one of a user's keys, by its id, if the key is still valid (for stream tokens)."""
        hashed = await self.client.hget(keyspace.user_keys(user_id), key_id)
        if hashed is None:
            return None
        principal = self._principal(text_map(await self.client.hgetall(keyspace.apikey(text(hashed)))))
        return principal if principal is not None and principal.user_id == user_id else None

    def _principal(self, record: dict[str, str], window_count: int = 0) -> Principal | None:
        if not record or record.get("revoked") == "1" or "role" not in record:
            return None
        expires = record.get("expires_at")
        if expires and (float_field(expires) or 0) <= self.clock():  # a damaged expiry fails closed
            return None
        return Principal(
            record["user_id"], record["role"], record["key_id"], _agents(record.get("agents")), window_count
        )

    async def update(
        self, user_id: str, *, role: str | None = None, agents: list[str] | object | None = KEEP
    ) -> dict[str, Any]:
        """Change a user's role and their agent allow list (a list, or None for every agent), at once; every key
        of theirs carries the change from the next request on."""
        fields: dict[str, str] = {}
        if role is not None:
            fields["role"] = check_role(role)
        if agents is not KEEP:
            fields["agents"] = json.dumps(sorted(agents)) if isinstance(agents, list) else ""
        await self._rewrite(user_id, fields)
        return await self.get_user(user_id)

    async def set_role(self, user_id: str, role: str) -> dict[str, Any]:
        """Change a user's role; every key of theirs carries it from the next request on."""
        return await self.update(user_id, role=role)

    async def rotate_key(self, user_id: str, key_id: str, grace_s: int, *, name: str = "") -> tuple[str, dict]:
        """A new key replacing `key_id`, which keeps working for `grace_s` seconds more."""
        hashed = await self.client.hget(keyspace.user_keys(user_id), key_id)
        if hashed is None:
            raise UnknownKeyError(f"User {user_id!r} has no key {key_id!r}.")
        old = text_map(await self.client.hgetall(keyspace.apikey(text(hashed))))
        if old.get("revoked") == "1":
            raise KeyRevokedError(f"Key {key_id!r} is revoked; create a new key instead of rotating it.")
        key, info = await self.create_key(user_id, name=name or old.get("name", ""), expires_in_s=None)
        ends = self.clock() + grace_s
        if not old.get("expires_at") or float(old["expires_at"]) > ends:
            await self.client.hset(
                keyspace.apikey(text(hashed)), mapping={"expires_at": f"{ends:.6f}", "rotated_to": info["key_id"]}
            )
        return key, info

    async def _rewrite(self, user_id: str, fields: dict[str, str]) -> None:
        """Set fields on the user and on every key record of theirs (auth reads them from the key), atomically;
        read the keys again while new ones keep appearing."""
        for _ in range(UPDATE_ATTEMPTS):
            hashes = [text(h) for h in await self.client.hvals(keyspace.user_keys(user_id))]
            outcome = await self.scripts.run(
                user_scripts.update_user(user_id=user_id, key_hashes=hashes, fields=fields)
            )
            if outcome is Updated.MISSING:
                raise UnknownUserError(f"There is no user {user_id!r}.")
            if outcome is Updated.OK:
                return
        raise UserError(f"Keys of {user_id!r} kept changing; the change was not made. Try again.")

    @staticmethod
    def _user_view(record: dict[str, str]) -> dict[str, Any]:
        agents = _agents(record.get("agents"))
        return {
            "user_id": record.get("user_id", ""),
            "role": record.get("role", ""),
            "created_at": float_field(record.get("created_at")) or 0.0,
            "agents": list(agents) if agents is not None else None,
            "metadata": json_field(record.get("metadata"), {}),
            "disabled": record.get("disabled") == "1",
        }

    @staticmethod
    def _key_view(record: dict[str, str]) -> dict[str, Any]:
        return {
            "key_id": record.get("key_id", ""),
            "user_id": record.get("user_id", ""),
            "name": record.get("name", ""),
            "prefix": record.get("prefix", ""),
            "created_at": float_field(record.get("created_at")) or 0.0,
            "expires_at": float_field(record.get("expires_at")),
            "revoked": record.get("revoked") == "1",
            "rotated_to": record.get("rotated_to") or None,
        }
