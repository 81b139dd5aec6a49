"""The SQLite ledger's hot-path shortcuts (issue #12) give exactly what the work they replace gave.

Straight-to-sqlite3 statements still raise peewee's errors and still show to query hooks; the texts cached per
target and per statement shape are the ones built from scratch; a settlement whose holds name other counters
than its targets' (policies changed while the call ran) is charged as before; the hourly rollup's range check
still refuses a total past the exact range; a lone body of a grouped commit rolls back whole on its error.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import peewee as pw
import pytest

from atlas_budget_plugin import BudgetServices
from atlas_budget_plugin.periods import parse_period
from atlas_budget_plugin.store import database
from atlas_budget_plugin.store.ledger import Ledger, Target, _sqlite_text, naive
from atlas_budget_plugin.store.models import Hold, SpendCounter, UsageHourly, UsageRow
from atlas_budget_plugin.types import Actor
from hookspecs import LLMCall

from ..conftest import FakeClock


@pytest.fixture
def services(make_services: Any, tmp_path: Any) -> BudgetServices:
    return make_services(database_url=f"sqlite:///{tmp_path / 'fast.db'}")  # these shortcuts are SQLite's


def call(call_id: str, cost: str = "1.00", **kw: Any) -> LLMCall:
    kw.setdefault("actor", "alice")
    return LLMCall(call_id=call_id, provider="openai", model="gpt-4o", estimated_cost=Decimal(cost), **kw)


def add(services: BudgetServices, admin: Actor, name: str, period: str, limit: str = "100", **extra: Any) -> None:
    services.policies.create_policy(admin, {"name": name, "period": period, "limit": limit, **extra})


def counters(services: BudgetServices) -> dict[tuple[int, str, str], tuple[int, int]]:
    return {
        (r.policy_id, r.part, str(r.window_start)): (r.spent_units, r.reserved_units) for r in SpendCounter.select()
    }


def test_statements_raise_peewees_errors(services: BudgetServices) -> None:
    ledger = services.ledger
    ledger._sql("SELECT 1").fetchall()  # connected
    with pytest.raises(pw.OperationalError):
        ledger._sql("SELECT no_such_column FROM budget_hold")
    ledger._sql("CREATE TEMP TABLE once (n INTEGER UNIQUE)")
    ledger._sql("INSERT INTO once (n) VALUES (?)", [1])
    with pytest.raises(pw.IntegrityError):
        ledger._sql("INSERT INTO once (n) VALUES (?)", [1])


def test_query_hooks_and_debug_logging_still_see_the_ledgers_statements(
    services: BudgetServices, caplog: pytest.LogCaptureFixture
) -> None:
    db: Any = services.db
    if not hasattr(db, "query_hooks"):  # pragma: no cover - a peewee without query hooks
        pytest.skip("this peewee has no query hooks")
    services.ledger._sql("SELECT 1").fetchall()
    seen: list[str] = []
    db.query_hooks.append(lambda event: seen.append(event.sql))
    try:
        services.ledger.held_units("nobody")
    finally:
        db.query_hooks.clear()
    assert any("budget_hold" in sql for sql in seen)
    with caplog.at_level(logging.DEBUG, logger="peewee"):
        services.ledger.held_units("nobody")
    assert "budget_hold" in caplog.text


def test_a_targets_sqlite_texts_are_its_fields_as_stored() -> None:
    day = datetime(2026, 3, 10, tzinfo=timezone.utc)
    target = Target(7, parse_period("rolling:24h"), day - timedelta(hours=23), day + timedelta(hours=1), 5)
    hour = replace(target, counter_start=day, part="model:x")
    assert target.sqlite_key == (7, "", _sqlite_text(target.window_start))
    assert hour.sqlite_key == (7, "model:x", str(naive(day)))
    assert hour.sqlite_span == (7, "model:x", _sqlite_text(hour.window_start), _sqlite_text(hour.window_end))
    assert target.ident == (7, "") and hour.ident == (7, "model:x")
    assert target == replace(target)  # what is cached is not part of equality or hashing
    assert hash(target) == hash(replace(target))


def test_statement_texts_are_built_once_per_shape_and_bounded(services: BudgetServices) -> None:
    ledger = services.ledger
    built: list[int] = []

    def build(n: int) -> str:
        built.append(n)
        return f"SELECT {n}"

    assert ledger._text(("probe", 3), build) == ledger._text(("probe", 3), build) == "SELECT 3"
    assert built == [3]
    for n in range(400):
        ledger._text(("probe", n), build)
    assert len(ledger._texts) <= 256
    assert ledger._text(("probe", 399), build) == "SELECT 399"  # past the bound: built every time, still right


def test_settling_after_the_policies_changed_charges_the_admitting_window_as_before(
    services: BudgetServices, admin: Actor, clock: FakeClock
) -> None:
    add(services, admin, "daily", "day")
    add(services, admin, "rolling", "rolling:24h")
    clock.advance(minutes=59, seconds=30)
    assert services.policies.check_budget(call("c1", "2.00")).allowed
    # While c1 runs: a new policy, another call settles, and the hour (a rolling window's counter) turns.
    add(services, admin, "late", "month")
    assert services.policies.check_budget(call("c2", "1.00")).allowed
    services.tracking.record_usage(call("c2"), Decimal("0.50"))
    clock.advance(minutes=5)
    services.tracking.record_usage(call("c1"), Decimal("1.25"))
    assert Hold.select().count() == 0 and services.ledger.outstanding_units() == 0
    spent: dict[str, dict[str, Decimal]] = {}
    for name in ("daily", "rolling", "late"):
        policy = services.policies.repository.by_name("default", name)
        assert policy is not None
        rows = SpendCounter.select().where(SpendCounter.policy_id == policy.id, SpendCounter.part == "")
        spent[name] = {str(r.window_start): Decimal(r.spent_units) / 10**9 for r in rows if r.spent_units}
    # Both calls count in the hour that admitted them; 'late' started from the spend already recorded in its
    # window when c2 made its counter, got c2 at c2's settlement and c1 at c1's (c1 holds nothing on it).
    assert spent == {
        "daily": {"2026-03-10 00:00:00": Decimal("1.75")},
        "rolling": {"2026-03-10 12:00:00": Decimal("1.75")},
        "late": {"2026-03-01 00:00:00": Decimal("1.75")},
    }
    assert UsageRow.select().count() == 2


def test_a_hold_whose_counter_was_dropped_is_released_without_trouble(services: BudgetServices, admin: Actor) -> None:
    add(services, admin, "daily", "day")
    assert services.policies.check_budget(call("c1", "2.00")).allowed
    Hold.update(counter_id=10_000).execute()  # a counter that no longer exists
    before = counters(services)
    record = services.tracking.record_usage(call("c1"), Decimal("1.00"))
    assert record.cost == Decimal("1.00") and Hold.select().count() == 0
    ((key, (spent, reserved)),) = counters(services).items()
    assert (spent, reserved) == (before[key][0] + 10**9, before[key][1])  # its hold stays where it was: gone


def test_the_hourly_rollup_still_refuses_a_total_past_the_exact_range(services: BudgetServices) -> None:
    big = Decimal("999999999")  # no policy: only the hourly totals stand in the way
    done = 0
    with pytest.raises(Exception, match="exact range"):
        for i in range(10):
            services.tracking.record_usage(call(f"big{i}"), big)
            done += 1
    assert done == 4  # 5 x 999,999,999 passes 2**62 nano-units
    assert UsageRow.select().count() == 4
    assert {r.calls for r in UsageHourly.select()} == {4}


def test_a_lone_grouped_body_commits_or_rolls_back_whole(services: BudgetServices) -> None:
    db = services.db
    db.execute_sql("CREATE TABLE lone (n INTEGER)")

    def good() -> int:
        db.execute_sql("INSERT INTO lone (n) VALUES (1)")
        return 1

    def bad() -> int:
        db.execute_sql("INSERT INTO lone (n) VALUES (2)")
        raise ValueError("no")

    assert database.run_grouped(db, good) == 1
    with pytest.raises(ValueError, match="no"):
        database.run_grouped(db, bad)
    assert [n for (n,) in db.execute_sql("SELECT n FROM lone").fetchall()] == [1]
    assert not db.in_transaction()


def test_ledger_on_a_closed_connection_connects(services: BudgetServices) -> None:
    services.db.close()
    assert services.ledger.outstanding_units() == 0
    assert isinstance(services.ledger, Ledger)
