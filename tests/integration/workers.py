"""Worker processes for concurrency tests: a host making calls through the host contract."""

from __future__ import annotations

import random
from decimal import Decimal

import pluggy

from atlas_budget_plugin import BudgetSettings, bootstrap
from atlas_budget_plugin.plugin import BudgetPlugin
from hookspecs import CallBlocked, LLMCall, LLMUsage, guarded_call
from hookspecs import specs as host_specs


def host_calls(args: tuple[str, str, int, int, str]) -> list[tuple[str, str]]:
    """Make ``calls`` calls with random costs; return (call_id, recorded cost) of each allowed one."""
    database_url, config_file, worker, calls, actor = args
    services = bootstrap(BudgetSettings.load(config_file, database_url=database_url))
    pm = pluggy.PluginManager(host_specs.PROJECT)
    pm.add_hookspecs(host_specs)
    pm.register(BudgetPlugin(services), name="budget")
    rng = random.Random(worker)
    allowed = []
    for i in range(calls):
        estimate = Decimal(rng.randint(1_000, 50_000)).scaleb(-6)  # 0.001 .. 0.05
        actual = (estimate * Decimal(rng.randint(50, 100)) / 100).quantize(Decimal("1e-9"))
        call = LLMCall(
            call_id=f"w{worker}-{i}",
            provider="openai",
            model="gpt-4o",
            actor=actor,
            tags={"team": rng.choice(["red", "blue"])},
            estimated_cost=estimate,
        )
        try:
            with guarded_call(pm, call) as guard:
                guard.usage = LLMUsage(input_tokens=100, output_tokens=10, cost=actual)
        except CallBlocked:
            continue
        allowed.append((call.call_id, str(actual)))
    services.close()
    return allowed
