"""Text compares exactly on every backend: tenants, call ids, actors, tags (issue #10, item 6).

MariaDB's default collation made ``'ACME' = 'acme '`` true; these run on the backend
BUDGET_TEST_BACKEND names. The migration test needs MariaDB/MySQL and runs wherever
the server is reachable.
"""

from __future__ import annotations

import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from atlas_budget_plugin import BudgetServices
from atlas_budget_plugin.exceptions import NotFoundError
from atlas_budget_plugin.store import database, open_database
from atlas_budget_plugin.store.migrations import V1_TABLES, exact_text, inexact_columns
from atlas_budget_plugin.store.models import (
    ALL_MODELS,
    SCHEMA_VERSION,
    PolicyRow,
    SchemaVersion,
    UsageHourly,
    UsageRow,
    exact_collation,
)
from atlas_budget_plugin.store.reports import Filter
from atlas_budget_plugin.types import Actor, Scope
from hookspecs import LLMCall

from ..backends import server_url
from ..conftest import FakeClock

#: Look-alikes of each other: none may stand for another anywhere.
TENANTS = ["acme", "ACME", "acme ", "Acme", " acme"]
CALL_IDS = ["Call-1", "call-1", "call-1 ", "CALL-1", "call-1  "]
ACTORS = ["alice", "Alice", "alice ", "ALICE"]
#: Tag values: case, spaces, LIKE metacharacters, JSON escapes, the LIKE escape used, unicode.
TAG_VALUES = [
    "prod",
    "PROD",
    "prod ",
    " prod",
    "Prod",
    "pr_d",
    "pr%d",
    "p%",
    "_",
    'pr"od',
    "pr\\od",
    'pr\\"od',
    "!",
    "!%",
    "prød",
    "PRØD",
    "日本",
    "",
]


def call(call_id: str, tenant: str = "default", **kw: Any) -> LLMCall:
    fields = {"provider": "openai", "model": "gpt-4o", **kw}
    return LLMCall(call_id=call_id, tenant=tenant, **fields)


def admin_of(tenant: str) -> Actor:
    return Actor(id=f"root-{tenant}", tenant=tenant, roles=frozenset({"budget:admin"}))


def test_look_alike_tenants_are_separate_tenants(services: BudgetServices) -> None:
    acme = admin_of("acme")
    policy = services.policies.create_policy(acme, {"name": "cap", "period": "day", "limit": "1"})
    services.tracking.record_usage(call("a1", tenant="acme"), Decimal("1"))
    for tenant in TENANTS[1:]:
        other = admin_of(tenant)
        assert services.policies.list_policies(other) == []
        with pytest.raises(NotFoundError):
            services.policies.get_policy(other, policy.id or 0)
        with pytest.raises(NotFoundError):
            services.policies.update_policy(other, policy.id or 0, {"limit": "500"})
        with pytest.raises(NotFoundError):
            services.policies.delete_policy(other, policy.id or 0)
        assert services.policies.audit_trail(other) == []
        summary = services.tracking.get_usage_summary(None, "day", actor=other)
        assert (summary.calls, summary.total_cost, summary.policy) == (0, 0, None)
        assert services.tracking.get_spend_by("actor", None, "total", actor=other) == []
        assert services.tracking.list_usage(other) == []
        # acme's spent-out block policy does not apply to the look-alike tenant's calls
        decision = services.policies.check_budget(call(f"probe-{tenant!r}", tenant=tenant, estimated_cost=Decimal(5)))
        assert decision.allowed and decision.standings == ()
        services.ledger.release(f"probe-{tenant!r}")
        # ... which may have a policy of the same name of its own
        services.policies.create_policy(other, {"name": "cap", "period": "day", "limit": "7"})
    assert services.policies.get_policy(acme, policy.id or 0).limit == Decimal(1)
    assert [p.limit for p in services.policies.list_policies(acme)] == [Decimal(1)]
    assert [a["action"] for a in services.policies.audit_trail(acme)] == ["create"]
    assert services.tracking.get_usage_summary(None, "day", actor=acme).calls == 1
    assert not services.policies.check_budget(call("over", tenant="acme", estimated_cost=Decimal(1))).allowed


def test_look_alike_call_ids_are_separate_calls(services: BudgetServices, admin: Actor) -> None:
    services.policies.create_policy(admin, {"name": "all", "period": "day", "limit": "1000"})
    for n, call_id in enumerate(CALL_IDS, start=1):
        c = call(call_id, estimated_cost=Decimal(n))
        assert services.policies.check_budget(c).allowed
    for n, call_id in enumerate(CALL_IDS, start=1):
        record = services.tracking.record_usage(call(call_id), Decimal(n))
        assert record is not None and record.call_id == call_id and record.cost == Decimal(n)
    total = Decimal(sum(range(1, len(CALL_IDS) + 1)))
    summary = services.tracking.get_usage_summary(None, "day", actor=admin)
    assert (summary.calls, summary.total_cost) == (len(CALL_IDS), total)
    assert services.ledger.outstanding_units() == 0
    standing = services.policies.check_budget(call("next", estimated_cost=Decimal(0))).standings[0]
    assert standing.spent == total
    assert sorted(r.call_id for r in services.tracking.list_usage(admin)) == sorted(CALL_IDS)
    # a repeated callback of each is still recognised as that call, not another one
    assert services.tracking.record_usage(call("call-1 "), Decimal(99)).cost == Decimal(3)  # type: ignore[union-attr]
    assert services.tracking.get_usage_summary(None, "day", actor=admin).calls == len(CALL_IDS)


def test_look_alike_actors_are_separate_rows(services: BudgetServices, admin: Actor, clock: FakeClock) -> None:
    for n, actor in enumerate(ACTORS):
        for provider in ("openai", "google"):
            services.tracking.record_usage(call(f"{actor}-{provider}", actor=actor, provider=provider), Decimal(2**n))
    clock.advance(minutes=30)  # the day's whole hours come from the rollups, the last hour's from raw rows
    expected = {actor: Decimal(2 * 2**n) for n, actor in enumerate(ACTORS)}
    for period in ("day", "rolling:1h"):
        rows = services.tracking.get_spend_by("actor", None, period, actor=admin)
        assert {r.key: r.total_cost for r in rows} == expected, period
        assert all(r.calls == 2 for r in rows)
        # a column filter groups raw rows in SQL
        rows = services.tracking.get_spend_by("actor", {"provider": "google"}, period, actor=admin)
        assert {r.key: r.total_cost * 2 for r in rows} == expected, period
        for actor, cost in expected.items():
            summary = services.tracking.get_usage_summary({"actor": actor}, period, actor=admin)
            assert (summary.calls, summary.total_cost) == (2, cost), (period, actor)
    assert len(services.tracking.list_usage(admin, filters={"actor": "alice"})) == 2


def test_tag_reports_count_exactly_what_enforcement_counts(
    services: BudgetServices, admin: Actor, clock: FakeClock
) -> None:
    policies = {}
    for i, value in enumerate(TAG_VALUES):
        policy = {"name": f"env-{i}", "period": "day", "limit": "1000000", "scope": {"tag.env": value}}
        policies[value] = services.policies.create_policy(admin, policy)
    costs = {value: Decimal(2**i) for i, value in enumerate(TAG_VALUES)}
    for i, value in enumerate(TAG_VALUES):
        services.tracking.record_usage(call(f"c{i}", tags={"env": value, "team": "red"}), costs[value])
    # look-alike keys, and other tags holding the text of an env tag
    services.tracking.record_usage(call("k1", tags={"Env": "prod", "env ": "prod"}), Decimal("0.5"))
    services.tracking.record_usage(call("k2", tags={"note": '"env": "prod"', "x": 'env": "PROD'}), Decimal("0.25"))
    clock.advance(minutes=30)
    for value in TAG_VALUES:
        probe = call(f"probe-{value!r}", tags={"env": value}, estimated_cost=Decimal(0))
        (standing,) = services.policies.check_budget(probe).standings
        services.ledger.release(probe.call_id)
        assert standing.policy_name == policies[value].name and standing.spent == costs[value], repr(value)
        for scope in ({"tag.env": value}, {"tags": {"env": value}}, {"tag.env": value, "tag.team": "red"}):
            for period in ("day", "rolling:1h"):
                summary = services.tracking.get_usage_summary(scope, period, actor=admin)
                assert (summary.calls, summary.total_cost) == (1, costs[value]), (value, scope, period)
            rows = services.tracking.get_spend_by("provider", scope, "day", actor=admin)
            assert [(r.key, r.total_cost, r.calls) for r in rows] == [("openai", costs[value], 1)], repr(value)
            trend = services.tracking.get_spend_trend(scope, 2, granularity="hour", actor=admin)
            assert sum(p.total_cost for p in trend) == costs[value] and sum(p.calls for p in trend) == 1
        other_team = {"tag.env": value, "tag.team": "blue"}
        assert services.tracking.get_usage_summary(other_team, "day", actor=admin).calls == 0
    assert services.tracking.get_usage_summary({"tag.Env": "prod"}, "day", actor=admin).total_cost == Decimal("0.5")
    assert services.tracking.get_usage_summary({"tag.note": '"env": "prod"'}, "day", actor=admin).calls == 1
    assert services.tracking.get_usage_summary({"tag.env": "prod", "tag.note": "x"}, "day", actor=admin).calls == 0


def test_report_filter_matches_like_scope() -> None:
    """The report filter of a scope holds the same keys and values (what the store then compares exactly)."""
    from atlas_budget_plugin.tracking_service import filter_for

    scope = Scope.model_validate({"actor": "Alice ", "team": "Red", "tag.env": "pr%d"})
    assert filter_for(scope) == Filter({"actor": "Alice "}, {"env": "pr%d", "team": "Red"})


# -- the migration ------------------------------------------------------------------------------


def _to_v1(db: Any) -> None:
    """Make a fresh schema what version 1 was on MariaDB: tables in the server's default collation."""
    db.execute_sql("DROP TABLE IF EXISTS `budget_scope_link`")  # a later table: migration 2 -> 3 makes it
    for table in V1_TABLES:
        db.execute_sql(f"ALTER TABLE `{table}` CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci")
    SchemaVersion.update(version=1).execute()


def _text_columns(db: Any) -> list[tuple[str, str, str]]:
    return list(
        db.execute_sql(
            "SELECT TABLE_NAME, COLUMN_NAME, COLLATION_NAME FROM information_schema.COLUMNS "
            "WHERE TABLE_SCHEMA = DATABASE() AND COLLATION_NAME IS NOT NULL ORDER BY 1, 2"
        ).fetchall()
    )


def test_fresh_mysql_tables_and_comparisons_are_exact() -> None:
    db = open_database(server_url("mysql"))
    try:
        assert database.initialize(db) == SCHEMA_VERSION
        collation = exact_collation(db)
        assert collation == "utf8mb4_nopad_bin" or collation == "utf8mb4_0900_bin"
        columns = _text_columns(db)
        without_text = {"budget_threshold_mark"}  # counters got a text column, part, in schema 3
        tables = set(V1_TABLES) - without_text | {"budget_scope_link"}
        assert {t for t, _, _ in columns} == tables and {c for _, _, c in columns} == {collation}
        for model in ALL_MODELS:
            assert not inexact_columns(db, model._meta.table_name, collation or "")
        # the server itself: WHERE and UNIQUE keys tell look-alikes apart
        now = "2026-03-10 12:00:00"
        for call_id in CALL_IDS:
            db.execute_sql(
                "INSERT INTO budget_usage (call_id, tenant, provider, model, operation, tags_json, input_tokens, "
                "output_tokens, cache_read_tokens, cache_write_tokens, cost_units, units_json, price_source, "
                "recorded_at) VALUES (%s, 't', 'p', 'm', 'chat', '{}', 0, 0, 0, 0, 1, '{}', 'x', %s)",
                (call_id, now),
            )
        for call_id in CALL_IDS:
            assert UsageRow.select().where(UsageRow.call_id == call_id).count() == 1
        assert UsageRow.select().where(UsageRow.tags_json == "{} ").count() == 0
    finally:
        db.close()


def test_migration_makes_existing_mysql_tables_exact_and_keeps_data(clock: FakeClock) -> None:
    url = server_url("mysql")
    db = open_database(url)
    try:
        database.initialize(db)
        _to_v1(db)
        assert database.schema_version(db) == 1
        assert {c for _, _, c in _text_columns(db)} == {"utf8mb4_general_ci"}
        now = clock.now.replace(tzinfo=None)
        PolicyRow.insert(
            tenant="acme", name="cap", period="day", limit_units=10**9, created_at=now, updated_at=now
        ).execute()
        usage = {
            "tenant": "acme",
            "provider": "openai",
            "model": "gpt-4o",
            "operation": "chat",
            "cost_units": 5,
            "price_source": "catalogue",
            "recorded_at": now,
        }
        UsageRow.insert(call_id="call-1", actor="alice", tags_json='{"env": "prod"}', **usage).execute()
        UsageHourly.insert(tenant="acme", dimension="actor", key="alice", hour=now, calls=1, cost_units=5).execute()
        # version 1 compared inexactly: this is what the migration fixes
        assert PolicyRow.select().where(PolicyRow.tenant == "ACME ").count() == 1
        with pytest.raises(Exception, match="Duplicate"):
            UsageRow.insert(call_id="Call-1", actor="Alice", **usage).execute()

        assert database.initialize(db) == SCHEMA_VERSION
        assert database.schema_version(db) == SCHEMA_VERSION
        collation = exact_collation(db)
        assert {c for _, _, c in _text_columns(db)} == {collation}
        # data kept
        assert [(p.tenant, p.name, p.limit_units) for p in PolicyRow.select()] == [("acme", "cap", 10**9)]
        assert [(u.call_id, u.actor, u.tags_json, u.cost_units) for u in UsageRow.select()] == [
            ("call-1", "alice", '{"env": "prod"}', 5)
        ]
        assert [(h.key, h.calls, h.cost_units) for h in UsageHourly.select()] == [("alice", 1, 5)]
        # and compared exactly now
        for tenant in TENANTS[1:]:
            assert PolicyRow.select().where(PolicyRow.tenant == tenant).count() == 0
        assert PolicyRow.select().where(PolicyRow.tenant == "acme").count() == 1
        UsageRow.insert(call_id="Call-1", actor="Alice", **usage).execute()
        UsageRow.insert(call_id="call-1 ", actor="alice ", **usage).execute()
        grouped = UsageRow.select(UsageRow.actor).group_by(UsageRow.actor).tuples()
        assert sorted(a for (a,) in grouped) == ["Alice", "alice", "alice "]
        UsageHourly.insert(tenant="acme", dimension="actor", key="Alice", hour=now, calls=1).execute()
        assert UsageHourly.select().where(UsageHourly.key == "alice").count() == 1

        # idempotent: again, and from a half-done run (one table converted, the version not yet written)
        exact_text(db)
        assert database.initialize(db) == SCHEMA_VERSION
        db.execute_sql("ALTER TABLE budget_audit CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci")
        SchemaVersion.update(version=1).execute()
        assert database.initialize(db) == SCHEMA_VERSION and {c for _, _, c in _text_columns(db)} == {collation}
        assert UsageRow.select().count() == 3
    finally:
        db.close()


def test_migration_when_processes_start_at_once() -> None:
    url = server_url("mysql")
    db = open_database(url)
    database.initialize(db)
    _to_v1(db)
    db.close()
    script = "import sys; from atlas_budget_plugin.store import database, open_database; "
    script += "print(database.initialize(open_database(sys.argv[1])))"
    root = Path(__file__).resolve().parents[2]
    starts = [
        subprocess.Popen([sys.executable, "-c", script, url], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=120) for p in starts]
    assert [(p.returncode, out.strip()) for p, (out, _) in zip(starts, outputs, strict=True)] == [
        (0, str(SCHEMA_VERSION).encode())
    ] * 4
    db = open_database(url)
    try:
        database.initialize(db)
        assert SchemaVersion.select().count() == 1 and database.schema_version(db) == SCHEMA_VERSION
        assert {c for _, _, c in _text_columns(db)} == {exact_collation(db)}
    finally:
        db.close()


def test_migration_is_a_no_op_where_text_already_compares_exactly(services: BudgetServices) -> None:
    """PostgreSQL and SQLite: nothing to convert; the version still moves to 2 (MariaDB: see above)."""
    db = services.db
    if exact_collation(db) is not None:
        pytest.skip("MariaDB/MySQL: the migration tests above convert real tables")
    services.tracking.record_usage(call("x"), Decimal(1))
    SchemaVersion.update(version=1).execute()
    assert database.initialize(db) == SCHEMA_VERSION and UsageRow.select().count() == 1
    assert UsageRow.select().where(UsageRow.call_id == "X").count() == 0
    assert UsageRow.select().where(UsageRow.call_id == "x ").count() == 0
