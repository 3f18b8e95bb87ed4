"""Numbers in query strings and cursors: plain ASCII decimals, finite, or refused.

Falcon's own `get_param_as_float` takes `nan`, `inf` and digits of any script, and `int()` takes `1_0`; the query
models (api/models.py) and the list cursor read numbers through these instead.
"""

from __future__ import annotations

import math
import re

INTEGER = re.compile(r"^-?[0-9]{1,15}$")
DECIMAL = re.compile(r"^-?[0-9]{1,20}(\.[0-9]{1,20})?([eE][-+]?[0-9]{1,3})?$")


def parse_number(raw: str) -> float:
    """A finite decimal such as 12, 0.5, -3.25 or 1e-5; raises ValueError for anything else (nan, inf, ١, 1_0)."""
    value = float(raw) if DECIMAL.fullmatch(raw) else math.nan
    if not math.isfinite(value):
        raise ValueError(f"{raw[:40]!r} is not a finite decimal number")
    return value
