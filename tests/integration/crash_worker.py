"""A host process that makes calls until it is killed; it logs each call whose post_llm_call returned."""

from __future__ import annotations

import os
import random
import sys
import time
from datetime import datetime, timedelta
from decimal import Decimal

import pluggy

from atlas_budget_plugin import BudgetSettings, bootstrap
from atlas_budget_plugin.plugin import BudgetPlugin
from hookspecs import CallBlocked, LLMCall, LLMUsage, guarded_call
from hookspecs import specs as host_specs


def main(url: str, config: str, log_path: str, name: str) -> None:
    settings = BudgetSettings.load(config, database_url=url)
    if "CRASH_CLOCK_BASE" in os.environ:  # a fast clock, so a run crosses many hour boundaries
        base, start = datetime.fromisoformat(os.environ["CRASH_CLOCK_BASE"]), float(os.environ["CRASH_CLOCK_T0"])
        speed = float(os.environ["CRASH_CLOCK_SPEED"])
        services = bootstrap(settings, clock=lambda: base + timedelta(seconds=(time.time() - start) * speed))
    else:
        services = bootstrap(settings)
    pm = pluggy.PluginManager(host_specs.PROJECT)
    pm.add_hookspecs(host_specs)
    pm.register(BudgetPlugin(services), name="budget")
    rng = random.Random(name)
    log = open(log_path, "a", encoding="utf-8")
    i = 0
    while True:
        i += 1
        cost = Decimal(rng.randint(1, 10_000)).scaleb(-6)
        call = LLMCall(call_id=f"{name}-{i}", provider="openai", model="gpt-4o", actor="alice", estimated_cost=cost)
        try:
            with guarded_call(pm, call) as guard:
                guard.usage = LLMUsage(input_tokens=1, output_tokens=1, cost=cost)
        except CallBlocked:
            continue
        log.write(f"{call.call_id} {cost}\n")  # only after post_llm_call returned: the usage is committed
        log.flush()
        os.fsync(log.fileno())


if __name__ == "__main__":
    main(*sys.argv[1:5])
