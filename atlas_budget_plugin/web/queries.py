"""What the console's pages and JSON API both ask of the services: parsed filters, paged usage, policy standings.

Everything here goes through the three services (never the store), so the pages, the API and the Python API
answer the same questions with the same numbers and the same permission checks.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from ..bootstrap import BudgetServices
from ..exceptions import ValidationError
from ..permissions import BudgetPermissionChecker
from ..types import CALL_DIMENSIONS, MAX_LIST_LIMIT, Actor, Policy, UsageRecord

#: Rows one page of history shows at most; an export holds at most MAX_EXPORT_ROWS.
MAX_PAGE = 500
MAX_EXPORT_ROWS = 100_000
#: A tag filter is applied after the query (list_usage has no tag filter): scan at most this many rows for a page.
MAX_TAG_SCAN = 50_000
_ONE_TICK = timedelta(microseconds=1)
_CHECKER = BudgetPermissionChecker()


def can(actor: Actor, role: str) -> bool:
    """Whether ``actor`` holds ``role`` or a higher one (what the pages offer; the services check again)."""
    return _CHECKER.level(actor) >= {"budget:read": 1, "budget:write": 2, "budget:admin": 3}[role]


def parse_time(value: str | None, field: str) -> datetime | None:
    """An ISO date or time from a form or query (UTC unless it says otherwise); empty means none."""
    if value is None or not value.strip():
        return None
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValidationError(
            f"{field}: {value[:60]!r} is not a date or time such as 2026-11-01 or 2026-11-01T09:00+00:00"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def parse_int(value: Any, field: str, low: int, high: int, default: int) -> int:
    """A whole number from a form or query, within ``[low, high]``."""
    if value is None or str(value).strip() == "":
        return default
    try:
        number = int(str(value).strip())
    except ValueError:
        raise ValidationError(f"{field} must be a whole number, got {str(value)[:40]!r}") from None
    if not low <= number <= high:
        raise ValidationError(f"{field} must be from {low} to {high}, got {number}")
    return number


def parse_pairs(text: str | None, field: str) -> dict[str, str]:
    """``key=value, key=value`` (or a JSON object) from a form field, e.g. a scope: ``actor=alice, tag.team=x``."""
    if text is None or not text.strip():
        return {}
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            value = json.loads(stripped)
        except ValueError:
            raise ValidationError(f"{field}: not a JSON object: {stripped[:60]!r}") from None
        if not isinstance(value, dict):
            raise ValidationError(f"{field}: not a JSON object")
        return value
    pairs: dict[str, str] = {}
    for item in stripped.split(","):
        if not item.strip():
            continue
        key, sep, val = item.partition("=")
        if not sep or not key.strip():
            raise ValidationError(f"{field}: {item.strip()[:60]!r} is not key=value (e.g. actor=alice)")
        pairs[key.strip()] = val.strip()
    return pairs


def scope_dict(pairs: dict[str, Any]) -> dict[str, Any]:
    """A scope from flat pairs: ``tag.<name>=v`` become ``tags``; the Scope model checks the keys."""
    scope: dict[str, Any] = {}
    for key, value in pairs.items():
        if key.startswith("tag."):
            scope.setdefault("tags", {})[key[4:]] = value
        else:
            scope[key] = value
    return scope


def scope_text(policy: Policy) -> str:
    """A policy's scope as the form writes it: ``actor=alice, tag.team=x`` (empty: the whole tenant)."""
    data = policy.scope.as_dict()
    parts = [f"{k}={v}" for k, v in data.items() if k != "tags"]
    tags: dict[str, str] = dict(policy.scope.tags)
    parts += [f"tag.{k}={v}" for k, v in tags.items()]
    return ", ".join(parts)


# -- usage history with keyset pages -----------------------------------------------------------------------------


@dataclass(frozen=True)
class UsageQuery:
    """Filters of the history: column values, tags, and the time range ``[since, until)``."""

    filters: dict[str, str]
    tags: dict[str, str]
    since: datetime | None = None
    until: datetime | None = None

    @classmethod
    def parse(cls, params: dict[str, Any]) -> UsageQuery:
        filters = {}
        for key in CALL_DIMENSIONS:
            value = params.get(key)
            if value is not None and str(value).strip():
                filters[key] = str(value).strip()
        tags = parse_pairs(params.get("tag"), "tag")
        for key, value in tags.items():
            if not isinstance(value, str):
                raise ValidationError(f"tag {key!r}: the value must be text")
        since, until = parse_time(params.get("since"), "since"), parse_time(params.get("until"), "until")
        if since and until and since >= until:
            raise ValidationError("since must be before until")
        return cls(filters, tags, since, until)

    def params(self) -> dict[str, str]:
        """The filters as query parameters (for links to the next page and to exports)."""
        out = dict(self.filters)
        if self.tags:
            out["tag"] = ", ".join(f"{k}={v}" for k, v in self.tags.items())
        if self.since:
            out["since"] = self.since.isoformat()
        if self.until:
            out["until"] = self.until.isoformat()
        return out

    def matches(self, record: UsageRecord) -> bool:
        return all(record.tags.get(k) == v for k, v in self.tags.items())


def encode_cursor(at: datetime, skip: list[str]) -> str:
    raw = json.dumps({"at": at.isoformat(), "skip": skip}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, list[str]]:
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        at = datetime.fromisoformat(data["at"])
        skip = [str(s) for s in data["skip"]]
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise ValidationError("cursor: not a cursor this console handed out; start again from the first page") from None
    if at.tzinfo is None or len(skip) > MAX_LIST_LIMIT:
        raise ValidationError("cursor: not a cursor this console handed out; start again from the first page")
    return at, skip


def usage_page(
    services: BudgetServices, actor: Actor, query: UsageQuery, limit: int, cursor: str | None = None
) -> tuple[list[UsageRecord], str | None]:
    """One page of usage, newest first, and the cursor of the next page (None on the last page).

    The cursor is the time of the page's last row plus the call ids already shown at that exact time, so
    the next page starts right after it with one indexed query, however deep it is (keyset, not offset).
    """
    until, skip = query.until, list[str]()
    if cursor:
        at, skip = decode_cursor(cursor)
        until = at + _ONE_TICK if until is None or at < until else until
    seen = set(skip)
    rows: list[UsageRecord] = []
    fetch = min(MAX_LIST_LIMIT, limit + len(skip) + 1)
    scanned = 0
    while True:
        batch = services.tracking.list_usage(actor, fetch, query.filters, query.since, until)
        scanned += len(batch)
        for record in batch:
            if record.call_id in seen:
                continue
            if query.matches(record):
                rows.append(record)
                if len(rows) > limit:
                    break
        if len(rows) > limit or len(batch) < fetch or scanned >= MAX_TAG_SCAN:
            break
        # Only a tag filter (or many rows at one instant) gets here: go on from the batch's last time.
        last = batch[-1].recorded_at
        seen |= {r.call_id for r in batch if r.recorded_at == last}
        until = _aware(last) + _ONE_TICK
        fetch = MAX_LIST_LIMIT
    more = len(rows) > limit
    rows = rows[:limit]
    if not more or not rows:
        return rows, None
    last_at = rows[-1].recorded_at
    same = [r.call_id for r in rows if r.recorded_at == last_at]
    if cursor and skip and _aware(last_at) == decode_cursor(cursor)[0]:
        same = skip + same
    return rows, encode_cursor(_aware(last_at), same)


def usage_rows(services: BudgetServices, actor: Actor, query: UsageQuery, limit: int) -> list[UsageRecord]:
    """Up to ``limit`` filtered rows, newest first (for exports)."""
    rows: list[UsageRecord] = []
    cursor: str | None = None
    while len(rows) < limit:
        page, cursor = usage_page(services, actor, query, min(MAX_LIST_LIMIT - 1, limit - len(rows)), cursor)
        rows += page
        if cursor is None:
            break
    return rows


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


# -- policy standings ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Standing:
    """Where a policy stands in its current window: what the dashboard's progress bar draws."""

    policy: Policy
    spent: Decimal
    limit: Decimal
    reserved: Decimal | None
    projected: Decimal | None
    window_start: datetime | None
    window_end: datetime | None

    @property
    def percent(self) -> Decimal:
        return (self.spent * 100 / self.limit).quantize(Decimal("0.1")) if self.limit else Decimal(0)

    def share(self, amount: Decimal | None) -> Decimal:
        """``amount`` as a percent of the limit, capped at 100 (the width of a bar segment)."""
        if not amount or not self.limit:
            return Decimal(0)
        return min(Decimal(100), amount * 100 / self.limit).quantize(Decimal("0.1"))

    def as_dict(self) -> dict[str, Any]:
        return {
            "policy_id": self.policy.id,
            "policy": self.policy.name,
            "enabled": self.policy.enabled,
            "period": self.policy.period,
            "currency": self.policy.currency,
            "spent": str(self.spent),
            "reserved": None if self.reserved is None else str(self.reserved),
            "limit": str(self.limit),
            "percent_used": str(self.percent),
            "projected": None if self.projected is None else str(self.projected),
            "window_start": self.window_start.isoformat() if self.window_start else None,
            "window_end": self.window_end.isoformat() if self.window_end else None,
        }


def standing(services: BudgetServices, actor: Actor, policy: Policy) -> Standing:
    """Spend, limit and projection of ``policy`` in its current window, from the tracking service.

    Reserved amounts come from ``BudgetPolicyService.standings``, as enforcement sees them.
    """
    scope = policy.scope
    reserved: Decimal | None = None
    exact = getattr(services.policies, "standings", None)
    if callable(exact):
        (found,) = exact(actor, [policy.id])
        reserved = found.reserved
    try:
        projection = services.tracking.get_projection(scope, policy.period, actor=actor, timezone=policy.timezone)
        summary, projected = projection.summary, projection.projected_cost
    except ValidationError:  # a lifetime ("total") period has no end to project to
        summary = services.tracking.get_usage_summary(scope, policy.period, actor=actor, timezone=policy.timezone)
        projected = None
    limit = summary.limit if summary.policy == policy.name and summary.limit is not None else policy.limit
    return Standing(policy, summary.total_cost, limit, reserved, projected, summary.start, summary.end)


# -- reports ------------------------------------------------------------------------------------------------------

REPORTS = ("summary", "by", "trend", "compare", "projection")
GRANULARITIES = ("hour", "day", "week", "month")


@dataclass(frozen=True)
class ReportQuery:
    """The parameters every report shares, parsed once for pages, API and exports."""

    period: str = "month"
    scope: dict[str, Any] | None = None
    timezone: str = "UTC"
    dimension: str = "provider"
    granularity: str = "day"
    periods: int = 14

    @classmethod
    def parse(cls, params: dict[str, Any]) -> ReportQuery:
        dimension = str(params.get("dimension") or "provider")
        if dimension not in CALL_DIMENSIONS:
            raise ValidationError(f"unknown report dimension {dimension[:40]!r}; allowed: {', '.join(CALL_DIMENSIONS)}")
        granularity = str(params.get("granularity") or "day")
        if granularity not in GRANULARITIES:
            raise ValidationError(
                f"unknown trend granularity {granularity[:40]!r}; allowed: {', '.join(GRANULARITIES)}"
            )
        return cls(
            period=str(params.get("period") or "month").strip(),
            scope=scope_dict(parse_pairs(params.get("scope"), "scope")) or None,
            timezone=str(params.get("timezone") or "UTC").strip(),
            dimension=dimension,
            granularity=granularity,
            periods=parse_int(params.get("periods"), "periods", 1, 1000, 14),
        )

    def params(self) -> dict[str, str]:
        out = {"period": self.period, "timezone": self.timezone, "dimension": self.dimension}
        out |= {"granularity": self.granularity, "periods": str(self.periods)}
        if self.scope:
            flat = {k: v for k, v in self.scope.items() if k != "tags"}
            flat |= {f"tag.{k}": v for k, v in (self.scope.get("tags") or {}).items()}
            out["scope"] = ", ".join(f"{k}={v}" for k, v in flat.items())
        return out


def run_report(services: BudgetServices, actor: Actor, kind: str, q: ReportQuery) -> tuple[Any, str]:
    """The report ``kind`` (summary, by, trend, compare, projection) and its title, from the tracking service."""
    tracking = services.tracking
    if kind == "summary":
        return tracking.get_usage_summary(q.scope, q.period, actor=actor, timezone=q.timezone), f"spend this {q.period}"
    if kind == "by":
        rows = tracking.get_spend_by(q.dimension, q.scope, q.period, actor=actor, timezone=q.timezone)
        return rows, f"spend by {q.dimension} this {q.period}"
    if kind == "trend":
        points = tracking.get_spend_trend(
            q.scope, q.periods, granularity=q.granularity, actor=actor, timezone=q.timezone
        )
        return points, f"spend per {q.granularity}"
    if kind == "compare":
        return tracking.compare_periods(q.scope, q.period, actor=actor, timezone=q.timezone), (
            f"this {q.period} vs the last"
        )
    if kind == "projection":
        return tracking.get_projection(q.scope, q.period, actor=actor, timezone=q.timezone), (
            f"projection to the end of this {q.period}"
        )
    raise ValidationError(f"unknown report {kind[:40]!r}; reports: {', '.join(REPORTS)}")
