"""Alert configs, triggered alerts and their deliveries; every query scoped to one tenant."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import peewee as pw

from ..money import from_units, to_units
from ..types import Alert, AlertConfig, Delivery
from .database import run_in_transaction, write_transaction
from .ledger import aware, naive
from .models import AlertConfigRow, AlertRow, DeliveryRow


def _aware(moment: datetime | str | None) -> datetime | None:
    return aware(moment) if moment else None


def _naive(moment: datetime | None) -> datetime | None:
    return naive(moment) if moment else None


def to_config(row: AlertConfigRow) -> AlertConfig:
    data = json.loads(row.config_json)
    data.update(
        id=row.id,
        tenant=row.tenant,
        policy=row.policy,
        snoozed_until=_aware(row.snoozed_until),
    )
    return AlertConfig.model_validate(data)


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

    def configs(self, tenant: str | None = None) -> list[AlertConfig]:
        query = AlertConfigRow.select().order_by(AlertConfigRow.id)
        if tenant is not None:
            query = query.where(AlertConfigRow.tenant == tenant)
        return [to_config(r) for r in query]

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

    def active(self, tenant: str) -> list[Alert]:
        query = AlertRow.select().where(
            (AlertRow.tenant == tenant) & AlertRow.resolved_at.is_null() & AlertRow.acknowledged_at.is_null()
        )
        return [to_alert(r) for r in query.order_by(AlertRow.id)]

    def alerts(self, tenant: str, limit: int = 100) -> list[Alert]:
        query = AlertRow.select().where(AlertRow.tenant == tenant).order_by(AlertRow.id.desc()).limit(limit)
        return [to_alert(r) for r in query]

    def acknowledge(self, alert: Alert, actor: str, now: datetime) -> Alert:
        AlertRow.update(acknowledged_by=actor, acknowledged_at=naive(now)).where(AlertRow.id == alert.id).execute()
        return to_alert(AlertRow.get_by_id(alert.id))

    def resolve_ended(self, now: datetime) -> int:
        """Resolve alerts whose window has ended (a new window re-arms their config)."""
        return int(
            AlertRow.update(resolved_at=naive(now))
            .where(AlertRow.resolved_at.is_null() & (AlertRow.window_end <= naive(now)))
            .execute()
        )

    # -- deliveries -------------------------------------------------------------------------

    def claim_due(self, now: datetime, hold: timedelta) -> list[tuple[DeliveryRow, Alert]]:
        """Pending deliveries that are due, each claimed for ``hold`` so only one evaluator sends it."""
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
            if won:
                claimed.append((row, to_alert(AlertRow.get_by_id(row.alert_id))))
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

    def deliveries(self, tenant: str, status: str | None = None) -> list[Delivery]:
        query = (
            DeliveryRow.select()
            .join(AlertRow, on=(DeliveryRow.alert_id == AlertRow.id))
            .where(AlertRow.tenant == tenant)
        )
        if status:
            query = query.where(DeliveryRow.status == status)
        return [to_delivery(r) for r in query.order_by(DeliveryRow.id)]


__all__ = ["AlertRepository", "to_units"]
