"""Graceful drain: what an API process does when it is told to stop (SIGTERM from gunicorn, Kubernetes, make run).

The server stops accepting connections first; then readiness answers 503, every open event stream ends with a
hand-over comment (its client reconnects with Last-Event-ID and lands on another instance), and long polls
return the job as it is. Requests in flight finish normally; uvicorn waits for them before the process exits.
"""

from __future__ import annotations

import logging
from typing import Callable

log = logging.getLogger("api.drain")


class Drain:
    """One process's drain state and what to do when it begins."""

    def __init__(self) -> None:
        self.draining = False
        self._actions: list[Callable[[], None]] = []

    def on_begin(self, action: Callable[[], None]) -> None:
        """Run `action` (synchronous, quick) when the drain begins."""
        self._actions.append(action)

    def begin(self) -> None:
        """Start draining; a second call does nothing."""
        if self.draining:
            return
        self.draining = True
        log.info("draining: readiness off, open streams handed over")
        for action in self._actions:
            action()


PROCESS = Drain()  # the process's own: the server (api/server.py) begins it, create_app wires it
