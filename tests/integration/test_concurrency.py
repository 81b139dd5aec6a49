"""Many processes against one store (SQLite, PostgreSQL, MariaDB): no overspend, nothing lost."""

from __future__ import annotations

import json
import multiprocessing
import threading
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from atlas_budget_plugin import BudgetSettings, bootstrap
from atlas_budget_plugin.money import to_units
from atlas_budget_plugin.store.models import Hold, SpendCounter, UsageRow
from atlas_budget_plugin.types import Actor
from hookspecs import LLMCall

from ..backends import server_url
from .workers import host_calls, virtual_clock

pytestmark = pytest.mark.slow

BACKENDS = [
    "sqlite",
    pytest.param("postgres", marks=pytest.mark.postgres),
    pytest.param("mysql", marks=pytest.mark.mysql),
]


def run_workers(url: str, config: Path, processes: int, calls: int, **job: Any) -> list[dict[str, Any]]:
    ctx = multiprocessing.get_context("spawn")
    jobs = [{"url": url, "config": str(config), "worker": w, "calls": calls, **job} for w in range(processes)]
    with ctx.Pool(processes) as pool:
        results = pool.map(host_calls, jobs)
    return [item for chunk in results for item in chunk]


def store_url(backend: str, tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/shared.db" if backend == "sqlite" else server_url(backend)


def recorded(config: Path, url: str) -> tuple[dict[str, Decimal], int, dict[str, Decimal]]:
    services = bootstrap(BudgetSettings.load(config, database_url=url))
    rows = {row.call_id: Decimal(row.cost_units).scaleb(-9) for row in UsageRow.select()}
    outstanding = services.ledger.outstanding_units()
    admin = Actor.system()
    totals = {
        "alice": services.tracking.get_usage_summary({"actor": "alice"}, "month", actor=admin).total_cost,
        "red": services.tracking.get_usage_summary({"team": "red"}, "day", actor=admin).total_cost,
        "gpt-4o": services.tracking.get_usage_summary({"model": "gpt-4o"}, "month", actor=admin).total_cost,
    }
    services.close()
    return rows, outstanding, totals


@pytest.mark.parametrize("backend", BACKENDS)
def test_four_processes_never_overspend(tmp_path: Path, backend: str) -> None:
    url = store_url(backend, tmp_path)
    config = tmp_path / "budget.toml"
    config.write_text(
        '[[policies]]\nname = "alice"\nscope = { actor = "alice" }\nperiod = "month"\nlimit = "1.50"\n'
        '[[policies]]\nname = "red"\nscope = { team = "red" }\nperiod = "day"\nlimit = "0.60"\n'
    )
    results = run_workers(url, config, processes=4, calls=50)
    allowed = {r["call_id"]: Decimal(r["cost"]) for r in results if "cost" in r}
    rows, outstanding, totals = recorded(config, url)

    assert 0 < len(allowed) < 200, "the limit should block some calls and allow others"
    assert totals["alice"] <= Decimal("1.50") and totals["red"] <= Decimal("0.60")
    assert rows == allowed  # every allowed call recorded once, at its exact cost; nothing else
    assert outstanding == 0


LIMITS = {"alice": Decimal("3.00"), "red": Decimal("2.00"), "gpt-4o": Decimal("2.50")}


@pytest.mark.parametrize("run", [1, 2])
@pytest.mark.parametrize("backend", BACKENDS)
def test_eight_processes_three_overlapping_scopes(tmp_path: Path, backend: str, run: int) -> None:
    url = store_url(backend, tmp_path)
    config = tmp_path / "budget.toml"
    config.write_text(
        '[[policies]]\nname = "alice"\nscope = { actor = "alice" }\nperiod = "month"\nlimit = "3.00"\n'
        '[[policies]]\nname = "red"\nscope = { team = "red" }\nperiod = "day"\nlimit = "2.00"\n'
        '[[policies]]\nname = "gpt-4o"\nscope = { model = "gpt-4o" }\nperiod = "month"\nlimit = "2.50"\n'
    )
    results = run_workers(url, config, processes=8, calls=500, exact=True, actors=["alice", "bob"], seed=run)
    rows, outstanding, totals = recorded(config, url)
    allowed = {r["call_id"]: Decimal(r["cost"]) for r in results if "cost" in r}
    denied_by = {r["denied_by"] for r in results if "denied_by" in r}
    largest = max(Decimal(r["estimate"]) for r in results)

    assert rows == allowed and outstanding == 0
    for name, limit in LIMITS.items():
        assert totals[name] <= limit, f"{name} overspent: {totals[name]} > {limit}"
        if name in denied_by:  # a policy that blocked had less room than one call's estimate
            assert limit - totals[name] < largest, f"{name} blocked with {limit - totals[name]} unused"
    assert denied_by, "the limits should have blocked some calls"


@pytest.mark.parametrize("backend", BACKENDS)
def test_eight_processes_across_a_month_boundary_with_expiry_running(tmp_path: Path, backend: str) -> None:
    """Calls admitted before midnight on March 31 settle after it, abandoned calls expire while others run."""
    url = store_url(backend, tmp_path)
    config = tmp_path / "budget.toml"
    config.write_text(
        '[[policies]]\nname = "hourly"\nperiod = "hour"\nlimit = "1.00"\n'
        '[[policies]]\nname = "alice-daily"\nscope = { actor = "alice" }\nperiod = "day"\nlimit = "0.80"\n'
        '[[policies]]\nname = "rolling"\nscope = { team = "red" }\nperiod = "rolling:2h"\nlimit = "1.20"\n'
    )
    start_at = time.time() + 6  # spawned workers import and connect first
    # 0.15 s before midnight: with the faster call path 8 workers could finish 200 calls each in 0.3 s
    base = datetime(2026, 3, 31, 23, 59, 59, 850_000, tzinfo=timezone.utc)
    job = {"clock_base": base.isoformat(), "start_at": start_at, "settings": {"reservation_ttl": 1}}
    services = bootstrap(BudgetSettings.load(config, database_url=url), clock=lambda: base)
    clock = virtual_clock(job)
    stop = threading.Event()

    def expire() -> None:  # another process's ticks, expiring what nobody settles
        while not stop.wait(0.1):
            services.policies.expire_reservations(clock())

    ticker = threading.Thread(target=expire, daemon=True)
    ticker.start()
    try:
        results = run_workers(
            url, config, processes=8, calls=200, exact=True, actors=["alice", "bob"], seed=7, abandon_every=9, **job
        )
    finally:
        stop.set()
        ticker.join()
    services.policies.expire_reservations(clock() + timedelta(seconds=5))
    allowed = {r["call_id"]: Decimal(r["cost"]) for r in results if "cost" in r}
    stalled = {r["call_id"] for r in results if r.get("seconds", 0) > 0.8}
    rows = {row.call_id: row for row in UsageRow.select()}
    assert {k: Decimal(r.cost_units).scaleb(-9) for k, r in rows.items()} == allowed
    assert any(r.get("abandoned") for r in results), "some abandoned calls should have held money"
    assert services.ledger.outstanding_units() == 0 and Hold.select().count() == 0
    moments = [row.recorded_at.replace(tzinfo=timezone.utc) for row in rows.values()]
    midnight = datetime(2026, 4, 1, tzinfo=timezone.utc)
    assert min(moments) < midnight <= max(moments), "the run should straddle the boundary"
    policies = {p.id: p for p in services.policies.list_policies(Actor.system())}
    for counter in SpendCounter.select():
        policy = policies[counter.policy_id]
        start = counter.window_start.replace(tzinfo=timezone.utc)
        end = start + timedelta(hours=1)  # hour counters, and the hourly buckets of the rolling window
        if policy.period == "day":
            end = start + timedelta(days=1)
        in_window = [r for r in rows.values() if start <= r.recorded_at.replace(tzinfo=timezone.utc) < end]
        expected = sum(r.cost_units for r in in_window if policy.scope.matches(call_of(r)))
        assert counter.spent_units == expected, (policy.name, start)
        # A call whose hold expired before it settled (a stall longer than the TTL) is charged unchecked.
        late = sum(r.cost_units for r in in_window if r.call_id in stalled and policy.scope.matches(call_of(r)))
        assert counter.spent_units <= to_units(policy.limit) + late, f"{policy.name} overspent in {start}"
    services.close()


def call_of(row: UsageRow) -> LLMCall:
    return LLMCall(
        call_id=row.call_id, provider=row.provider, model=row.model, actor=row.actor, tags=json.loads(row.tags_json)
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_eight_processes_never_exceed_a_throttle_rate(tmp_path: Path, backend: str) -> None:
    """A throttle admits at most its rate per minute, however many processes ask at once (issue #14)."""
    url = store_url(backend, tmp_path)
    config = tmp_path / "budget.toml"
    config.write_text(
        '[[policies]]\nname = "slow"\nperiod = "day"\nlimit = "100"\nenforcement = "throttle"\n'
        "throttle_after = 1\ncalls_per_minute = 25\n"
    )
    base = datetime(2026, 3, 10, 12, 0, 10, tzinfo=timezone.utc)
    services = bootstrap(BudgetSettings.load(config, database_url=url), clock=lambda: base)
    services.tracking.record_usage(LLMCall(call_id="earlier", provider="openai", model="gpt-4o"), Decimal("2.00"))
    services.close()  # past 1% of the limit already: every call below is throttled
    start_at = time.time() + 6
    # Every worker's clock stands still in one minute, so all 8 x 40 calls compete for the same 25.
    job = {"clock_base": "2026-03-10T12:00:10+00:00", "start_at": start_at, "frozen": True}
    results = run_workers(url, config, processes=8, calls=40, exact=True, seed=3, **job)
    allowed = [r for r in results if "cost" in r]
    rows, outstanding, _ = recorded(config, url)
    assert len(allowed) == 25 and len(rows) == 26 and outstanding == 0
    assert all(r.get("denied_by") == "slow" for r in results if "cost" not in r)
