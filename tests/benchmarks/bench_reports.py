"""Benchmark: reports over 1,000,000 usage rows through the service vs a plain GROUP BY over raw rows.

Also measures ingest: ``record_usage`` against a plain sqlite3 INSERT of the same
row at the same durability (WAL, synchronous=FULL), each in its own transaction.
All figures come from one process, so the ratios hold on a busy machine.

Run: ``python tests/benchmarks/bench_reports.py [--rows 1000000] [--ingest 2000]``.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

from atlas_budget_plugin import BudgetSettings, bootstrap
from atlas_budget_plugin.money import from_units
from atlas_budget_plugin.store.database import SQLITE_PRAGMAS
from atlas_budget_plugin.store.ledger import USAGE_COLUMNS
from atlas_budget_plugin.types import Actor
from hookspecs import LLMCall

NOW = datetime(2026, 11, 28, 12, tzinfo=timezone.utc)
INSERT_USAGE = f"INSERT INTO budget_usage ({', '.join(USAGE_COLUMNS)}) VALUES ({', '.join('?' * len(USAGE_COLUMNS))})"
PROVIDERS = ["openai", "anthropic", "google", "mistral", "local"]


def timed(fn: Callable[[], object], repeat: int = 15) -> float:
    """Median wall time of ``fn`` in milliseconds."""
    fn()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def seed(path: Path, rows: int) -> None:
    """Bulk-load ``rows`` usage rows over the last 90 days, and their hourly rollups."""
    rng = random.Random(1)
    db = sqlite3.connect(path)
    db.execute("PRAGMA synchronous=off")
    start = NOW - timedelta(days=90)
    batch = []
    for i in range(rows):
        at = start + timedelta(seconds=rng.randint(0, 90 * 86400 - 1))
        batch.append(
            (
                f"seed-{i}",
                "default",
                f"user{rng.randint(1, 50)}",
                rng.choice(PROVIDERS),
                f"model{rng.randint(1, 8)}",
                "chat",
                rng.choice(["chat", "code", "summary"]),
                "{}",
                rng.randint(10, 5000),
                rng.randint(10, 1000),
                0,
                0,
                rng.randint(1, 50_000_000),
                "{}",
                "seed",
                None,
                str(at.replace(tzinfo=None)),
                "{}",  # lineage_json: no scope hierarchy in the benchmark
            )
        )
        if len(batch) == 50_000:
            db.executemany(INSERT_USAGE, batch)
            batch = []
    if batch:
        db.executemany(INSERT_USAGE, batch)
    hour = "strftime('%Y-%m-%d %H:00:00', recorded_at)"
    for dimension, key in [
        ("*", "''"),
        ("actor", "COALESCE(actor, '')"),
        ("provider", "provider"),
        ("model", "model"),
        ("operation", "operation"),
        ("category", "COALESCE(category, '')"),
    ]:
        db.execute(
            "INSERT INTO budget_usage_hourly (tenant, dimension, dim_value, hour, calls, cost_units, input_tokens, "
            f"output_tokens, cache_read_tokens, cache_write_tokens) SELECT tenant, '{dimension}', {key}, {hour}, "
            "COUNT(*), SUM(cost_units), SUM(input_tokens), SUM(output_tokens), 0, 0 FROM budget_usage "
            f"GROUP BY tenant, {key}, {hour}"
        )
    db.commit()
    db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--ingest", type=int, default=2_000)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp())
    url = f"sqlite:///{folder / 'bench.db'}"
    services = bootstrap(BudgetSettings.load(None, database_url=url))
    started = time.perf_counter()
    seed(folder / "bench.db", args.rows)
    print(f"seeded {args.rows:,} rows in {time.perf_counter() - started:.1f} s")
    admin = Actor.system()
    tracking = services.tracking
    raw = sqlite3.connect(folder / "bench.db")
    month_start = "2026-11-01 00:00:00"
    trend_start = str((NOW - timedelta(days=11)).replace(hour=0, tzinfo=None))

    # The service answers must equal the raw GROUP BY answers before anything is timed.
    summary = tracking.get_usage_summary(None, "month", actor=admin, now=NOW)
    raw_total = raw.execute(
        "SELECT SUM(cost_units), COUNT(*) FROM budget_usage WHERE tenant='default' AND recorded_at >= ?", (month_start,)
    ).fetchone()
    assert (summary.total_cost, summary.calls) == (from_units(raw_total[0]), raw_total[1]), (summary, raw_total)

    cases = {
        "summary (month)": (
            lambda: tracking.get_usage_summary(None, "month", actor=admin, now=NOW),
            lambda: raw.execute(
                "SELECT SUM(cost_units), COUNT(*), SUM(input_tokens), SUM(output_tokens) FROM "
                "budget_usage WHERE tenant='default' AND recorded_at >= ?",
                (month_start,),
            ).fetchall(),
        ),
        "by provider (month)": (
            lambda: tracking.get_spend_by_provider(None, "month", actor=admin, now=NOW),
            lambda: raw.execute(
                "SELECT provider, SUM(cost_units), COUNT(*) FROM budget_usage WHERE tenant='default' "
                "AND recorded_at >= ? GROUP BY provider",
                (month_start,),
            ).fetchall(),
        ),
        "trend (12 days)": (
            lambda: tracking.get_spend_trend(None, 12, granularity="day", actor=admin, now=NOW),
            lambda: raw.execute(
                "SELECT substr(recorded_at, 1, 10), SUM(cost_units), COUNT(*) FROM budget_usage "
                "WHERE tenant='default' AND recorded_at >= ? GROUP BY 1",
                (trend_start,),
            ).fetchall(),
        ),
    }
    print(f"{'report':22} {'service ms':>11} {'raw GROUP BY ms':>16} {'speed-up':>9}")
    for name, (service_fn, raw_fn) in cases.items():
        ours, floor = timed(service_fn), timed(raw_fn, repeat=5)
        print(f"{name:22} {ours:11.2f} {floor:16.1f} {floor / ours:8.0f}x")

    # Ingest: one durable transaction per record, both sides.
    ingest = sqlite3.connect(folder / "ingest.db", isolation_level=None)
    for pragma, value in SQLITE_PRAGMAS.items():
        ingest.execute(f"PRAGMA {pragma}={value}")
    ingest.execute(
        "CREATE TABLE u (id INTEGER PRIMARY KEY, call_id TEXT UNIQUE, tenant TEXT, provider TEXT, "
        "model TEXT, cost INTEGER, recorded_at TEXT)"
    )
    ingest.execute("CREATE INDEX u_t ON u (tenant, recorded_at)")
    start = time.perf_counter()
    for i in range(args.ingest):
        ingest.execute("BEGIN IMMEDIATE")
        ingest.execute(
            "INSERT INTO u (call_id, tenant, provider, model, cost, recorded_at) VALUES (?,?,?,?,?,?)",
            (f"i{i}", "default", "openai", "gpt-4o", 42, str(NOW)),
        )
        ingest.execute("COMMIT")
    raw_rate = args.ingest / (time.perf_counter() - start)
    start = time.perf_counter()
    for i in range(args.ingest):
        tracking.record_usage(LLMCall(call_id=f"ingest-{i}", provider="openai", model="gpt-4o"), Decimal("0.000042"))
    our_rate = args.ingest / (time.perf_counter() - start)
    print(
        f"ingest: record_usage {our_rate:,.0f} rows/s, raw sqlite3 insert {raw_rate:,.0f} rows/s "
        f"(ratio {raw_rate / our_rate:.2f}x)"
    )
    services.close()


if __name__ == "__main__":
    main()
