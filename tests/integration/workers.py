"""Worker processes for concurrency tests: a host making calls through the host contract."""

from __future__ import annotations

import random
import time
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pluggy

from atlas_budget_plugin import BudgetSettings, bootstrap
from atlas_budget_plugin.plugin import BudgetPlugin
from atlas_budget_plugin.types import utcnow
from hookspecs import CallBlocked, LLMCall, LLMUsage, guarded_call
from hookspecs import specs as host_specs


def host_calls(job: dict[str, Any]) -> list[dict[str, Any]]:
    """Make ``job['calls']`` calls with random costs through ``guarded_call``.

    Returns one entry per call: its id, estimate, actual cost when allowed, and
    the policy that denied it otherwise. ``exact`` makes the actual cost equal
    to the estimate (so unused budget can be asserted exactly).
    """
    settings = BudgetSettings.load(job["config"], database_url=job["url"], **job.get("settings", {}))
    services = bootstrap(settings, clock=virtual_clock(job) if "clock_base" in job else utcnow)
    plugin = BudgetPlugin(services)
    pm = pluggy.PluginManager(host_specs.PROJECT)
    pm.add_hookspecs(host_specs)
    pm.register(plugin, name="budget")
    if "start_at" in job:  # every worker starts at the same moment, so the run straddles the boundary
        time.sleep(max(0.0, job["start_at"] - time.time()))
    rng = random.Random(f"{job.get('seed', 0)}-{job['worker']}")
    results = []
    for i in range(job["calls"]):
        estimate = Decimal(rng.randint(1_000, 50_000)).scaleb(-6)  # 0.001 .. 0.05
        actual = estimate if job.get("exact") else (estimate * rng.randint(50, 100) / 100).quantize(Decimal("1e-9"))
        call = LLMCall(
            call_id=f"s{job.get('seed', 0)}w{job['worker']}-{i}",
            provider="openai",
            model=rng.choice(["gpt-4o", "gpt-4o-mini"]),
            actor=rng.choice(job.get("actors", ["alice"])),
            tags={"team": rng.choice(["red", "blue"])},
            estimated_cost=estimate,
        )
        entry: dict[str, Any] = {
            "call_id": call.call_id,
            "estimate": str(estimate),
            "actor": call.actor,
            "team": call.tags["team"],
            "model": call.model,
        }
        if job.get("abandon_every") and i % job["abandon_every"] == 0:
            # A call whose process "dies" after the check: nobody settles or renews it; expiry must reclaim it.
            (verdict,) = pm.hook.pre_llm_call(call=call)
            plugin._open.pop(call.call_id, None)
            entry["abandoned"] = verdict.allowed
            results.append(entry)
            continue
        began = time.monotonic()
        try:
            with guarded_call(pm, call) as guard:
                guard.usage = LLMUsage(input_tokens=100, output_tokens=10, cost=actual)
            entry["cost"] = str(actual)
            entry["seconds"] = time.monotonic() - began
        except CallBlocked as blocked:
            entry["denied_by"] = blocked.verdict.details.get("policy")
        results.append(entry)
    plugin.close()
    services.close()
    return results


def virtual_clock(job: dict[str, Any]) -> Any:
    """Wall-clock time shifted so that ``start_at`` (a time.time() value) reads as ``clock_base``."""
    base = datetime.fromisoformat(job["clock_base"])
    start = job["start_at"]
    if job.get("frozen"):
        return lambda: base
    return lambda: base + timedelta(seconds=time.time() - start)
