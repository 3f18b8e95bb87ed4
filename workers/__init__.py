"""The Celery app; `celery -A workers worker` runs it.

Pool processes share their metrics through one directory, set up by the `celeryd_init` hook below: it runs in
the worker's main process before the task modules are imported (so before any metric exists) and before the
pool forks. Nothing here is set up by importing the module.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from celery.signals import celeryd_init

from events.telemetry import multiprocess

app = Celery("agentic", include=["workers.tasks", "workers.worker_metrics"])
app.config_from_object("celeryconfig")
shared_metrics: multiprocess.Directory | None = None  # set by the worker's start-up hook


@celeryd_init.connect
def _share_metrics(**_: Any) -> None:
    """Share samples through PROMETHEUS_MULTIPROC_DIR if the operator set it, else through a directory of our own
    (removed when the worker stops)."""
    global shared_metrics
    shared_metrics = multiprocess.use_directory(os.environ.get(multiprocess.ENV), prefix="agentic-metrics-worker-")
