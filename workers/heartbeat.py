"""Keeps a running attempt's lease alive and notices cancel requests, in a background thread."""

from __future__ import annotations

import logging
import threading

import redis

from events.store import job_scripts
from events.store.scripts import Scripts
from workers.agents.agent import Cancelled, LeaseLost

log = logging.getLogger("workers.heartbeat")


class Heartbeat:
    """Renews the lease every `every_s` seconds; `check()` raises once the job is cancelled or the lease is gone."""

    def __init__(self, scripts: Scripts, job_id: str, token: str, lease_ms: int, every_s: float) -> None:
        self._scripts = scripts
        self._beat = job_scripts.heartbeat(job_id=job_id, lease_token=token, lease_ms=lease_ms)
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
        beat = self._scripts.run(self._beat)
        if not beat.lease_ours:
            self.lost.set()
        if beat.cancel_requested:
            self.cancelled.set()

    def _loop(self) -> None:
        # Cancel must be seen within a second, so poll at least every 250 ms; the lease renews on each poll.
        interval = min(self._every_s, 0.25)
        while not self._stop.wait(interval):
            try:
                self.beat()
            except (redis.ConnectionError, redis.TimeoutError) as ex:
                log.warning("heartbeat failed: %s", ex)
