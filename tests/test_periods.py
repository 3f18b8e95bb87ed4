"""Budget periods (events/money/periods.py): which day, ISO week or month a moment falls in, turning over at UTC
midnight, and the dates a period runs between. Pure: no Redis."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from events.money.periods import period_bounds, period_id


@pytest.mark.parametrize(
    ("period", "moment", "pid"),
    [
        ("daily", "2026-11-30T23:59:59", "d20261130"),
        ("daily", "2026-12-01T00:00:00", "d20261201"),
        ("weekly", "2026-11-29T12:00:00", "w2026-48"),
        ("weekly", "2026-11-30T00:00:00", "w2026-49"),
        ("monthly", "2026-11-30T23:59:59", "m202611"),
        ("monthly", "2026-12-01T00:00:01", "m202612"),
        ("total", "2026-01-01T00:00:00", "total"),
    ],
)
def test_periods_turn_over_at_utc_boundaries(period: str, moment: str, pid: str) -> None:
    assert period_id(period, datetime.fromisoformat(moment).replace(tzinfo=UTC).timestamp()) == pid


def test_a_period_runs_from_its_first_day_up_to_the_first_day_of_the_next() -> None:
    ts = datetime(2026, 11, 26, 15, tzinfo=UTC).timestamp()
    assert period_bounds("monthly", ts) == (date(2026, 11, 1), date(2026, 12, 1))
    assert period_bounds("weekly", ts) == (date(2026, 11, 23), date(2026, 11, 30))
