"""BudgetManager: the old single-object API, kept for older callers; every method points to its replacement.

It offers every public method of ATLAS's ``modules.budget.manager.BudgetManager`` (and of the first
facade here), each warning with a DeprecationWarning that names the service call replacing it. The old
manager was async; this one is synchronous, like the services: drop the ``await`` (or wrap a call in
``asyncio.to_thread``). See docs/migrating-from-atlas.md for the whole mapping.
"""

from __future__ import annotations

import functools
import uuid
import warnings
from collections.abc import Callable
from decimal import Decimal
from typing import Any, TypeVar

from hookspecs import LLMCall, LLMUsage

from .bootstrap import BudgetServices, bootstrap
from .exceptions import BudgetError, NotFoundError
from .periods import parse_period
from .types import (
    Actor,
    Alert,
    AlertConfig,
    BudgetAlertEvent,
    BudgetDecision,
    BudgetEvent,
    BudgetUsageEvent,
    Policy,
    SpendRow,
    TrendPoint,
    UsageRecord,
    UsageSummary,
)

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

    @deprecated("services.alerts.get_active_alerts(actor, policy, severity)")
    def get_active_alerts(
        self, policy_id: str | int | None = None, severity: str | None = None, unacknowledged_only: bool = False
    ) -> list[Alert]:
        # Active alerts here are never acknowledged ones, so ``unacknowledged_only`` changes nothing.
        policy = self._policy_name(policy_id) if policy_id is not None else None
        return self.services.alerts.get_active_alerts(self.actor, policy, severity)

    @deprecated("services.alerts.acknowledge_alert(actor, alert_id)")
    def acknowledge_alert(self, alert_id: int, user_id: str | None = None) -> Alert:
        actor = self.actor.model_copy(update={"id": user_id}) if user_id else self.actor
        return self.services.alerts.acknowledge_alert(actor, alert_id)

    @deprecated("services.alerts.resolve_alert(actor, alert_id)")
    def resolve_alert(self, alert_id: int) -> Alert:
        return self.services.alerts.resolve_alert(self.actor, alert_id)

    @deprecated("services.alerts.evaluate_alerts()")
    def evaluate_alerts(self) -> list[Alert]:
        return self.services.alerts.evaluate_alerts()

    # -- the rest of ATLAS's BudgetManager ------------------------------------------------------

    @classmethod
    def create(cls, config_manager: Any = None) -> BudgetManager:
        """Deprecated: use ``atlas_budget_plugin.bootstrap()`` (settings replace ATLAS's ConfigManager)."""
        _warn("BudgetManager.create", "atlas_budget_plugin.bootstrap()")
        return cls()

    @deprecated("services.close()")
    def shutdown(self) -> None:
        # Usage is written durably as it is recorded: there is no buffer left to flush.
        self.services.close()

    @deprecated("services.policies.create_policy(actor, policy) or update_policy(actor, policy_id, updates)")
    def set_budget_policy(self, policy: Policy | dict[str, Any]) -> Policy:
        data = policy.model_dump(exclude_unset=True) if isinstance(policy, Policy) else dict(policy)
        policy_id = data.pop("id", None)
        existing = self._find(policy_id, data.get("name"))
        if existing is None:
            return self.services.policies.create_policy(self.actor, data)
        for fixed in ("tenant", "version", "created_at", "updated_at"):
            data.pop(fixed, None)
        return self.services.policies.update_policy(self.actor, existing.id or 0, data)

    @deprecated("services.policies.get_policy(actor, policy_id)")
    def get_policy(self, policy_id: int) -> Policy | None:
        try:
            return self.services.policies.get_policy(self.actor, policy_id)
        except NotFoundError:
            return None  # ATLAS answered None for a missing policy

    @deprecated("services.policies.list_policies(actor, scope, filters)")
    def get_policies(
        self, scope: dict[str, Any] | str | None = None, scope_id: str | None = None, enabled_only: bool = True
    ) -> list[Policy]:
        # ATLAS's (scope kind, scope id) pair is a scope here, e.g. {"actor": "alice"}; pass that as scope.
        if isinstance(scope, str):
            scope = {_SCOPE_KEYS.get(scope, scope): scope_id} if scope not in ("global", None) else None
        filters = {"enabled": True} if enabled_only else None
        return self.services.policies.list_policies(self.actor, scope, filters)

    @deprecated("services.policies.delete_policy(actor, policy_id)")
    def delete_policy(self, policy_id: int) -> bool:
        try:
            self.services.policies.delete_policy(self.actor, policy_id)
        except NotFoundError:
            return False  # ATLAS answered False for a missing policy
        return True

    @deprecated("the host contract: post_llm_call(call, usage, error), i.e. services.tracking.record_call")
    def record_llm_usage(
        self,
        provider: str,
        model: str,
        input_tokens: int,
        output_tokens: int,
        cached_tokens: int = 0,
        user_id: str | None = None,
        tenant_id: str | None = None,
        persona: str | None = None,
        conversation_id: str | None = None,
        request_id: str | None = None,
        success: bool = True,
        metadata: dict[str, Any] | None = None,
    ) -> UsageRecord | None:
        call = self._call(provider, model, "chat", user_id, tenant_id, persona, conversation_id, request_id)
        usage = LLMUsage(input_tokens=input_tokens, output_tokens=output_tokens, cache_read_tokens=cached_tokens)
        return self.services.tracking.record_call(call, usage, None if success else RuntimeError("call failed"))

    @deprecated("the host contract: post_llm_call(call, usage, error) with LLMUsage.units")
    def record_image_usage(
        self,
        provider: str,
        model: str,
        count: int = 1,
        size: str = "1024x1024",
        quality: str = "standard",
        user_id: str | None = None,
        tenant_id: str | None = None,
        persona: str | None = None,
        conversation_id: str | None = None,
        request_id: str | None = None,
        success: bool = True,
        metadata: dict[str, Any] | None = None,
    ) -> UsageRecord | None:
        call = self._call(provider, model, "image", user_id, tenant_id, persona, conversation_id, request_id)
        usage = LLMUsage(units={f"image:{size}:{quality}": count})
        return self.services.tracking.record_call(call, usage, None if success else RuntimeError("call failed"))

    @deprecated("services.tracking.get_usage_summary(scope, period, actor=actor)")
    def get_current_spend(
        self, scope: dict[str, Any] | str | None = None, scope_id: str | None = None, period: str = "monthly"
    ) -> UsageSummary:
        if isinstance(scope, str):
            scope = {_SCOPE_KEYS.get(scope, scope): scope_id} if scope != "global" else None
        return self.services.tracking.get_usage_summary(scope, parse_period(period).name, actor=self.actor)

    @deprecated("services.tracking.get_usage_summary(policy.scope, policy.period, actor=actor).limit - policy.limit")
    def calculate_rollover(self, policy: Policy) -> Decimal:
        # Rollover is applied by the ledger itself: the summary's limit is the effective one.
        if policy.id is not None:  # the policy as stored now, not as the caller last saw it
            policy = self.services.policies.get_policy(self.actor, policy.id)
        summary = self.services.tracking.get_usage_summary(policy.scope, policy.period, actor=self.actor)
        if summary.policy != policy.name or summary.limit is None:
            return Decimal(0)
        return max(summary.limit - policy.limit, Decimal(0))

    @deprecated("services.tracking.get_usage_summary(policy.scope, policy.period, actor=actor).limit - policy.limit")
    def get_rollover_amount(self, policy_id: int) -> Decimal:
        policy = self.services.policies.get_policy(self.actor, policy_id)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return self.calculate_rollover(policy)

    @deprecated("nothing: rollover and new windows are applied automatically (services.tick)")
    def process_period_end(self, policy: Policy) -> Decimal:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return self.calculate_rollover(policy)

    @deprecated("services.policies.check_budget(operation, estimated_cost) (which also reserves)")
    def check_budget_available(
        self,
        provider: str,
        model: str,
        estimated_cost: Decimal | None = None,
        estimated_input_tokens: int = 0,
        estimated_output_tokens: int = 0,
        image_count: int = 0,
        user_id: str | None = None,
        tenant_id: str | None = None,
    ) -> BudgetDecision:
        call = LLMCall(
            call_id=f"check-{uuid.uuid4()}",
            provider=provider,
            model=model,
            tenant=tenant_id or self.actor.tenant,
            actor=user_id,
            input_tokens=estimated_input_tokens or None,
            max_output_tokens=estimated_output_tokens or None,
            estimated_cost=estimated_cost,
        )
        decision = self.services.policies.check_budget(call, estimated_cost)
        if decision.reserved:
            # ATLAS only asked; it reserved nothing. Release the hold the check took at once.
            self.services.ledger.release(call.call_id)
        return decision

    @deprecated("services.bus.subscribe('budget.alert_triggered', callback)")
    def on_budget_warning(self, callback: Callable[[Alert], Any]) -> Callable[[], None]:
        return self.services.bus.subscribe("budget.alert_triggered", _alerts_of(callback, _WARNING))

    @deprecated("services.bus.subscribe('budget.alert_triggered', callback)")
    def on_budget_exceeded(self, callback: Callable[[Alert], Any]) -> Callable[[], None]:
        return self.services.bus.subscribe("budget.alert_triggered", _alerts_of(callback, _EXCEEDED))

    @deprecated("services.bus.subscribe('budget.usage_recorded', callback)")
    def on_usage_recorded(self, callback: Callable[[UsageRecord], Any]) -> Callable[[], None]:
        def deliver(event: BudgetEvent) -> None:
            if isinstance(event, BudgetUsageEvent):
                callback(event.record)

        return self.services.bus.subscribe("budget.usage_recorded", deliver)

    @property
    def enabled(self) -> bool:
        """Deprecated: budgets are on while the plugin is installed; disable a policy to stop enforcing it."""
        _warn("BudgetManager.enabled", "policy.enabled (services.policies.update_policy(actor, id, {'enabled': ...}))")
        return True

    @enabled.setter
    def enabled(self, value: bool) -> None:
        _warn("BudgetManager.enabled", "policy.enabled (services.policies.update_policy(actor, id, {'enabled': ...}))")
        if not value:
            raise BudgetError(
                "budget tracking cannot be switched off from code: every call is recorded while the plugin is "
                "installed; disable the policies that should not enforce (update_policy(actor, id, {'enabled': "
                "False})) or uninstall the plugin"
            )

    @property
    def pricing_registry(self) -> Any:
        """Deprecated: use ``services.pricer``."""
        _warn("BudgetManager.pricing_registry", "services.pricer")
        return self.services.pricer

    # -- helpers ----------------------------------------------------------------------------

    def _policy_name(self, policy: str | int) -> str:
        if isinstance(policy, int) and not isinstance(policy, bool):
            return self.services.policies.get_policy(self.actor, policy).name
        return str(policy)

    def _find(self, policy_id: Any, name: Any) -> Policy | None:
        if isinstance(policy_id, int) and not isinstance(policy_id, bool):
            try:
                return self.services.policies.get_policy(self.actor, policy_id)
            except NotFoundError:
                return None
        if isinstance(name, str):
            return self.services.policies.repository.by_name(self.actor.tenant, name)
        return None

    def _call(
        self,
        provider: str,
        model: str,
        operation: str,
        user_id: str | None,
        tenant_id: str | None,
        persona: str | None,
        conversation_id: str | None,
        request_id: str | None,
    ) -> LLMCall:
        tags = {k: v for k, v in (("persona", persona), ("conversation", conversation_id)) if v}
        return LLMCall(
            call_id=request_id or f"manager-{uuid.uuid4()}",
            provider=provider,
            model=model,
            operation=operation,
            tenant=tenant_id or self.actor.tenant,
            actor=user_id,
            tags=tags,
        )


#: ATLAS scope kinds that are a different key here (the rest have the same name).
_SCOPE_KEYS = {"user": "actor", "agent": "tag.agent", "job": "tag.job", "task": "tag.task", "tool": "tag.tool"}
#: Which alerts ATLAS's on_budget_warning and on_budget_exceeded callbacks received.
_WARNING, _EXCEEDED = ("info", "warning"), ("critical", "emergency")


def _alerts_of(callback: Callable[[Alert], Any], severities: tuple[str, ...]) -> Callable[[BudgetEvent], None]:
    def deliver(event: BudgetEvent) -> None:
        if isinstance(event, BudgetAlertEvent) and event.alert.severity in severities:
            callback(event.alert)

    return deliver


def _warn(name: str, replacement: str) -> None:
    warnings.warn(f"{name} is deprecated; use {replacement}", DeprecationWarning, stacklevel=3)


_manager: BudgetManager | None = None


def get_budget_manager(config_manager: Any = None) -> BudgetManager:
    """Deprecated: use ``atlas_budget_plugin.bootstrap()``. The one shared manager, made on first use."""
    global _manager
    _warn("get_budget_manager", "atlas_budget_plugin.bootstrap()")
    if _manager is None:
        _manager = BudgetManager()
    return _manager


def get_budget_manager_sync() -> BudgetManager | None:
    """Deprecated: use ``atlas_budget_plugin.bootstrap()``. The shared manager if one was made, else None."""
    _warn("get_budget_manager_sync", "atlas_budget_plugin.bootstrap()")
    return _manager


def reset_budget_manager() -> None:
    """Deprecated: close the services you bootstrapped (``services.close()``). Forgets the shared manager."""
    global _manager
    _warn("reset_budget_manager", "services.close()")
    if _manager is not None:
        _manager.services.close()
        _manager = None
