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
