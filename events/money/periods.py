"""Budget periods in UTC: which period a moment falls in, and when it ends. Pure."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from functools import lru_cache

PERIODS = ("daily", "weekly", "monthly", "total")


def _day(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def period_id(period: str, ts: float) -> str:
    """The id of the `period` that holds moment `ts` (e.g. d20261126, w2026-48, m202611, total)."""
    moment = _day(ts)
    if period == "daily":
        return moment.strftime("d%Y%m%d")
    if period == "weekly":
        year, week, _ = moment.isocalendar()
        return f"w{year}-{week:02d}"
    if period == "monthly":
        return moment.strftime("m%Y%m")
    if period == "total":
        return "total"
    raise ValueError(f"Unknown period {period!r}; use one of: {', '.join(PERIODS)}.")


def period_ids(ts: float) -> dict[str, str]:
    """The id of every period at moment `ts`."""
    return dict(_day_period_ids(int(ts // 86400)))


@lru_cache(maxsize=8)
def _day_period_ids(day: int) -> tuple[tuple[str, str], ...]:
    # Every period id changes only at a UTC midnight, so one day's ids serve every moment in it.
    return tuple((period, period_id(period, day * 86400)) for period in PERIODS)


def period_bounds(period: str, ts: float) -> tuple[date, date]:
    """First day and the day after the last of the `period` holding `ts` (total: from 1970, to far ahead)."""
    today = _day(ts).date()
    if period == "daily":
        return today, today + timedelta(days=1)
    if period == "weekly":
        start = today - timedelta(days=today.weekday())
        return start, start + timedelta(days=7)
    if period == "monthly":
        start = today.replace(day=1)
        following = (start + timedelta(days=32)).replace(day=1)
        return start, following
    if period == "total":
        return date(1970, 1, 1), date(9999, 1, 1)
    raise ValueError(f"Unknown period {period!r}; use one of: {', '.join(PERIODS)}.")


# How long a period's counters are kept after it began: long enough to report on it afterwards.
PERIOD_TTL_S = {"daily": 8 * 86400, "weekly": 35 * 86400, "monthly": 400 * 86400, "total": 0}


def hour_bucket(ts: float) -> str:
    """The UTC hour a moment falls in, as the ledger's bucket name (YYYYMMDDHH)."""
    return _day(ts).strftime("%Y%m%d%H")


def hour_buckets(start_ts: float, end_ts: float) -> list[str]:
    """Every hour bucket from `start_ts` to `end_ts`, inclusive."""
    first = _day(start_ts).replace(minute=0, second=0, microsecond=0)
    last = _day(end_ts)
    out = []
    while first <= last:
        out.append(first.strftime("%Y%m%d%H"))
        first += timedelta(hours=1)
    return out
