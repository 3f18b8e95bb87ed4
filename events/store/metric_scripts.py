"""Custom metrics' registry as a typed script call: families and label sets bounded across every instance."""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Sequence

from events.envelope import text
from events.store import keyspace
from events.store.scripts import Call, call


class Registered(StrEnum):
    """What registering a custom metric's family and label set did."""

    OK = "ok"
    CONFLICT = "conflict"  # the family exists with another kind or other label names
    TOO_MANY_METRICS = "too_many_metrics"
    TOO_MANY_SERIES = "too_many_series"


@dataclass(frozen=True)
class RegisterReply:
    """The outcome; for CONFLICT the definition registered before."""

    outcome: Registered
    registered: str = ""


def _registered(reply: Any) -> RegisterReply:
    outcome = Registered(text(reply[0]))
    return RegisterReply(outcome, text(reply[1]) if outcome is Registered.CONFLICT else "")


def register(
    *,
    family: str,
    kind: str,
    label_names: Sequence[str],
    label_values: Sequence[str],
    max_families: int,
    max_series: int,
) -> Call[RegisterReply]:
    """Register `family` as a `kind` with `label_names`, and the label set `label_values`, within the bounds."""
    definition = json.dumps({"kind": kind, "labels": list(label_names)})
    return call(
        "metric_register",
        [keyspace.CUSTOM_METRICS, keyspace.custom_metric_series(family)],
        [family, definition, json.dumps(list(label_values)), max_families, max_series],
        _registered,
    )
