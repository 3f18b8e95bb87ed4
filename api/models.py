"""Every request body and query string as a pydantic model: the one source of both the check and the OpenAPI schema.

`RequestModels(settings)` holds, per (route template, method), the model of the body and of the query string.
`ModelsMiddleware` checks each request against them before the responder runs and leaves the parsed model in
`req.context.body` / `req.context.query`; a violation is a 400 naming the field and what to send. The limits
come from the same constants and settings the rest of the code uses.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal

import falcon
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    WithJsonSchema,
    model_validator,
)

from api.body import printable, read_json
from api.http_errors import bad_request
from api.params import INTEGER, parse_number
from api.permissions import Permission, Role
from api.users import USER_ID
from events import attachments
from events.catalog import AGENT_TYPES
from events.envelope import STREAM_ID
from events.job_record import STATUSES
from events.money.amounts import usd_to_micros
from events.money.ledger_codec import GROUPS
from events.money.periods import PERIODS
from events.telemetry import metrics
from settings import Settings

SESSION_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
MODEL = re.compile(r"^[A-Za-z0-9_./:@-]{1,128}$")
IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
MONEY_TEXT = r"^[0-9]{1,9}(\.[0-9]{1,6})?$"
MAX_USD = 1_000_000_000
MAX_TOKENS_PER_CALL = 1_000_000_000
MAX_METADATA_BYTES = 4096
MAX_ATTACHMENTS = 8
EPOCH_MAX = 1e11  # seconds: far beyond any real timestamp, and within what Redis stream ids can hold
MAX_PAGE = 100
AUDIT_PAGE_MAX = 500
ROTATION_GRACE_MAX_S = 30 * 86400
MAX_WAIT_S = 60
WINDOWS = {"day": 86400, "week": 7 * 86400, "month": 30 * 86400}
AGENT_NAMES = tuple(sorted(AGENT_TYPES))


def _whole(value: Any) -> Any:
    """1.0 as 1: JSON Schema, and so our OpenAPI document, counts it as an integer."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _query_int(value: Any) -> Any:
    """A query string's whole number: plain ASCII digits only (not 1_0, ١, 1e3)."""
    if isinstance(value, str):
        if not INTEGER.fullmatch(value):
            raise ValueError("must be a whole number")
        return int(value)
    return value


def _query_number(value: Any) -> Any:
    """A query string's number: a finite ASCII decimal (not nan, inf, ١)."""
    if isinstance(value, str):
        try:
            return parse_number(value)
        except ValueError:
            raise ValueError("must be a finite number") from None
    return value


def _query_bool(value: Any) -> Any:
    """A query string's yes or no, as Falcon reads them."""
    if isinstance(value, str):
        words = {
            "true": True,
            "t": True,
            "yes": True,
            "y": True,
            "1": True,
            "on": True,
            "false": False,
            "f": False,
            "no": False,
            "n": False,
            "0": False,
            "off": False,
        }
        if value.lower() not in words:
            raise ValueError("must be true or false")
        return words[value.lower()]
    return value


# Bounds go before a validator in these, or pydantic's JSON Schema loses them.
Tokens = Annotated[int, Strict(), Field(ge=0, le=MAX_TOKENS_PER_CALL), BeforeValidator(_whole)]
Percent = Annotated[int, Strict(), Field(ge=1, le=100), BeforeValidator(_whole)]
Days = Annotated[int, Strict(), Field(ge=1, le=3650), BeforeValidator(_whole)]
PageSize = Annotated[int, Strict(), Field(ge=1, le=MAX_PAGE), BeforeValidator(_query_int)]
AuditPageSize = Annotated[int, Strict(), Field(ge=1, le=AUDIT_PAGE_MAX), BeforeValidator(_query_int)]
GraceSeconds = Annotated[int, Strict(), Field(ge=0, le=ROTATION_GRACE_MAX_S), BeforeValidator(_query_int)]
WaitSeconds = Annotated[float, Field(ge=0, le=MAX_WAIT_S), BeforeValidator(_query_number)]
Epoch = Annotated[float, Field(ge=0, le=EPOCH_MAX), BeforeValidator(_query_number)]
QueryBool = Annotated[bool, Strict(), BeforeValidator(_query_bool)]
UserId = Annotated[str, Field(pattern=USER_ID.pattern)]
SessionId = Annotated[str, Field(pattern=SESSION_ID.pattern)]
Attachment = Annotated[dict[str, Any], WithJsonSchema(attachments.json_schema())]  # checked by JobFields._images
Agent = Annotated[
    Literal[AGENT_NAMES],  # type: ignore[valid-type]
    WithJsonSchema({"type": "string", "enum": list(AGENT_NAMES)}),
]


class Body(BaseModel):
    """A request body: a JSON object with only the fields named here."""

    model_config = ConfigDict(extra="forbid", strict=False)


# ---- jobs -------------------------------------------------------------------------------------------------------


def job_models(settings: Settings) -> tuple[type[Body], type[Body], type[Body]]:
    """(POST /jobs, POST /stream/query, POST /stream/{agent}): a job's fields, with this deployment's limits."""
    QueryText = Annotated[str, Field(min_length=1, max_length=settings.max_query_chars, pattern=r"\S")]
    MaxTokens = Annotated[int, Strict(), Field(ge=1, le=settings.max_tokens_limit), BeforeValidator(_whole)]

    class JobFields(Body):
        query: QueryText
        model: Annotated[str, Field(pattern=MODEL.pattern)] | None = None
        max_tokens: MaxTokens = settings.max_tokens_default
        session_id: SessionId | None = None
        metadata: dict[str, Any] | None = None
        attachments: Annotated[list[Attachment], Field(max_length=MAX_ATTACHMENTS)] | None = None
        cache: Annotated[bool, Strict()] = Field(
            True,
            description="false: never answered from the response cache, never stored in it, never shares the "
            "run of an identical job in flight.",
        )

        @model_validator(mode="after")
        def _small_metadata(self) -> JobFields:
            if self.metadata and len(json.dumps(self.metadata)) > MAX_METADATA_BYTES:
                raise ValueError(f"metadata: must be at most {MAX_METADATA_BYTES} bytes as JSON")
            return self

        @model_validator(mode="after")
        def _images(self) -> JobFields:
            try:
                attachments.parse_all(self.attachments or [], settings.max_upload_bytes)
            except attachments.AttachmentError as ex:
                raise ValueError(f"attachments: {ex}") from None
            return self

    class JobSubmit(JobFields):
        """POST /api/v1/jobs: the agent and the job."""

        agent_type: Agent

    class StreamQuery(JobFields):
        """POST /api/v1/stream/query, the seed's general route: the job, and the agent (`query` when absent)."""

        agent_type: Agent | None = None

    class StreamSubmit(JobFields):
        """POST /api/v1/stream/{agent}: the job; the path names the agent."""

    return JobSubmit, StreamQuery, StreamSubmit


# ---- costs ------------------------------------------------------------------------------------------------------


def _usd(value: Any) -> Any:
    """Dollars as a number (25, 25.5) or decimal text ("25.50"), to integer micro-dollars."""
    if isinstance(value, bool):
        raise ValueError(f'must be a number of US dollars from 0 to {MAX_USD:,}, e.g. 25 or "25.50"')
    if value is None or not isinstance(value, (int, float, str)):
        return value
    if isinstance(value, str) and not re.fullmatch(MONEY_TEXT, value):
        raise ValueError(f'must be a number of US dollars from 0 to {MAX_USD:,}, e.g. 25 or "25.50"')
    try:
        micros = usd_to_micros(Decimal(str(value)))
    except (InvalidOperation, ValueError) as ex:
        raise ValueError(f'must be a number of US dollars from 0 to {MAX_USD:,}, e.g. 25 or "25.50"') from ex
    if micros > MAX_USD * 1_000_000:
        raise ValueError(f"must be at most {MAX_USD:,} US dollars")
    return micros


Usd = Annotated[
    int,
    BeforeValidator(_usd),
    Strict(),
    WithJsonSchema(
        {"anyOf": [{"type": "number", "minimum": 0, "maximum": MAX_USD}, {"type": "string", "pattern": MONEY_TEXT}]}
    ),
]


class BudgetSet(Body):
    """POST /api/v1/costs/budget: set (or with limit_usd null, remove) one budget of a user."""

    # What _named_scope checks, said in the schema too.
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "allOf": [
                {
                    "if": {"properties": {"scope": {"const": "session"}}, "required": ["scope"]},
                    "then": {"required": ["session_id"], "properties": {"session_id": {"type": "string"}}},
                },
                {
                    "if": {"properties": {"scope": {"const": "agent"}}, "required": ["scope"]},
                    "then": {"required": ["agent"], "properties": {"agent": {"type": "string"}}},
                },
            ]
        },
    )

    user_id: UserId
    scope: Literal["user", "session", "agent"] = "user"
    session_id: SessionId | None = None
    agent: Agent | None = None
    limit_usd: Usd | None
    period: Literal[PERIODS] = "monthly"  # type: ignore[valid-type]
    alert_pct: Percent | None = None

    @model_validator(mode="after")
    def _named_scope(self) -> BudgetSet:
        if self.scope == "session" and not self.session_id:
            raise ValueError("session_id: is required for a session budget")
        if self.scope == "agent" and not self.agent:
            raise ValueError("agent: is required for an agent budget")
        return self


class UsageTrack(Body):
    """POST /api/v1/costs/track: usage that happened outside a job."""

    user_id: UserId
    model: Annotated[str, Field(min_length=1, max_length=128)]
    input_tokens: Tokens
    output_tokens: Tokens
    cached_input_tokens: Tokens = 0
    session_id: Annotated[str, Field(pattern=rf"^$|{SESSION_ID.pattern}")] = ""
    agent: Literal[("", *AGENT_NAMES)] = ""  # type: ignore[valid-type]

    @model_validator(mode="after")
    def _cached_within_input(self) -> UsageTrack:
        if self.cached_input_tokens > self.input_tokens:
            raise ValueError("cached_input_tokens: cached tokens are input tokens; send at most input_tokens")
        return self


# ---- security ---------------------------------------------------------------------------------------------------


class UserCreate(Body):
    """POST /api/v1/security/users: a new user."""

    user_id: UserId
    role: Role = Role.USER
    metadata: dict[str, Any] | None = None
    agents: list[Agent] | None = None


class RoleChange(Body):
    """PUT /api/v1/security/users/{user_id}/role: a new role, and optionally a new agent allow list."""

    role: Role
    agents: list[Agent] | None = None


class KeyCreate(Body):
    """POST /api/v1/security/users/{user_id}/api-key: a new key (the body is optional)."""

    name: Annotated[str, Field(max_length=64)] = ""
    expires_in_days: Days | None = None


class PermissionCheck(Body):
    """POST /api/v1/security/check-permission: may this user (default: you) do this, with this agent?"""

    permission: Permission
    user_id: UserId | None = None
    agent: Agent | None = None


class KeyCheck(Body):
    """POST /api/v1/security/authenticate: whose is this key?"""

    api_key: str


# ---- monitoring -------------------------------------------------------------------------------------------------


class MetricRecord(Body):
    """POST /api/v1/monitoring/record: add to a custom counter, set a gauge or observe a histogram."""

    name: Annotated[str, Field(pattern=metrics.NAME.pattern)]
    kind: Literal[metrics.KINDS] = "counter"  # type: ignore[valid-type]
    value: Annotated[float, Strict(), Field(ge=-1e300, le=1e300, allow_inf_nan=False)] = 1.0
    labels: Annotated[
        dict[
            Annotated[str, Field(pattern=metrics.LABEL.pattern)],
            Annotated[str, Field(max_length=metrics.MAX_LABEL_VALUE)],
        ],
        Field(max_length=metrics.MAX_LABELS),
        WithJsonSchema(
            {
                "type": "object",
                "maxProperties": metrics.MAX_LABELS,
                "propertyNames": {"pattern": metrics.LABEL.pattern},
                "additionalProperties": {"type": "string", "maxLength": metrics.MAX_LABEL_VALUE},
            }
        ),
    ] = {}


# ---- query strings ----------------------------------------------------------------------------------------------


class Query(BaseModel):
    """A query string: other parameters are ignored (cache busters are common); these are checked."""

    model_config = ConfigDict(extra="ignore")


class JobsQuery(Query):
    """GET /api/v1/jobs."""

    status: Literal[STATUSES] | None = Field(None, description="Only jobs in this state.")  # type: ignore[valid-type]
    limit: PageSize = Field(20, description="Page size.")
    cursor: Annotated[str, Field(pattern=r"^[0-9]{1,15}(\.[0-9]{1,20})?:j_[0-9a-f]{32}$")] | None = Field(
        None, description="next_cursor of the previous page."
    )
    all: QueryBool = Field(True, description="Admins: false for only your own jobs.")


class DocumentsQuery(Query):
    """GET /api/v1/documents."""

    limit: PageSize = Field(50, description="How many documents, newest first.")
    all: QueryBool = Field(False, description="Admins: every user's documents.")
    user_id: UserId | None = Field(None, description="Admins: this user's documents.")


class JobQuery(Query):
    """GET /api/v1/jobs/{job_id}: long-poll up to `wait` seconds."""

    wait: WaitSeconds = Field(0.0, description="Long-poll up to this many seconds for the job to end.")


class EventsQuery(Query):
    """GET /api/v1/jobs/{job_id}/events."""

    last_event_id: Annotated[str, Field(pattern=STREAM_ID.pattern)] | None = Field(
        None, description="Resume after this event id (as the Last-Event-ID header)."
    )
    token: Annotated[str, Field(max_length=200)] | None = Field(
        None, description="The job-scoped token from stream_url (for EventSource, which cannot send headers)."
    )


class CostsQuery(Query):
    """Whose figures (admins: anyone's; default yours)."""

    user_id: UserId | None = Field(None, description="Admins: whose figures (default: yours).")


class StatsQuery(CostsQuery):
    """GET /api/v1/costs/stats."""

    period: Literal[(*WINDOWS, "all")] = Field("week", description="The window.")  # type: ignore[valid-type]
    group_by: Literal[tuple(GROUPS)] | None = Field(None, description="user is for admins.")  # type: ignore[valid-type]
    all: QueryBool = Field(False, description="Admins: everyone's figures.")


class AuditQuery(Query):
    """GET /api/v1/security/audit."""

    actor: Annotated[str, Field(max_length=200)] | None = Field(None, description="Only this actor's records.")
    user_id: Annotated[str, Field(max_length=200)] | None = Field(None, description="The same as actor.")
    action: Annotated[str, Field(max_length=200)] | None = Field(
        None, description="Only this action (e.g. auth.failure)."
    )
    since: Epoch | None = Field(None, description="From this time (epoch seconds).")
    until: Epoch | None = Field(None, description="Up to this time (epoch seconds).")
    cursor: Annotated[str, Field(pattern=STREAM_ID.pattern)] | None = Field(
        None, description="next_cursor of the previous page."
    )
    limit: AuditPageSize = Field(50, description="Page size.")


class RotateQuery(Query):
    """POST /api/v1/security/users/{user_id}/api-keys/{key_id}/rotate."""

    grace_s: GraceSeconds | None = Field(
        None, description="How long the old key keeps working (default KEY_ROTATION_GRACE_S)."
    )


class RequestModels:
    """The body and query-string model of every route that has one, by (route template, method)."""

    def __init__(self, settings: Settings) -> None:
        job, stream_query, stream = job_models(settings)
        self.bodies: dict[tuple[str, str], type[Body]] = {
            ("/api/v1/jobs", "POST"): job,
            ("/api/v1/stream/query", "POST"): stream_query,
            ("/api/v1/stream/{agent}", "POST"): stream,
            ("/api/v1/costs/budget", "POST"): BudgetSet,
            ("/api/v1/costs/track", "POST"): UsageTrack,
            ("/api/v1/security/users", "POST"): UserCreate,
            ("/api/v1/security/users/{user_id}/role", "PUT"): RoleChange,
            ("/api/v1/security/users/{user_id}/api-key", "POST"): KeyCreate,
            ("/api/v1/security/users/{user_id}/api-keys", "POST"): KeyCreate,
            ("/api/v1/security/check-permission", "POST"): PermissionCheck,
            ("/api/v1/security/authenticate", "POST"): KeyCheck,
            ("/api/v1/monitoring/record", "POST"): MetricRecord,
        }
        self.optional_bodies = {
            ("/api/v1/security/users/{user_id}/api-key", "POST"),
            ("/api/v1/security/users/{user_id}/api-keys", "POST"),
        }
        self.queries: dict[tuple[str, str], type[Query]] = {
            ("/api/v1/jobs", "GET"): JobsQuery,
            ("/api/v1/jobs/{job_id}", "GET"): JobQuery,
            ("/api/v1/documents", "GET"): DocumentsQuery,
            ("/api/v1/jobs/{job_id}/events", "GET"): EventsQuery,
            ("/api/v1/costs/stats", "GET"): StatsQuery,
            ("/api/v1/costs/budget", "GET"): CostsQuery,
            ("/api/v1/costs/forecast", "GET"): CostsQuery,
            ("/api/v1/costs/recommendations", "GET"): CostsQuery,
            ("/api/v1/security/audit", "GET"): AuditQuery,
            ("/api/v1/security/users/{user_id}/api-keys/{key_id}/rotate", "POST"): RotateQuery,
        }


# ---- checking ---------------------------------------------------------------------------------------------------


def _bounds(model: type[BaseModel], name: str) -> tuple[Any, Any]:
    """The lower and upper bound a field declares (None where it has none)."""
    info = model.model_fields.get(name)
    low = high = None
    for rule in info.metadata if info else []:
        low = getattr(rule, "ge", low)
        high = getattr(rule, "le", high)
    return low, high


def explain(error: ValidationError, model: type[BaseModel]) -> str:
    """A model's first violation as a sentence naming the field and what to send."""
    known = list(model.model_fields)
    first = error.errors(include_url=False)[0]
    kind, ctx = first["type"], first.get("ctx") or {}
    loc = [
        str(part)
        for part in first["loc"]
        if not str(part).startswith(("function-", "literal", "list[", "dict[", "[key]"))
    ]
    field = printable("/".join(loc)) or "(body)"
    if kind == "missing":
        return f"Field '{field}': is required."
    if kind == "extra_forbidden":
        return f"Field '{field}': is not a known field; send only {', '.join(sorted(known))}."
    if kind == "value_error":
        message = str(ctx.get("error", first["msg"]))
        name, sep, rest = message.partition(": ")
        return f"Field '{name}': {rest}." if sep and name.isidentifier() else f"Field '{field}': {message}."
    if kind == "literal_error":
        return f"Field '{field}': {printable(repr(first['input']))} is not allowed; use one of: {ctx.get('expected')}."
    if kind in ("string_type", "int_type", "float_type", "dict_type", "list_type", "bool_type", "int_from_float"):
        want = {
            "string_type": "a string",
            "int_type": "an integer",
            "float_type": "a number",
            "dict_type": "a JSON object",
            "list_type": "a list",
            "bool_type": "true or false",
            "int_from_float": "an integer",
        }[kind]
        return f"Field '{field}': must be {want}, not {type(first['input']).__name__}."
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        low, high = _bounds(model, loc[0] if loc else "")
        if low is not None and high is not None:
            return f"Field '{field}': must be between {low:g} and {high:g}."
        return f"Field '{field}': {first['msg'].lower()}."
    if kind == "string_too_long":
        return f"Field '{field}': must be at most {ctx.get('max_length')} characters."
    if kind == "string_too_short" or (kind == "string_pattern_mismatch" and ctx.get("pattern") == r"\S"):
        return f"Field '{field}': must not be empty."
    if kind == "string_pattern_mismatch":
        return f"Field '{field}': has characters that are not allowed (pattern {ctx.get('pattern')})."
    if kind == "too_long":
        return f"Field '{field}': must hold at most {ctx.get('max_length')} items."
    return f"Field '{field}': {first['msg']}."


class ModelsMiddleware:
    """Checks each request's body and query string against its route's models before the responder runs."""

    def __init__(self, models: RequestModels, max_body_bytes: int) -> None:
        self.models = models
        self.max_body_bytes = max_body_bytes

    async def process_resource(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, resource: Any, params: dict[str, Any]
    ) -> None:
        """Leave the parsed models in req.context.body and req.context.query; 400 naming the field otherwise."""
        if resource is None:
            return
        route = (req.uri_template or "", req.method)
        query = self.models.queries.get(route)
        if query is not None:
            values = {k: v for k, v in req.params.items() if v != ""}  # ?name= (blank) means not given
            repeated = sorted(k for k, v in values.items() if isinstance(v, list) and k in query.model_fields)
            if repeated:
                raise bad_request(f"Query parameter '{repeated[0]}': give it once.", code="invalid_field")
            try:
                req.context.query = query.model_validate(values)
            except ValidationError as ex:
                raise bad_request(
                    explain(ex, query).replace("Field '", "Query parameter '", 1), code="invalid_field"
                ) from None
        body = self.models.bodies.get(route)
        if body is None:
            return
        raw = (
            {}
            if route in self.models.optional_bodies and not req.content_length
            else await read_json(req, self.max_body_bytes)
        )
        try:
            req.context.body = body.model_validate(raw)
        except ValidationError as ex:
            raise bad_request(explain(ex, body), code="invalid_field") from None


def check_idempotency_key(value: str) -> str:
    """Return the key if it is 1 to 255 visible ASCII characters, else 400."""
    if not IDEMPOTENCY_KEY.fullmatch(value):
        raise bad_request("Field 'Idempotency-Key': must be 1 to 255 visible ASCII characters.", code="invalid_field")
    return value
