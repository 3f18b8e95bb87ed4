"""The gunicorn worker class of the API: uvicorn's, with its proxy-header rewriting turned off.

uvicorn would otherwise take `X-Forwarded-For` from any peer in FORWARDED_ALLOW_IPS (127.0.0.1 by default) as the
client's address, so anyone on the host could pick the address the admin allow-list and the audit log see.
The API works the address out itself, trusting forwarded headers only from TRUSTED_PROXIES (api/address.py).
"""

from __future__ import annotations

from typing import Any

from uvicorn_worker import UvicornWorker


class ApiWorker(UvicornWorker):
    """A uvicorn worker that leaves the ASGI client address as the socket's peer."""

    CONFIG_KWARGS: dict[str, Any] = {**UvicornWorker.CONFIG_KWARGS, "proxy_headers": False}
