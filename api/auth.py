"""Authentication, authorisation, rate limits and the admin IP allow-list, before any responder runs.

A resource declares `permissions = {"GET": Permission.X, ...}`; `PUBLIC` marks the few open routes.
A method a resource does not declare is refused, so a new route is closed until someone opens it.
Failures and denials are audited (repeated failures from one address as a count, see api/lockout.py). Keys are
found by their keyed hash, so the time a lookup takes does not depend on how much of a guessed key is right.
"""

from __future__ import annotations

import ipaddress
import time
from typing import Any, Callable, NoReturn

import falcon

from api import credentials
from api.address import client_ip
from api.audit import AuditLog
from api.http_errors import ForbiddenError
from api.lockout import Lockout
from api.permissions import PUBLIC, Permission, allowed
from api.request_metrics import ActivityTracker
from api.users import Principal, UserStore
from events.telemetry.metrics import AUTH_ATTEMPTS, PERMISSION_CHECKS, RATE_LIMITED

ADMIN_PERMISSIONS = frozenset(
    {
        Permission.USERS_ADMIN,
        Permission.COSTS_ADMIN,
        Permission.AUDIT_READ,
        Permission.JOBS_READ_ALL,
        Permission.METRICS_WRITE,
    }
)
WINDOW_S = 60


def presented_key(req: falcon.asgi.Request) -> str | None:
    """The API key from `Authorization: Bearer` or `X-API-Key`, if any."""
    header = req.get_header("Authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return req.get_header("X-API-Key") or None


def unauthorized(description: str) -> falcon.HTTPError:
    """A 401 that tells the client how to authenticate."""
    return falcon.HTTPUnauthorized(
        title="Unauthorized", description=description, code="unauthorized", challenges=['Bearer realm="agentic"']
    )


def required_permission(resource: Any, method: str) -> Permission | str | None:
    """What `resource` demands for `method` (HEAD as GET); None when it does not serve the method."""
    table = getattr(resource, "permissions", None) or {}
    return table.get("GET" if method == "HEAD" else method)


class AuthMiddleware:
    """Finds the principal behind each request and checks its permission before the responder runs."""

    def __init__(
        self,
        users: UserStore,
        secret: str,
        audit: AuditLog,
        lockout: Lockout,
        *,
        rate_limit_per_min: int = 0,
        admin_networks: tuple[str, ...] = (),
        clock: Callable[[], float] = time.time,
        activity: ActivityTracker | None = None,
    ) -> None:
        self.users = users
        self.activity = activity
        self.secret = secret
        self.audit = audit
        self.lockout = lockout
        self.limit = rate_limit_per_min
        self.admin_networks = [ipaddress.ip_network(n, strict=False) for n in admin_networks]
        self.clock = clock

    async def process_resource(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, resource: Any, params: dict[str, Any]
    ) -> None:
        """Authenticate, rate-limit and authorise, or raise 401, 429 or 403."""
        req.context.principal = None
        req.context.stream_job = None
        if resource is None or req.method == "OPTIONS":
            return
        permission = required_permission(resource, req.method)
        if permission == PUBLIC:
            return
        if permission is None:
            raise falcon.HTTPMethodNotAllowed(
                sorted(getattr(resource, "permissions", {})),
                title="Method Not Allowed",
                description=f"{req.method} is not allowed here.",
                code="bad_method",
            )
        ip = client_ip(req)
        key = presented_key(req)
        if key is None:
            principal = await self._stream_token(req, resource, params, ip)
        else:
            check = await self.users.check_key(
                key, window_s=WINDOW_S if self.limit else 0, failures=self.lockout.counts(ip)
            )
            if self.lockout.locked(check.failures):
                await self._fail(req, ip, "api_key", {"reason": "address locked out"})
            if check.principal is None:
                prefix = credentials.display_prefix(key) if credentials.looks_like_key(key) else "malformed"
                await self._fail(
                    req, ip, "api_key", {"key_prefix": prefix}, "The API key is invalid, revoked or expired."
                )
            principal = check.principal
            assert principal is not None
            AUTH_ATTEMPTS.labels("api_key", "success").inc()
            self._rate_limit(principal, resp)
        if self.activity is not None:
            self.activity.seen(principal.user_id)
        needed = Permission(permission)
        if not allowed(principal.role, needed):
            await self._deny(req, principal, needed, f"Your role '{principal.role}' lacks the '{needed}' permission.")
        if needed in ADMIN_PERMISSIONS and self.admin_networks and not self._admin_ip_ok(req):
            await self._deny(req, principal, needed, "Admin routes are not reachable from this address.")
        PERMISSION_CHECKS.labels(needed.value, "allowed").inc()
        req.context.principal = principal

    async def _stream_token(
        self, req: falcon.asgi.Request, resource: Any, params: dict[str, Any], ip: str
    ) -> Principal:
        """The principal of the key that made the request's stream token (it reads one job's events only)."""
        token = req.get_param("token")
        job_id = params.get("job_id")
        if not (token and job_id and getattr(resource, "accepts_stream_token", False)):
            await self._fail(
                req,
                ip,
                "none",
                {"reason": "no credentials"},
                "Send an API key as 'Authorization: Bearer sk_live_…' or 'X-API-Key'.",
            )
        assert token is not None and job_id is not None
        holder = credentials.check_stream_token(self.secret, job_id, token, self.clock())
        failures = int(await self.users.client.hget(*self.lockout.counts(ip)) or 0)
        principal = await self.users.key_principal(*holder) if holder and not self.lockout.locked(failures) else None
        if principal is None:
            await self._fail(
                req,
                ip,
                "stream_token",
                {"reason": "bad, expired or revoked stream token"},
                "The stream token is invalid, expired, or its key was revoked; ask for the job again for a new one.",
            )
        assert principal is not None
        AUTH_ATTEMPTS.labels("stream_token", "success").inc()
        req.context.stream_job = job_id
        return principal

    async def _fail(
        self, req: falcon.asgi.Request, ip: str, method: str, details: dict[str, Any], why: str = ""
    ) -> NoReturn:
        """Count a failed authentication from `ip` and raise 401, or 429 once the address is past its limit."""
        AUTH_ATTEMPTS.labels(method, "failure").inc()
        event = self.audit.event(
            "anonymous", "auth.failure", resource=req.path, result="failure", ip=ip, details=details
        )
        failures = await self.lockout.note(ip, event)
        if self.lockout.locked(failures - 1) or not why:
            raise self.lockout.refusal()
        raise unauthorized(why)

    def _rate_limit(self, principal: Principal, resp: falcon.asgi.Response) -> None:
        if not self.limit:
            return
        reset = WINDOW_S - int(self.clock()) % WINDOW_S
        resp.set_header("RateLimit-Limit", str(self.limit))
        resp.set_header("RateLimit-Remaining", str(max(self.limit - principal.window_count, 0)))
        resp.set_header("RateLimit-Reset", str(reset))
        if principal.window_count > self.limit:
            RATE_LIMITED.inc()
            raise falcon.HTTPTooManyRequests(
                title="Too Many Requests",
                code="rate_limited",
                retry_after=reset,
                description=f"This key may make {self.limit} requests a minute; retry in {reset} s.",
                headers={"RateLimit-Limit": str(self.limit), "RateLimit-Remaining": "0", "RateLimit-Reset": str(reset)},
            )

    def _admin_ip_ok(self, req: falcon.asgi.Request) -> bool:
        try:
            address = ipaddress.ip_address(client_ip(req))
        except ValueError:
            return False
        return any(address in net for net in self.admin_networks)

    async def _deny(self, req: falcon.asgi.Request, principal: Principal, needed: Permission, why: str) -> NoReturn:
        PERMISSION_CHECKS.labels(needed.value, "denied").inc()
        await self.audit.record(
            principal.user_id,
            "permission.denied",
            resource=req.path,
            result="denied",
            ip=client_ip(req),
            details={"permission": needed.value, "key_id": principal.key_id},
        )
        raise ForbiddenError(why)


def principal_of(req: falcon.asgi.Request) -> Principal:
    """The authenticated principal (for a stream-token request: the key's, limited to that job's events)."""
    principal: Principal | None = req.context.principal
    assert principal is not None, "principal_of called on a route that is public"
    return principal
