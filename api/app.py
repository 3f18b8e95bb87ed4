"""`create_app()`: the one place that wires the API together."""

from __future__ import annotations

import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import falcon.asgi

from api import http_errors
from api.address import ClientAddressMiddleware, networks
from api.audit import AuditLog
from api.auth import AuthMiddleware
from api.body import TextMiddleware
from api.cost_service import CostService
from api.drain import PROCESS, Drain
from api.job_service import JobService, new_job_id
from api.lockout import Lockout
from api.models import ModelsMiddleware, RequestModels
from api.relay import Relay
from api.request_metrics import ActivityTracker, MetricsMiddleware
from api.resources.api_docs import REDOC, SWAGGER, AssetResource, OpenAPIResource, PageResource
from api.resources.attachments import AttachmentResource, AttachmentsResource
from api.resources.costs import (
    BudgetResource,
    CostsHealthResource,
    ForecastResource,
    ModelsResource,
    RecommendationsResource,
    StatsResource,
    TrackResource,
    UsageResource,
)
from api.resources.documents import DocumentResource, DocumentsResource
from api.resources.health import HealthResource, LiveResource, ReadyResource
from api.resources.job_events import EventsResource
from api.resources.jobs import CancelResource, JobResource, JobsResource
from api.resources.monitoring import (
    InfoResource,
    MetricsResource,
    MonitoringHealthResource,
    RecordResource,
    SummaryResource,
)
from api.resources.security import (
    AuditResource,
    AuditVerifyResource,
    AuthenticateResource,
    CheckPermissionResource,
    KeyResource,
    KeysResource,
    PermissionsResource,
    RoleResource,
    SecurityHealthResource,
    SecurityStatsResource,
    UserResource,
    UsersResource,
)
from api.resources.stream import DemoResource, StreamHealthResource, StreamSubmitResource
from api.trace_middleware import TracingMiddleware
from api.users import UserStore
from events.documents.document_store import DocumentStore
from events.money.prices import PriceBook
from events.store.clients import async_client
from events.telemetry import logs, tracing
from settings import Settings

RELAY_READ_TIMEOUT_S = 10  # the relay's reads do not block; the notices' reads set their own


class Lifespan:
    """Closes the relay and Redis pools when the server stops."""

    def __init__(self, relay: Relay, *clients: Any) -> None:
        self.relay = relay
        self.clients = clients

    async def process_shutdown(self, scope: dict[str, Any], event: dict[str, Any]) -> None:
        """Stop the relay reader, then close the connection pools."""
        await self.relay.close()
        for client in self.clients:
            await client.aclose()


def redis_clients(settings: Settings) -> tuple[Any, Any]:
    """The request client (short timeouts: fail fast to 503; a burst queues for a connection) and the relay's
    reader (outlives its block)."""
    client = async_client(
        settings.redis,
        socket_timeout=2,
        max_connections=settings.redis_max_connections,
        pool_timeout=settings.redis_pool_timeout_s,
    )
    reader = async_client(
        settings.redis,
        socket_timeout=RELAY_READ_TIMEOUT_S,
        max_connections=4,
        pool_timeout=settings.redis_pool_timeout_s,
    )
    return client, reader


def create_app(
    settings: Settings | None = None,
    *,
    redis: Any = None,
    reader: Any = None,
    clock: Callable[[], float] = time.time,
    new_id: Callable[[], str] = new_job_id,
    drain: Drain = PROCESS,
) -> falcon.asgi.App:
    """Build the ASGI app; tests pass their own settings, Redis clients, clock, id maker and drain."""
    settings = settings or Settings.from_env()
    logs.setup(settings.log_level)
    if redis is None or reader is None:
        redis, reader = redis_clients(settings)
    instance = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    relay = Relay(reader, buffer=settings.sse_buffer, heartbeat_s=settings.sse_heartbeat_s)
    drain.on_begin(relay.hand_over)
    users = UserStore(redis, settings.secret_key, clock)
    prices = PriceBook(Path(settings.prices_file))
    service = JobService(redis, relay, settings, prices, clock=clock, new_id=new_id)
    costs = CostService(redis, prices, hold_ttl_s=settings.hold_ttl_s, alert_pct=settings.budget_alert_pct, clock=clock)

    audit = AuditLog(redis, clock)
    models = RequestModels(settings)
    lockout = Lockout(
        redis, limit=settings.auth_failures_per_window, window_s=settings.auth_failure_window_s, clock=clock
    )
    auth = AuthMiddleware(
        users,
        settings.secret_key,
        audit,
        lockout,
        rate_limit_per_min=settings.rate_limit_per_min,
        admin_networks=settings.admin_ip_allowlist,
        clock=clock,
        activity=ActivityTracker(redis, clock),
    )
    middleware: list[Any] = [
        MetricsMiddleware(),
        TextMiddleware(),
        ClientAddressMiddleware(networks(settings.trusted_proxies)),
        Lifespan(relay, redis, reader),
        auth,
        ModelsMiddleware(models, settings.max_body_bytes),
    ]
    if settings.cors_origins:
        middleware.insert(
            1,
            falcon.CORSMiddleware(
                allow_origins=list(settings.cors_origins),
                expose_headers=["Location", "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"],
            ),
        )
    if tracing.configure(settings, "api"):
        middleware.insert(1, TracingMiddleware())  # right after the metrics: the span covers every other step
    app = falcon.asgi.App(middleware=middleware)
    app.req_options.strip_url_path_trailing_slash = True
    http_errors.install(app)
    app.add_route("/api/v1/health", HealthResource(redis, settings))
    app.add_route("/api/v1/monitoring/live", LiveResource())
    app.add_route("/api/v1/monitoring/ready", ReadyResource(redis, drain))
    app.add_route("/api/v1/monitoring/metrics", MetricsResource(redis, settings))
    app.add_route("/api/v1/monitoring/summary", SummaryResource(redis, settings))
    app.add_route("/api/v1/monitoring/health", MonitoringHealthResource(redis, settings))
    app.add_route("/api/v1/monitoring/record", RecordResource(redis, settings, audit))
    app.add_route("/api/v1/monitoring/info", InfoResource(settings, instance))
    app.add_route("/api/v1/jobs", JobsResource(service, settings, audit))
    app.add_route("/api/v1/jobs/{job_id}", JobResource(service, settings, audit))
    app.add_route("/api/v1/jobs/{job_id}/cancel", CancelResource(service, settings, audit))
    app.add_route("/api/v1/jobs/{job_id}/events", EventsResource(service, relay, settings, audit))
    app.add_route("/api/v1/attachments", AttachmentsResource(redis, settings, audit, clock))
    app.add_route("/api/v1/attachments/{attachment_id}", AttachmentResource(redis, audit))
    documents = DocumentStore(redis, settings.queue, vectors_on_server=bool(settings.qdrant_url))
    app.add_route("/api/v1/documents", DocumentsResource(documents, settings, audit, clock))
    app.add_route("/api/v1/documents/{doc_id}", DocumentResource(documents, audit))
    for path, resource in (
        ("stats", StatsResource),
        ("budget", BudgetResource),
        ("forecast", ForecastResource),
        ("recommendations", RecommendationsResource),
        ("models", ModelsResource),
        ("track", TrackResource),
        ("health", CostsHealthResource),
    ):
        app.add_route(f"/api/v1/costs/{path}", resource(costs, users, settings.max_body_bytes, audit))
    app.add_route("/api/v1/costs/usage/{user_id}", UsageResource(costs, users, settings.max_body_bytes, audit))
    security = (users, audit, settings)
    keys_resource, key_resource = KeysResource(*security), KeyResource(*security)
    for path, handler in (
        ("users", UsersResource(*security)),
        ("users/{user_id}", UserResource(*security)),
        ("users/{user_id}/role", RoleResource(*security)),
        ("users/{user_id}/api-key", keys_resource),
        ("users/{user_id}/api-keys", keys_resource),
        ("users/{user_id}/api-keys/{key_id}", key_resource),
        ("check-permission", CheckPermissionResource(*security)),
        ("authenticate", AuthenticateResource(*security)),
        ("audit", AuditResource(*security)),
        ("audit/verify", AuditVerifyResource(*security)),
        ("stats", SecurityStatsResource(*security)),
        ("permissions", PermissionsResource(*security)),
        ("health", SecurityHealthResource(*security)),
    ):
        app.add_route(f"/api/v1/security/{path}", handler)
    app.add_route("/api/v1/security/users/{user_id}/api-keys/{key_id}/rotate", key_resource, suffix="rotate")
    app.add_route("/api/v1/openapi.json", OpenAPIResource(app, models))
    app.add_route("/docs", PageResource(SWAGGER))
    app.add_route("/redoc", PageResource(REDOC))
    app.add_route("/api/v1/docs-assets/{name}", AssetResource())
    app.add_route("/api/v1/stream/demo", DemoResource())
    app.add_route("/api/v1/stream/health", StreamHealthResource(relay, settings))
    streams = StreamSubmitResource(service, relay, settings, audit)
    app.add_route("/api/v1/stream/query", streams, suffix="query")  # the seed's general route
    app.add_route("/api/v1/stream/{agent}", streams)
    return app
