"""The ledger at the edges real traffic hits (issue #10): window boundaries, expiry, policies created or
changed mid-window, long calls, reused call ids, huge amounts, and post_llm_call that never raises.

Runs on SQLite, and on PostgreSQL / MariaDB with BUDGET_TEST_BACKEND (tox -e postgres / mysql).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import peewee as pw
import pluggy
import pytest

from atlas_budget_plugin import BudgetServices
from atlas_budget_plugin.plugin import BudgetPlugin
from atlas_budget_plugin.store.models import Hold, SpendCounter, UsageRow
from atlas_budget_plugin.types import Actor
from hookspecs import CallBlocked, LLMCall, LLMUsage, guarded_call, hookimpl
from hookspecs import specs as host_specs

from ..conftest import FakeClock


def call(call_id: str, cost: str | None = None, **kw: Any) -> LLMCall:
    kw.setdefault("actor", "alice")
    return LLMCall(
        call_id=call_id,
        provider="openai",
        model="gpt-4o",
        estimated_cost=Decimal(cost) if cost else None,
        input_tokens=1000,
        max_output_tokens=500,
        **kw,
    )


def spend(cost: str) -> LLMUsage:
    return LLMUsage(input_tokens=10, output_tokens=10, cost=Decimal(cost))


def counters(services: BudgetServices, name: str) -> dict[datetime, tuple[Decimal, Decimal]]:
    """window start -> (spent, reserved) of every counter of the policy named ``name``."""
    policy = services.policies.repository.by_name("default", name)
    assert policy is not None
    rows = SpendCounter.select().where(SpendCounter.policy_id == policy.id)
    scale = Decimal(10) ** 9
    return {
        r.window_start.replace(tzinfo=timezone.utc): (Decimal(r.spent_units) / scale, Decimal(r.reserved_units) / scale)
        for r in rows
    }


def add(services: BudgetServices, admin: Actor, name: str, period: str, limit: str, **extra: Any) -> None:
    services.policies.create_policy(admin, {"name": name, "period": period, "limit": limit, **extra})


# -- 1. window boundaries -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("period", "start", "later"),
    [
        ("hour", datetime(2026, 3, 10, 12, 59, 59), timedelta(seconds=2)),
        ("rolling:24h", datetime(2026, 3, 10, 12, 59, 59), timedelta(seconds=2)),
        ("day", datetime(2026, 3, 10, 23, 59, 59), timedelta(seconds=2)),
        ("month", datetime(2026, 3, 31, 23, 59, 59), timedelta(seconds=2)),
    ],
)
def test_a_call_settled_after_its_window_is_charged_to_the_window_that_admitted_it(
    services: BudgetServices,
    host: pluggy.PluginManager,
    admin: Actor,
    clock: FakeClock,
    period: str,
    start: datetime,
    later: timedelta,
) -> None:
    clock.now = start.replace(tzinfo=timezone.utc) - timedelta(hours=2) if period == "hour" else clock.now
    add(services, admin, "p", period, "1.00")
    clock.now = start.replace(tzinfo=timezone.utc)
    (verdict,) = host.hook.pre_llm_call(call=call("a", "0.60"))
    assert verdict.allowed
    clock.now += later
    # The next window is already in use when the first call settles.
    (second,) = host.hook.pre_llm_call(call=call("b", "0.90"))
    host.hook.post_llm_call(call=call("a", "0.60"), usage=spend("0.60"), error=None)  # must not raise
    host.hook.post_llm_call(call=call("b", "0.90"), usage=spend("0.90"), error=None)
    assert services.ledger.outstanding_units() == 0
    records = {r.call_id: r for r in services.tracking.list_usage(admin)}
    assert records["a"].recorded_at == start.replace(tzinfo=timezone.utc)
    if period == "rolling:24h":
        assert not second.allowed  # the rolling window still holds call a: 0.60 + 0.90 > 1.00
        return
    assert second.allowed
    spent = sorted(counters(services, "p").items())
    # Each window's counter holds its own call, and never more than the limit.
    assert [s for _, (s, _) in spent if s] == [Decimal("0.60"), Decimal("0.90")]
    summary_now = services.tracking.get_usage_summary(None, period, actor=admin)
    assert summary_now.total_cost == Decimal("0.90")


def test_day_report_never_shows_more_than_a_block_limit_across_midnight(
    services: BudgetServices, host: pluggy.PluginManager, admin: Actor, clock: FakeClock
) -> None:
    add(services, admin, "daily", "day", "1.00")
    clock.now = datetime(2026, 3, 10, 23, 59, 0, tzinfo=timezone.utc)
    admitted = [c for c in ("x1", "x2") if host.hook.pre_llm_call(call=call(c, "0.45"))[0].allowed]
    clock.now = datetime(2026, 3, 11, 0, 0, 30, tzinfo=timezone.utc)
    today = [c for c in ("y1", "y2", "y3") if host.hook.pre_llm_call(call=call(c, "0.45"))[0].allowed]
    for c in admitted + today:
        host.hook.post_llm_call(call=call(c, "0.45"), usage=spend("0.45"), error=None)
    yesterday = services.tracking.get_usage_summary(None, "day", actor=admin, now=clock.now - timedelta(days=1))
    summary = services.tracking.get_usage_summary(None, "day", actor=admin)
    assert yesterday.total_cost == Decimal("0.90") and summary.total_cost == Decimal("0.90")
    assert {c: v[0] for c, v in counters(services, "daily").items()} == {
        datetime(2026, 3, 10, tzinfo=timezone.utc): Decimal("0.90"),
        datetime(2026, 3, 11, tzinfo=timezone.utc): Decimal("0.90"),
    }


# -- 2. expiry ------------------------------------------------------------------------------------


def test_expiry_returns_exactly_what_every_hold_held(services: BudgetServices, admin: Actor, clock: FakeClock) -> None:
    add(services, admin, "p", "day", "10.00")
    add(services, admin, "q", "month", "10.00")
    for i in range(3):  # three holds of the same amount on the same counters
        assert services.policies.check_budget(call(f"c{i}", "0.50")).allowed
    assert services.ledger.outstanding_units() == 2 * 3 * 500_000_000
    assert services.policies.expire_reservations(clock.now + timedelta(seconds=601)) == 6
    assert services.ledger.outstanding_units() == 0
    assert all(reserved == 0 for _, reserved in counters(services, "p").values())
    assert services.policies.check_budget(call("after", "9.99")).allowed


# -- 3. policies created or changed mid-window ------------------------------------------------------


def test_a_new_policy_starts_from_the_spend_already_recorded(
    services: BudgetServices, admin: Actor, clock: FakeClock
) -> None:
    for i in range(4):
        services.tracking.record_usage(call(f"old{i}"), Decimal("2.50"))
    add(services, admin, "late", "month", "5.00")
    decision = services.policies.check_budget(call("new", "4.00"))
    assert not decision.allowed and "spent 10.00" in decision.reason
    summary = services.tracking.get_usage_summary(None, "month", actor=admin)
    assert summary.percent_used == Decimal(200)


def test_a_new_rolling_policy_counts_the_earlier_hours_of_its_window(
    services: BudgetServices, admin: Actor, clock: FakeClock
) -> None:
    for hours_ago in (30, 20, 5, 0):
        services.tracking.record_usage(
            call(f"h{hours_ago}"), Decimal("1.00"), recorded_at=clock.now - timedelta(hours=hours_ago)
        )
    add(services, admin, "rolling", "rolling:24h", "10.00")
    (standing,) = services.policies.check_budget(call("probe", "0.01")).standings
    assert standing.spent == Decimal("3.00")


def test_widening_a_scope_or_changing_the_period_recounts(
    services: BudgetServices, admin: Actor, clock: FakeClock
) -> None:
    services.policies.create_policy(admin, {"name": "p", "scope": {"actor": "alice"}, "period": "day", "limit": "100"})
    services.tracking.record_usage(call("a1"), Decimal("1.00"))
    services.tracking.record_usage(call("b1", actor="bob"), Decimal("5.00"))
    services.tracking.record_usage(
        call("a0", actor="alice"), Decimal("7.00"), recorded_at=clock.now - timedelta(days=2)
    )
    assert services.policies.check_budget(call("x1", "0")).standings[0].spent == Decimal("1.00")
    policy = services.policies.repository.by_name("default", "p")
    assert policy is not None
    widened = services.policies.update_policy(admin, policy.id or 0, {"scope": {}})
    assert services.policies.check_budget(call("x2", "0")).standings[0].spent == Decimal("6.00")
    services.policies.update_policy(admin, widened.id or 0, {"period": "month"})
    assert services.policies.check_budget(call("x3", "0")).standings[0].spent == Decimal("13.00")


def test_a_changed_policy_keeps_the_holds_of_calls_in_flight(
    services: BudgetServices, admin: Actor, clock: FakeClock
) -> None:
    add(services, admin, "p", "day", "1.00")
    assert services.policies.check_budget(call("held", "0.80")).allowed
    policy = services.policies.repository.by_name("default", "p")
    assert policy is not None
    services.policies.update_policy(admin, policy.id or 0, {"period": "month"})
    assert not services.policies.check_budget(call("second", "0.30")).allowed
    services.tracking.record_call(call("held", "0.80"), spend("0.70"))
    assert services.ledger.outstanding_units() == 0
    assert services.policies.check_budget(call("third", "0.30")).allowed


# -- 4. calls longer than reservation_ttl -----------------------------------------------------------


def test_a_long_call_keeps_its_money_held(
    services: BudgetServices, host: pluggy.PluginManager, admin: Actor, clock: FakeClock
) -> None:
    add(services, admin, "p", "day", "1.00")
    with guarded_call(host, call("stream", "0.80")) as guard:
        for _ in range(3):  # a stream open for 30 minutes; ticks every 10
            clock.advance(seconds=600)
            host.hook.on_period_tick(now=clock.now)
            with pytest.raises(CallBlocked):
                with guarded_call(host, call(f"other{clock.now.minute}", "0.80")):
                    pass
        guard.usage = spend("0.80")
    summary = services.tracking.get_usage_summary(None, "day", actor=admin)
    assert summary.total_cost == Decimal("0.80")
    assert services.ledger.outstanding_units() == 0


# -- 5. a settled call id cannot hold again ---------------------------------------------------------


def test_a_settled_call_id_cannot_take_a_second_hold(
    services: BudgetServices, host: pluggy.PluginManager, admin: Actor
) -> None:
    add(services, admin, "p", "day", "10.00")
    with guarded_call(host, call("same", "1.00")) as guard:
        guard.usage = spend("1.00")
    with pytest.raises(CallBlocked) as blocked:
        with guarded_call(host, call("same", "1.00")) as guard:
            guard.usage = spend("1.00")
    assert "already recorded" in blocked.value.verdict.reason
    assert services.ledger.outstanding_units() == 0
    assert UsageRow.select().count() == 1 and Hold.select().count() == 0


# -- 7. amounts the store cannot total exactly ------------------------------------------------------


def test_totals_never_leave_exact_arithmetic(services: BudgetServices, admin: Actor) -> None:
    add(services, admin, "p", "total", "999999999", enforcement="warn")
    big = Decimal("999999999")
    recorded = 0
    with pytest.raises(Exception) as refused:
        for i in range(10):
            services.tracking.record_usage(call(f"big{i}"), big)
            recorded += 1
    assert "exact range" in str(refused.value) or "out of range" in str(refused.value).lower()
    assert recorded == 4  # 5 x 999,999,999 passes 2**62 nano-units
    summary = services.tracking.get_usage_summary(None, "total", actor=admin)
    assert summary.total_cost == big * 4 and summary.calls == 4
    assert UsageRow.select().count() == 4


# -- 8. post_llm_call never raises and never loses a billed call ------------------------------------


@pytest.mark.parametrize(
    ("usage", "why"),
    [
        (LLMUsage(input_tokens=10, output_tokens=10, units={"widgets": 3}), "cannot price"),
        (LLMUsage(response={"id": "no usage block here"}), "usage unreadable"),
        (LLMUsage(response=object()), "usage unreadable"),
        (LLMUsage(input_tokens=10**16, output_tokens=1), "cannot price"),
        (LLMUsage(), "no usage reported"),
    ],
)
def test_what_cannot_be_read_or_priced_is_recorded_at_the_estimate(
    services: BudgetServices, host: pluggy.PluginManager, admin: Actor, usage: LLMUsage, why: str
) -> None:
    add(services, admin, "p", "day", "10.00")
    with guarded_call(host, call("c", "0.42")) as guard:
        guard.usage = usage
    (record,) = services.tracking.list_usage(admin)
    assert record.cost == Decimal("0.42")
    assert "estimate" in record.price_source and why in record.price_source
    assert services.ledger.outstanding_units() == 0


@pytest.mark.parametrize(
    ("field", "value", "text"),
    [
        ("call_id", "x" * 201, "1 to 200 characters"),
        ("actor", "a\x00b", "NUL"),
        ("model", "gpt-\ud800", "surrogate"),
        ("input_tokens", 10**16, "tokens"),
        ("tags", {"env": "\x00"}, "NUL"),
    ],
)
def test_inputs_the_store_cannot_hold_are_refused_before_the_call(
    services: BudgetServices, host: pluggy.PluginManager, admin: Actor, field: str, value: Any, text: str
) -> None:
    add(services, admin, "p", "day", "10.00")
    fields: dict[str, Any] = {
        "call_id": "ok",
        "provider": "openai",
        "model": "gpt-4o",
        "actor": "alice",
        "estimated_cost": Decimal("0.10"),
    }
    bad = LLMCall(**{**fields, field: value})
    with pytest.raises(CallBlocked) as blocked:
        with guarded_call(host, bad):
            pytest.fail("the call must not be made")
    assert "cannot be recorded" in blocked.value.verdict.reason and text in blocked.value.verdict.reason
    assert services.ledger.outstanding_units() == 0 and UsageRow.select().count() == 0


def test_when_store_and_spool_both_fail_the_hold_stays_and_nothing_raises(
    services: BudgetServices, host: pluggy.PluginManager, admin: Actor, tmp_path: Path, monkeypatch: Any
) -> None:
    add(services, admin, "p", "day", "10.00")
    (verdict,) = host.hook.pre_llm_call(call=call("c", "0.50"))
    assert verdict.allowed

    def down(*args: Any, **kw: Any) -> Any:
        raise pw.OperationalError("disk I/O error")

    monkeypatch.setattr(services.tracking, "record_usage", down)
    assert services.tracking.spool is not None
    monkeypatch.setattr(services.tracking.spool, "path", tmp_path)  # a folder: the spool cannot be written
    host.hook.post_llm_call(call=call("c", "0.50"), usage=spend("0.50"), error=None)  # must not raise
    assert services.ledger.outstanding_units() == 500_000_000  # the money stays counted


def test_every_plugins_post_runs_even_when_one_raises(services: BudgetServices, admin: Actor) -> None:
    add(services, admin, "p", "day", "10.00")

    class Broken:
        @hookimpl
        def post_llm_call(self, call: LLMCall, usage: LLMUsage, error: BaseException | None) -> None:
            raise RuntimeError("a broken plugin")

    for order in ("broken first", "broken last"):
        pm = pluggy.PluginManager(host_specs.PROJECT)
        pm.add_hookspecs(host_specs)
        if order == "broken last":
            pm.register(Broken(), name="broken")
        pm.register(BudgetPlugin(services), name="budget")
        if order == "broken first":
            pm.register(Broken(), name="broken")
        with guarded_call(pm, call(order, "0.10")) as guard:
            guard.usage = spend("0.10")
    assert {r.call_id for r in services.tracking.list_usage(admin)} == {"broken first", "broken last"}
    assert services.ledger.outstanding_units() == 0


# -- 9. rollover in reports --------------------------------------------------------------------------


def test_summary_and_projection_use_the_limit_with_rollover(
    services: BudgetServices, admin: Actor, clock: FakeClock
) -> None:
    add(services, admin, "p", "day", "100", rollover_cap="25")
    clock.advance(days=1)
    services.tracking.record_usage(call("c"), Decimal("110"))
    summary = services.tracking.get_usage_summary(None, "day", actor=admin)
    assert summary.limit == Decimal(125) and summary.percent_used == Decimal(88)
    decision = services.policies.check_budget(call("d", "15.00"))
    assert decision.allowed and decision.standings[0].limit == summary.limit
    projection = services.tracking.get_projection(None, "day", actor=admin)
    assert projection.summary.limit == Decimal(125)
