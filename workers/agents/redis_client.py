"""The Redis client agents read their own inputs with (uploads, a session's earlier turns): one per process."""

from __future__ import annotations

import os
from typing import Any

from events.store.clients import sync_client
from settings import Settings

_client: Any = None
_pid = 0


def agent_redis() -> Any:
    """This process's client, made on first use; a forked child makes its own rather than share its parent's."""
    global _client, _pid
    if _client is None or _pid != os.getpid():
        _client = sync_client(Settings.from_env().redis, socket_timeout=10, connect_timeout=5)
        _pid = os.getpid()
    return _client
