"""BudgetManager: the old single-object API, kept for older callers; every method points to its replacement."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from decimal import Decimal
from typing import Any, TypeVar

from hookspecs import LLMCall

from .bootstrap import BudgetServices, bootstrap
from .types import Actor, Alert, AlertConfig, BudgetDecision, Policy, SpendRow, TrendPoint, UsageRecord, UsageSummary

F = TypeVar("F", bound=Callable[..., Any])


def deprecated(replacement: str) -> Callable[[F], F]:
    def decorate(method: F) -> F:
        @functools.wraps(method)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            warnings.warn(
                f"BudgetManager.{method.__name__} is deprecated; use {replacement}",
                DeprecationWarning,
                stacklevel=2,
            )
            return method(*args, **kwargs)

        wrapper.__doc__ = f"Deprecated: use ``{replacement}``."
        return wrapper  # type: ignore[return-value]

    return decorate


class BudgetManager:
    """A thin facade over the three services for callers written against the old manager.

    New code should use ``atlas_budget_plugin.bootstrap()`` and its ``.policies``,
    ``.tracking`` and ``.alerts`` services directly. The facade acts as ``actor``
    (the tenant's system actor by default).
    """

    def __init__(self, services: BudgetServices | None = None, actor: Actor | None = None) -> None:
        self.services = services or bootstrap()
        self.actor = actor or Actor.system(self.services.settings.tenant)

    @deprecated("services.policies.create_policy(actor, policy)")
    def create_budget(self, policy: Policy | dict[str, Any]) -> Policy:
        return self.services.policies.create_policy(self.actor, policy)

    @deprecated("services.policies.update_policy(actor, policy_id, updates)")
    def update_budget(self, policy_id: int, updates: dict[str, Any]) -> Policy:
        return self.services.policies.update_policy(self.actor, policy_id, updates)

    @deprecated("services.policies.delete_policy(actor, policy_id)")
    def delete_budget(self, policy_id: int) -> None:
        self.services.policies.delete_policy(self.actor, policy_id)

    @deprecated("services.policies.get_policy(actor, policy_id)")
    def get_budget(self, policy_id: int) -> Policy:
        return self.services.policies.get_policy(self.actor, policy_id)

    @deprecated("services.policies.list_policies(actor, scope, filters)")
    def list_budgets(self, scope: dict[str, Any] | None = None) -> list[Policy]:
        return self.services.policies.list_policies(self.actor, scope)

    @deprecated("services.policies.check_budget(operation, estimated_cost)")
    def check_budget(self, operation: LLMCall, estimated_cost: Decimal | None = None) -> BudgetDecision:
        return self.services.policies.check_budget(operation, estimated_cost)

    @deprecated("services.tracking.record_usage(operation, cost, metadata)")
    def record_usage(self, operation: LLMCall, cost: Decimal, metadata: dict[str, Any] | None = None) -> UsageRecord:
        return self.services.tracking.record_usage(operation, cost, metadata)

    @deprecated("services.tracking.get_usage_summary(scope, period, actor=actor)")
    def get_usage_summary(self, scope: dict[str, Any] | None = None, period: str = "month") -> UsageSummary:
        return self.services.tracking.get_usage_summary(scope, period, actor=self.actor)

    @deprecated("services.tracking.get_spend_by_category(scope, period, actor=actor)")
    def get_spend_by_category(self, scope: dict[str, Any] | None = None, period: str = "month") -> list[SpendRow]:
        return self.services.tracking.get_spend_by_category(scope, period, actor=self.actor)

    @deprecated("services.tracking.get_spend_by_provider(scope, period, actor=actor)")
    def get_spend_by_provider(self, scope: dict[str, Any] | None = None, period: str = "month") -> list[SpendRow]:
        return self.services.tracking.get_spend_by_provider(scope, period, actor=self.actor)

    @deprecated("services.tracking.get_spend_trend(scope, periods, actor=actor)")
    def get_spend_trend(self, scope: dict[str, Any] | None = None, periods: int = 12) -> list[TrendPoint]:
        return self.services.tracking.get_spend_trend(scope, periods, actor=self.actor)

    @deprecated("services.alerts.configure_alert(actor, alert_config)")
    def set_alert(self, alert_config: AlertConfig | dict[str, Any]) -> AlertConfig:
        return self.services.alerts.configure_alert(self.actor, alert_config)

    @deprecated("services.alerts.remove_alert(actor, alert_id)")
    def remove_alert(self, alert_id: int) -> None:
        self.services.alerts.remove_alert(self.actor, alert_id)

    @deprecated("services.alerts.get_active_alerts(actor)")
    def get_active_alerts(self) -> list[Alert]:
        return self.services.alerts.get_active_alerts(self.actor)

    @deprecated("services.alerts.acknowledge_alert(actor, alert_id)")
    def acknowledge_alert(self, alert_id: int) -> Alert:
        return self.services.alerts.acknowledge_alert(self.actor, alert_id)

    @deprecated("services.alerts.evaluate_alerts()")
    def evaluate_alerts(self) -> list[Alert]:
        return self.services.alerts.evaluate_alerts()
