"""PostgreSQL made unreachable mid-run: verdicts follow on_store_error, usage is spooled and replayed exactly."""

from __future__ import annotations

import itertools
from decimal import Decimal
from pathlib import Path
from typing import Any

import pluggy
import pytest

from atlas_budget_plugin import BudgetSettings, bootstrap
from atlas_budget_plugin.plugin import BudgetPlugin
from atlas_budget_plugin.types import Actor
from hookspecs import CallBlocked, LLMCall, LLMUsage, guarded_call
from hookspecs import specs as host_specs

from ..backends import POSTGRES_URL, server_url
from ..proxy import Proxy

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

ids = itertools.count()


def host(plugin: BudgetPlugin) -> pluggy.PluginManager:
    pm = pluggy.PluginManager(host_specs.PROJECT)
    pm.add_hookspecs(host_specs)
    pm.register(plugin, name="budget")
    return pm


def make_call(pm: pluggy.PluginManager, cost: Decimal) -> tuple[str, bool, str]:
    call = LLMCall(call_id=f"o{next(ids)}", provider="openai", model="gpt-4o", actor="alice", estimated_cost=cost)
    try:
        with guarded_call(pm, call) as guard:
            guard.usage = LLMUsage(input_tokens=10, output_tokens=5, cost=cost)
    except CallBlocked as blocked:
        return call.call_id, False, blocked.verdict.reason
    return call.call_id, True, ";".join(guard.warnings)


@pytest.fixture
def proxied(tmp_path: Path) -> Any:
    server_url("postgres")  # skip (or fail under CI) without PostgreSQL; empties the tables
    host_port = POSTGRES_URL.split("@")[-1].split("//")[-1].split("/")[0]
    hostname, port = host_port.split(":")
    proxy = Proxy((hostname, int(port)))
    proxy.up()
    url = POSTGRES_URL.replace(host_port, f"127.0.0.1:{proxy.port}")
    yield proxy, url
    proxy.down()


@pytest.mark.parametrize("mode", ["deny", "allow"])
def test_outage_spools_and_replays_exactly(proxied: Any, tmp_path: Path, mode: str) -> None:
    proxy, url = proxied
    settings = BudgetSettings.load(
        None,
        database_url=url,
        on_store_error=mode,
        spool_path=tmp_path / "spool.jsonl",
        policies=[{"name": "alice", "scope": {"actor": "alice"}, "period": "month", "limit": "1000"}],
        evaluation_interval=0,
    )
    services = bootstrap(settings)
    plugin = BudgetPlugin(services)
    pm = host(plugin)
    costs = [Decimal(i).scaleb(-3) for i in range(1, 61)]
    recorded: dict[str, Decimal] = {}

    for cost in costs[:20]:  # healthy
        call_id, allowed, _ = make_call(pm, cost)
        assert allowed
        recorded[call_id] = cost

    # A call checked while the store is up whose callback arrives during the outage.
    straddling = LLMCall(
        call_id="straddle", provider="openai", model="gpt-4o", actor="alice", estimated_cost=Decimal("0.5")
    )
    assert plugin.pre_llm_call(straddling).allowed  # type: ignore[union-attr]

    proxy.down()
    plugin.post_llm_call(straddling, LLMUsage(input_tokens=1, cost=Decimal("0.25")), None)
    recorded["straddle"] = Decimal("0.25")
    outcomes = [make_call(pm, cost) for cost in costs[20:40]]
    for (call_id, allowed, text), cost in zip(outcomes, costs[20:40], strict=True):
        assert f"on_store_error = {mode}" in text
        assert allowed is (mode == "allow")
        if allowed:
            recorded[call_id] = cost
    spool = services.tracking.spool
    assert spool is not None and spool.pending() == (21 if mode == "allow" else 1)
    assert services.tick(services.policies.clock()) == {"failed": 1}  # replay waits for the store

    proxy.up()
    for cost in costs[40:]:  # back to normal; the tick replays the spool
        call_id, allowed, _ = make_call(pm, cost)
        assert allowed
        recorded[call_id] = cost
    done = services.tick(services.policies.clock())
    assert done["replayed"] == (21 if mode == "allow" else 1)
    assert spool.pending() == 0 and services.tracking.replay_spool() == 0

    summary = services.tracking.get_usage_summary({"actor": "alice"}, "month", actor=Actor.system())
    assert summary.total_cost == sum(recorded.values()) and summary.calls == len(recorded)
    (standing,) = services.policies.check_budget(
        LLMCall(call_id="probe", provider="openai", model="gpt-4o", actor="alice", estimated_cost=Decimal(0))
    ).standings
    assert standing.spent == sum(recorded.values()) and standing.reserved == 0
    services.close()


def test_start_while_store_is_down_then_recover(proxied: Any, tmp_path: Path) -> None:
    proxy, url = proxied
    proxy.down()
    settings = BudgetSettings.load(
        None,
        database_url=url,
        spool_path=tmp_path / "spool.jsonl",
        evaluation_interval=0,
        policies=[{"name": "alice", "scope": {"actor": "alice"}, "period": "month", "limit": "1000"}],
    )
    plugin = BudgetPlugin(lambda: bootstrap(settings, require_store=False))
    call = LLMCall(call_id="early", provider="openai", model="gpt-4o", actor="alice", estimated_cost=Decimal("1"))
    verdict = plugin.pre_llm_call(call)
    assert verdict is not None and not verdict.allowed and "unreachable" in verdict.reason
    plugin.post_llm_call(call, LLMUsage(input_tokens=1, cost=Decimal("0.75")), None)
    assert plugin.services.tracking.spool is not None and plugin.services.tracking.spool.pending() == 1
    proxy.up()
    plugin.on_period_tick(plugin.services.policies.clock())
    assert plugin.services.ready
    summary = plugin.services.tracking.get_usage_summary(None, "month", actor=Actor.system())
    assert (summary.calls, summary.total_cost) == (1, Decimal("0.75"))
    plugin.services.close()
