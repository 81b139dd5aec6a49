"""Many processes against one store (SQLite, PostgreSQL, MariaDB): no overspend, nothing lost."""

from __future__ import annotations

import multiprocessing
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from atlas_budget_plugin import BudgetSettings, bootstrap
from atlas_budget_plugin.store.models import UsageRow
from atlas_budget_plugin.types import Actor

from ..backends import server_url
from .workers import host_calls

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
