"""The server-side reserve and settle routines (issue #12) on PostgreSQL and MariaDB.

A call in the steady state is one statement to reserve and one to settle, with no BEGIN/COMMIT of the
client's; everything the routines cannot do (a counter that does not exist yet, a policy that lets a call
over its limit, a hold taken by another process, an expired hold, a vanished counter) is handed to the
Python path with nothing written, and the money comes out the same.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import peewee as pw
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atlas_budget_plugin import BudgetServices, BudgetSettings, bootstrap
from atlas_budget_plugin.store import SCHEMA_VERSION, database, routines
from atlas_budget_plugin.store.models import Hold, SchemaVersion, SpendCounter, UsageRow
from atlas_budget_plugin.types import Actor
from hookspecs import LLMCall, LLMUsage

from ..backends import server_url
from ..conftest import FakeClock

ADMIN = Actor(id="root", tenant="default", roles=frozenset({"budget:admin"}))
SERVERS = [pytest.param("postgres", marks=pytest.mark.postgres), pytest.param("mysql", marks=pytest.mark.mysql)]
NANO = Decimal(10) ** 9


@pytest.fixture(params=SERVERS)
def url(request: pytest.FixtureRequest) -> str:
    return server_url(request.param)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2026, 3, 10, 12, 30, tzinfo=timezone.utc))


@pytest.fixture
def make(url: str, clock: FakeClock, tmp_path: Path) -> Iterator[Any]:
    made: list[BudgetServices] = []

    def build(**overrides: Any) -> BudgetServices:
        overrides.setdefault("spool_path", tmp_path / f"spool{len(made)}.jsonl")
        services = bootstrap(BudgetSettings.load(None, database_url=url, **overrides), clock=clock)
        made.append(services)
        return services

    yield build
    for services in made:
        services.close()


def call(call_id: str, cost: str = "0.01", **kw: Any) -> LLMCall:
    kw.setdefault("actor", "alice")
    return LLMCall(call_id=call_id, provider="openai", model="gpt-4o", estimated_cost=Decimal(cost), **kw)


def spend(cost: str) -> LLMUsage:
    return LLMUsage(input_tokens=10, output_tokens=10, cost=Decimal(cost))


def run(services: BudgetServices, call_id: str, estimate: str = "0.01", cost: str = "0.01", **kw: Any) -> bool:
    """pre + post of one call; whether it was allowed."""
    operation = call(call_id, estimate, **kw)
    decision = services.policies.check_budget(operation)
    if decision.allowed:
        services.tracking.record_call(operation, spend(cost))
    return decision.allowed


@contextmanager
def statements(services: BudgetServices) -> Iterator[list[str]]:
    """Every statement and transaction command the services send while the block runs."""
    seen: list[str] = []
    db = services.db
    execute, begin, commit = db.execute_sql, db.begin, db.commit

    def spy_execute(sql: str, params: Any = None, *args: Any, **kwargs: Any) -> Any:
        seen.append(sql.strip().split("(")[0][:100])
        return execute(sql, params, *args, **kwargs)

    def spy_begin(*args: Any, **kwargs: Any) -> Any:
        seen.append("BEGIN")
        return begin(*args, **kwargs)

    def spy_commit(*args: Any, **kwargs: Any) -> Any:
        seen.append("COMMIT")
        return commit(*args, **kwargs)

    db.execute_sql, db.begin, db.commit = spy_execute, spy_begin, spy_commit  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        del db.execute_sql, db.begin, db.commit


def ledger_statements(seen: list[str]) -> list[str]:
    """The statements of the ledger (without the policy cache's generation check)."""
    return [s for s in seen if "budget_meta" not in s]


def counter_rows(services: BudgetServices, name: str) -> dict[datetime, tuple[Decimal, Decimal]]:
    policy = services.policies.repository.by_name("default", name)
    assert policy is not None
    with services.db.bind_ctx([SpendCounter]):
        rows = list(SpendCounter.select().where(SpendCounter.policy_id == policy.id, SpendCounter.part == ""))
    return {r.window_start: (Decimal(r.spent_units) / NANO, Decimal(r.reserved_units) / NANO) for r in rows}


def recorded(services: BudgetServices) -> Decimal:
    with services.db.bind_ctx([UsageRow]):
        return Decimal(sum(r.cost_units for r in UsageRow.select())) / NANO


def holds(services: BudgetServices) -> int:
    with services.db.bind_ctx([Hold]):
        return int(Hold.select().count())


def test_the_routines_are_installed_with_the_schema(make: Any) -> None:
    services = make()
    assert routines.present(services.db)


def test_a_call_takes_one_statement_to_reserve_and_one_to_settle(make: Any, clock: FakeClock) -> None:
    services = make()
    for name, period in [("h", "hour"), ("d", "day"), ("m", "month"), ("r", "rolling:24h"), ("t", "total")]:
        services.policies.create_policy(ADMIN, {"name": name, "period": period, "limit": "100"})
    services.policies.create_policy(
        ADMIN, {"name": "carry", "period": "week", "limit": "100", "rollover_cap": "10", "scope": {"actor": "alice"}}
    )
    assert run(services, "warm-1")  # the first call of a window creates the counters (the Python path)
    with statements(services) as seen:
        assert run(services, "steady")
    assert seen == [
        f"SELECT status, spent, reserved, carry FROM {routines.RESERVE}",
        f"SELECT status, spent, reserved, carry FROM {routines.SETTLE}",
    ] or seen == [f"CALL {routines.RESERVE}", f"CALL {routines.SETTLE}"]  # no "did a policy change?" read either
    assert "BEGIN" not in seen and "COMMIT" not in seen
    assert all(spent == Decimal("0.02") and held == 0 for spent, held in counter_rows(services, "h").values())
    assert recorded(services) == Decimal("0.02") and holds(services) == 0


def test_a_denial_costs_one_statement_and_writes_nothing(make: Any) -> None:
    services = make()
    services.policies.create_policy(ADMIN, {"name": "tight", "period": "day", "limit": "0.025"})
    assert run(services, "a") and run(services, "b")
    with statements(services) as seen:
        assert not run(services, "c")
    assert len(ledger_statements(seen)) == 1 and "BEGIN" not in seen
    assert holds(services) == 0 and recorded(services) == Decimal("0.02")
    decision = services.policies.check_budget(call("d"))
    assert not decision.allowed and "tight" in decision.reason and decision.deciding_policy == "tight"


@pytest.mark.parametrize("enforcement", ["warn", "soft_block"])
def test_a_policy_that_lets_a_call_over_its_limit_takes_the_python_path(make: Any, enforcement: str) -> None:
    services = make()
    services.policies.create_policy(
        ADMIN, {"name": "soft", "period": "day", "limit": "0.015", "enforcement": enforcement}
    )
    tags = {"budget_override": "soft"} if enforcement == "soft_block" else {}
    assert run(services, "a", tags=tags)
    operation = call("b", tags=tags)
    decision = services.policies.check_budget(operation)
    assert decision.allowed and decision.warnings
    assert holds(services) == 1  # held over the limit, as the policy allows
    services.tracking.record_call(operation, spend("0.01"))
    assert [v for v in counter_rows(services, "soft").values()] == [(Decimal("0.02"), Decimal(0))]


def test_a_hold_taken_by_another_process_is_settled_on_its_own_window(make: Any, clock: FakeClock) -> None:
    first, second = make(), make()
    first.policies.create_policy(ADMIN, {"name": "hourly", "period": "hour", "limit": "10"})
    assert run(first, "warm")
    operation = call("x")
    assert first.policies.check_budget(operation).allowed
    admitted = clock()
    clock.advance(hours=1)  # settled in the next hour, by another process
    record = second.tracking.record_call(operation, spend("0.5"))
    assert record.recorded_at == admitted.replace(microsecond=0) or record.recorded_at == admitted
    rows = counter_rows(second, "hourly")
    assert rows[admitted.replace(minute=0, second=0, microsecond=0, tzinfo=None)] == (Decimal("0.51"), Decimal(0))
    assert holds(second) == 0


def test_an_expired_hold_is_charged_once_when_the_call_ends(make: Any, clock: FakeClock) -> None:
    services = make(reservation_ttl=60)
    services.policies.create_policy(ADMIN, {"name": "daily", "period": "day", "limit": "10"})
    assert run(services, "warm")
    operation = call("late")
    assert services.policies.check_budget(operation).allowed
    clock.advance(minutes=5)
    assert services.ledger.expire(clock()) == 1
    services.tracking.record_call(operation, spend("0.3"))
    services.tracking.record_call(operation, spend("0.3"))  # a repeated post changes nothing
    assert list(counter_rows(services, "daily").values()) == [(Decimal("0.31"), Decimal(0))]
    assert recorded(services) == Decimal("0.31") and holds(services) == 0


def test_rollover_reads_the_previous_window_and_keeps_its_counter(make: Any, clock: FakeClock) -> None:
    services = make()
    clock.advance(days=-1)
    services.policies.create_policy(ADMIN, {"name": "carry", "period": "day", "limit": "1", "rollover_cap": "0.5"})
    clock.advance(days=1)  # no call in the policy's first day: its whole budget is unused
    assert run(services, "first")  # the previous day's counter is made from what was recorded (nothing)
    assert len(counter_rows(services, "carry")) == 2
    with statements(services) as seen:
        decision = services.policies.check_budget(call("second", "0.9"))
    assert len(ledger_statements(seen)) == 1
    assert decision.allowed and decision.standings[0].limit == Decimal("1.5")
    assert not services.policies.check_budget(call("third", "0.9")).allowed  # 0.01 + 0.9 held + 0.9 > 1.5


def test_rolling_windows_sum_the_hours_in_them(make: Any, clock: FakeClock) -> None:
    services = make()
    services.policies.create_policy(ADMIN, {"name": "roll", "period": "rolling:3h", "limit": "1"})
    for hour in range(4):
        assert run(services, f"h{hour}", "0.3", "0.3")
        clock.advance(hours=1)
    # now 16:30: the window is 13:30..16:30 by hour buckets 14..16 -> the calls of 14:30 and 15:30 count
    decision = services.policies.check_budget(call("now", "0.4"))
    assert decision.standings[0].spent == Decimal("0.6") and decision.allowed
    assert not services.policies.check_budget(call("over", "0.01")).allowed  # 0.6 + 0.4 held + 0.01 > 1


def test_a_counter_vanishing_under_a_settlement_undoes_it_and_the_python_path_records_it(
    make: Any, clock: FakeClock
) -> None:
    services = make()
    clock.advance(days=-1)
    services.policies.create_policy(ADMIN, {"name": "carry", "period": "day", "limit": "1", "rollover_cap": "0.5"})
    clock.advance(days=1)
    assert run(services, "first")
    operation = call("x")
    assert services.policies.check_budget(operation).allowed
    yesterday = datetime(2026, 3, 9)
    with services.db.bind_ctx([SpendCounter]):
        assert SpendCounter.delete().where(SpendCounter.window_start == yesterday).execute() == 1
    with statements(services) as seen:
        services.tracking.record_call(operation, spend("0.2"))
    assert "BEGIN" in seen  # the routine undid its work and the Python path did it
    rows = counter_rows(services, "carry")
    assert rows[datetime(2026, 3, 10)] == (Decimal("0.21"), Decimal(0)) and rows[yesterday] == (Decimal(0), Decimal(0))
    assert recorded(services) == Decimal("0.21")


def test_threads_never_overspend_and_leave_no_hold(make: Any) -> None:
    services = make()
    services.policies.create_policy(ADMIN, {"name": "shared", "period": "day", "limit": "1"})
    services.policies.create_policy(ADMIN, {"name": "mine", "period": "hour", "limit": "0.7", "scope": {"actor": "a1"}})
    assert run(services, "warm", "0.01", "0.01", actor="a1") and run(services, "warm2", "0.01", "0.01", actor="a2")
    allowed: list[bool] = []

    def worker(n: int) -> None:
        for i in range(15):
            allowed.append(run(services, f"t{n}-{i}", "0.02", "0.02", actor=f"a{n % 2 + 1}"))
        services.db.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    total = recorded(services)
    assert total <= Decimal(1) and total == Decimal("0.02") * (sum(allowed) + 1)
    assert not all(allowed) and holds(services) == 0
    assert list(counter_rows(services, "shared").values()) == [(total, Decimal(0))]


def test_without_the_routines_every_call_takes_the_python_path(
    make: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    services = make()
    original = services.db.execute_sql

    def refuse(sql: str, *args: Any, **kwargs: Any) -> Any:
        if sql.lstrip().startswith("CREATE OR REPLACE"):
            raise pw.ProgrammingError("permission denied to create a routine")
        return original(sql, *args, **kwargs)

    monkeypatch.setattr(services.db, "execute_sql", refuse)
    with caplog.at_level(logging.WARNING):
        assert routines.install(services.db) is False
    assert "CREATE ROUTINE" in caplog.text and "EXECUTE" in caplog.text
    monkeypatch.undo()
    services.ledger._routines = False
    services.policies.create_policy(ADMIN, {"name": "daily", "period": "day", "limit": "10"})
    assert run(services, "a")
    with statements(services) as seen:
        assert run(services, "b")
    assert "BEGIN" in seen and not any("atlas_budget_" in s for s in seen)
    assert list(counter_rows(services, "daily").values()) == [(Decimal("0.02"), Decimal(0))]


def test_routine_answers_carry_exact_integers() -> None:
    assert routines.decode("mysql", ("hold", "[1, 4611686018427387904]", "[0, 0]", "[0, 0]")) == (
        "hold",
        [1, 4611686018427387904],
        [0, 0],
        [0, 0],
    )
    assert routines.decode("postgres", ("check", [Decimal(3)], [Decimal(0)], [Decimal(0)]))[1] == [3]


def test_a_moved_policy_generation_is_answered_stale_and_nothing_is_written(make: Any, clock: FakeClock) -> None:
    services = make()
    services.policies.create_policy(ADMIN, {"name": "daily", "period": "day", "limit": "10"})
    assert run(services, "warm")
    current = services.policies.repository.generation()
    reloaded: list[bool] = []
    services.ledger.policies_changed = lambda: reloaded.append(True)
    operation = call("x")
    targets = services.policies.targets_for(operation, clock())
    reserved = services.ledger.reserve(
        "x", targets, 10**7, clock(), clock(), lambda standings: True, generation=current - 1
    )
    assert reserved.outcome.value == "stale" and reloaded == [True] and holds(services) == 0
    held = services.ledger.reserve("x", targets, 10**7, clock(), clock(), lambda standings: True, generation=current)
    assert held.outcome.value == "held" and holds(services) == 1
    row = {
        "tenant": "default", "actor": "alice", "provider": "openai", "model": "gpt-4o", "operation": "chat",
        "category": None, "tags_json": "{}", "input_tokens": 1, "output_tokens": 1, "cache_read_tokens": 0,
        "cache_write_tokens": 0, "units_json": "{}", "price_source": "test", "error": None,
        "recorded_at": clock().replace(tzinfo=None), "lineage_json": "{}",
    }  # fmt: skip
    settled = services.ledger.settle(
        "x", 2 * 10**7, row, lambda moment: services.policies.targets_for(operation, moment), generation=current - 1
    )
    assert settled.created and reloaded == [True, True]  # recorded all the same, by the Python path
    assert list(counter_rows(services, "daily").values()) == [(Decimal("0.03"), Decimal(0))]
    assert holds(services) == 0


OPS = st.lists(
    st.tuples(
        st.sampled_from(["call", "call", "call", "fail", "abandon", "later", "expire"]),
        st.sampled_from(["alice", "bob"]),
        st.integers(min_value=0, max_value=40),  # estimate in cents
        st.integers(min_value=0, max_value=40),  # actual cost in cents
    ),
    min_size=1,
    max_size=25,
)


def _replay(url: str, clock_start: datetime, ops: list[tuple[str, str, int, int]], fast: bool) -> Any:
    """Run ``ops`` on a fresh store with the routines on or off; what every call got, and the final counters."""
    server_url("postgres" if url.startswith("postgres") else "mysql")  # empty the database again
    clock = FakeClock(clock_start)
    services = bootstrap(BudgetSettings.load(None, database_url=url, reservation_ttl=300), clock=clock)
    services.ledger._routines = None if fast else False
    try:
        for name, period, limit, scope in [
            ("h", "hour", "0.5", {}),
            ("d", "day", "1.2", {}),
            ("r", "rolling:2h", "0.8", {"actor": "alice"}),
            ("c", "hour", "0.3", {"actor": "bob"}),
        ]:
            services.policies.create_policy(
                ADMIN, {"name": name, "period": period, "limit": limit, "scope": scope, "rollover_cap": "0.1"}
            )
        seen = []
        for i, (op, actor, estimate, cost) in enumerate(ops):
            operation = call(f"c{i}", str(Decimal(estimate) / 100), actor=actor)
            if op == "later":
                clock.advance(minutes=37)
                continue
            if op == "expire":
                seen.append(services.ledger.expire(clock()))
                continue
            decision = services.policies.check_budget(operation)
            seen.append((decision.allowed, decision.deciding_policy, tuple(v.spent for v in decision.standings)))
            if decision.allowed and op == "call":
                services.tracking.record_call(operation, spend(str(Decimal(cost) / 100)))
            elif decision.allowed and op == "fail":
                services.tracking.record_call(operation, LLMUsage(), error=RuntimeError("provider down"))
        with services.db.bind_ctx([SpendCounter, UsageRow]):
            counters = sorted(
                (c.policy_id, c.part, c.window_start, c.spent_units, c.reserved_units) for c in SpendCounter.select()
            )
            usage = sorted((u.call_id, u.cost_units, u.recorded_at) for u in UsageRow.select())
        return seen, counters, usage
    finally:
        services.close()


@settings(
    max_examples=int(os.environ.get("BUDGET_TEST_EXAMPLES", "12")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
@given(ops=OPS)
def test_the_routines_and_the_python_path_give_the_same_money(url: str, ops: list[tuple[str, str, int, int]]) -> None:
    start = datetime(2026, 3, 10, 11, 41, tzinfo=timezone.utc)
    assert _replay(url, start, ops, fast=True) == _replay(url, start, ops, fast=False)


def test_upgrading_a_version_3_store_creates_the_routines(make: Any) -> None:
    services = make()
    db = services.db
    if isinstance(db, pw.PostgresqlDatabase):
        for name in (routines.RESERVE, routines.SETTLE, routines.STANDING):
            db.execute_sql(f"DROP FUNCTION IF EXISTS {name}")
    else:
        for name in (routines.RESERVE, routines.SETTLE):
            db.execute_sql(f"DROP PROCEDURE IF EXISTS {name}")
    with db.bind_ctx([SchemaVersion]):
        SchemaVersion.update(version=3).execute()
    assert not routines.present(db)
    assert database.initialize(db) == SCHEMA_VERSION == 4
    assert routines.present(db)
    services.ledger._routines = None  # the ledger looks again, as a process started after the upgrade would
    services.policies.create_policy(ADMIN, {"name": "daily", "period": "day", "limit": "10"})
    assert run(services, "a")
    with statements(services) as seen:
        assert run(services, "b")
    assert "BEGIN" not in seen and len(ledger_statements(seen)) == 2


def test_a_policy_created_by_another_process_counts_from_the_next_call(make: Any) -> None:
    here, there = make(), make()
    here.policies.create_policy(ADMIN, {"name": "daily", "period": "day", "limit": "10"})
    assert run(here, "a") and run(here, "b")  # this process now trusts its cached policies
    there.policies.create_policy(
        ADMIN, {"name": "tiny", "period": "day", "limit": "0.035", "scope": {"actor": "alice"}}
    )
    with statements(here) as seen:
        assert run(here, "c")  # stale: matched again, and charged to the new policy too
    assert not run(here, "d")  # 0.03 recorded + 0.01 > 0.035: the new policy denies
    assert any("budget_meta" in s for s in seen)  # the cache was reloaded after the routine said stale
    assert list(counter_rows(here, "tiny").values()) == [(Decimal("0.03"), Decimal(0))]
    # a call nothing covers in the cache is checked against the store too, so a new policy is found at once
    there.policies.create_policy(ADMIN, {"name": "bob", "period": "day", "limit": "0.001", "scope": {"actor": "bob"}})
    assert not run(here, "e", actor="bob")


def test_a_settlement_after_a_policy_change_elsewhere_is_charged_to_the_policies_of_now(make: Any) -> None:
    here, there = make(), make()
    here.policies.create_policy(ADMIN, {"name": "daily", "period": "day", "limit": "10"})
    assert run(here, "warm")
    operation = call("x")
    assert here.policies.check_budget(operation).allowed
    there.policies.create_policy(ADMIN, {"name": "new", "period": "day", "limit": "10", "scope": {"actor": "alice"}})
    here.tracking.record_call(operation, spend("0.5"))
    assert list(counter_rows(here, "new").values()) == [(Decimal("0.51"), Decimal(0))]
    assert list(counter_rows(here, "daily").values()) == [(Decimal("0.51"), Decimal(0))]


def test_doctor_says_whether_the_routines_can_be_used(make: Any, url: str, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from atlas_budget_plugin.cli import main

    services = make()
    config = tmp_path / "budget.toml"
    config.write_text(f'database_url = "{url}"\n')
    result = CliRunner().invoke(main, ["--config", str(config), "doctor"])
    assert result.exit_code == 0, result.output
    assert f"server routines: present ({routines.RESERVE}, {routines.SETTLE})" in result.output
    kind = "FUNCTION" if url.startswith("postgres") else "PROCEDURE"
    services.db.execute_sql(f"DROP {kind} {routines.RESERVE}")
    assert routines.status(services.db).startswith("missing or not executable")
    assert "CREATE ROUTINE" in routines.status(services.db) and "EXECUTE" in routines.status(services.db)


def _drop_routines(db: pw.Database) -> None:
    kind = "FUNCTION" if isinstance(db, pw.PostgresqlDatabase) else "PROCEDURE"
    names = [routines.RESERVE, routines.SETTLE] + ([routines.STANDING] if kind == "FUNCTION" else [])
    for name in names:
        db.execute_sql(f"DROP {kind} IF EXISTS {name}")


def test_routines_gone_while_running_are_left_for_the_python_path(make: Any, caplog: pytest.LogCaptureFixture) -> None:
    services = make()
    services.policies.create_policy(ADMIN, {"name": "daily", "period": "day", "limit": "10"})
    assert run(services, "a") and run(services, "b")  # through the routines
    _drop_routines(services.db)  # as an administrator revoking EXECUTE or dropping them would
    with caplog.at_level(logging.WARNING):
        assert run(services, "c")
        assert run(services, "d")
    assert caplog.text.count("takes the longer way") == 1 and services.ledger._routines is False
    assert list(counter_rows(services, "daily").values()) == [(Decimal("0.04"), Decimal(0))]
    assert recorded(services) == Decimal("0.04") and holds(services) == 0


def test_a_process_that_starts_and_finds_the_routines_missing_creates_them(make: Any) -> None:
    first = make()
    _drop_routines(first.db)
    assert not routines.present(first.db)
    second = make()  # e.g. CREATE ROUTINE granted since the store was made
    assert routines.present(second.db)
    second.policies.create_policy(ADMIN, {"name": "daily", "period": "day", "limit": "10"})
    assert run(second, "a")
    with statements(second) as seen:
        assert run(second, "b")
    assert len(seen) == 2


def test_a_user_who_may_not_create_the_tables_gets_one_line_saying_what_to_grant(url: str, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from atlas_budget_plugin.cli import main
    from atlas_budget_plugin.store import open_database

    admin = open_database(url)
    user = "atlas_budget_limited"
    scheme, rest = url.split("://", 1)
    limited = f"{scheme}://{user}@{rest.split('@', 1)[-1]}"
    if scheme.startswith("postgres"):  # since PostgreSQL 15 only the owner may create in schema public
        admin.execute_sql(f"DROP ROLE IF EXISTS {user}")
        admin.execute_sql(f"CREATE ROLE {user} LOGIN")
        drop = f"DROP OWNED BY {user}; DROP ROLE {user}"
    else:
        database = rest.rsplit("/", 1)[-1]
        admin.execute_sql(f"DROP USER IF EXISTS '{user}'@'%%'")  # the driver formats: %% is one %
        admin.execute_sql(f"CREATE USER '{user}'@'%%'")
        admin.execute_sql(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {database}.* TO '{user}'@'%%'")
        drop = f"DROP USER '{user}'@'%%'"
    try:
        config = tmp_path / "budget.toml"
        config.write_text(f'database_url = "{limited}"\n')
        result = CliRunner().invoke(main, ["--config", str(config), "doctor"])
        assert result.exit_code == 2, result.output
        assert "may not create or upgrade its tables" in result.output and "grant it CREATE" in result.output
        assert "internal error" not in result.output
    finally:
        for statement in drop.split("; "):
            admin.execute_sql(statement)
        admin.close()


# -- regressions from an adversarial review ------------------------------------------------------------------


@pytest.mark.parametrize("fast", [True, False])
def test_a_reservation_during_a_counter_rebuild_stays_counted(make: Any, fast: bool) -> None:
    """A policy change elsewhere rebuilds its counters; a call reserving meanwhile must stay counted (both paths)."""
    here, there = make(), make()
    if not fast:
        here.ledger._routines = False
    here.policies.create_policy(ADMIN, {"name": "daily", "period": "day", "limit": "1"})
    assert run(here, "warm")
    policy = here.policies.repository.by_name("default", "daily")
    assert policy is not None and policy.id is not None
    paused, go = threading.Event(), threading.Event()
    original = there.ledger._holds

    def slow_holds(where: str, params: Any) -> Any:  # the rebuild stops right after reading the policy's holds
        rows = original(where, params)
        if where.startswith("policy_id"):
            paused.set()
            go.wait(10)
        return rows

    there.ledger._holds = slow_holds  # type: ignore[method-assign]

    def rebuild() -> None:
        there.policies.update_policy(ADMIN, policy.id, {"scope": {"actor": "alice"}})
        there.db.close()

    rebuilding = threading.Thread(target=rebuild)
    rebuilding.start()
    assert paused.wait(10)
    verdicts: list[bool] = []
    reserving = threading.Thread(target=lambda: verdicts.append(here.policies.check_budget(call("a", "0.9")).allowed))
    reserving.start()
    reserving.join(0.5)  # it waits for the rebuild's locks
    go.set()
    rebuilding.join()
    reserving.join()
    here.db.close()
    assert verdicts == [True] and holds(here) == 1
    assert list(counter_rows(here, "daily").values()) == [(Decimal("0.01"), Decimal("0.9"))]
    assert not here.policies.check_budget(call("b", "0.9")).allowed  # 0.01 + 0.9 held + 0.9 > 1


@pytest.mark.parametrize("change", ["new policy", "lower limit", "raise limit"])
def test_calls_a_throttle_covers_see_policy_changes_made_elsewhere(make: Any, change: str) -> None:
    """A throttle sends the reservation the Python way, which does not check the generation: it must ask first."""
    here, there = make(), make()
    limit = "0.02" if change == "raise limit" else "10"
    throttle = {"enforcement": "throttle", "calls_per_minute": 1000}
    policy = here.policies.create_policy(ADMIN, {"name": "slow", "period": "day", "limit": limit, **throttle})
    assert policy.id is not None
    assert run(here, "a") and run(here, "b")  # this process has cached its policies
    if change == "new policy":
        there.policies.create_policy(
            ADMIN, {"name": "tiny", "period": "day", "limit": "0.005", "scope": {"actor": "alice"}}
        )
        assert not here.policies.check_budget(call("c", "0.01")).allowed  # 0.01 > 0.005
    elif change == "lower limit":
        there.policies.update_policy(ADMIN, policy.id, {"limit": "0.02"})
        assert not here.policies.check_budget(call("c", "0.01")).allowed  # 0.02 spent already
    else:
        assert not run(here, "c")  # the day's 0.02 is used up
        there.policies.update_policy(ADMIN, policy.id, {"limit": "10"})
        assert run(here, "d")


def test_a_zero_estimate_settles_in_one_statement(make: Any) -> None:
    services = make()
    services.policies.create_policy(ADMIN, {"name": "daily", "period": "day", "limit": "10"})
    assert run(services, "warm")
    with statements(services) as seen:
        assert run(services, "free", "0", "0.01")
    assert len(seen) == 2 and "BEGIN" not in seen
    assert recorded(services) == Decimal("0.02")


@pytest.mark.parametrize(("charset", "collation"), [("latin1", "latin1_swedish_ci"), ("utf8mb3", "utf8mb3_general_ci")])
def test_a_mariadb_database_whose_default_character_set_is_not_utf8mb4(
    make: Any, url: str, charset: str, collation: str
) -> None:
    """latin1 is MariaDB's own default before 11.6: routines created there must still work, with any call id."""
    if not url.startswith("mysql"):
        return  # PostgreSQL databases have one encoding for everything
    services = make()
    database = url.rsplit("/", 1)[-1].split("?")[0]

    def recreate(charset: str, collation: str) -> None:
        services.db.execute_sql(f"ALTER DATABASE `{database}` CHARACTER SET {charset} COLLATE {collation}")
        _drop_routines(services.db)
        assert routines.install(services.db)

    recreate(charset, collation)
    try:
        services.ledger._routines = None
        services.policies.create_policy(ADMIN, {"name": "daily", "period": "day", "limit": "0.05"})
        assert run(services, "warm")
        with statements(services) as seen:
            assert run(services, "调用-1", "0.02", "0.02") and run(services, "emoji-😀", "0.02", "0.02")
        assert [s for s in seen if s.startswith("CALL")] == [f"CALL {routines.RESERVE}", f"CALL {routines.SETTLE}"] * 2
        with services.db.bind_ctx([UsageRow]):
            stored = sorted(u.call_id for u in UsageRow.select())
        assert stored == sorted(["warm", "调用-1", "emoji-😀"]) and recorded(services) == Decimal("0.05")
        assert not run(services, "呼叫-1", "0.02", "0.02")
    finally:
        recreate("utf8mb4", "utf8mb4_general_ci")
