"""The one place that wires settings, store, plugins, bus and the three services together."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import peewee as pw
import pluggy

from .alert_service import BudgetAlertService
from .bus import MessageBus
from .exceptions import BudgetError, SettingsError, StoreUnavailable
from .extensions import Extensions, get_plugin_manager
from .permissions import BudgetPermissionChecker
from .policy_service import BudgetPolicyService
from .pricing import Pricer
from .settings import BudgetSettings
from .store import Ledger, initialize, open_database
from .store.alerts import AlertRepository
from .store.database import STORE_ERRORS, reset_connection
from .store.repository import PolicyRepository
from .store.spool import Spool
from .tracking_service import BudgetTrackingService
from .types import utcnow

log = logging.getLogger("atlas_budget_plugin")


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
    ready: bool = True
    _last_attempt: float = 0.0

    def ensure_ready(self, retry_after: float = 5.0) -> bool:
        """Finish start-up if the store was unreachable at start (at most every ``retry_after`` s)."""
        if self.ready or time.monotonic() - self._last_attempt < retry_after:
            return self.ready
        self._last_attempt = time.monotonic()
        try:
            initialize(self.db)
            self._apply_declared()
        except STORE_ERRORS as exc:
            reset_connection(self.db)
            log.warning("budget store still unreachable: %s", exc)
            return False
        except SettingsError as exc:  # e.g. the database file was replaced by something else
            reset_connection(self.db)
            log.error("budget store cannot be used: %s", exc)
            return False
        self.ready = True
        log.info("budget store reachable again")
        return True

    def _apply_declared(self) -> None:
        try:
            self.policies.apply_declared_links(self.settings.scope_links)
            self.policies.apply_declared(self.settings.policies)
            self.alerts.apply_declared(self.settings.alerts)
        except STORE_ERRORS:
            raise
        except BudgetError as exc:
            raise SettingsError(
                f"the policies and alerts declared in {self.settings.config_file} cannot be applied: {exc}"
            ) from exc

    def tick(self, now: datetime) -> dict[str, int]:
        """Every periodic duty, in order: replay the outage spool, expire holds, alerts, prune old rows."""
        if not self.ensure_ready(retry_after=0):
            return {"spooled": self.tracking.spool.pending() if self.tracking.spool else 0}
        missing = self.missing_database_file()
        if missing:
            log.critical(
                "the budget database file %s was deleted while in use: what is recorded now goes to a file nobody "
                "can open again; restore it or restart the host to start a new one",
                missing,
            )
        try:
            done = {"replayed": self.tracking.replay_spool()}
            done["expired"] = self.policies.expire_reservations(now)
            done["alerts"] = len(self.alerts.evaluate_alerts(now))
            done["pruned"] = self.tracking.prune(self.settings.retention_days, now)
        except STORE_ERRORS as exc:
            reset_connection(self.db)
            log.warning("budget tick stopped, store unreachable: %s", exc)
            return {"failed": 1}
        return done

    def missing_database_file(self) -> str | None:
        """The SQLite file's path when it no longer exists (deleted under a running host), else None."""
        if not isinstance(self.db, pw.SqliteDatabase) or self.db.database in ("", ":memory:"):
            return None
        path = Path(self.db.database)
        return None if path.exists() else str(path)

    def close(self) -> None:
        if not self.db.is_closed():
            self.db.close()


def bootstrap(
    settings: BudgetSettings | None = None,
    *,
    plugin_manager: pluggy.PluginManager | None = None,
    clock: Callable[[], datetime] = utcnow,
    require_store: bool = True,
) -> BudgetServices:
    """Build the services from settings (default: :meth:`BudgetSettings.load`).

    Opens the database (creating or migrating its schema), loads the
    ``atlas_budget`` plugins, applies the policies and alerts declared in
    settings and replays the outage spool. With ``require_store=False`` an
    unreachable database does not stop start-up: the services come up
    not ``ready`` and finish starting when it returns (the plugin does this).
    """
    settings = settings or BudgetSettings.load()
    db = open_database(
        settings.database_url,
        connect_timeout=settings.store_connect_timeout,
        statement_timeout=settings.store_statement_timeout,
        lock_timeout=settings.store_lock_timeout,
        durability=settings.durability,
    )
    ready = True
    try:
        initialize(db)
    except StoreUnavailable as exc:
        if require_store:
            raise
        ready = False
        log.error("budget store unreachable at start (%s); calls follow on_store_error until it returns", exc)
    extensions = Extensions(plugin_manager or get_plugin_manager())
    bus = MessageBus(extensions)
    pricer = Pricer(settings, extensions)
    ledger = Ledger(db, settings.durability)
    permissions = BudgetPermissionChecker()
    repository = PolicyRepository(db)
    policies = BudgetPolicyService(repository, ledger, pricer, bus, settings, permissions, clock)
    ledger.policies_changed = repository.forget  # a routine found the cached policies stale
    tracking = BudgetTrackingService(
        ledger,
        pricer,
        bus,
        policies.charged,
        lambda tenant: repository.all(tenant, max_age=1.0),
        permissions,
        clock,
        spool=Spool(settings.spool_file),
        attribution=policies.attribution,
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
    services = BudgetServices(settings, db, bus, extensions, pricer, ledger, policies, tracking, alerts, ready)
    if ready:
        services._apply_declared()
        tracking.replay_spool()
    return services
