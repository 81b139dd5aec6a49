"""The one place that wires settings, store, plugins, bus and the three services together."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import peewee as pw
import pluggy

from .alert_service import BudgetAlertService
from .bus import MessageBus
from .exceptions import BudgetError, SettingsError
from .extensions import Extensions, get_plugin_manager
from .permissions import BudgetPermissionChecker
from .policy_service import BudgetPolicyService
from .pricing import Pricer
from .settings import BudgetSettings
from .store import Ledger, initialize, open_database
from .store.alerts import AlertRepository
from .store.repository import PolicyRepository
from .tracking_service import BudgetTrackingService
from .types import utcnow


@dataclass
class BudgetServices:
    """Everything a caller needs: the three services, the bus, and what they share."""

    settings: BudgetSettings
    db: pw.Database
    bus: MessageBus
    extensions: Extensions
    pricer: Pricer
    ledger: Ledger
    policies: BudgetPolicyService
    tracking: BudgetTrackingService
    alerts: BudgetAlertService

    def tick(self, now: datetime) -> dict[str, int]:
        """Every periodic duty, in order: expire holds, evaluate and deliver alerts, prune old rows."""
        done = {"expired": self.policies.expire_reservations(now)}
        done["alerts"] = len(self.alerts.evaluate_alerts(now))
        done["pruned"] = self.tracking.prune(self.settings.retention_days, now)
        return done

    def close(self) -> None:
        if not self.db.is_closed():
            self.db.close()


def bootstrap(
    settings: BudgetSettings | None = None,
    *,
    plugin_manager: pluggy.PluginManager | None = None,
    clock: Callable[[], datetime] = utcnow,
) -> BudgetServices:
    """Build the services from settings (default: :meth:`BudgetSettings.load`).

    Opens the database (creating or migrating its schema), loads the
    ``atlas_budget`` plugins and applies the policies declared in settings.
    """
    settings = settings or BudgetSettings.load()
    db = open_database(settings.database_url)
    initialize(db)
    extensions = Extensions(plugin_manager or get_plugin_manager())
    bus = MessageBus(extensions)
    pricer = Pricer(settings, extensions)
    ledger = Ledger(db)
    permissions = BudgetPermissionChecker()
    repository = PolicyRepository(db)
    policies = BudgetPolicyService(repository, ledger, pricer, bus, settings, permissions, clock)
    tracking = BudgetTrackingService(
        ledger, pricer, bus, policies.targets_for, lambda tenant: repository.all(tenant), permissions, clock
    )
    alerts = BudgetAlertService(
        AlertRepository(db),
        policies,
        tracking.reports,
        extensions,
        bus,
        permissions,
        clock,
        delivery_attempts=settings.delivery_attempts,
        delivery_backoff=settings.delivery_backoff,
    )
    extensions.configure(settings)
    services = BudgetServices(settings, db, bus, extensions, pricer, ledger, policies, tracking, alerts)
    try:
        policies.apply_declared(settings.policies)
        alerts.apply_declared(settings.alerts)
    except BudgetError as exc:
        raise SettingsError(
            f"the policies and alerts declared in {settings.config_file} cannot be applied: {exc}"
        ) from exc
    return services
