"""BudgetAlertService: alert configs, evaluation off the call path, acknowledge/snooze, delivery to sinks."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol

import pydantic

from .bus import MessageBus
from .exceptions import NotFoundError, ValidationError
from .money import from_units, to_units
from .periods import Period, window
from .permissions import BudgetPermissionChecker
from .policy_service import BudgetPolicyService
from .store.alerts import AlertRepository, InvalidStoredConfig
from .store.database import STORE_ERRORS
from .store.ledger import naive
from .store.reports import UsageReports
from .tracking_service import filter_for
from .types import (
    ATLAS_CHANNELS,
    MAX_TEXT,
    SEVERITY_ORDER,
    Actor,
    Alert,
    AlertConfig,
    BudgetAlertEvent,
    BudgetLimitEvent,
    Delivery,
    Policy,
    Scope,
    check_text,
    scope_arg,
    utcnow,
)

log = logging.getLogger("atlas_budget_plugin.alerts")

Clock = Callable[[], datetime]

#: A forecast needs this share of the period behind it before it may fire (less is noise).
FORECAST_MIN_ELAPSED = Decimal("0.05")
#: The longest snooze: a year ahead (to silence an alert for good, remove or disable it).
MAX_SNOOZE = timedelta(days=365)
#: Delivery states ``list_deliveries`` filters on; None means the two that need attention.
DELIVERY_STATUSES = ("pending", "failed", "delivered")


class Sinks(Protocol):
    def sink_names(self) -> list[str]: ...

    def deliver(self, alert: Alert, sink: str) -> None: ...


def sink_problem(sinks: Sinks, name: str) -> str | None:
    """What keeps the installed sink ``name`` from delivering (e.g. no URL set), or None.

    A sink says so with an optional plain function ``sink_problem() -> str | None`` on its
    plugin object (see docs/writing-a-sink.md); sinks without one are taken as ready.
    """
    check = getattr(sinks, "sink_problem", None)
    if callable(check):
        return check(name)
    pm = getattr(sinks, "pm", None)
    plugin = pm.get_plugin(name) if pm is not None else None
    probe = getattr(plugin, "sink_problem", None)
    if not callable(probe):
        return None
    try:
        problem = probe()
    except Exception as exc:  # a broken probe must not hide the sink's real trouble
        return f"its readiness check failed: {type(exc).__name__}: {exc}"
    return str(problem) if problem else None


def _check_policy_name(value: Any) -> str:
    """A policy name given to filter or resolve alerts: text the store could hold (ValidationError otherwise)."""
    try:
        return check_text(value, "policy", MAX_TEXT, min_length=1)
    except ValueError as exc:
        raise ValidationError(str(exc)) from None


def _check_id(value: Any, what: str) -> int:
    """An id as the store holds it; a well-typed id out of range is simply not found."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"{what} id must be a whole number, got {type(value).__name__} {value!r}")
    return value


class BudgetAlertService:
    """Decides when spend deserves an alert, records it once per window, and delivers it."""

    def __init__(
        self,
        repository: AlertRepository,
        policies: BudgetPolicyService,
        reports: UsageReports,
        sinks: Sinks,
        bus: MessageBus,
        permissions: BudgetPermissionChecker | None = None,
        clock: Clock = utcnow,
        delivery_attempts: int = 5,
        delivery_backoff: float = 30.0,
    ) -> None:
        self.repository = repository
        self.policies = policies
        self.reports = reports
        self.sinks = sinks
        self.bus = bus
        self.permissions = permissions or BudgetPermissionChecker()
        self.clock = clock
        self.delivery_attempts = delivery_attempts
        self.delivery_backoff = delivery_backoff

    # -- configuration ----------------------------------------------------------------------

    def _validated(self, data: dict[str, Any]) -> AlertConfig:
        # ATLAS channel names given here (email, slack...) are stored as their sink; errors name both.
        given = data.get("sinks")
        atlas = (
            {ATLAS_CHANNELS[n]: n for n in given if isinstance(n, str) and n in ATLAS_CHANNELS}
            if isinstance(given, list)
            else {}
        )
        try:
            config = AlertConfig.model_validate(data)
        except pydantic.ValidationError as exc:
            raise ValidationError.from_pydantic(exc, "alert") from None
        if self.policies.repository.by_name(config.tenant, config.policy) is None:
            raise NotFoundError(f"no policy named {config.policy!r} in tenant {config.tenant!r} to alert on")
        installed = self.sinks.sink_names()
        unknown = [s for s in config.sinks if s not in installed]
        if unknown:
            raise ValidationError(
                f"unknown alert sink {unknown[0]!r}; installed sinks: {', '.join(installed) or 'none'} "
                "(a sink is the entry-point name of an atlas_budget plugin)"
            )
        for name in config.sinks:
            problem = sink_problem(self.sinks, name)
            if problem:
                channel = atlas.get(name)
                if channel is not None and channel != name:
                    raise ValidationError(
                        f"ATLAS alert channel {channel!r} is delivered by the {name!r} sink here, which cannot "
                        f"deliver: {problem}"
                    )
                raise ValidationError(f"alert sink {name!r} cannot deliver: {problem}")
        return config

    def ready_sinks(self) -> list[str]:
        """Installed sinks that can deliver now: where an alert naming no sink goes."""
        return [name for name in self.sinks.sink_names() if not sink_problem(self.sinks, name)]

    def configure_alert(self, actor: Actor, alert_config: AlertConfig | dict[str, Any]) -> AlertConfig:
        """Create an alert config, or update the one with ``alert_config['id']`` (needs ``budget:write``)."""
        data = (
            alert_config.model_dump(exclude_unset=True) if isinstance(alert_config, AlertConfig) else dict(alert_config)
        )
        data.setdefault("tenant", actor.tenant)
        self.permissions.require(actor, "budget:write", data["tenant"])
        config = self._validated(data)
        if config.id is None:
            return self.repository.add_config(config, self.clock())
        self._exists(actor, config.id)  # replacing also repairs a stored config that no longer validates
        return self.repository.replace_config(config)

    def _exists(self, actor: Actor, alert_id: int) -> None:
        if not (
            1 <= _check_id(alert_id, "alert") <= AlertConfig.MAX_ID and self.repository.exists(actor.tenant, alert_id)
        ):
            raise NotFoundError(f"no alert with id {alert_id} in tenant {actor.tenant!r}")

    def _config(self, actor: Actor, alert_id: int) -> AlertConfig:
        """An alert config of the actor's tenant; another tenant's is not found."""
        self._exists(actor, alert_id)
        try:
            config = self.repository.get_config(actor.tenant, alert_id)
        except InvalidStoredConfig as exc:
            raise ValidationError(str(exc)) from None
        if config is None:  # removed in between
            raise NotFoundError(f"no alert with id {alert_id} in tenant {actor.tenant!r}")
        return config

    def remove_alert(self, actor: Actor, alert_id: int) -> None:
        """Remove an alert config (needs ``budget:write``); works on a stored config that no longer validates."""
        self.permissions.require(actor, "budget:write")
        self._exists(actor, alert_id)
        self.repository.remove_config(actor.tenant, alert_id)

    def list_alerts(self, actor: Actor, scope: Scope | dict[str, Any] | None = None) -> list[AlertConfig]:
        """Alert configs of the actor's tenant, limited to policies whose scope includes ``scope``."""
        self.permissions.require(actor, "budget:read")
        wanted = scope_arg(scope)
        policies = {p.name: p for p in self.policies.repository.all(actor.tenant)}
        result = []
        for config in self.repository.configs(actor.tenant):  # invalid stored rows: see invalid_alerts
            policy = policies.get(config.policy)
            if (policy.scope if policy else Scope()).has(wanted):
                result.append(config)
        return result

    def invalid_alerts(self, actor: Actor) -> list[str]:
        """Why each stored alert config of the tenant that no longer validates is skipped (and how to fix it)."""
        self.permissions.require(actor, "budget:read")
        return [str(c) for c in self.repository.configs_or_errors(actor.tenant) if isinstance(c, Exception)]

    def snooze_alert(self, actor: Actor, alert_id: int, until: datetime) -> AlertConfig:
        """Keep an alert config quiet until ``until``, at most a year ahead (needs ``budget:write``)."""
        self.permissions.require(actor, "budget:write")
        if not isinstance(until, datetime):
            raise ValidationError(f"snooze time must be a datetime, got {type(until).__name__}")
        if until.tzinfo is None or until.utcoffset() is None:
            raise ValidationError("snooze time must be timezone-aware, e.g. 2026-12-01T09:00+00:00")
        config = self._config(actor, alert_id)
        latest = self.clock() + MAX_SNOOZE
        try:
            too_late = until > latest
        except OverflowError:  # an offset that takes the time out of datetime's range
            too_late = True
        if too_late:
            raise ValidationError(
                f"an alert can be snoozed at most 365 days ahead (until {latest:%Y-%m-%d %H:%M} UTC), "
                f"got {until.isoformat()}; to silence it for good, remove it"
            )
        return self.repository.replace_config(config.model_copy(update={"snoozed_until": until}))

    def apply_declared(self, configs: Iterable[AlertConfig]) -> list[AlertConfig]:
        """Create or update alerts declared in settings, matched by tenant, policy, kind and threshold."""
        applied = []
        for declared in configs:
            existing = {(c.policy, c.kind, c.threshold): c for c in self.repository.configs(declared.tenant)}.get(
                (declared.policy, declared.kind, declared.threshold)
            )
            data = declared.model_dump(exclude={"id"})
            if existing is not None:
                data["id"] = existing.id
                if AlertConfig.model_validate(data | {"snoozed_until": existing.snoozed_until}) == existing:
                    applied.append(existing)
                    continue
            applied.append(self.configure_alert(Actor.system(declared.tenant), data))
        return applied

    # -- lifecycle --------------------------------------------------------------------------

    def get_active_alerts(self, actor: Actor, policy: str | None = None, severity: str | None = None) -> list[Alert]:
        """Alerts of the actor's tenant that are neither acknowledged nor resolved, most severe first.

        ``policy`` (a policy name) and ``severity`` (info, warning, critical, emergency) keep only
        those alerts. Order: emergency, critical, warning, info; newest first within a severity.
        """
        self.permissions.require(actor, "budget:read")
        if policy is not None:
            _check_policy_name(policy)
        if severity is not None and severity not in SEVERITY_ORDER:
            raise ValidationError(
                f"unknown alert severity {str(severity)[:50]!r}; allowed: {', '.join(reversed(SEVERITY_ORDER))}"
            )
        return self.repository.active(actor.tenant, policy, severity)

    def get_alert(self, actor: Actor, alert_id: int) -> Alert:
        """One triggered alert of the actor's tenant, in any state (needs ``budget:read``).

        Another tenant's alert is answered as not found, like a missing one.
        """
        self.permissions.require(actor, "budget:read")
        return self._alert(actor, alert_id)

    def _alert(self, actor: Actor, alert_id: int) -> Alert:
        in_range = 1 <= _check_id(alert_id, "alert") <= AlertConfig.MAX_ID
        alert = self.repository.get_alert(actor.tenant, alert_id) if in_range else None
        if alert is None:
            raise NotFoundError(f"no triggered alert with id {alert_id} in tenant {actor.tenant!r}")
        return alert

    def resolve_alert(self, actor: Actor, alert_id: int) -> Alert:
        """Close a triggered alert by hand (needs ``budget:write``): audited, emits ``budget.alert_resolved``.

        Resolving an alert that is already resolved changes nothing and emits nothing. A resolved
        alert does not fire again in the same window (its config re-arms when a new window starts).
        """
        self.permissions.require(actor, "budget:write")
        alert = self._alert(actor, alert_id)
        if alert.resolved_at is not None:
            return alert
        resolved = self.repository.resolve(actor.tenant, [alert.id], actor.id, self.clock())
        for done in resolved:
            self._announce_resolved(done, actor)
        if not resolved:  # resolved by someone else in between: show how it stands
            return self._alert(actor, alert_id)
        return resolved[0]

    def resolve_policy_alerts(self, actor: Actor, policy: str | int) -> list[Alert]:
        """Resolve every unresolved alert (acknowledged or not) of one policy, given by name or id.

        Needs ``budget:write``; each alert gets an audit entry and a ``budget.alert_resolved``
        event. Returns the alerts resolved (empty when none was open). A name works for a
        deleted policy whose alerts remain; a name or id unknown to the tenant is not found.
        """
        self.permissions.require(actor, "budget:write")
        if isinstance(policy, int) and not isinstance(policy, bool):
            name = self.policies.get_policy(actor, policy).name
        else:
            name = _check_policy_name(policy)
            known = self.policies.repository.by_name(actor.tenant, name) is not None
            if not known and not self.repository.has_alerts(actor.tenant, name):
                raise NotFoundError(f"no policy named {name!r} in tenant {actor.tenant!r}")
        ids = self.repository.unresolved_ids(actor.tenant, name)
        resolved = self.repository.resolve(actor.tenant, ids, actor.id, self.clock()) if ids else []
        for done in resolved:
            self._announce_resolved(done, actor)
        return resolved

    def _announce_resolved(self, alert: Alert, actor: Actor) -> None:
        self.bus.publish(
            BudgetAlertEvent(topic="budget.alert_resolved", tenant=alert.tenant, alert=alert, actor=actor.id)
        )

    def get_alert_history(self, actor: Actor, limit: int = 100) -> list[Alert]:
        self.permissions.require(actor, "budget:read")
        return self.repository.alerts(actor.tenant, limit)

    def acknowledge_alert(self, actor: Actor, alert_id: int) -> Alert:
        """Mark a triggered alert as seen (needs ``budget:write``); emits ``budget.alert_acknowledged``."""
        self.permissions.require(actor, "budget:write")
        alert = self._alert(actor, alert_id)
        acknowledged = self.repository.acknowledge(alert, actor.id, self.clock())
        self.bus.publish(
            BudgetAlertEvent(topic="budget.alert_acknowledged", tenant=alert.tenant, alert=acknowledged, actor=actor.id)
        )
        return acknowledged

    def deliveries(self, actor: Actor, status: str | None = None) -> list[Delivery]:
        """Delivery state of the tenant's alerts (all of them, or of one ``status``)."""
        self.permissions.require(actor, "budget:read")
        return self.repository.deliveries(actor.tenant, self._status(status))

    def list_deliveries(self, actor: Actor, status: str | None = None, limit: int = 1000) -> list[Delivery]:
        """Deliveries that need attention: pending (being retried) and failed (given up), with attempts and
        last error; or those of one ``status`` (pending, failed, delivered). Needs ``budget:read``."""
        self.permissions.require(actor, "budget:read")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 100_000:
            raise ValidationError(f"limit must be a whole number from 1 to 100000, got {limit!r}")
        wanted = self._status(status) or ("pending", "failed")
        return self.repository.deliveries(actor.tenant, wanted, limit)

    @staticmethod
    def _status(status: str | None) -> str | None:
        if status is not None and status not in DELIVERY_STATUSES:
            raise ValidationError(f"unknown delivery status {status!r}; allowed: {', '.join(DELIVERY_STATUSES)}")
        return status

    # -- evaluation -------------------------------------------------------------------------

    def evaluate_alerts(self, now: datetime | None = None) -> list[Alert]:
        """One pass over every tenant's alert configs; returns the alerts that fired.

        Each config fires at most once per window (a unique key in the store, so
        several evaluating processes cannot duplicate it); alerts whose window
        ended are resolved; then due deliveries are attempted.
        """
        now = now or self.clock()
        self.repository.resolve_ended(now)
        fired = []
        for config in self.repository.configs():  # a stored config that no longer validates is logged, skipped
            try:
                alert = self._evaluate(config, now)
            except STORE_ERRORS:
                raise  # the store, not this tenant: the caller retries the whole pass
            except Exception:  # one tenant's bad alert or policy must not stop the others' alerts
                log.exception(
                    "alert %s of tenant %r on policy %r could not be evaluated; it is skipped",
                    config.id,
                    config.tenant,
                    config.policy,
                )
                continue
            if alert is not None:
                fired.append(alert)
        self.deliver_pending(now)
        return fired

    def _evaluate(self, config: AlertConfig, now: datetime) -> Alert | None:
        if not config.enabled or (config.snoozed_until and config.snoozed_until > now):
            return None
        policy = self.policies.repository.by_name(config.tenant, config.policy)
        if policy is None or not policy.enabled:
            return None
        if config.cooldown:
            last = self.repository.last_triggered(config.id or 0)
            if last is not None and now - last < timedelta(seconds=config.cooldown):
                return None
        found = self._anomaly(config, policy, now) if config.kind == "anomaly" else self._spend(config, policy, now)
        if found is None:
            return None
        start, end, spent, limit, message = found
        sinks = config.sinks or self.ready_sinks()
        alert = self.repository.trigger(
            {
                "config_id": config.id,
                "tenant": config.tenant,
                "policy": policy.name,
                "kind": config.kind,
                "severity": config.severity,
                "threshold": config.threshold,
                "window_start": naive(start),
                "window_end": naive(end),
                "spent_units": to_units(spent),
                "limit_units": to_units(limit),
                "message": message,
            },
            sinks,
            now,
        )
        if alert is None:
            return None
        log.info("alert %s fired: %s", alert.id, message)
        self.bus.publish(BudgetAlertEvent(topic="budget.alert_triggered", tenant=alert.tenant, alert=alert))
        if config.kind != "anomaly":  # an anomaly says nothing about the limit
            topic = "budget.limit_exceeded" if config.threshold >= 100 else "budget.approaching_limit"
            self.bus.publish(
                BudgetLimitEvent(
                    topic=topic,
                    tenant=alert.tenant,
                    policy_id=policy.id or 0,
                    policy_name=policy.name,
                    call_id=None,
                    spent=spent,
                    limit=limit,
                    requested=Decimal(0),
                )
            )
        return alert

    def _spend(self, config: AlertConfig, policy: Policy, now: datetime) -> tuple[Any, ...] | None:
        target = self.policies.target(policy, now)
        (standing,) = self.policies.ledger.standings([target])
        spent, limit = from_units(standing.spent_units), from_units(standing.limit_units)
        pct = config.threshold
        if config.kind == "actual":
            if spent * 100 < limit * pct:
                return None
            message = (
                f"budget {policy.name!r} ({config.tenant}) has used {spent} of {limit} {policy.currency} "
                f"({spent * 100 / limit:.1f}%), reaching the {pct}% threshold"
            )
            return target.window_start, target.window_end, spent, limit, message
        if target.period.kind in ("total", "rolling"):
            return None  # no period end to project to
        length = Decimal((target.window_end - target.window_start).total_seconds())
        elapsed = Decimal((now - target.window_start).total_seconds()) / length
        if elapsed < FORECAST_MIN_ELAPSED:
            return None
        projected = (spent / elapsed).quantize(Decimal("0.01"))
        if projected * 100 < limit * pct:
            return None
        message = (
            f"budget {policy.name!r} ({config.tenant}) is on course to spend {projected} of {limit} "
            f"{policy.currency} this {policy.period} ({spent} after {elapsed * 100:.0f}% of it), past {pct}%"
        )
        return target.window_start, target.window_end, spent, limit, message

    def _anomaly(self, config: AlertConfig, policy: Policy, now: datetime) -> tuple[Any, ...] | None:
        span = Period(config.anomaly_window)
        start, end = window(span, policy.timezone, now)
        length = end - start
        flt = filter_for(policy.scope)
        current = from_units(self.reports.totals(config.tenant, start, end, flt).cost_units)
        before = self.reports.totals(config.tenant, start - length * config.anomaly_baseline, start, flt)
        baseline = from_units(before.cost_units) / config.anomaly_baseline
        if current < config.anomaly_minimum or baseline <= 0 or current * 100 < baseline * config.threshold:
            return None
        message = (
            f"spend under {policy.name!r} ({config.tenant}) this {config.anomaly_window} is {current} "
            f"{policy.currency}, {current / baseline:.1f}x its average of {baseline.quantize(Decimal('0.0001'))} "
            f"over the previous {config.anomaly_baseline} {config.anomaly_window}s"
        )
        return start, end, current, from_units(to_units(baseline)), message

    # -- delivery ---------------------------------------------------------------------------

    def _retry_at(self, attempts: int, now: datetime) -> datetime | None:
        if attempts >= self.delivery_attempts:
            return None
        return now + timedelta(seconds=min(3600.0, self.delivery_backoff * 2 ** (attempts - 1)))

    def deliver_pending(self, now: datetime | None = None) -> int:
        """Attempt every due delivery once; a failing sink is retried later with backoff, never blocking others."""
        now = now or self.clock()
        delivered = 0
        for row, alert in self.repository.claim_due(now, timedelta(seconds=120)):
            try:
                self.sinks.deliver(alert, row.sink)
            except Exception as exc:  # a sink may fail in any way; it must not stop the others
                retry = self._retry_at(row.attempts + 1, now)
                error = f"{type(exc).__name__}: {exc}"
                try:
                    self.repository.failed(row, error, retry)
                except STORE_ERRORS:
                    raise
                except Exception:  # e.g. an attempts count out of range: log it, go on with the others
                    log.exception("the failed delivery of alert %s to %r could not be recorded", alert.id, row.sink)
                    continue
                if retry is None:
                    log.error(
                        "alert %s could not be delivered to sink %r after %d attempts: %s",
                        alert.id,
                        row.sink,
                        row.attempts + 1,
                        error,
                    )
                else:
                    log.warning(
                        "alert %s delivery to %r failed (attempt %d), retrying at %s: %s",
                        alert.id,
                        row.sink,
                        row.attempts + 1,
                        retry.isoformat(),
                        error,
                    )
                continue
            self.repository.delivered(row, now)
            delivered += 1
        return delivered
