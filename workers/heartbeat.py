"""Keeps a running attempt's lease alive and notices cancel requests, in a background thread."""

from __future__ import annotations

import logging
import threading
from typing import Any

import redis

from workers.agents.base import Cancelled, LeaseLost

log = logging.getLogger("workers.heartbeat")


class Heartbeat:
    """Renews the lease every `every_s` seconds; `check()` raises once the job is cancelled or the lease is gone."""

    def __init__(self, script: Any, lease_key: str, job_key: str, token: str, lease_ms: int, every_s: float) -> None:
        self._script = script
        self._keys = [lease_key, job_key]
        self._args = [token, lease_ms]
        self._every_s = every_s
        self._stop = threading.Event()
        self.cancelled = threading.Event()
        self.lost = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="job-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def check(self) -> None:
        """Raise LeaseLost or Cancelled if either has happened; cheap enough to call per token."""
        if self.lost.is_set():
            raise LeaseLost("Another attempt took over this job.")
        if self.cancelled.is_set():
            raise Cancelled("The job was cancelled.")

    def beat(self) -> None:
        """Renew the lease once and read the cancel flag."""
        ours, cancel = self._script(keys=self._keys, args=self._args)
        if not ours:
            self.lost.set()
        if cancel in (b"1", "1"):
            self.cancelled.set()

    def _loop(self) -> None:
        # Cancel must be seen within a second, so poll at least every 250 ms; the lease renews on each poll.
        interval = min(self._every_s, 0.25)
        while not self._stop.wait(interval):
            try:
                self.beat()
            except (redis.ConnectionError, redis.TimeoutError) as ex:
                log.warning("heartbeat failed: %s", ex)
