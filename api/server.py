"""The gunicorn worker class of the API: uvicorn's, with its proxy-header rewriting off and a graceful drain.

uvicorn would otherwise take `X-Forwarded-For` from any peer in FORWARDED_ALLOW_IPS (127.0.0.1 by default) as the
client's address, so anyone on the host could pick the address the admin allow-list and the audit log see.
The API works the address out itself, trusting forwarded headers only from TRUSTED_PROXIES (api/address.py).

On SIGTERM uvicorn stops accepting connections and waits for the open ones; open event streams would keep it
waiting until gunicorn's graceful timeout killed them. So once the listeners are closed the process's drain
begins (api/drain.py): streams end with a hand-over and their clients resume elsewhere by Last-Event-ID.
"""

from __future__ import annotations

import socket
import sys
from typing import Any

from gunicorn.arbiter import Arbiter
from uvicorn.server import Server
from uvicorn_worker import UvicornWorker

from api import drain


class DrainingServer(Server):
    """uvicorn's server, which begins the process's drain as soon as it stops listening."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Stop listening, drain, then let uvicorn wait for the requests in flight."""
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        drain.PROCESS.begin()
        await super().shutdown(sockets)


class ApiWorker(UvicornWorker):
    """A uvicorn worker that leaves the ASGI client address as the socket's peer and drains on SIGTERM."""

    CONFIG_KWARGS: dict[str, Any] = {**UvicornWorker.CONFIG_KWARGS, "proxy_headers": False}

    async def _serve(self) -> None:
        # UvicornWorker._serve with our server class.
        self.config.app = self.wsgi
        server = DrainingServer(config=self.config)
        self._install_sigquit_handler()
        await server.serve(sockets=self.sockets)
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
