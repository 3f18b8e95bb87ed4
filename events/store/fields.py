"""Reading what Redis keeps as text, leniently: a damaged field reads as a default, never as an exception.

Records outlive the code that wrote them (and can be edited by hand), so views and lists decode them with these:
one bad field must not turn a job view, a user list or an audit page into a 500. Pure.
"""

from __future__ import annotations

import json
import math
from typing import Any


def valid_text(value: Any) -> Any:
    """`value` with every string made valid Unicode (lone surrogates, as old JSON escapes decode, become U+FFFD)."""
    if isinstance(value, str):
        return value if value.isascii() else value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, dict):
        return {valid_text(k): valid_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [valid_text(v) for v in value]
    return value


def json_field(raw: str | None, default: Any) -> Any:
    """The JSON a field holds (its strings made valid), or `default` when it is empty or not JSON."""
    if not raw:
        return default
    try:
        return valid_text(json.loads(raw))
    except (ValueError, RecursionError):
        return default


def float_field(raw: str | None) -> float | None:
    """The finite number a field holds, or None."""
    try:
        number = float(raw) if raw else None
    except ValueError:
        return None
    return number if number is not None and math.isfinite(number) else None


def int_field(raw: str | None, default: int = 0) -> int:
    """The integer a field holds, or `default`."""
    try:
        return int(raw) if raw else default
    except ValueError:
        return default
