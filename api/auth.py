"""Authentication and authorisation: every request names its permission through its resource.

A resource declares `permissions = {"GET": Permission.X, ...}`; `PUBLIC` marks the few open routes.
A method a resource does not declare is refused, so a new route is closed until someone opens it.
"""

from __future__ import annotations

from typing import Any

import falcon

from api import keys as apikeys
from api.permissions import PUBLIC, Permission, allowed
from api.users import Principal, UserStore


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
    return falcon.HTTPUnauthorized(title="Unauthorized", description=description, code="unauthorized",
                                   challenges=['Bearer realm="agentic"'])


def required_permission(resource: Any, method: str) -> Permission | str | None:
    """What `resource` demands for `method` (HEAD as GET); None when it does not serve the method."""
    table = getattr(resource, "permissions", None) or {}
    return table.get("GET" if method == "HEAD" else method)


class AuthMiddleware:
    """Finds the principal behind each request and checks its permission before the responder runs."""

    def __init__(self, users: UserStore, secret: str) -> None:
        self.users = users
        self.secret = secret

    async def process_resource(self, req: falcon.asgi.Request, resp: falcon.asgi.Response,
                               resource: Any, params: dict[str, Any]) -> None:
        """Authenticate and authorise, or raise 401/403."""
        req.context.principal = None
        req.context.stream_job = None
        if resource is None or req.method == "OPTIONS":
            return
        permission = required_permission(resource, req.method)
        if permission == PUBLIC:
            return
        if permission is None:
            raise falcon.HTTPMethodNotAllowed(sorted(getattr(resource, "permissions", {})),
                                              title="Method Not Allowed",
                                              description=f"{req.method} is not allowed here.", code="bad_method")
        key = presented_key(req)
        if key is None:
            token = req.get_param("token")
            job_id = params.get("job_id")
            if token and job_id and getattr(resource, "accepts_stream_token", False):
                if apikeys.check_stream_token(self.secret, job_id, token):
                    req.context.stream_job = job_id
                    return
                raise unauthorized("The stream token is invalid or expired; ask for the job again for a new one.")
            raise unauthorized("Send an API key as 'Authorization: Bearer sk_live_…' or 'X-API-Key'.")
        principal = await self.users.authenticate(key)
        if principal is None:
            raise unauthorized("The API key is invalid, revoked or expired.")
        needed = Permission(permission)
        if not allowed(principal.role, needed):
            raise falcon.HTTPForbidden(
                title="Forbidden", code="forbidden",
                description=f"Your role '{principal.role}' lacks the '{needed}' permission.")
        req.context.principal = principal


def principal_of(req: falcon.asgi.Request) -> Principal | None:
    """The authenticated principal, or None for a stream-token request."""
    return req.context.principal
