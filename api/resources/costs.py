"""Routes of /api/v1/costs: stats, usage, budget, forecast, recommendations, models, track, health."""

from __future__ import annotations

import falcon

from api.address import client_ip
from api.audit import AuditLog
from api.auth import principal_of
from api.cost_service import CostService
from api.http_errors import ForbiddenError, bad_request, not_found
from api.models import BudgetSet, UsageTrack
from api.permissions import Permission, allowed
from api.users import USER_ID, UserStore
from events.money.budgets import scope_name


async def subject(req: falcon.asgi.Request, audit: AuditLog, asked: str | None = None) -> str:
    """Whose costs a request is about: the caller's own, or (admins only) `asked` / ?user_id=.

    Asking for another user's figures without the right is audited as `access.denied` and answered 404.
    """
    principal = principal_of(req)
    query = getattr(req.context, "query", None)
    wanted = asked or (query.user_id if query is not None else None) or principal.user_id
    if not USER_ID.fullmatch(wanted):
        raise bad_request("user_id must be 1 to 64 letters, digits, '_', '.', '@' or '-'.", code="invalid_field")
    if wanted != principal.user_id and not allowed(principal.role, Permission.COSTS_ADMIN):
        await audit.access_denied(req, f"costs/{wanted}")
        raise not_found(f"There is no user {wanted!r} whose costs you can see.", code="user_not_found")
    return wanted


class _Costs:
    def __init__(self, costs: CostService, users: UserStore, max_body_bytes: int, audit: AuditLog) -> None:
        self.costs = costs
        self.users = users
        self.max_body_bytes = max_body_bytes
        self.audit = audit

    async def existing_user(self, user_id: str) -> str:
        """`user_id` if it names an existing user; 404 if nobody has it."""
        if not await self.users.exists(user_id):
            raise not_found(f"There is no user {user_id!r}; create the user first.", code="user_not_found")
        return user_id


class StatsResource(_Costs):
    """GET /costs/stats?period=day|week|month|all&group_by=model|agent|session|user[&user_id=|all=true]."""

    permissions = {"GET": Permission.COSTS_READ}

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Spend and tokens over a period."""
        principal, query = principal_of(req), req.context.query
        if (query.all or query.group_by == "user") and not allowed(principal.role, Permission.COSTS_ADMIN):
            raise ForbiddenError("Only admins see every user's costs (all=true, group_by=user).")
        asked = await subject(req, self.audit)  # checks ?user_id= even when all=true makes it moot
        owner = None if query.all or query.group_by == "user" else asked
        resp.media = await self.costs.stats(owner, query.period, query.group_by)


class UsageResource(_Costs):
    """GET /costs/usage/{user_id}: one user's spend in detail."""

    permissions = {"GET": Permission.COSTS_READ}

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, user_id: str) -> None:
        """All-time totals, the last 30 days by model and agent, day by day, and budgets."""
        resp.media = await self.costs.usage(await subject(req, self.audit, user_id))


class BudgetResource(_Costs):
    """POST sets a budget (admins); GET shows the budgets of the caller (admins: ?user_id=)."""

    permissions = {"GET": Permission.COSTS_READ, "POST": Permission.COSTS_ADMIN}

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Every budget with spent, held and remaining in its current period."""
        user_id = await subject(req, self.audit)
        resp.media = {"user_id": user_id, "budgets": await self.costs.budgets(user_id)}

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Body: {user_id, scope: user|session|agent, session_id?, agent?, limit_usd (null removes), period,
        alert_pct?}."""
        body: BudgetSet = req.context.body
        user_id = await self.existing_user(body.user_id)
        scope = scope_name(body.scope, body.session_id or body.agent or "")
        state = await self.costs.set_budget(user_id, scope, body.limit_usd, body.period, body.alert_pct)
        await self.audit.record(
            principal_of(req).user_id,
            "budget.set",
            resource=f"{user_id}/{scope}",
            ip=client_ip(req),
            details={"limit_usd": state["limit_usd"] if state else None, "period": state["period"] if state else None},
        )
        resp.media = {"user_id": user_id, "scope": scope, "budget": state, "removed": state is None}


class ForecastResource(_Costs):
    """GET /costs/forecast: projected spend to the end of the budget period, and when the budget runs out."""

    permissions = {"GET": Permission.COSTS_READ}

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """The forecast, with its method and interval."""
        resp.media = await self.costs.forecast(await subject(req, self.audit))


class RecommendationsResource(_Costs):
    """GET /costs/recommendations: savings found in the caller's real usage."""

    permissions = {"GET": Permission.COSTS_READ}

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Model swaps and cacheable repeats, each with its figures."""
        resp.media = await self.costs.recommendations(await subject(req, self.audit))


class ModelsResource(_Costs):
    """GET /costs/models: the prices in force and where each comes from."""

    permissions = {"GET": Permission.COSTS_READ}

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Every priced model we list."""
        resp.media = {
            "genai_prices": self.costs.prices.version,
            "unit": "USD per million tokens",
            "models": self.costs.prices.listing(),
        }


class TrackResource(_Costs):
    """POST /costs/track (admins): record usage that happened outside a job."""

    permissions = {"POST": Permission.COSTS_ADMIN}

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Body: {user_id, model, input_tokens, output_tokens, cached_input_tokens?, session_id?, agent?}."""
        body: UsageTrack = req.context.body
        user_id = await self.existing_user(body.user_id)
        tracked = await self.costs.track(
            user_id,
            body.model,
            body.input_tokens,
            body.output_tokens,
            cached_input_tokens=body.cached_input_tokens,
            session_id=body.session_id,
            agent=body.agent,
        )
        await self.audit.record(
            principal_of(req).user_id,
            "costs.track",
            resource=user_id,
            ip=client_ip(req),
            details={
                "model": body.model,
                "input_tokens": body.input_tokens,
                "output_tokens": body.output_tokens,
                "cost_micros": tracked["cost_micros"],
            },
        )
        resp.media = tracked
        resp.status = falcon.HTTP_201


class CostsHealthResource(_Costs):
    """GET /costs/health: prices loaded, ledger lag, holds outstanding."""

    permissions = {"GET": Permission.COSTS_READ}

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Report."""
        resp.media = await self.costs.health()
