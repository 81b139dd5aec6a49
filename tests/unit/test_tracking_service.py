"""BudgetTrackingService: exact and idempotent recording, threshold events, reports."""

from __future__ import annotations

import itertools
import random
import threading
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from atlas_budget_plugin import BudgetServices
from atlas_budget_plugin.exceptions import PermissionDenied, ValidationError
from atlas_budget_plugin.types import Actor, BudgetEvent
from hookspecs import LLMCall, LLMUsage

from ..conftest import FakeClock


def call(call_id: str, actor: str = "alice", **kw: Any) -> LLMCall:
    fields = {"provider": "openai", "model": "gpt-4o", "category": "chat", **kw}
    return LLMCall(call_id=call_id, actor=actor, **fields)


@pytest.fixture
def events(services: BudgetServices) -> list[BudgetEvent]:
    seen: list[BudgetEvent] = []
    services.bus.subscribe("budget.*", seen.append)
    return seen


def test_record_is_idempotent_and_returns_first(services: BudgetServices, events: list[BudgetEvent]) -> None:
    first = services.tracking.record_usage(call("x"), Decimal("0.10"), {"input_tokens": 5})
    again = services.tracking.record_usage(call("x"), Decimal("0.99"), {"input_tokens": 6})
    assert again == first and again.cost == Decimal("0.10") and again.input_tokens == 5
    assert [e.topic for e in events] == ["budget.usage_recorded"]


def test_concurrent_duplicate_callbacks_record_once(services: BudgetServices, admin: Actor) -> None:
    services.policies.create_policy(admin, {"name": "all", "period": "day", "limit": "100"})
    c = call("dup", estimated_cost=Decimal("1"))
    assert services.policies.check_budget(c).allowed
    results = []

    def post() -> None:
        results.append(services.tracking.record_call(c, LLMUsage(input_tokens=10, cost=Decimal("0.75"))))

    threads = [threading.Thread(target=post) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({r.recorded_at for r in results if r}) == 1
    summary = services.tracking.get_usage_summary(None, "day", actor=admin)
    assert (summary.calls, summary.total_cost) == (1, Decimal("0.75"))
    assert services.ledger.outstanding_units() == 0
    standing = services.policies.check_budget(call("next", estimated_cost=Decimal("0"))).standings[0]
    assert standing.spent == Decimal("0.75")


def test_failed_call_without_usage_releases_hold(services: BudgetServices, admin: Actor) -> None:
    services.policies.create_policy(admin, {"name": "all", "period": "day", "limit": "100"})
    c = call("f", estimated_cost=Decimal("5"))
    services.policies.check_budget(c)
    assert services.tracking.record_call(c, LLMUsage(), RuntimeError("timeout")) is None
    assert services.ledger.outstanding_units() == 0
    assert services.tracking.get_usage_summary(None, "day", actor=admin).calls == 0


def test_failed_call_with_usage_is_recorded_with_error(services: BudgetServices, admin: Actor) -> None:
    record = services.tracking.record_call(
        call("s"), LLMUsage(input_tokens=100, output_tokens=3), OSError("stream cut")
    )
    assert record is not None and record.error == "OSError: stream cut" and record.cost > 0
    assert record.price_source.startswith("genai-prices")


@pytest.mark.parametrize(
    ("cost", "meta", "text"),
    [
        (Decimal("-1"), {}, "must not be negative"),
        (1.5, {}, "not a float"),
        (Decimal("1"), {"input_tokens": -1}, "input_tokens must be a whole number"),
        (Decimal("1"), {"colour": 1}, "unknown usage metadata"),
    ],
)
def test_record_rejects_bad_input(services: BudgetServices, cost: Any, meta: dict[str, Any], text: str) -> None:
    with pytest.raises(ValidationError, match=text):
        services.tracking.record_usage(call("bad"), cost, meta)
    assert services.tracking.list_usage(Actor.system()) == []


def test_threshold_reached_once_per_window(
    services: BudgetServices, admin: Actor, events: list[BudgetEvent], clock: FakeClock
) -> None:
    services.policies.create_policy(
        admin, {"name": "all", "period": "day", "limit": "1.00", "thresholds": [50, 80, 100]}
    )
    for i, cost in enumerate(["0.30", "0.25", "0.10", "0.30", "0.20"]):
        services.tracking.record_usage(call(f"t{i}"), Decimal(cost))
    reached = [e.threshold for e in events if e.topic == "budget.threshold_reached"]  # type: ignore[attr-defined]
    assert reached == [50, 80, 100]
    clock.advance(days=1)
    services.tracking.record_usage(call("t-next"), Decimal("0.60"))
    reached = [e.threshold for e in events if e.topic == "budget.threshold_reached"]  # type: ignore[attr-defined]
    assert reached == [50, 80, 100, 50]


def test_sums_are_exact(services: BudgetServices, admin: Actor) -> None:
    rng = random.Random(3)
    costs = [Decimal(rng.randint(0, 10**12)).scaleb(-9) for _ in range(400)]
    providers = ["openai", "anthropic", "google"]
    expected: dict[str, Decimal] = {}
    for i, cost in enumerate(costs):
        provider = providers[i % 3]
        expected[provider] = expected.get(provider, Decimal(0)) + cost
        services.tracking.record_usage(call(f"e{i}", provider=provider, model=f"m{i % 5}"), cost)
    summary = services.tracking.get_usage_summary(None, "month", actor=admin)
    assert summary.total_cost == sum(costs) and summary.calls == 400
    assert summary.average_cost == (sum(costs) / 400).quantize(Decimal("1e-9"))
    by_provider = {r.key: r.total_cost for r in services.tracking.get_spend_by_provider(None, "month", actor=admin)}
    assert by_provider == expected
    assert sum(r.total_cost for r in services.tracking.get_spend_by("model", None, "month", actor=admin)) == sum(costs)


def test_reports_by_dimension_scope_and_tenant(services: BudgetServices, admin: Actor) -> None:
    services.tracking.record_usage(call("a", category="code", tags={"team": "red"}), Decimal("1"))
    services.tracking.record_usage(call("b", actor="bob", category="chat", tags={"team": "blue"}), Decimal("2"))
    services.tracking.record_usage(call("c", tenant="acme"), Decimal("4"))
    by_category = services.tracking.get_spend_by_category(None, "day", actor=admin)
    assert [(r.key, r.total_cost) for r in by_category] == [("chat", Decimal("2.00")), ("code", Decimal("1.00"))]
    assert services.tracking.get_usage_summary({"actor": "bob"}, "day", actor=admin).total_cost == Decimal("2")
    assert services.tracking.get_usage_summary({"team": "red"}, "day", actor=admin).total_cost == Decimal("1")
    assert services.tracking.get_usage_summary({"tag.team": "blue"}, "day", actor=admin).calls == 1
    acme = Actor(id="x", tenant="acme", roles=frozenset({"budget:read"}))
    assert services.tracking.get_usage_summary(None, "day", actor=acme).total_cost == Decimal("4")
    with pytest.raises(PermissionDenied):
        services.tracking.get_usage_summary(None, "day", actor=Actor(id="nobody"))
    with pytest.raises(ValidationError, match="unknown report dimension"):
        services.tracking.get_spend_by("colour", None, "day", actor=admin)
    with pytest.raises(ValidationError, match="unknown period"):
        services.tracking.get_usage_summary(None, "eon", actor=admin)
    with pytest.raises(ValidationError, match="invalid report scope"):
        services.tracking.get_usage_summary({"planet": "x"}, "day", actor=admin)


def test_trend_buckets_and_boundaries(services: BudgetServices, admin: Actor, clock: FakeClock) -> None:
    start = clock.now
    for day in range(3):
        clock.now = start.replace(hour=23, minute=59, second=59) + timedelta(days=day)
        services.tracking.record_usage(call(f"d{day}"), Decimal(day + 1))
    clock.now = start + timedelta(days=3)
    trend = services.tracking.get_spend_trend(None, 5, actor=admin)
    assert [p.total_cost for p in trend] == [Decimal(0), Decimal(1), Decimal(2), Decimal(3), Decimal(0)]
    assert trend[-1].start == datetime(2026, 3, 13, tzinfo=timezone.utc)
    assert all(a.end == b.start for a, b in itertools.pairwise(trend))
    with pytest.raises(ValidationError):
        services.tracking.get_spend_trend(None, 0, actor=admin)
    with pytest.raises(ValidationError):
        services.tracking.get_spend_trend(None, 3, granularity="decade", actor=admin)


def test_list_usage_pages_by_keyset_newest_first(services: BudgetServices, admin: Actor, clock: FakeClock) -> None:
    start = clock.now
    for i in range(7):
        services.tracking.record_usage(call(f"k{i}"), Decimal("0.01"), recorded_at=start + timedelta(minutes=i % 3))
    pages, before = [], None
    while True:
        page = services.tracking.list_usage(admin, limit=3, before=before)
        if not page:
            break
        pages.append([r.call_id for r in page])
        last = page[-1]
        assert last.id is not None
        before = (last.recorded_at, last.id)
    seen = [c for p in pages for c in p]
    assert sorted(seen) == sorted(f"k{i}" for i in range(7)) and len(seen) == 7  # each once
    times = [r.recorded_at for r in services.tracking.list_usage(admin, limit=7)]
    assert times == sorted(times, reverse=True)
    with pytest.raises(ValidationError, match="before must be"):
        services.tracking.list_usage(admin, before=("yesterday", 3))  # type: ignore[arg-type]
