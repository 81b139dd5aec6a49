"""Benchmark: the call path against the physical floor, interleaved call by call in one process (issue #12).

The floor is one raw ``sqlite3`` transaction at WAL + synchronous=FULL that inserts the usage row and upserts
its rollup row: one fsync, the least any durable record of a call can cost. Ours is ``pre_llm_call`` +
``post_llm_call`` with 10 matching policies, at ``durability = "full"`` and ``"normal"``. Each round runs one
call of each, so disk noise hits all alike; the figures are ratios of means from the same run, plus our CPU
time per call (thread CPU, so the floor's and other threads' work is not counted), 50 threads, and 50 asyncio
tasks through ``async_guarded_call`` (hooks run on the loop's default executor), each with group commit off and on.

Run: ``python tests/benchmarks/bench_hot_path.py [rounds]`` (or ``tox -e bench``). It prints; it asserts nothing
about time.
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pluggy

from atlas_budget_plugin import BudgetSettings, bootstrap
from atlas_budget_plugin.plugin import BudgetPlugin
from atlas_budget_plugin.store import initialize, open_database
from hookspecs import LLMCall, LLMUsage, async_guarded_call
from hookspecs import specs as host_specs

PERIODS = ["hour", "day", "week", "month", "quarter", "year", "total", "rolling:24h", "rolling:7d", "rolling:30d"]
USAGE = LLMUsage(input_tokens=1000, output_tokens=200, cost=Decimal("0.0042"))


def plugin(folder: Path, durability: str, name: str = "") -> BudgetPlugin:
    policies = [
        {"name": f"p{i}", "period": p, "limit": "1000000", "scope": {"actor": "alice"} if i % 2 else {}}
        for i, p in enumerate(PERIODS)
    ]
    settings = BudgetSettings.load(
        None,
        database_url=f"sqlite:///{folder}/{name or durability}.db",
        policies=policies,
        durability=durability,
        evaluation_interval=0,
    )
    return BudgetPlugin(bootstrap(settings))


def floor(folder: Path) -> Any:
    """One durable transaction: the usage row and its rollup row, at WAL + synchronous=FULL."""
    path = folder / "floor.db"
    schema = open_database(f"sqlite:///{path}")
    initialize(schema)
    schema.close()
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=wal")
    db.execute("PRAGMA synchronous=full")
    ids = itertools.count()

    def one() -> None:
        db.execute("BEGIN IMMEDIATE")
        db.execute(
            "INSERT INTO budget_usage (call_id, tenant, actor, provider, model, operation, category, tags_json, "
            "input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost_units, units_json, price_source, "
            "error, recorded_at) VALUES (?, 'default', 'alice', 'openai', 'gpt-4o', 'chat', NULL, '{}', 1000, 200, "
            "0, 0, 4200000, '{}', 'provider', NULL, '2026-11-28 12:00:00.123456')",
            (f"f{next(ids)}",),
        )
        db.execute(
            "INSERT INTO budget_usage_hourly (tenant, dimension, dim_value, hour, calls, cost_units, input_tokens, "
            "output_tokens, cache_read_tokens, cache_write_tokens) VALUES ('default', '*', '', '2026-11-28 12:00:00', "
            "1, 4200000, 1000, 200, 0, 0) ON CONFLICT (tenant, dimension, dim_value, hour) DO UPDATE SET "
            "calls = calls + 1, cost_units = cost_units + excluded.cost_units"
        )
        db.execute("COMMIT")

    return one


def ours(budget: BudgetPlugin, prefix: str) -> Any:
    ids = itertools.count()

    def one() -> None:
        call = LLMCall(
            call_id=f"{prefix}{next(ids)}",
            provider="openai",
            model="gpt-4o",
            actor="alice",
            estimated_cost=Decimal("0.01"),
        )
        verdict = budget.pre_llm_call(call)
        assert verdict is not None and verdict.allowed, verdict
        budget.post_llm_call(call, USAGE, None)

    return one


def timed(fn: Any) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.thread_time()
    fn()
    return time.perf_counter() - wall, time.thread_time() - cpu


def interleaved(folder: Path, rounds: int) -> None:
    runs = {"floor": floor(folder)}
    plugins = {d: plugin(folder, d) for d in ("full", "normal")}
    runs.update({f"ours@{d}": ours(p, d) for d, p in plugins.items()})
    for fn in runs.values():  # warm caches, create counters
        for _ in range(30):
            fn()
    walls: dict[str, list[float]] = {k: [] for k in runs}
    cpus: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            wall, cpu = timed(fn)
            walls[name].append(wall)
            cpus[name].append(cpu)
    base = statistics.mean(walls["floor"])
    print(f"interleaved, {rounds} rounds, folder {folder}")
    for name in runs:
        mean = statistics.mean(walls[name])
        print(
            f"  {name:12} wall mean {mean * 1000:7.3f} ms  median {statistics.median(walls[name]) * 1000:7.3f} ms  "
            f"cpu {statistics.mean(cpus[name]) * 1000:6.3f} ms  ratio to floor {mean / base:5.2f}x"
        )
    for p in plugins.values():
        p.close()
        p.services.close()


def threads(folder: Path, durability: str, grouped: bool, workers: int = 50, calls: int = 20) -> None:
    budget = plugin(folder, durability, f"{durability}-{grouped}-threads")
    budget.services.ledger.group_commit = grouped
    latencies: list[float] = []
    lock = threading.Lock()

    def work(index: int) -> None:
        one = ours(budget, f"t{index}-")
        mine = [timed(one)[0] for _ in range(calls)]
        with lock:
            latencies.extend(mine)

    pool = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
    start = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - start
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    print(
        f"  {workers} threads x {calls} calls at {durability}, group commit {'on ' if grouped else 'off'}: "
        f"{len(latencies) / elapsed:7.1f} calls/s, "
        f"p50 {statistics.median(latencies) * 1000:6.1f} ms, p99 {p99 * 1000:6.1f} ms"
    )
    budget.close()
    budget.services.close()


def coroutines(folder: Path, durability: str, grouped: bool, tasks: int = 50, calls: int = 20) -> None:
    """An asyncio host: ``tasks`` coroutines each making ``calls`` calls through ``async_guarded_call``."""
    budget = plugin(folder, durability, f"{durability}-{grouped}-tasks")
    budget.services.ledger.group_commit = grouped
    pm = pluggy.PluginManager(host_specs.PROJECT)
    pm.add_hookspecs(host_specs)
    pm.register(budget, name="budget")
    latencies: list[float] = []

    async def work(index: int) -> None:
        for i in range(calls):
            call = LLMCall(
                call_id=f"a{index}-{i}",
                provider="openai",
                model="gpt-4o",
                actor="alice",
                estimated_cost=Decimal("0.01"),
            )
            began = time.perf_counter()
            async with async_guarded_call(pm, call) as guard:
                guard.usage = USAGE
            latencies.append(time.perf_counter() - began)

    async def everything() -> float:
        start = time.perf_counter()
        await asyncio.gather(*(work(i) for i in range(tasks)))
        return time.perf_counter() - start

    elapsed = asyncio.run(everything())
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    print(
        f"  {tasks} asyncio tasks x {calls} calls at {durability}, group commit {'on ' if grouped else 'off'}: "
        f"{len(latencies) / elapsed:7.1f} calls/s, "
        f"p50 {statistics.median(latencies) * 1000:6.1f} ms, p99 {p99 * 1000:6.1f} ms"
    )
    budget.close()
    budget.services.close()


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    # On disk next to the project, not in /tmp, which may be a RAM disk where fsync costs nothing.
    with tempfile.TemporaryDirectory(dir=Path(__file__).resolve().parent) as name:
        folder = Path(name)
        interleaved(folder, rounds)
        for durability in ("full", "normal"):
            for grouped in (False, True):
                threads(folder, durability, grouped)
        for grouped in (False, True):
            coroutines(folder, "full", grouped)


if __name__ == "__main__":
    main()
