"""Money amounts (events/money/amounts.py): dollars in become exact integer micro-dollars, micros show as six-decimal
dollars, and costs round up to the micro. Pure: no Redis."""

from __future__ import annotations

from decimal import Decimal

import pytest

from events.money.amounts import MICROS_PER_USD, ceil_micros, micros_to_usd, usd_to_micros

D = Decimal


@pytest.mark.parametrize(
    ("usd", "micros"),
    [
        ("0.0075", 7_500),
        ("12.345678", 12_345_678),
        (D("0.000001"), 1),
        (7, 7_000_000),
        (2.5, 2_500_000),
        (0.1, 100_000),
        ("1e-3", 1_000),
        ("0", 0),
        (" 3 ", 3_000_000),
        ("0.0000005", 1),
        ("0.0000015", 2),
        ("0.0000025", 3),  # half up, not to even
        ("0.0000004999", 0),
        ("0.0000014999", 1),
        ("9223372036854.775807", 2**63 - 1),
        ("0.0000004", 0),
        (D("12.345678"), 12_345_678),
        pytest.param(0, 0, id="int-0"),
    ],
)
def test_dollars_become_micros_exactly_rounding_half_up(usd: object, micros: int) -> None:
    assert usd_to_micros(usd) == micros  # type: ignore[arg-type]
    assert MICROS_PER_USD == 1_000_000


@pytest.mark.parametrize(
    "bad",
    [
        "-1",
        "-0.000001",
        "nan",
        "NaN",
        "sNaN",
        "inf",
        "-Infinity",
        "abc",
        "",
        "1,5",
        float("nan"),
        float("inf"),
        True,
        "9223372036854.775808",
        "1e999999",
    ],
)
def test_negative_non_finite_non_numeric_or_huge_dollars_are_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="dollars"):
        usd_to_micros(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("micros", "usd"),
    [
        (7_500, "0.007500"),
        (0, "0.000000"),
        (1, "0.000001"),
        (1_000_000, "1.000000"),
        (123_456_789, "123.456789"),
        (-5, "-0.000005"),
        (-1_234_567, "-1.234567"),
        (10**20, "100000000000000.000000"),
    ],
)
def test_micros_show_as_six_decimal_dollars(micros: int, usd: str) -> None:
    assert micros_to_usd(micros) == usd


@pytest.mark.parametrize(
    ("usd", "micros"),
    [
        ("0", 0),
        ("0.0000001", 1),
        ("0.000002", 2),
        ("0.0075", 7_500),
        ("0.0000010000001", 2),
        ("0.3300025", 330_003),
        ("1.0000000000000000000000000000001E-6", 2),
    ],
)
def test_costs_round_up_to_the_micro_so_nothing_is_under_charged(usd: str, micros: int) -> None:
    assert ceil_micros(D(usd)) == micros


def test_a_non_finite_cost_is_refused() -> None:
    with pytest.raises(ValueError, match="finite"):
        ceil_micros(D("NaN"))
