"""The OpenAPI document, Swagger UI at /docs and ReDoc at /redoc, with their assets served from memory."""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import falcon

from api.http_errors import not_found
from api.models import RequestModels
from api.openapi import ASSETS, document
from api.permissions import PUBLIC

VENDOR = Path(__file__).resolve().parent.parent / "static" / "vendor"
REFRESH = "Run `python ops/vendor.py` to download the versions MANIFEST.json records again."
ADD = "Add it to FILES in ops/vendor.py and run `python ops/vendor.py`."
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

    def __init__(self, app: falcon.asgi.App, models: RequestModels) -> None:
        self.app = app
        self.models = models
        self._doc: dict[str, Any] | None = None

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """The OpenAPI 3.1 document."""
        if self._doc is None:
            self._doc = document(self.app, self.models)
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


class AssetError(Exception):
    """Raised when a vendored asset is missing or differs from its sha256 in api/static/vendor/MANIFEST.json."""


@dataclass(frozen=True)
class Asset:
    """One vendored file held in memory; its sha256 is also its ETag."""

    data: bytes
    media_type: str
    sha256: str


@functools.cache
def load_assets(directory: Path = VENDOR) -> dict[str, Asset]:
    """Every served asset (api.openapi.ASSETS), read once per process and checked against MANIFEST.json.

    Raises:
        AssetError: the manifest cannot be read, or an asset is missing from it or differs from its sha256.
    """
    manifest = directory / "MANIFEST.json"
    try:
        recorded = json.loads(manifest.read_text())["files"]
    except (OSError, ValueError, KeyError) as ex:
        raise AssetError(f"Cannot read {manifest} ({ex}). {REFRESH}") from ex
    assets: dict[str, Asset] = {}
    for name, media_type in ASSETS.items():
        path = directory / name
        if name not in recorded:
            raise AssetError(f"{name} is not in {manifest}. {ADD}")
        try:
            data = path.read_bytes()
        except OSError as ex:
            raise AssetError(f"Cannot read {path} ({ex}). {REFRESH}") from ex
        digest = hashlib.sha256(data).hexdigest()
        if digest != recorded[name]["sha256"]:
            raise AssetError(
                f"{path} has sha256 {digest}, but {manifest} records {recorded[name]['sha256']}. {REFRESH}"
            )
        assets[name] = Asset(data, media_type, digest)
    return assets


class AssetResource:
    """GET /api/v1/docs-assets/{name}: the vendored Swagger UI and ReDoc files, from memory."""

    permissions = {"GET": PUBLIC}

    def __init__(self, directory: Path = VENDOR) -> None:
        # Loaded here, when the app is built, so a damaged file stops the start rather than a later request.
        self.assets = load_assets(directory)

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, name: str) -> None:
        """One asset, cached for a day; 304 when the client already has it (If-None-Match)."""
        asset = self.assets.get(name)
        if asset is None:
            raise not_found(f"No asset {name!r}.")
        resp.etag = asset.sha256
        resp.cache_control = ["public", "max-age=86400"]
        if req.if_none_match and ("*" in req.if_none_match or asset.sha256 in req.if_none_match):
            resp.status = falcon.HTTP_304
            return
        resp.content_type = asset.media_type
        resp.data = asset.data
