"""Benchmark: full pre_llm_call + post_llm_call throughput of 8 host processes sharing one store.

Every process makes ``--calls`` calls through ``guarded_call`` against three
overlapping block limits sized so they are reached part-way through; the run
reports calls per second (allowed and denied calls both count: both are a full
check) and the overspend of each limit, which must be 0.

Run: ``python tests/benchmarks/bench_throughput.py [--calls 500] [--backends sqlite,postgres]``.
PostgreSQL is ``BUDGET_TEST_POSTGRES_URL`` (default ``postgresql://127.0.0.1:5432/test``).
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from atlas_budget_plugin import BudgetSettings, bootstrap
from atlas_budget_plugin.store import open_database
from atlas_budget_plugin.store.models import ALL_MODELS
from atlas_budget_plugin.types import Actor
from tests.backends import MYSQL_URL, POSTGRES_URL
from tests.integration.workers import host_calls

PROCESSES = 8
LIMITS = {"alice": ("actor", "alice", "month"), "red": ("team", "red", "day"), "gpt-4o": ("model", "gpt-4o", "month")}


def run(url: str, calls: int, folder: Path) -> None:
    db = open_database(url)
    with db.bind_ctx(ALL_MODELS):
        db.drop_tables(ALL_MODELS, safe=True)
    db.close()
    # Limits at about 60% of what the calls would spend, so they are reached mid-run.
    expected = Decimal("0.0255") * calls * PROCESSES
    limit = (expected * Decimal("0.6") / 2).quantize(Decimal("0.01"))
    config = folder / "budget.toml"
    config.write_text(
        "evaluation_interval = 0\n"
        + "".join(
            f'[[policies]]\nname = "{name}"\nscope = {{ {key} = "{value}" }}\nperiod = "{period}"\nlimit = "{limit}"\n'
            for name, (key, value, period) in LIMITS.items()
        )
    )
    bootstrap(BudgetSettings.load(config, database_url=url)).close()
    jobs = [
        {"url": url, "config": str(config), "worker": w, "calls": calls, "exact": True, "actors": ["alice", "bob"]}
        for w in range(PROCESSES)
    ]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(PROCESSES) as pool:
        pool.map(host_calls, [{**job, "calls": 5} for job in jobs])  # warm the worker processes
        start = time.perf_counter()
        results = [r for chunk in pool.map(host_calls, jobs) for r in chunk]
        elapsed = time.perf_counter() - start
    services = bootstrap(BudgetSettings.load(config, database_url=url))
    admin = Actor.system()
    overspend = {}
    for name, (key, value, period) in LIMITS.items():
        spent = services.tracking.get_usage_summary({key: value}, period, actor=admin).total_cost
        overspend[name] = max(Decimal(0), spent - limit)
    services.close()
    allowed = sum(1 for r in results if "cost" in r)
    print(
        f"{url.split(':')[0]:10} {len(results) / elapsed:8,.0f} calls/s  ({len(results)} calls, {allowed} allowed, "
        f"{elapsed:.1f} s)  overspend: " + ", ".join(f"{k} {v}" for k, v in overspend.items())
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500, help="calls per process")
    parser.add_argument("--backends", default="sqlite,postgres,mysql")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp())
    urls = {"sqlite": f"sqlite:///{folder / 'bench.db'}", "postgres": POSTGRES_URL, "mysql": MYSQL_URL}
    for backend in args.backends.split(","):
        run(urls[backend], args.calls, folder)


if __name__ == "__main__":
    main()
