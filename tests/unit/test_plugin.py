"""The atlas hooks end to end through a host PluginManager, and the store-outage verdicts."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pluggy
import pytest

import atlas_budget_plugin.plugin as plugin_module
from atlas_budget_plugin import BudgetServices
from atlas_budget_plugin.plugin import BudgetPlugin
from atlas_budget_plugin.types import Actor
from hookspecs import CallBlocked, LLMCall, LLMUsage, guarded_call
from hookspecs import specs as host_specs

from ..conftest import FakeClock


def call(i: int, **kw: Any) -> LLMCall:
    return LLMCall(
        call_id=f"p{i}",
        provider="openai",
        model="gpt-4o",
        actor="alice",
        input_tokens=1000,
        max_output_tokens=500,
        **kw,
    )


def test_blocks_the_call_that_would_overspend(
    services: BudgetServices, host: pluggy.PluginManager, admin: Actor
) -> None:
    services.policies.create_policy(
        admin, {"name": "alice", "scope": {"actor": "alice"}, "period": "day", "limit": "0.03"}
    )
    allowed_costs = []
    for i in range(20):
        try:
            with guarded_call(host, call(i)) as guard:
                guard.usage = LLMUsage(input_tokens=1000, output_tokens=400)
        except CallBlocked as blocked:
            assert blocked.verdict.source == "atlas-budget"
            assert blocked.verdict.details["policy"] == "alice"
            assert "would be exceeded" in blocked.verdict.reason
            break
        allowed_costs.append(services.tracking.list_usage(admin, 1)[0].cost)
    else:
        pytest.fail("the budget never blocked")
    summary = services.tracking.get_usage_summary(None, "day", actor=admin)
    assert summary.total_cost == sum(allowed_costs) <= Decimal("0.03")
    assert services.ledger.outstanding_units() == 0


def test_verdict_details_and_no_policy(services: BudgetServices, host: pluggy.PluginManager) -> None:
    (verdict,) = host.hook.pre_llm_call(call=call(1))
    assert verdict.allowed and verdict.reason == "no budget policy applies"
    assert verdict.details["estimated_cost"] > 0


def test_tick_expires_reservations_of_calls_no_process_renews(
    services: BudgetServices, host: pluggy.PluginManager, admin: Actor, clock: FakeClock
) -> None:
    services.policies.create_policy(admin, {"name": "all", "period": "day", "limit": "10"})
    host.hook.pre_llm_call(call=call(1))
    assert services.ledger.outstanding_units() > 0
    # The process that took the hold is gone: another process's tick reclaims it after the TTL.
    other = BudgetPlugin(services)
    other.on_period_tick(clock.now + timedelta(seconds=599))
    assert services.ledger.outstanding_units() > 0
    other.on_period_tick(clock.now + timedelta(seconds=601))
    assert services.ledger.outstanding_units() == 0


def test_holds_of_calls_in_progress_are_renewed(
    services: BudgetServices, host: pluggy.PluginManager, admin: Actor, clock: FakeClock
) -> None:
    services.policies.create_policy(admin, {"name": "all", "period": "day", "limit": "10"})
    host.hook.pre_llm_call(call=call(1))
    held = services.ledger.outstanding_units()
    for _ in range(5):  # a stream open for 50 minutes, five times the reservation_ttl of 600 s
        clock.advance(seconds=590)
        host.hook.on_period_tick(now=clock.now)
        BudgetPlugin(services).on_period_tick(clock.now)  # other processes expire what nobody renews
        assert services.ledger.outstanding_units() == held
    host.hook.post_llm_call(call=call(1), usage=LLMUsage(input_tokens=10, output_tokens=10), error=None)
    assert services.ledger.outstanding_units() == 0


def test_forgotten_calls_stop_being_renewed(
    services: BudgetServices, host: pluggy.PluginManager, admin: Actor, clock: FakeClock, monkeypatch: Any
) -> None:
    services.policies.create_policy(admin, {"name": "all", "period": "day", "limit": "10"})
    host.hook.pre_llm_call(call=call(1))
    monkeypatch.setattr(plugin_module, "MAX_OPEN_SECONDS", -1)  # the call has been open "too long"
    clock.advance(seconds=700)
    host.hook.on_period_tick(now=clock.now)
    assert services.ledger.outstanding_units() == 0


@pytest.mark.parametrize(("mode", "allowed"), [("deny", False), ("allow", True)])
def test_store_unreachable_follows_on_store_error(make_services: Any, mode: str, allowed: bool) -> None:
    services = make_services(on_store_error=mode)
    plugin = BudgetPlugin(services)
    services.db.close()
    services.db.init("/nonexistent-dir/x/budget.db")  # the file can no longer be opened
    verdict = plugin.pre_llm_call(call(1))
    assert verdict is not None and verdict.allowed is allowed
    assert f"on_store_error = {mode}" in verdict.reason


def test_module_level_hooks_use_configured_services(services: BudgetServices, admin: Actor, clock: FakeClock) -> None:
    pm = pluggy.PluginManager("atlas")
    pm.add_hookspecs(host_specs)
    pm.register(plugin_module, name="budget")
    plugin_module.set_services(services)
    try:
        with guarded_call(pm, call(5)) as guard:
            guard.usage = LLMUsage(input_tokens=10, output_tokens=1)
        pm.hook.on_period_tick(now=clock.now)
        assert services.tracking.list_usage(admin)[0].call_id == "p5"
    finally:
        plugin_module.set_services(None)


def test_lazy_bootstrap_from_settings(make_services: Any) -> None:
    made = []

    def factory() -> BudgetServices:
        made.append(make_services())
        return made[-1]

    plugin = BudgetPlugin(factory)
    assert made == []
    plugin.pre_llm_call(call(1))
    plugin.pre_llm_call(call(2))
    assert len(made) == 1


def test_tick_prunes_old_rows_when_retention_is_set(make_services: Any, clock: FakeClock, admin: Actor) -> None:
    services = make_services(retention_days=30)
    plugin = BudgetPlugin(services)
    services.tracking.record_usage(call(1), Decimal("1.5"))
    plugin.on_period_tick(clock.now + timedelta(days=29))
    assert len(services.tracking.list_usage(admin)) == 1
    plugin.on_period_tick(clock.now + timedelta(days=31))
    assert services.tracking.list_usage(admin) == []
    total = services.tracking.get_usage_summary(None, "total", actor=admin, now=clock.now + timedelta(days=31))
    assert total.total_cost == Decimal("1.5")


def test_broken_settings_deny_calls_clearly_until_fixed(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    config = tmp_path / "budget.toml"
    config.write_text("limit = [\n")
    monkeypatch.setenv("ATLAS_BUDGET_CONFIG", str(config))
    monkeypatch.setenv("ATLAS_BUDGET_DATABASE_URL", f"sqlite:///{tmp_path}/b.db")
    plugin = BudgetPlugin()
    pm = pluggy.PluginManager("atlas")
    pm.add_hookspecs(host_specs)
    pm.register(plugin, name="budget")
    with pytest.raises(CallBlocked) as blocked, guarded_call(pm, call(1)):
        pass
    assert blocked.value.verdict.reason.startswith(f"the budget plugin is misconfigured: settings file {config}")
    plugin.on_period_tick(datetime.now(timezone.utc))  # nothing to do, and no exception
    assert caplog.text.count("cannot start, denying calls") == 1
    config.write_text("evaluation_interval = 0\n")
    plugin._config_checked -= 10  # as if 10 s had passed
    with guarded_call(pm, call(2)) as guard:
        guard.usage = LLMUsage(input_tokens=10, output_tokens=1)
    assert plugin.services.tracking.list_usage(Actor.system())[0].call_id == "p2"
    plugin.close()


def test_a_deleted_sqlite_file_is_reported_loudly(
    services: BudgetServices, host: pluggy.PluginManager, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    assert services.missing_database_file() is None
    if services.ledger.kind != "sqlite":
        pytest.skip("only an SQLite store is a file (this runs in the default, SQLite environment)")
    path = services.db.database
    os.unlink(path)
    host.hook.on_period_tick(now=clock.now)
    assert services.missing_database_file() == path
    assert "was deleted while in use" in caplog.text
