"""The OpenAPI document, Swagger UI at /docs and ReDoc at /redoc, with their assets served from here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import falcon

from api.openapi import ASSETS, document
from api.permissions import PUBLIC

VENDOR = Path(__file__).resolve().parent.parent / "static" / "vendor"
SWAGGER = """<!doctype html><html><head><meta charset="utf-8"><title>Agentic backend API</title>
<link rel="stylesheet" href="/api/v1/docs-assets/swagger-ui.css"></head><body><div id="ui"></div>
<script src="/api/v1/docs-assets/swagger-ui-bundle.js"></script>
<script>window.ui = SwaggerUIBundle({url: "/api/v1/openapi.json", dom_id: "#ui"});</script></body></html>"""
REDOC = """<!doctype html><html><head><meta charset="utf-8"><title>Agentic backend API</title></head><body>
<redoc spec-url="/api/v1/openapi.json"></redoc><script src="/api/v1/docs-assets/redoc.standalone.js"></script>
</body></html>"""


class OpenAPIResource:
    """GET /api/v1/openapi.json: the whole API described (built once, from the live route table)."""

    permissions = {"GET": PUBLIC}

    def __init__(self, app: falcon.asgi.App, schemas: dict[tuple[str, str], dict[str, Any]]) -> None:
        self.app = app
        self.schemas = schemas
        self._doc: dict[str, Any] | None = None

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """The OpenAPI 3.1 document."""
        if self._doc is None:
            self._doc = document(self.app, self.schemas)
        resp.media = self._doc


class PageResource:
    """GET /docs (Swagger UI) or /redoc (ReDoc)."""

    permissions = {"GET": PUBLIC}

    def __init__(self, html: str) -> None:
        self.html = html

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """The page."""
        resp.content_type = falcon.MEDIA_HTML
        resp.text = self.html


class AssetResource:
    """GET /api/v1/docs-assets/{name}: the vendored Swagger UI and ReDoc files."""

    permissions = {"GET": PUBLIC}

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, name: str) -> None:
        """One asset, cached for a day."""
        if name not in ASSETS:
            raise falcon.HTTPNotFound(title="Not Found", description=f"No asset {name!r}.", code="not_found")
        resp.content_type = ASSETS[name]
        resp.data = (VENDOR / name).read_bytes()
        resp.cache_control = ["public", "max-age=86400"]
