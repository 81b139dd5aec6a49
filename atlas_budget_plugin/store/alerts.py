"""Alert configs, triggered alerts and their deliveries; every query scoped to one tenant."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta
from typing import Any

import peewee as pw
import pydantic

from ..money import from_units, to_units
from ..types import SEVERITY_ORDER, Alert, AlertConfig, Delivery
from .database import run_in_transaction, write_transaction
from .ledger import aware, naive
from .models import AlertConfigRow, AlertRow, AuditEntry, DeliveryRow

log = logging.getLogger("atlas_budget_plugin.alerts")

#: What a stored row that no longer reads as its type raises (bad JSON, a value out of today's bounds...).
BAD_ROW = (ValueError, TypeError, KeyError, OverflowError, pydantic.ValidationError)


class InvalidStoredConfig(Exception):
    """A stored alert config that does not validate any more (written before a bound existed, or by hand)."""

    def __init__(self, row_id: int, tenant: str, reason: str) -> None:
        super().__init__(
            f"stored alert config {row_id} of tenant {tenant!r} is invalid ({reason}); "
            f"remove it with `atlas-budget --tenant {tenant} alert remove {row_id}` and add it again"
        )
        self.row_id = row_id
        self.tenant = tenant


def _reason(exc: BaseException) -> str:
    if isinstance(exc, pydantic.ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {str(e['msg']).removeprefix('Value error, ')}"
            for e in exc.errors()
        )
    return f"{type(exc).__name__}: {exc}"


def _aware(moment: datetime | str | None) -> datetime | None:
    return aware(moment) if moment else None


def _naive(moment: datetime | None) -> datetime | None:
    return naive(moment) if moment else None


def to_config(row: AlertConfigRow) -> AlertConfig:
    """The config of a stored row; :class:`InvalidStoredConfig` if it no longer validates."""
    try:
        data = json.loads(row.config_json)
        if not isinstance(data, dict):
            raise TypeError("config_json is not a JSON object")
        data.update(
            id=row.id,
            tenant=row.tenant,
            policy=row.policy,
            snoozed_until=_aware(row.snoozed_until),
        )
        return AlertConfig.model_validate(data)
    except BAD_ROW as exc:
        raise InvalidStoredConfig(row.id, row.tenant, _reason(exc)) from None


def to_alert(row: AlertRow) -> Alert:
    return Alert(
        id=row.id,
        config_id=row.config_id,
        tenant=row.tenant,
        policy=row.policy,
        kind=row.kind,
        severity=row.severity,
        threshold=row.threshold,
        window_start=aware(row.window_start),
        window_end=aware(row.window_end),
        spent=from_units(row.spent_units),
        limit=from_units(row.limit_units),
        message=row.message,
        sinks=tuple(json.loads(row.sinks_json)),
        triggered_at=aware(row.triggered_at),
        acknowledged_by=row.acknowledged_by,
        acknowledged_at=_aware(row.acknowledged_at),
        resolved_at=_aware(row.resolved_at),
    )


def to_delivery(row: DeliveryRow) -> Delivery:
    return Delivery(
        alert_id=row.alert_id,
        sink=row.sink,
        status=row.status,
        attempts=row.attempts,
        last_error=row.last_error,
        next_attempt_at=_aware(row.next_attempt_at),
        delivered_at=_aware(row.delivered_at),
    )


def _config_json(config: AlertConfig) -> str:
    return config.model_dump_json(exclude={"id", "tenant", "policy", "snoozed_until"})


class AlertRepository:
    def __init__(self, db: pw.Database) -> None:
        self.db = db

    # -- configs ----------------------------------------------------------------------------

    def add_config(self, config: AlertConfig, now: datetime) -> AlertConfig:
        row_id = AlertConfigRow.insert(
            tenant=config.tenant,
            policy=config.policy,
            config_json=_config_json(config),
            snoozed_until=_naive(config.snoozed_until),
            created_at=naive(now),
        ).execute()
        return to_config(AlertConfigRow.get_by_id(row_id))

    def replace_config(self, config: AlertConfig) -> AlertConfig:
        AlertConfigRow.update(
            policy=config.policy,
            config_json=_config_json(config),
            snoozed_until=_naive(config.snoozed_until),
        ).where((AlertConfigRow.id == config.id) & (AlertConfigRow.tenant == config.tenant)).execute()
        return to_config(AlertConfigRow.get_by_id(config.id))

    def get_config(self, tenant: str, config_id: int) -> AlertConfig | None:
        row = AlertConfigRow.get_or_none((AlertConfigRow.tenant == tenant) & (AlertConfigRow.id == config_id))
        return to_config(row) if row else None

    def exists(self, tenant: str, config_id: int) -> bool:
        """True when the tenant has a config with this id, valid or not."""
        return (
            AlertConfigRow.select(AlertConfigRow.id)
            .where((AlertConfigRow.tenant == tenant) & (AlertConfigRow.id == config_id))
            .exists()
        )

    def configs(self, tenant: str | None = None) -> list[AlertConfig]:
        """Configs of one tenant (or all); a stored row that no longer validates is logged and skipped."""
        return [c for c in self.configs_or_errors(tenant) if isinstance(c, AlertConfig)]

    def configs_or_errors(self, tenant: str | None = None) -> list[AlertConfig | InvalidStoredConfig]:
        """Every config row in id order, an :class:`InvalidStoredConfig` in place of each invalid one."""
        query = AlertConfigRow.select().order_by(AlertConfigRow.id)
        if tenant is not None:
            query = query.where(AlertConfigRow.tenant == tenant)
        found: list[AlertConfig | InvalidStoredConfig] = []
        for row in query:
            try:
                found.append(to_config(row))
            except InvalidStoredConfig as exc:
                log.warning("%s; it is skipped", exc)
                found.append(exc)
        return found

    def remove_config(self, tenant: str, config_id: int) -> None:
        with write_transaction(self.db):
            AlertConfigRow.delete().where(
                (AlertConfigRow.tenant == tenant) & (AlertConfigRow.id == config_id)
            ).execute()

    # -- alerts -----------------------------------------------------------------------------

    def last_triggered(self, config_id: int) -> datetime | None:
        row = AlertRow.select(pw.fn.MAX(AlertRow.triggered_at)).where(AlertRow.config_id == config_id).scalar()
        return aware(row) if row else None

    def trigger(self, alert: dict[str, Any], sinks: list[str], now: datetime) -> Alert | None:
        """Store an alert and its pending deliveries; None when this config already fired in this window."""

        def work() -> Alert | None:
            query = AlertRow.insert(**alert, sinks_json=json.dumps(sinks), triggered_at=naive(now)).on_conflict_ignore()
            cursor = self.db.execute(query)
            if cursor.rowcount != 1:
                return None
            row = AlertRow.get(
                (AlertRow.config_id == alert["config_id"]) & (AlertRow.window_start == alert["window_start"])
            )
            for sink in sinks:
                DeliveryRow.insert(alert_id=row.id, sink=sink, next_attempt_at=naive(now)).execute()
            return to_alert(row)

        return run_in_transaction(self.db, work)

    def get_alert(self, tenant: str, alert_id: int) -> Alert | None:
        row = AlertRow.get_or_none((AlertRow.tenant == tenant) & (AlertRow.id == alert_id))
        return to_alert(row) if row else None

    def active(self, tenant: str, policy: str | None = None, severity: str | None = None) -> list[Alert]:
        """Alerts neither acknowledged nor resolved, of one policy and/or severity if given.

        Most severe first (:data:`SEVERITY_ORDER`), then newest first, then highest id.
        """
        query = AlertRow.select().where(
            (AlertRow.tenant == tenant) & AlertRow.resolved_at.is_null() & AlertRow.acknowledged_at.is_null()
        )
        if policy is not None:
            query = query.where(AlertRow.policy == policy)
        if severity is not None:
            query = query.where(AlertRow.severity == severity)
        rank = {name: i for i, name in enumerate(SEVERITY_ORDER)}
        alerts = [to_alert(r) for r in query]
        # Sorted here, not in SQL: an ORDER BY CASE would differ per backend, and open alerts are few.
        alerts.sort(key=lambda a: (rank.get(a.severity, len(rank)), -a.triggered_at.timestamp(), -a.id))
        return alerts

    def alerts(self, tenant: str, limit: int = 100) -> list[Alert]:
        query = AlertRow.select().where(AlertRow.tenant == tenant).order_by(AlertRow.id.desc()).limit(limit)
        return [to_alert(r) for r in query]

    def acknowledge(self, alert: Alert, actor: str, now: datetime) -> Alert:
        AlertRow.update(acknowledged_by=actor, acknowledged_at=naive(now)).where(AlertRow.id == alert.id).execute()
        return to_alert(AlertRow.get_by_id(alert.id))

    def resolve(self, tenant: str, alert_ids: list[int], actor: str, now: datetime) -> list[Alert]:
        """Resolve the tenant's unresolved alerts among ``alert_ids`` by hand, each with an audit entry.

        One transaction: every alert resolved here gets its audit entry, or none does. Returns
        the alerts this call resolved (one already resolved, by anyone, is left as it is).
        """

        def work() -> list[Alert]:
            done = []
            for alert_id in alert_ids:
                before = self.get_alert(tenant, alert_id)
                if before is None or before.resolved_at is not None:
                    continue
                changed = (
                    AlertRow.update(resolved_at=naive(now))
                    .where((AlertRow.id == alert_id) & (AlertRow.tenant == tenant) & AlertRow.resolved_at.is_null())
                    .execute()
                )
                if not changed:
                    continue  # resolved meanwhile, by the window ending or another resolver
                after = to_alert(AlertRow.get_by_id(alert_id))
                # The same audit trail as policy changes (store/repository.py), so `atlas-budget audit`
                # shows who resolved which alert next to who changed which policy.
                AuditEntry.create(
                    tenant=tenant,
                    actor=actor,
                    action="resolve",
                    object_type="alert",
                    object_id=str(alert_id),
                    before_json=before.model_dump_json(),
                    after_json=after.model_dump_json(),
                    at=naive(now),
                )
                done.append(after)
            return done

        return run_in_transaction(self.db, work)

    def unresolved_ids(self, tenant: str, policy: str) -> list[int]:
        """Ids of the tenant's alerts on ``policy`` that are not resolved (acknowledged ones included)."""
        query = (
            AlertRow.select(AlertRow.id)
            .where((AlertRow.tenant == tenant) & (AlertRow.policy == policy) & AlertRow.resolved_at.is_null())
            .order_by(AlertRow.id)
        )
        return [row.id for row in query]

    def has_alerts(self, tenant: str, policy: str) -> bool:
        return AlertRow.select(AlertRow.id).where((AlertRow.tenant == tenant) & (AlertRow.policy == policy)).exists()

    def resolve_ended(self, now: datetime) -> int:
        """Resolve alerts whose window has ended (a new window re-arms their config)."""
        return int(
            AlertRow.update(resolved_at=naive(now))
            .where(AlertRow.resolved_at.is_null() & (AlertRow.window_end <= naive(now)))
            .execute()
        )

    # -- deliveries -------------------------------------------------------------------------

    def claim_due(self, now: datetime, hold: timedelta) -> list[tuple[DeliveryRow, Alert]]:
        """Pending deliveries that are due, each claimed for ``hold`` so only one evaluator sends it.

        A delivery whose alert row cannot be read any more is marked failed with the reason (logged),
        so it neither stops the others nor comes back on every pass.
        """
        due = list(
            DeliveryRow.select()
            .where(
                (DeliveryRow.status == "pending")
                & (DeliveryRow.next_attempt_at <= naive(now))
                & (DeliveryRow.claimed_until.is_null() | (DeliveryRow.claimed_until < naive(now)))
            )
            .order_by(DeliveryRow.id)
            .limit(100)
        )
        claimed = []
        for row in due:
            with write_transaction(self.db):
                won = (
                    DeliveryRow.update(claimed_until=naive(now + hold))
                    .where(
                        (DeliveryRow.id == row.id)
                        & (DeliveryRow.status == "pending")
                        & (DeliveryRow.claimed_until.is_null() | (DeliveryRow.claimed_until < naive(now)))
                    )
                    .execute()
                )
            if not won:
                continue
            try:
                claimed.append((row, to_alert(AlertRow.get_by_id(row.alert_id))))
            except (pw.DoesNotExist, *BAD_ROW) as exc:
                error = f"the stored alert {row.alert_id} cannot be read: {_reason(exc)}"
                log.error("delivery %s to sink %r given up: %s", row.id, row.sink, error)
                self.failed(row, error, None)
        return claimed

    def delivered(self, row: DeliveryRow, now: datetime) -> None:
        DeliveryRow.update(
            status="delivered", attempts=row.attempts + 1, delivered_at=naive(now), claimed_until=None, last_error=None
        ).where(DeliveryRow.id == row.id).execute()

    def failed(self, row: DeliveryRow, error: str, retry_at: datetime | None) -> None:
        DeliveryRow.update(
            status="pending" if retry_at else "failed",
            attempts=row.attempts + 1,
            last_error=error[:2000],
            next_attempt_at=naive(retry_at) if retry_at else row.next_attempt_at,
            claimed_until=None,
        ).where(DeliveryRow.id == row.id).execute()

    def deliveries(
        self, tenant: str, status: str | tuple[str, ...] | None = None, limit: int | None = None
    ) -> list[Delivery]:
        """The tenant's deliveries in id order, of one status or several (all when None)."""
        query = (
            DeliveryRow.select()
            .join(AlertRow, on=(DeliveryRow.alert_id == AlertRow.id))
            .where(AlertRow.tenant == tenant)
        )
        if isinstance(status, str):
            query = query.where(DeliveryRow.status == status)
        elif status:
            query = query.where(DeliveryRow.status.in_(list(status)))
        query = query.order_by(DeliveryRow.id)
        if limit is not None:
            query = query.limit(limit)
        return [to_delivery(r) for r in query]


__all__ = ["AlertRepository", "to_units"]
