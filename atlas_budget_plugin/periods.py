"""Budget periods: parsing period names and finding the window a moment falls in."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

CALENDAR = ("hour", "day", "week", "month", "quarter", "year")
LIFETIME = ("total", "lifetime")
#: ATLAS's period names (its ``BudgetPeriod`` values) for our calendar periods. Its rolling names
#: (``rolling_24h``, ``rolling_7d``, ``rolling_30d``, any ``rolling_<N>h|d``) and ``lifetime`` parse
#: as ours do; every alias is stored under our canonical name (``daily`` -> ``day``).
ATLAS_ALIASES = {
    "hourly": "hour",
    "daily": "day",
    "weekly": "week",
    "monthly": "month",
    "quarterly": "quarter",
    "yearly": "year",
    "annual": "year",
    "annually": "year",
}
#: ``rolling:30d`` (ours), ``rolling_30d`` (ATLAS's) and a bare ``30d``.
_ROLLING = re.compile(r"^(?:rolling[:_])?(\d+)([hd])$")
ALLOWED = (
    "hour, day, week, month, quarter, year, total (or lifetime), rolling:<N>h or rolling:<N>d "
    "(ATLAS's hourly, daily, weekly, monthly, quarterly, yearly and rolling_<N>h/d are accepted too)"
)

#: The longest rolling window: ten years of hours (longer windows are the lifetime, ``total``).
MAX_ROLLING_HOURS = 10 * 365 * 24

#: Start of the lifetime window; any fixed instant works, it only has to be stable.
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class Period:
    """A parsed period: a calendar unit, the lifetime, or a rolling window of ``hours``."""

    kind: str  # one of CALENDAR, "total" or "rolling"
    hours: int = 0

    @property
    def name(self) -> str:
        if self.kind == "rolling":
            return f"rolling:{self.hours // 24}d" if self.hours % 24 == 0 else f"rolling:{self.hours}h"
        return self.kind

    @property
    def is_rolling(self) -> bool:
        return self.kind == "rolling"


def parse_period(value: str) -> Period:
    """Parse a period name (ours or ATLAS's, see :data:`ATLAS_ALIASES`); raise ValueError naming what is allowed."""
    text = str(value).strip().lower()
    text = ATLAS_ALIASES.get(text, text)
    if text in CALENDAR:
        return Period(text)
    if text in LIFETIME:
        return Period("total")
    match = _ROLLING.match(text)
    if match:
        digits, unit = match.group(1), match.group(2)
        count = int(digits) if len(digits) <= 9 else MAX_ROLLING_HOURS + 1  # never convert a huge number
        hours = count * 24 if unit == "d" else count
        if hours <= 0:
            raise ValueError(f"rolling window {value!r} must be at least 1h")
        if hours > MAX_ROLLING_HOURS:
            raise ValueError(
                f"rolling window {value!r} is too long: it must be between 1h and {MAX_ROLLING_HOURS}h "
                f'({MAX_ROLLING_HOURS // 24}d, ten years); for all time use period = "total"'
            )
        return Period("rolling", hours)
    raise ValueError(f"unknown period {value!r}; allowed: {ALLOWED}")


def parse_timezone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        close = sorted(tz for tz in available_timezones() if tz.lower().endswith(name.lower()))[:3]
        hint = f" (did you mean {', '.join(close)}?)" if close else " (use an IANA name such as UTC or Europe/Paris)"
        raise ValueError(f"unknown timezone {name!r}{hint}") from None


def _floor_local(period: str, local: datetime) -> datetime:
    if period == "hour":
        return local.replace(minute=0, second=0, microsecond=0)
    day = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return day
    if period == "week":  # ISO weeks start on Monday
        return day - timedelta(days=day.weekday())
    if period == "month":
        return day.replace(day=1)
    if period == "quarter":
        return day.replace(month=(day.month - 1) // 3 * 3 + 1, day=1)
    return day.replace(month=1, day=1)  # year


def _next_local(period: str, start: datetime) -> datetime:
    if period == "hour":
        return start + timedelta(hours=1)
    if period == "day":
        return start + timedelta(days=1)
    if period == "week":
        return start + timedelta(days=7)
    months = {"month": 1, "quarter": 3, "year": 12}[period]
    index = start.year * 12 + start.month - 1 + months
    return start.replace(year=index // 12, month=index % 12 + 1)


def _to_utc(local_wall: datetime, tz: ZoneInfo) -> datetime:
    # Calendar boundaries are wall-clock times; fold=0 picks the first of an
    # ambiguous hour, and a non-existent time (DST gap) resolves forward.
    return local_wall.replace(tzinfo=tz, fold=0).astimezone(timezone.utc)


def previous_window(period: Period, tz_name: str, now: datetime) -> tuple[datetime, datetime] | None:
    """The window before the one containing ``now`` (``None`` for the lifetime and rolling windows)."""
    if period.kind in ("total", "rolling"):
        return None
    start, _ = window(period, tz_name, now)
    return window(period, tz_name, start - timedelta(microseconds=1))


def window(period: Period, tz_name: str, now: datetime) -> tuple[datetime, datetime]:
    """Return the UTC ``[start, end)`` of the window containing ``now``.

    Calendar periods follow the wall clock of ``tz_name`` (a day in Europe/Paris is
    23 or 25 hours around DST changes). A rolling window is the ``hours`` ending at
    the end of the current hour, so it moves in whole hours. The lifetime window is
    ``[EPOCH, far future)``.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    now_utc = now.astimezone(timezone.utc)
    if period.kind == "total":
        return EPOCH, datetime(9999, 1, 1, tzinfo=timezone.utc)
    if period.kind == "rolling":
        end = now_utc.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
        return end - timedelta(hours=period.hours), end
    tz = parse_timezone(tz_name)
    local = now_utc.astimezone(tz).replace(tzinfo=None)
    start_local = _floor_local(period.kind, local)
    start = _to_utc(start_local, tz)
    end = _to_utc(_next_local(period.kind, start_local), tz)
    return start, end


def bucket_hour(moment: datetime) -> datetime:
    """The UTC hour a moment falls in (rolling windows are sums of these buckets)."""
    return moment.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)
