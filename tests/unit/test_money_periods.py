"""Exact money conversion and period windows (property-based across DST, month ends, leap years)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atlas_budget_plugin.money import from_units, parse_money, quantize, tidy, to_units
from atlas_budget_plugin.periods import (
    EPOCH,
    Period,
    parse_period,
    parse_timezone,
    previous_window,
    window,
)

amounts = st.decimals(min_value=Decimal(0), max_value=Decimal("1000000"), places=9, allow_nan=False)


@given(amounts)
def test_units_round_trip_exactly(amount: Decimal) -> None:
    assert from_units(to_units(amount)) == amount


@given(st.lists(amounts, max_size=50))
def test_sum_of_units_is_sum_of_amounts(values: list[Decimal]) -> None:
    assert from_units(sum(to_units(v) for v in values)) == sum(values, Decimal(0))


def test_money_parsing_and_rounding() -> None:
    assert quantize(Decimal("0.0000000015")) == Decimal("0.000000002")  # half-even
    assert quantize(Decimal("0.0000000025")) == Decimal("0.000000002")
    assert str(tidy(Decimal("5"))) == "5.00"
    assert parse_money(3) == Decimal(3)
    for bad, text in [(1.5, "not a float"), ("x", "decimal number"), ("inf", "finite"), (None, "decimal string")]:
        with pytest.raises(ValueError, match=text):
            parse_money(bad)
    with pytest.raises(TypeError):
        to_units(1.5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "kind", "hours", "name"),
    [
        ("month", "month", 0, "month"),
        ("Lifetime", "total", 0, "total"),
        ("24h", "rolling", 24, "rolling:1d"),
        ("rolling:7d", "rolling", 168, "rolling:7d"),
        ("rolling:5h", "rolling", 5, "rolling:5h"),
    ],
)
def test_parse_period(text: str, kind: str, hours: int, name: str) -> None:
    period = parse_period(text)
    assert (period.kind, period.hours, period.name) == (kind, hours, name)


@pytest.mark.parametrize("bad", ["fortnight", "rolling:0d", "rolling:3w", ""])
def test_parse_period_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_period(bad)


def test_timezone_hint() -> None:
    with pytest.raises(ValueError, match="did you mean Europe/Paris"):
        parse_timezone("paris")
    with pytest.raises(ValueError, match="IANA"):
        parse_timezone("Nowhere/Atall")


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        window(Period("day"), "UTC", datetime(2026, 1, 1))


def test_known_windows() -> None:
    paris = "Europe/Paris"
    # DST starts 2026-03-29 in Paris: that day has 23 hours.
    start, end = window(Period("day"), paris, datetime(2026, 3, 29, 12, tzinfo=timezone.utc))
    assert end - start == timedelta(hours=23)
    # DST ends 2026-10-25: 25 hours.
    start, end = window(Period("day"), paris, datetime(2026, 10, 25, 12, tzinfo=timezone.utc))
    assert end - start == timedelta(hours=25)
    # Leap year February.
    start, end = window(Period("month"), "UTC", datetime(2028, 2, 29, 23, tzinfo=timezone.utc))
    assert (start.day, end.month, end.day, (end - start).days) == (1, 3, 1, 29)
    # Quarter and year, week starting Monday.
    start, end = window(Period("quarter"), "UTC", datetime(2026, 8, 15, tzinfo=timezone.utc))
    assert (start.month, end.month) == (7, 10)
    start, end = window(Period("year"), "UTC", datetime(2026, 12, 31, 23, tzinfo=timezone.utc))
    assert (start.year, end.year) == (2026, 2027)
    start, _ = window(Period("week"), "UTC", datetime(2026, 11, 28, tzinfo=timezone.utc))
    assert start.weekday() == 0
    assert window(Period("total"), "UTC", datetime(2026, 1, 1, tzinfo=timezone.utc))[0] == EPOCH
    assert previous_window(Period("total"), "UTC", datetime(2026, 1, 1, tzinfo=timezone.utc)) is None
    start, end = window(Period("rolling", 24), "UTC", datetime(2026, 1, 2, 10, 30, tzinfo=timezone.utc))
    assert (start, end) == (
        datetime(2026, 1, 1, 11, tzinfo=timezone.utc),
        datetime(2026, 1, 2, 11, tzinfo=timezone.utc),
    )


zones = st.sampled_from(
    ["UTC", "Europe/Paris", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata", "America/Santiago"]
)
periods = st.sampled_from(["hour", "day", "week", "month", "quarter", "year", "rolling:6h", "rolling:7d"])
moments = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(timezone.utc))


@settings(max_examples=300, deadline=None)
@given(periods, zones, moments)
def test_window_contains_now_and_tiles(period_name: str, tz: str, now: datetime) -> None:
    period = parse_period(period_name)
    start, end = window(period, tz, now)
    assert start <= now < end
    # The next window starts where this one ends: windows tile time without gaps or overlaps.
    if not period.is_rolling:
        assert window(period, tz, end)[0] == end
        prev = previous_window(period, tz, now)
        assert prev is not None and prev[1] == start
        # Calendar windows start at local midnight, or at 01:00 where DST skipped midnight.
        local = start.astimezone(ZoneInfo(tz))
        if period.kind != "hour":
            assert local.minute == 0 and local.hour in (0, 1)
    else:
        assert end - start == timedelta(hours=period.hours)
