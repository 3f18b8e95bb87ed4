"""The seed's import path for the metrics helper: `from api.prometheus_service import metrics`.

The helper itself lives in `events.telemetry.metrics`, so workers and the events process use the same one.
"""

from events.telemetry.metrics import metrics

__all__ = ["metrics"]
