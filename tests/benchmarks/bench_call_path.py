"""Benchmark: pre_llm_call + post_llm_call with 10 matching policies on SQLite, against a raw floor.

The floor is plain ``sqlite3`` writing the same rows into the same tables (same
indexes) at the same durability (WAL, synchronous=FULL): one transaction that
adds a hold to 10 counters, one that turns them into spend, deletes the holds,
inserts the usage row and adds it to its six hourly rollup rows. The figure
that matters is the ratio, measured in the same process (target: <= 3x).

Run: ``tox -e bench`` or ``pytest tests/benchmarks/bench_call_path.py --benchmark-only``.
"""

from __future__ import annotations

import itertools
import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from atlas_budget_plugin import BudgetSettings, bootstrap
from atlas_budget_plugin.plugin import BudgetPlugin
from atlas_budget_plugin.store import initialize, open_database
from atlas_budget_plugin.store.database import SQLITE_PRAGMAS
from hookspecs import LLMCall, LLMUsage

POLICIES = 10
ROLLUP = [
    ("*", ""),
    ("actor", "alice"),
    ("provider", "openai"),
    ("model", "gpt-4o"),
    ("operation", "chat"),
    ("category", ""),
]


@pytest.fixture
def plugin(tmp_path: Path) -> Any:
    policies = [
        {
            "name": f"p{i}",
            "period": "month",
            "limit": "1000000",
            "scope": {"actor": "alice"} if i % 2 else {},
            "thresholds": [50, 80, 100],
        }
        for i in range(POLICIES)
    ]
    # Distinct scope+period per policy: alternate periods so no two collide.
    periods = ["hour", "day", "week", "month", "quarter", "year", "total", "rolling:24h", "rolling:7d", "rolling:30d"]
    for policy, period in zip(policies, periods, strict=True):
        policy["period"] = period
    settings = BudgetSettings.load(None, database_url=f"sqlite:///{tmp_path}/b.db", policies=policies)
    services = bootstrap(settings)
    yield BudgetPlugin(services)
    services.close()


def test_budget_call_path(benchmark: Any, plugin: BudgetPlugin) -> None:
    counter = itertools.count()
    usage = LLMUsage(input_tokens=1000, output_tokens=200, cost=Decimal("0.0042"))

    def one_call() -> None:
        call = LLMCall(
            call_id=f"c{next(counter)}",
            provider="openai",
            model="gpt-4o",
            actor="alice",
            estimated_cost=Decimal("0.01"),
        )
        verdict = plugin.pre_llm_call(call)
        assert verdict is not None and verdict.allowed and len(verdict.details["policies"]) == POLICIES
        plugin.post_llm_call(call, usage, None)

    benchmark.pedantic(one_call, rounds=300, warmup_rounds=20)


def test_raw_sqlite_floor(benchmark: Any, tmp_path: Path) -> None:
    """The same rows in the same tables (same indexes), written by plain sqlite3 at the same durability."""
    path = tmp_path / "raw.db"
    schema = open_database(f"sqlite:///{path}")
    initialize(schema)
    schema.close()
    db = sqlite3.connect(path, isolation_level=None)
    for pragma, value in SQLITE_PRAGMAS.items():
        db.execute(f"PRAGMA {pragma}={value}")
    db.executemany(
        "INSERT INTO budget_spend_counter (policy_id, window_start, spent_units, reserved_units, carry_units) "
        "VALUES (?, '2026-11-01 00:00:00', 0, 0, 0)",
        [(i,) for i in range(POLICIES)],
    )
    counter = itertools.count()
    now = "2026-11-28 12:00:00.123456"

    def one_call() -> None:
        call_id = f"c{next(counter)}"
        db.execute("BEGIN IMMEDIATE")
        for i in range(1, POLICIES + 1):
            db.execute("UPDATE budget_spend_counter SET reserved_units = reserved_units + 10 WHERE id = ?", (i,))
            db.execute(
                "INSERT INTO budget_hold (call_id, counter_id, policy_id, amount_units, created_at, expires_at) "
                "VALUES (?, ?, ?, 10, ?, ?)",
                (call_id, i, i, now, now),
            )
        db.execute("COMMIT")
        db.execute("BEGIN IMMEDIATE")
        for i in range(1, POLICIES + 1):
            db.execute(
                "UPDATE budget_spend_counter SET reserved_units = reserved_units - 10, spent_units = spent_units + 4 "
                "WHERE id = ?",
                (i,),
            )
        db.execute("DELETE FROM budget_hold WHERE call_id = ?", (call_id,))
        db.execute(
            "INSERT INTO budget_usage (call_id, tenant, actor, provider, model, operation, category, tags_json, "
            "input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost_units, units_json, price_source, "
            "error, recorded_at) VALUES (?, 'default', 'alice', 'openai', 'gpt-4o', 'chat', NULL, '{}', 1000, 200, "
            "0, 0, 4200000, '{}', 'provider', NULL, ?)",
            (call_id, now),
        )
        db.execute(
            "INSERT INTO budget_usage_hourly (tenant, dimension, dim_value, hour, calls, cost_units, input_tokens, "
            "output_tokens, cache_read_tokens, cache_write_tokens) VALUES "
            + ", ".join("('default', ?, ?, '2026-11-28 12:00:00', 1, 4200000, 1000, 200, 0, 0)" for _ in ROLLUP)
            + " ON CONFLICT (tenant, dimension, dim_value, hour) DO UPDATE SET calls = calls + excluded.calls, "
            "cost_units = cost_units + excluded.cost_units, input_tokens = input_tokens + excluded.input_tokens, "
            "output_tokens = output_tokens + excluded.output_tokens",
            [v for pair in ROLLUP for v in pair],
        )
        db.execute("COMMIT")

    benchmark.pedantic(one_call, rounds=300, warmup_rounds=20)
    db.close()
