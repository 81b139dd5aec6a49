"""The BudgetManager facade delegates to the services and warns with the replacement's name."""

from __future__ import annotations

import inspect
from decimal import Decimal

import pytest

from atlas_budget_plugin import BudgetServices
from atlas_budget_plugin.manager import BudgetManager
from hookspecs import LLMCall


def test_every_method_warns_and_delegates(services: BudgetServices) -> None:
    manager = BudgetManager(services)
    with pytest.warns(DeprecationWarning, match=r"create_budget is deprecated; use services.policies.create_policy"):
        policy = manager.create_budget({"name": "p", "period": "day", "limit": "10"})
    with pytest.warns(DeprecationWarning, match="update_policy"):
        assert manager.update_budget(policy.id, {"limit": "12"}).limit == Decimal("12")
    with pytest.warns(DeprecationWarning, match="get_policy"):
        assert manager.get_budget(policy.id).name == "p"
    with pytest.warns(DeprecationWarning, match="list_policies"):
        assert [p.name for p in manager.list_budgets()] == ["p"]
    call = LLMCall(call_id="m1", provider="openai", model="gpt-4o", estimated_cost=Decimal("1"))
    with pytest.warns(DeprecationWarning, match="check_budget"):
        assert manager.check_budget(call).allowed
    with pytest.warns(DeprecationWarning, match="record_usage"):
        manager.record_usage(call, Decimal("7"))
    with pytest.warns(DeprecationWarning, match="get_usage_summary"):
        assert manager.get_usage_summary(None, "day").total_cost == Decimal("7")
    with pytest.warns(DeprecationWarning, match="get_spend_by_category"):
        assert manager.get_spend_by_category(None, "day")[0].total_cost == Decimal("7")
    with pytest.warns(DeprecationWarning, match="get_spend_by_provider"):
        assert manager.get_spend_by_provider(None, "day")[0].key == "openai"
    with pytest.warns(DeprecationWarning, match="get_spend_trend"):
        assert len(manager.get_spend_trend(None, 3)) == 3
    with pytest.warns(DeprecationWarning, match="configure_alert"):
        config = manager.set_alert({"policy": "p", "threshold": 50, "sinks": ["log"]})
    with pytest.warns(DeprecationWarning, match="evaluate_alerts"):
        (alert,) = manager.evaluate_alerts()
    with pytest.warns(DeprecationWarning, match="get_active_alerts"):
        assert [a.id for a in manager.get_active_alerts()] == [alert.id]
    with pytest.warns(DeprecationWarning, match="acknowledge_alert"):
        assert manager.acknowledge_alert(alert.id).acknowledged_by == "system"
    with pytest.warns(DeprecationWarning, match="remove_alert"):
        manager.remove_alert(config.id)
    with pytest.warns(DeprecationWarning, match="delete_policy"):
        manager.delete_budget(policy.id)


def test_every_public_method_is_deprecated() -> None:
    for name, method in inspect.getmembers(BudgetManager, inspect.isfunction):
        if not name.startswith("_"):
            assert (method.__doc__ or "").startswith("Deprecated: use"), name


def test_builds_its_own_services(make_services: object, monkeypatch: pytest.MonkeyPatch, db_url: str) -> None:
    monkeypatch.setenv("ATLAS_BUDGET_DATABASE_URL", db_url)
    manager = BudgetManager()
    assert manager.actor.id == "system" and manager.services.settings.database_url == db_url
    manager.services.close()


# -- every public method of ATLAS's BudgetManager (#14 item 9) ---------------------------------------------

#: The public API of ATLAS's modules/budget/manager.py BudgetManager.
ATLAS_METHODS = (
    "create shutdown set_budget_policy get_policy get_policies delete_policy record_usage record_llm_usage "
    "record_image_usage get_current_spend calculate_rollover get_rollover_amount process_period_end "
    "check_budget_available get_active_alerts acknowledge_alert resolve_alert on_budget_warning "
    "on_budget_exceeded on_usage_recorded enabled pricing_registry"
).split()


def test_offers_every_method_of_atlas_budget_manager() -> None:
    missing = [name for name in ATLAS_METHODS if not hasattr(BudgetManager, name)]
    assert missing == []


def test_atlas_methods_warn_and_work(services: BudgetServices, clock: object) -> None:
    manager = BudgetManager(services)
    with pytest.warns(DeprecationWarning, match="set_budget_policy is deprecated; use services.policies.create_policy"):
        policy = manager.set_budget_policy(
            {"name": "alice", "scope": {"actor": "alice"}, "period": "daily", "limit": "1"}
        )
    assert policy.period == "day"
    with pytest.warns(DeprecationWarning, match="set_budget_policy"):
        assert manager.set_budget_policy({"name": "alice", "limit": "2"}).limit == Decimal(2)  # by name: an update
    with pytest.warns(DeprecationWarning, match="get_policy"):
        assert manager.get_policy(policy.id) is not None and manager.get_policy(999) is None
    with pytest.warns(DeprecationWarning, match="list_policies"):
        assert [p.name for p in manager.get_policies("user", "alice")] == ["alice"]
    seen: list[object] = []
    with pytest.warns(DeprecationWarning, match="budget.usage_recorded"):
        manager.on_usage_recorded(seen.append)
    with pytest.warns(DeprecationWarning, match="record_call"):
        record = manager.record_llm_usage("openai", "gpt-4o", 1000, 500, user_id="alice", request_id="r1")
    assert record is not None and record.call_id == "r1" and record.actor == "alice" and seen == [record]
    with pytest.warns(DeprecationWarning, match="units"):
        manager.record_image_usage("openai", "dall-e-3", 2, "1024x1024", "hd", user_id="alice")
    with pytest.warns(DeprecationWarning, match="get_usage_summary"):
        spend = manager.get_current_spend("user", "alice", "daily")
    assert spend.policy == "alice" and spend.calls == 2 and spend.total_cost > 0
    with pytest.warns(DeprecationWarning, match="check_budget"):
        decision = manager.check_budget_available("openai", "gpt-4o", Decimal("100"), user_id="alice")
    assert not decision.allowed
    for _ in range(2):  # a check holds nothing afterwards: two checks of 1.5 both fit alice's 2.00
        with pytest.warns(DeprecationWarning, match="check_budget"):
            assert manager.check_budget_available("openai", "gpt-4o", Decimal("1.5"), user_id="alice").allowed
    with pytest.warns(DeprecationWarning, match="rollover"):
        assert manager.calculate_rollover(policy) == 0
    with pytest.warns(DeprecationWarning, match="rollover"):
        assert manager.get_rollover_amount(policy.id) == 0
    with pytest.warns(DeprecationWarning, match="automatically"):
        assert manager.process_period_end(policy) == 0
    warned: list[object] = []
    exceeded: list[object] = []
    with pytest.warns(DeprecationWarning, match="alert_triggered"):
        manager.on_budget_warning(warned.append)
    with pytest.warns(DeprecationWarning, match="alert_triggered"):
        manager.on_budget_exceeded(exceeded.append)
    services.alerts.configure_alert(manager.actor, {"policy": "alice", "threshold": 50, "severity": "critical"})
    services.tracking.record_usage(LLMCall(call_id="big", provider="openai", model="m", actor="alice"), Decimal(1))
    services.alerts.evaluate_alerts()
    assert warned == [] and len(exceeded) == 1
    with pytest.warns(DeprecationWarning, match="get_active_alerts"):
        (alert,) = manager.get_active_alerts(policy.id, "critical")
    with pytest.warns(DeprecationWarning, match="resolve_alert"):
        assert manager.resolve_alert(alert.id).resolved_at is not None
    with pytest.warns(DeprecationWarning, match="delete_policy"):
        assert manager.delete_policy(policy.id) is True
    with pytest.warns(DeprecationWarning, match="delete_policy"):
        assert manager.delete_policy(policy.id) is False
    with pytest.warns(DeprecationWarning, match="services.pricer"):
        assert manager.pricing_registry is services.pricer
    with pytest.warns(DeprecationWarning, match="policy.enabled"):
        assert manager.enabled is True
    with pytest.warns(DeprecationWarning), pytest.raises(Exception, match="cannot be switched off from code"):
        manager.enabled = False
    with pytest.warns(DeprecationWarning, match="services.close"):
        manager.shutdown()


def test_module_functions_and_create(make_services: object, monkeypatch: pytest.MonkeyPatch, db_url: str) -> None:
    from atlas_budget_plugin import manager as module

    monkeypatch.setenv("ATLAS_BUDGET_DATABASE_URL", db_url)
    with pytest.warns(DeprecationWarning, match="bootstrap"):
        assert module.get_budget_manager_sync() is None
    with pytest.warns(DeprecationWarning, match="bootstrap"):
        shared = module.get_budget_manager()
    with pytest.warns(DeprecationWarning, match="bootstrap"):
        assert module.get_budget_manager() is shared
    with pytest.warns(DeprecationWarning, match="services.close"):
        module.reset_budget_manager()
    with pytest.warns(DeprecationWarning, match="bootstrap"):
        assert module.get_budget_manager_sync() is None
    with pytest.warns(DeprecationWarning, match="BudgetManager.create is deprecated"):
        made = BudgetManager.create(None)
    made.services.close()
