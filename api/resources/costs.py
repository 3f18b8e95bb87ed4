"""Routes of /api/v1/costs: stats, usage, budget, forecast, recommendations, models, track, health."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

import falcon

from api.address import client_ip
from api.audit import AuditLog
from api.auth import principal_of
from api.body import read_json
from api.costs import GROUPS, WINDOWS, CostService
from api.errors import bad_request, not_found
from api.permissions import Permission, allowed
from api.schemas import MAX_TOKENS_PER_CALL, MAX_USD
from api.users import USER_ID, UserStore
from api.validation import SESSION_ID, whole
from events.budgets import BudgetError, scope_name
from events.catalog import AGENT_TYPES
from events.money import usd_to_micros
from events.prices import UnknownModelError


async def subject(req: falcon.asgi.Request, audit: AuditLog, asked: str | None = None) -> str:
    """Whose costs a request is about: the caller's own, or (admins only) `asked` / ?user_id=.

    Asking for another user's figures without the right is audited as `access.denied` and answered 404.
    """
    principal = principal_of(req)
    wanted = asked or req.get_param("user_id") or principal.user_id
    if not USER_ID.fullmatch(wanted):
        raise bad_request("user_id must be 1 to 64 letters, digits, '_', '.', '@' or '-'.", code="invalid_field")
    if wanted != principal.user_id and not allowed(principal.role, Permission.COSTS_ADMIN):
        await audit.record(principal.user_id, "access.denied", resource=f"costs/{wanted}", result="denied",
                           ip=client_ip(req), details={"path": req.path, "method": req.method})
        raise not_found(f"There is no user {wanted!r} whose costs you can see.", code="user_not_found")
    return wanted


def _usd(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise bad_request(f"Field '{name}': must be a number of US dollars, e.g. 25 or \"25.50\".",
                          code="invalid_field")
    try:
        micros = usd_to_micros(Decimal(str(value)))
        if micros > MAX_USD * 1_000_000:
            raise ValueError("too large")
        return micros
    except (InvalidOperation, ValueError) as ex:
        raise bad_request(f"Field '{name}': {value!r} is not an amount of dollars from 0 to {MAX_USD:,}.",
                          code="invalid_field") from ex


def _tokens(body: dict[str, Any], name: str, required: bool = True) -> int:
    value = whole(body.get(name, None if required else 0))
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TOKENS_PER_CALL:
        raise bad_request(f"Field '{name}': must be an integer from 0 to {MAX_TOKENS_PER_CALL:,}.",
                          code="invalid_field")
    return value


class _Costs:
    def __init__(self, costs: CostService, users: UserStore, max_body_bytes: int, audit: AuditLog) -> None:
        self.costs = costs
        self.users = users
        self.max_body_bytes = max_body_bytes
        self.audit = audit

    async def existing_user(self, value: Any, name: str = "user_id") -> str:
        """`value` if it names an existing user; 400 if it is not a user id, 404 if nobody has it."""
        if not isinstance(value, str) or not USER_ID.fullmatch(value):
            raise bad_request(f"Field '{name}': name the user, 1 to 64 letters, digits, '_', '.', '@' or '-'.",
                              code="invalid_field")
        if not await self.users.exists(value):
            raise not_found(f"There is no user {value!r}; create the user first.", code="user_not_found")
        return value


class StatsResource(_Costs):
    """GET /costs/stats?period=day|week|month|all&group_by=model|agent|session|user[&user_id=|all=true]."""

    permissions = {"GET": Permission.COSTS_READ}

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Spend and tokens over a period."""
        period = req.get_param("period", default="week")
        if period not in (*WINDOWS, "all"):
            raise bad_request(f"Unknown period {period!r}; use day, week, month or all.", code="invalid_field")
        group_by = req.get_param("group_by")
        if group_by is not None and group_by not in GROUPS:
            raise bad_request(f"Unknown group_by {group_by!r}; use one of: {', '.join(GROUPS)}.",
                              code="invalid_field")
        principal = principal_of(req)
        everyone = req.get_param_as_bool("all", default=False)
        if (everyone or group_by == "user") and not allowed(principal.role, Permission.COSTS_ADMIN):
            raise falcon.HTTPForbidden(title="Forbidden", code="forbidden",
                                       description="Only admins see every user's costs (all=true, group_by=user).")
        asked = await subject(req, self.audit)  # checks ?user_id= even when all=true makes it moot
        owner = None if everyone or group_by == "user" else asked
        resp.media = await self.costs.stats(owner, period, group_by)


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
        body = await read_json(req, self.max_body_bytes)
        kind = body.get("scope", "user")
        name = body.get("session_id") if kind == "session" else body.get("agent") if kind == "agent" else ""
        if kind == "session" and not (isinstance(name, str) and SESSION_ID.fullmatch(name)):
            raise bad_request("Field 'session_id': must be 1 to 128 letters, digits or ._:- characters, as a job's "
                              "session_id.", code="invalid_field")
        if kind == "agent" and name not in AGENT_TYPES:
            raise bad_request(f"Field 'agent': unknown agent {name!r}; use one of: {', '.join(sorted(AGENT_TYPES))}.",
                              code="invalid_field")
        user_id = await self.existing_user(body.get("user_id"))
        alert_pct = whole(body.get("alert_pct"))
        if alert_pct is not None and (isinstance(alert_pct, bool) or not isinstance(alert_pct, int)):
            raise bad_request("Field 'alert_pct': must be an integer from 1 to 100.", code="invalid_field")
        limit = body.get("limit_usd", ...)
        if limit is ...:
            raise bad_request("Field 'limit_usd': is required (null removes the budget).", code="invalid_field")
        try:
            scope = scope_name(str(kind), str(name or ""))
            state = await self.costs.set_budget(user_id, scope, None if limit is None else _usd(limit, "limit_usd"),
                                                str(body.get("period", "monthly")), alert_pct)
        except BudgetError as ex:
            raise bad_request(str(ex), code="invalid_field") from ex
        await self.audit.record(principal_of(req).user_id, "budget.set", resource=f"{user_id}/{scope}",
                                ip=client_ip(req), details={"limit_usd": state["limit_usd"] if state else None,
                                                            "period": state["period"] if state else None})
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
        resp.media = {"genai_prices": self.costs.prices.version, "unit": "USD per million tokens",
                      "models": self.costs.prices.listing()}


class TrackResource(_Costs):
    """POST /costs/track (admins): record usage that happened outside a job."""

    permissions = {"POST": Permission.COSTS_ADMIN}

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Body: {user_id, model, input_tokens, output_tokens, cached_input_tokens?, session_id?, agent?}."""
        body = await read_json(req, self.max_body_bytes)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise bad_request("Field 'model': is required.", code="invalid_field")
        tin, tout = _tokens(body, "input_tokens"), _tokens(body, "output_tokens")
        cached = min(_tokens(body, "cached_input_tokens", required=False), tin)  # cached tokens are input tokens
        session_id, agent = body.get("session_id") or "", body.get("agent") or ""
        if not isinstance(session_id, str) or (session_id and not SESSION_ID.fullmatch(session_id)):
            raise bad_request("Field 'session_id': must be 1 to 128 letters, digits or ._:- characters.",
                              code="invalid_field")
        if agent and agent not in AGENT_TYPES:
            raise bad_request(f"Field 'agent': unknown agent {agent!r}; use one of: {', '.join(sorted(AGENT_TYPES))}.",
                              code="invalid_field")
        user_id = await self.existing_user(body.get("user_id"))
        try:
            tracked = await self.costs.track(user_id, model, tin, tout, cached_input_tokens=cached,
                                             session_id=session_id, agent=agent)
        except UnknownModelError as ex:
            raise bad_request(str(ex), code="unpriced_model") from ex
        await self.audit.record(principal_of(req).user_id, "costs.track", resource=user_id, ip=client_ip(req),
                                details={"model": model, "input_tokens": tin, "output_tokens": tout,
                                         "cost_micros": tracked["cost_micros"]})
        resp.media = tracked
        resp.status = falcon.HTTP_201


class CostsHealthResource(_Costs):
    """GET /costs/health: prices loaded, ledger lag, holds outstanding."""

    permissions = {"GET": Permission.COSTS_READ}

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Report."""
        resp.media = await self.costs.health()
