"""kill -9 of hosts at random moments: no committed usage lost, no partial rows, holds released after TTL."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from datetime import timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from atlas_budget_plugin import BudgetSettings, bootstrap
from atlas_budget_plugin.money import from_units
from atlas_budget_plugin.store.models import Hold, SpendCounter, UsageHourly, UsageRow

from ..backends import server_url

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "backend",
    ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres), pytest.param("mysql", marks=pytest.mark.mysql)],
)
def test_kill_nine_loses_nothing_committed(tmp_path: Path, backend: str) -> None:
    url = f"sqlite:///{tmp_path}/crash.db" if backend == "sqlite" else server_url(backend)
    config = tmp_path / "budget.toml"
    config.write_text(
        'evaluation_interval = 0\n[[policies]]\nname = "all"\nperiod = "total"\nlimit = "1000000"\n'
        '[[policies]]\nname = "hourly"\nperiod = "hour"\nlimit = "1000000"\n'
    )
    bootstrap(BudgetSettings.load(config, database_url=url)).close()  # schema and policy before the workers race
    rng = random.Random(7)
    logs = []
    # The workers' clock runs 600 times faster than the wall clock: every killed round crosses hour boundaries.
    clock = {
        "CRASH_CLOCK_BASE": "2026-03-31T22:55:00+00:00",
        "CRASH_CLOCK_T0": str(time.time()),
        "CRASH_CLOCK_SPEED": "600",
    }
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(tmp_path), **clock}
    for round_ in range(6):
        workers = []
        for w in range(3):
            log = tmp_path / f"r{round_}w{w}.log"
            logs.append(log)
            workers.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "tests.integration.crash_worker",
                        url,
                        str(config),
                        str(log),
                        f"r{round_}w{w}",
                    ],
                    cwd=ROOT,
                    env=env,
                    stderr=subprocess.DEVNULL,
                )
            )
        time.sleep(rng.uniform(1.5, 3.0))
        for worker in workers:
            time.sleep(rng.uniform(0, 0.2))
            worker.send_signal(signal.SIGKILL)
        for worker in workers:
            worker.wait(timeout=30)

    services = bootstrap(BudgetSettings.load(config, database_url=url))
    committed = {}
    for log in logs:
        if log.exists():
            for line in log.read_text().splitlines():
                call_id, cost = line.split()
                committed[call_id] = Decimal(cost)
    rows = {r.call_id: from_units(r.cost_units) for r in UsageRow.select()}
    assert len(committed) > 50, "the workers should have recorded calls before being killed"
    # Nothing that post_llm_call returned for is lost, and it is stored at its exact cost.
    assert all(rows.get(call_id) == cost for call_id, cost in committed.items())
    # No partial rows: rollups, counters and usage rows agree to the unit.
    total_units = sum(r.cost_units for r in UsageRow.select())
    rollup = UsageHourly.select().where(UsageHourly.dimension == "*")
    assert sum(r.cost_units for r in rollup) == total_units and sum(r.calls for r in rollup) == len(rows)
    policies = {p.name: p.id for p in services.policies.repository.all("default")}
    (counter,) = SpendCounter.select().where(SpendCounter.policy_id == policies["all"])
    assert counter.spent_units == total_units
    holds = list(Hold.select())
    for counter in SpendCounter.select():
        assert counter.reserved_units == sum(h.amount_units for h in holds if h.counter_id == counter.id)
    # Each hour's counter holds exactly the calls admitted in that hour, across the boundaries crossed.
    hourly = list(SpendCounter.select().where(SpendCounter.policy_id == policies["hourly"]))
    assert len(hourly) >= 3, "the runs should have crossed several hour boundaries"
    for counter in hourly:
        start = counter.window_start
        in_hour = [r for r in UsageRow.select() if start <= r.recorded_at < start + timedelta(hours=1)]
        assert counter.spent_units == sum(r.cost_units for r in in_hour), start
    # Holds of killed calls are released once their TTL has passed.
    latest = max((h.expires_at for h in holds), default=None)
    later = (latest.replace(tzinfo=timezone.utc) if latest else services.policies.clock()) + timedelta(seconds=1)
    services.policies.expire_reservations(later)
    assert services.ledger.outstanding_units() == 0 and Hold.select().count() == 0
    services.close()
