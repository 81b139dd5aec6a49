"""Many processes against one store (SQLite, PostgreSQL, MariaDB): no overspend, nothing lost."""

from __future__ import annotations

import multiprocessing
from decimal import Decimal
from pathlib import Path

import pytest

from atlas_budget_plugin import BudgetSettings, bootstrap
from atlas_budget_plugin.store.models import UsageRow
from atlas_budget_plugin.types import Actor

from ..backends import server_url
from .workers import host_calls

pytestmark = pytest.mark.slow


def run_workers(url: str, config: Path, processes: int, calls: int) -> list[tuple[str, str]]:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(processes) as pool:
        results = pool.map(host_calls, [(url, str(config), w, calls, "alice") for w in range(processes)])
    return [item for chunk in results for item in chunk]


@pytest.mark.parametrize(
    "backend",
    ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres), pytest.param("mysql", marks=pytest.mark.mysql)],
)
def test_four_processes_never_overspend(tmp_path: Path, backend: str) -> None:
    url = f"sqlite:///{tmp_path}/shared.db" if backend == "sqlite" else server_url(backend)
    config = tmp_path / "budget.toml"
    config.write_text(
        '[[policies]]\nname = "alice"\nscope = { actor = "alice" }\nperiod = "month"\nlimit = "1.50"\n'
        '[[policies]]\nname = "red"\nscope = { team = "red" }\nperiod = "day"\nlimit = "0.60"\n'
    )
    allowed = run_workers(url, config, processes=4, calls=50)

    services = bootstrap(BudgetSettings.load(config, database_url=url))
    admin = Actor.system()
    summary = services.tracking.get_usage_summary({"actor": "alice"}, "month", actor=admin)
    red = services.tracking.get_usage_summary({"team": "red"}, "day", actor=admin)
    recorded_ids = {row.call_id for row in UsageRow.select(UsageRow.call_id)}
    outstanding = services.ledger.outstanding_units()
    services.close()

    assert 0 < len(allowed) < 200, "the limit should block some calls and allow others"
    assert summary.total_cost <= Decimal("1.50")
    assert red.total_cost <= Decimal("0.60")
    assert summary.total_cost == sum(Decimal(cost) for _, cost in allowed)
    assert recorded_ids == {call_id for call_id, _ in allowed}
    assert outstanding == 0
    # Not under-used by more than the largest single estimate (no false blocking).
    assert Decimal("1.50") - summary.total_cost < Decimal("0.05") or red.total_cost > Decimal("0.55")
