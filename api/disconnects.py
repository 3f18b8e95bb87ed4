"""Telling a streaming response at once that its client went away.

Falcon notices a closed connection only after the next event it writes, so an idle SSE stream whose client left
would hold its subscription, its queue and its Redis notices until the next heartbeat (`SSE_HEARTBEAT_S`). This
ASGI wrapper watches the `http.disconnect` message Falcon already waits for and runs the callbacks a resource
registered for its request (`on_disconnect`), so the stream ends and frees what it holds when the client goes.
"""

from __future__ import annotations

from typing import Any, Callable

import falcon.asgi

KEY = "agentic.on_disconnect"  # the scope entry that lists a request's callbacks


class DisconnectSignals:
    """Wraps the ASGI app; every other scope type passes through unchanged."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        callbacks: list[Callable[[], None]] = []
        scope[KEY] = callbacks

        async def watched() -> Any:
            message = await receive()
            if message["type"] == "http.disconnect":
                while callbacks:
                    callbacks.pop()()
            return message

        await self.app(scope, watched, send)


def on_disconnect(req: falcon.asgi.Request, callback: Callable[[], None]) -> None:
    """Run `callback` when the client of `req` disconnects (nothing when the app runs without the wrapper)."""
    callbacks = req.scope.get(KEY)
    if callbacks is not None:
        callbacks.append(callback)
