"""Reports read hourly rollups plus raw edges; they must equal sums over the raw rows, exactly."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from atlas_budget_plugin import BudgetServices
from atlas_budget_plugin.exceptions import ValidationError
from atlas_budget_plugin.store import database
from atlas_budget_plugin.types import Actor
from hookspecs import LLMCall

from ..conftest import FakeClock

PROVIDERS = ["openai", "anthropic", "google"]
CATEGORIES = ["chat", "code", None]
ACTORS = ["alice", "bob", None]


def seed(
    services: BudgetServices, clock: FakeClock, n: int, rng: random.Random, span_hours: int = 72
) -> list[dict[str, Any]]:
    """Record ``n`` calls at random moments over ``span_hours`` before the clock; return what was recorded."""
    end = clock.now
    records = []
    for i in range(n):
        at = end - timedelta(seconds=rng.randint(1, span_hours * 3600))
        clock.now = at
        data = {
            "provider": rng.choice(PROVIDERS),
            "category": rng.choice(CATEGORIES),
            "actor": rng.choice(ACTORS),
            "model": f"m{rng.randint(1, 4)}",
            "tags": {"team": rng.choice(["red", "blue"])},
        }
        cost = Decimal(rng.randint(0, 10**11)).scaleb(-9)
        services.tracking.record_usage(LLMCall(call_id=f"r{i}", **data), cost, {"input_tokens": rng.randint(0, 99)})
        records.append({**data, "cost": cost, "at": at})
    clock.now = end
    return records


def raw_sum(records: list[dict[str, Any]], start: datetime, end: datetime, **match: Any) -> Decimal:
    total = Decimal(0)
    for r in records:
        if start <= r["at"] < end and all((r["tags"].get(k) if k == "team" else r[k]) == v for k, v in match.items()):
            total += r["cost"]
    return total


@pytest.fixture
def fast_sqlite(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests check arithmetic, not durability: skip the fsync per transaction."""
    monkeypatch.setitem(database.SQLITE_PRAGMAS, "synchronous", "off")


def test_ten_thousand_records_sum_exactly_everywhere(
    fast_sqlite: None, make_services: Any, admin: Actor, clock: FakeClock
) -> None:
    services = make_services()
    records = seed(services, clock, 10_000, random.Random(11), span_hours=24 * 9)
    total = sum((r["cost"] for r in records), Decimal(0))
    month_start = datetime(2026, 3, 1, tzinfo=timezone.utc)
    in_month = raw_sum(records, month_start, clock.now + timedelta(days=1))
    summary = services.tracking.get_usage_summary(None, "month", actor=admin)
    assert summary.total_cost == in_month and summary.calls == sum(1 for r in records if r["at"] >= month_start)
    assert services.tracking.get_usage_summary(None, "total", actor=admin).total_cost == total
    for dimension in ("provider", "category", "actor", "model", "operation"):
        rows = services.tracking.get_spend_by(dimension, None, "total", actor=admin)
        assert sum(r.total_cost for r in rows) == total, dimension
    by_provider = {r.key: r.total_cost for r in services.tracking.get_spend_by_provider(None, "total", actor=admin)}
    assert by_provider == {
        p: raw_sum(records, datetime.min.replace(tzinfo=timezone.utc), clock.now, provider=p) for p in PROVIDERS
    }
    for granularity, count in (("hour", 300), ("day", 12), ("week", 3)):
        trend = services.tracking.get_spend_trend(None, count, granularity=granularity, actor=admin)
        assert sum(p.total_cost for p in trend) == raw_sum(records, trend[0].start, trend[-1].end), granularity


@pytest.mark.parametrize("tz", ["UTC", "Asia/Kolkata", "America/St_Johns"])
def test_windows_off_the_hour_use_raw_edges(
    fast_sqlite: None, make_services: Any, admin: Actor, clock: FakeClock, tz: str
) -> None:
    services = make_services()
    clock.now = datetime(2026, 3, 10, 12, 40, tzinfo=timezone.utc)
    records = seed(services, clock, 600, random.Random(5), span_hours=60)
    for period in ("day", "week", "hour", "rolling:6h"):
        summary = services.tracking.get_usage_summary(None, period, actor=admin, timezone=tz)
        assert summary.total_cost == raw_sum(records, summary.start, summary.end), (period, tz)
        alice = services.tracking.get_usage_summary({"actor": "alice"}, period, actor=admin, timezone=tz)
        assert alice.total_cost == raw_sum(records, summary.start, summary.end, actor="alice")
        red = services.tracking.get_usage_summary(
            {"team": "red", "provider": "openai"}, period, actor=admin, timezone=tz
        )
        assert red.total_cost == raw_sum(records, summary.start, summary.end, team="red", provider="openai")
        filtered = services.tracking.get_spend_by("category", {"actor": "bob"}, period, actor=admin, timezone=tz)
        for row in filtered:
            assert row.total_cost == raw_sum(records, summary.start, summary.end, actor="bob", category=row.key)


def test_pruning_keeps_totals(fast_sqlite: None, make_services: Any, admin: Actor, clock: FakeClock) -> None:
    services = make_services()
    records = seed(services, clock, 300, random.Random(2), span_hours=24 * 5)
    before = services.tracking.get_usage_summary(None, "total", actor=admin)
    assert services.tracking.prune(0) == 0
    pruned = services.tracking.prune(2)
    assert 0 < pruned < 300
    after = services.tracking.get_usage_summary(None, "total", actor=admin)
    assert after.total_cost == before.total_cost == sum((r["cost"] for r in records), Decimal(0))
    assert len(services.tracking.list_usage(admin, limit=1000)) == 300 - pruned


def test_summary_limit_comparison_and_projection(services: BudgetServices, admin: Actor, clock: FakeClock) -> None:
    services.policies.create_policy(
        admin, {"name": "alice-day", "scope": {"actor": "alice"}, "period": "day", "limit": "10"}
    )
    clock.now = datetime(2026, 3, 9, 12, tzinfo=timezone.utc)
    services.tracking.record_usage(LLMCall(call_id="y", provider="openai", model="m", actor="alice"), Decimal("4"))
    clock.now = datetime(2026, 3, 10, 6, tzinfo=timezone.utc)  # a quarter of the day has passed
    services.tracking.record_usage(LLMCall(call_id="t", provider="openai", model="m", actor="alice"), Decimal("2"))
    summary = services.tracking.get_usage_summary({"actor": "alice"}, "day", actor=admin)
    assert (summary.policy, summary.limit, summary.percent_used) == ("alice-day", Decimal("10"), Decimal("20"))
    assert services.tracking.get_usage_summary(None, "day", actor=admin).limit is None
    comparison = services.tracking.compare_periods({"actor": "alice"}, "day", actor=admin)
    assert comparison.previous.total_cost == Decimal("4") and comparison.current.total_cost == Decimal("2")
    assert comparison.change == Decimal("-2") and comparison.change_percent == Decimal("-50")
    projection = services.tracking.get_projection({"actor": "alice"}, "day", actor=admin)
    assert projection.elapsed_fraction == Decimal("0.25")
    assert projection.projected_cost == Decimal("8") and projection.projected_percent == Decimal("80")
    for bad in (services.tracking.compare_periods, services.tracking.get_projection):
        with pytest.raises(ValidationError, match="lifetime"):
            bad(None, "total", actor=admin)
    empty = services.tracking.compare_periods(None, "week", actor=admin, now=datetime(2020, 1, 1, tzinfo=timezone.utc))
    assert empty.change_percent is None


def test_list_usage_filters(services: BudgetServices, admin: Actor) -> None:
    services.tracking.record_usage(LLMCall(call_id="a", provider="openai", model="m", actor="alice"), Decimal("1"))
    services.tracking.record_usage(LLMCall(call_id="b", provider="google", model="m", actor="bob"), Decimal("1"))
    assert [r.call_id for r in services.tracking.list_usage(admin, filters={"provider": "google"})] == ["b"]
    with pytest.raises(ValidationError, match="unknown usage filter"):
        services.tracking.list_usage(admin, filters={"colour": "x"})
