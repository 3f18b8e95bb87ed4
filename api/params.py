"""Numbers from query parameters: plain ASCII decimals, finite, within bounds, or a 400 naming the parameter.

Falcon's own `get_param_as_float` takes `nan`, `inf` and digits of any script; `int()` takes `1_0`. Numbers that
steer reads (waits, page sizes, cursors, time ranges) are parsed here instead.
"""

from __future__ import annotations

import math
import re
from typing import overload

import falcon

from api.errors import bad_request

INTEGER = re.compile(r"^-?[0-9]{1,15}$")
DECIMAL = re.compile(r"^-?[0-9]{1,20}(\.[0-9]{1,20})?([eE][-+]?[0-9]{1,3})?$")


def parse_number(raw: str) -> float:
    """A finite decimal such as 12, 0.5, -3.25 or 1e-5; raises ValueError for anything else (nan, inf, ١, 1_0)."""
    value = float(raw) if DECIMAL.fullmatch(raw) else math.nan
    if not math.isfinite(value):
        raise ValueError(f"{raw[:40]!r} is not a finite decimal number")
    return value


@overload
def number(req: falcon.asgi.Request, name: str, *, low: float, high: float, default: float) -> float: ...


@overload
def number(req: falcon.asgi.Request, name: str, *, low: float, high: float, default: None = None) -> float | None: ...


def number(req: falcon.asgi.Request, name: str, *, low: float, high: float,
           default: float | None = None) -> float | None:
    """The decimal parameter `name` (`default` when absent or empty); 400 unless it is a number in [low, high]."""
    raw = req.get_param(name)
    if not raw:
        return default
    try:
        value = parse_number(raw)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise bad_request(f"Query parameter '{name}' must be a number from {low:g} to {high:g}.", code="invalid_field")
    return value


@overload
def integer(req: falcon.asgi.Request, name: str, *, low: int, high: int, default: int) -> int: ...


@overload
def integer(req: falcon.asgi.Request, name: str, *, low: int, high: int, default: None = None) -> int | None: ...


def integer(req: falcon.asgi.Request, name: str, *, low: int, high: int, default: int | None = None) -> int | None:
    """The whole-number parameter `name` (`default` when absent or empty); 400 unless it is in [low, high]."""
    raw = req.get_param(name)
    if not raw:
        return default
    value = int(raw) if INTEGER.fullmatch(raw) else None
    if value is None or not low <= value <= high:
        raise bad_request(f"Query parameter '{name}' must be a whole number from {low} to {high}.",
                          code="invalid_field")
    return value
