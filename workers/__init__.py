"""The Celery app; `celery -A workers worker` runs it.

Pool processes share their metrics through PROMETHEUS_MULTIPROC_DIR, which must be known before any metric
is made: a worker that was not given one makes its own (see workers.monitor).
"""

import os
import tempfile

import prometheus_client.values
from celery import Celery

if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="agentic-metrics-worker-")
    os.environ["AGENTIC_OWN_METRICS_DIR"] = "1"
# The `celery` command loads Flower's plugin, which imports prometheus-client before this module runs; make
# the metrics created from here on use the multiprocess value store all the same.
prometheus_client.values.ValueClass = prometheus_client.values.get_value_class()

app = Celery("agentic", include=["workers.tasks", "workers.monitor"])
app.config_from_object("celeryconfig")
