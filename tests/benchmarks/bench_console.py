"""Benchmark: each console page and API route next to the service calls it makes, over many usage rows.

The console should add little over the services: for each route this prints the median time of the HTTP
request (in-process, through the ASGI app with a bearer token) and of the same service calls made directly,
in the same run, and their ratio. No timed assertions: figures, not pass/fail.

Run: ``python tests/benchmarks/bench_console.py [--rows 1000000] [--repeat 7]``.
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
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from atlas_budget_plugin import BudgetSettings, bootstrap
from atlas_budget_plugin.store.ledger import USAGE_COLUMNS
from atlas_budget_plugin.types import Actor
from atlas_budget_plugin.web import Logins, create_app
from atlas_budget_plugin.web.queries import UsageQuery, standing, usage_page

NOW = datetime(2026, 11, 28, 12, tzinfo=timezone.utc)
PROVIDERS = ["openai", "anthropic", "google", "mistral", "local"]


def seed(path: Path, rows: int) -> None:
    """Bulk-load ``rows`` usage rows over the last 90 days in time order (as calls arrive), and their rollups."""
    rng = random.Random(1)
    start = NOW - timedelta(days=90)
    moments = sorted(rng.randint(0, 90 * 86400 - 1) for _ in range(rows))
    db = sqlite3.connect(path)
    db.execute("PRAGMA synchronous=off")
    insert = f"INSERT INTO budget_usage ({', '.join(USAGE_COLUMNS)}) VALUES ({', '.join('?' * len(USAGE_COLUMNS))})"
    batch = []
    for i, offset in enumerate(moments):
        values = {
            "call_id": f"seed-{i}",
            "tenant": "default",
            "actor": f"user{rng.randint(1, 50)}",
            "provider": rng.choice(PROVIDERS),
            "model": f"model{rng.randint(1, 8)}",
            "operation": "chat",
            "category": rng.choice(["chat", "code", "summary"]),
            "tags_json": "{}",
            "input_tokens": rng.randint(10, 5000),
            "output_tokens": rng.randint(10, 1000),
            "cache_read_tokens": 0,
            "cache_write_tokens": 0,
            "cost_units": rng.randint(1, 50_000_000),
            "units_json": "{}",
            "price_source": "seed",
            "error": None,
            "recorded_at": str((start + timedelta(seconds=offset)).replace(tzinfo=None)),
        }
        batch.append(tuple(values.get(column, "{}" if column.endswith("_json") else None) for column in USAGE_COLUMNS))
        if len(batch) == 50_000:
            db.executemany(insert, batch)
            batch = []
    if batch:
        db.executemany(insert, batch)
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


def timed(fn: Callable[[], Any], repeat: int) -> float:
    """Median wall time of ``fn`` in milliseconds (after one warm-up run)."""
    fn()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp())
    url = f"sqlite:///{folder / 'bench.db'}"
    services = bootstrap(BudgetSettings.load(None, database_url=url, evaluation_interval=0), clock=lambda: NOW)
    started = time.perf_counter()
    seed(folder / "bench.db", args.rows)
    print(f"seeded {args.rows:,} usage rows in {time.perf_counter() - started:.1f} s")
    admin = Actor.system()
    services.policies.create_policy(admin, {"name": "tenant-month", "limit": "100000", "period": "month"})
    services.policies.create_policy(
        admin, {"name": "user7-day", "limit": "50", "period": "day", "scope": {"actor": "user7"}}
    )
    services.policies.create_policy(
        admin, {"name": "openai-week", "limit": "5000", "period": "week", "scope": {"provider": "openai"}}
    )
    services.alerts.configure_alert(admin, {"policy": "tenant-month", "threshold": 1, "sinks": ["log"]})
    services.alerts.evaluate_alerts(NOW)
    logins = Logins()
    token = logins.add(admin)
    client = TestClient(create_app(services, logins), headers={"authorization": f"Bearer {token}"})
    tracking, policies, alerts = services.tracking, services.policies, services.alerts

    def get(path: str) -> Callable[[], Any]:
        def run() -> Any:
            answer = client.get(path)
            assert answer.status_code == 200, (path, answer.status_code, answer.text[:200])
            return answer

        return run

    cursor: str | None = None
    for _ in range(20):  # the 21st page of 50: what a deep page costs
        cursor = usage_page(services, admin, UsageQuery({}, {}), 50, cursor)[1]
    assert cursor is not None

    def dashboard_calls() -> None:
        tracking.get_usage_summary(None, "month", actor=admin)
        for policy in policies.list_policies(admin):
            standing(services, admin, policy)
        alerts.get_active_alerts(admin)
        tracking.list_usage(admin, 10)

    def reports_calls() -> None:
        tracking.get_usage_summary(None, "month", actor=admin)
        tracking.get_spend_by("provider", None, "month", actor=admin)
        tracking.get_spend_trend(None, 14, granularity="day", actor=admin)
        tracking.compare_periods(None, "month", actor=admin)
        tracking.get_projection(None, "month", actor=admin)

    def alerts_calls() -> None:
        alerts.get_active_alerts(admin)
        alerts.list_alerts(admin)
        alerts.deliveries(admin)
        policies.list_policies(admin)

    cases: dict[str, tuple[Callable[[], Any], Callable[[], Any]]] = {
        "page /": (get("/"), dashboard_calls),
        "page /policies": (get("/policies"), lambda: policies.list_policies(admin)),
        "page /history (first 50)": (get("/history"), lambda: tracking.list_usage(admin, 51)),
        "page /history (21st page)": (
            get(f"/history?cursor={cursor}"),
            lambda: usage_page(services, admin, UsageQuery({}, {}), 50, cursor),
        ),
        "page /reports": (get("/reports"), reports_calls),
        "page /alerts": (get("/alerts"), alerts_calls),
        "GET /api/v1/policies": (get("/api/v1/policies"), lambda: policies.list_policies(admin)),
        "GET /api/v1/usage?limit=50": (get("/api/v1/usage?limit=50"), lambda: tracking.list_usage(admin, 51)),
        "GET /api/v1/usage?provider=openai": (
            get("/api/v1/usage?limit=50&provider=openai"),
            lambda: tracking.list_usage(admin, 51, {"provider": "openai"}),
        ),
        "GET /api/v1/reports/summary": (
            get("/api/v1/reports/summary?period=month"),
            lambda: tracking.get_usage_summary(None, "month", actor=admin),
        ),
        "GET /api/v1/reports/by (provider)": (
            get("/api/v1/reports/by?dimension=provider&period=month"),
            lambda: tracking.get_spend_by("provider", None, "month", actor=admin),
        ),
        "GET /api/v1/reports/trend (14 days)": (
            get("/api/v1/reports/trend?granularity=day&periods=14"),
            lambda: tracking.get_spend_trend(None, 14, granularity="day", actor=admin),
        ),
        "GET /api/v1/reports/compare": (
            get("/api/v1/reports/compare?period=month"),
            lambda: tracking.compare_periods(None, "month", actor=admin),
        ),
        "GET /api/v1/reports/projection": (
            get("/api/v1/reports/projection?period=month"),
            lambda: tracking.get_projection(None, "month", actor=admin),
        ),
        "GET /api/v1/alerts": (get("/api/v1/alerts"), lambda: alerts.get_active_alerts(admin)),
        "GET /api/v1/usage/export csv 5000": (
            get("/api/v1/usage/export?format=csv&limit=5000"),
            lambda: tracking.list_usage(admin, 5001),
        ),
    }
    print(f"{'route':40s} {'console ms':>11s} {'services ms':>12s} {'ratio':>7s}")
    for name, (route, direct) in cases.items():
        web = timed(route, args.repeat)
        service = timed(direct, args.repeat)
        print(f"{name:40s} {web:11.2f} {service:12.2f} {web / service if service else float('inf'):7.2f}")
    client.close()
    services.close()


if __name__ == "__main__":
    main()
