"""BudgetTrackingService: exact, idempotent usage recording and the spend reports."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, cast

import peewee as pw

from hookspecs import LLMCall, LLMUsage

from .bus import MessageBus
from .exceptions import ValidationError
from .money import from_units, parse_money, to_units
from .periods import Period, parse_period, window
from .permissions import BudgetPermissionChecker
from .pricing import Pricer
from .store import Ledger, Standing, Target, aware, naive
from .store.ledger import USAGE_COLUMNS
from .store.models import UsageRow
from .types import (
    Actor,
    BudgetThresholdEvent,
    BudgetUsageEvent,
    Policy,
    Scope,
    SpendRow,
    TrendPoint,
    UsageRecord,
    UsageSummary,
    utcnow,
)

Clock = Callable[[], datetime]
TOKEN_FIELDS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")
DIMENSIONS = ("provider", "model", "category", "actor", "operation")
_TICK = timedelta(microseconds=1)


def to_record(row: UsageRow | dict[str, Any]) -> UsageRecord:
    """A stored usage row (model instance or column dict) as the API's UsageRecord."""
    data = row if isinstance(row, dict) else {c: getattr(row, c) for c in USAGE_COLUMNS}
    return UsageRecord(
        call_id=data["call_id"],
        tenant=data["tenant"],
        actor=data["actor"],
        provider=data["provider"],
        model=data["model"],
        operation=data["operation"],
        category=data["category"],
        tags=json.loads(data["tags_json"]),
        input_tokens=int(data["input_tokens"]),
        output_tokens=int(data["output_tokens"]),
        cache_read_tokens=int(data["cache_read_tokens"]),
        cache_write_tokens=int(data["cache_write_tokens"]),
        cost=from_units(int(data["cost_units"])),
        price_source=data["price_source"],
        error=data["error"],
        recorded_at=aware(data["recorded_at"]),
    )


class BudgetTrackingService:
    """Records what calls cost and answers where the money went."""

    def __init__(
        self,
        ledger: Ledger,
        pricer: Pricer,
        bus: MessageBus,
        targets: Callable[[LLMCall, datetime], Sequence[Target]],
        policies: Callable[[str], Sequence[Policy]],
        permissions: BudgetPermissionChecker | None = None,
        clock: Clock = utcnow,
    ) -> None:
        self.ledger = ledger
        self.pricer = pricer
        self.bus = bus
        self.targets = targets
        self.policies = policies
        self.permissions = permissions or BudgetPermissionChecker()
        self.clock = clock
        self._announced: set[tuple[int, datetime, int]] = set()

    # -- recording --------------------------------------------------------------------------

    def record_call(self, call: LLMCall, usage: LLMUsage, error: BaseException | None = None) -> UsageRecord | None:
        """Price and record a finished call (``post_llm_call``); a failed call that used nothing is released.

        Returns the record (the first one if this ``call_id`` was already
        recorded), or None when the call consumed nothing and failed.
        """
        if error is not None and usage.is_empty:
            self.ledger.release(call.call_id)
            return None
        price = self.pricer.price(call, usage)
        metadata: dict[str, Any] = {name: getattr(usage, name) for name in TOKEN_FIELDS}
        metadata["price_source"] = price.source
        if error is not None:
            metadata["error"] = f"{type(error).__name__}: {error}"[:2000]
        return self.record_usage(call, price.cost, metadata)

    def record_usage(self, operation: LLMCall, cost: Decimal, metadata: dict[str, Any] | None = None) -> UsageRecord:
        """Record ``cost`` for a call durably before returning; idempotent on ``call_id``.

        ``metadata`` may give token counts (``input_tokens``, ``output_tokens``,
        ``cache_read_tokens``, ``cache_write_tokens``), ``price_source`` and ``error``.
        Settles the call's reservation in the same transaction.
        """
        call = operation
        try:
            amount = parse_money(cost, "cost")
        except ValueError as exc:
            raise ValidationError(str(exc)) from None
        if amount < 0:
            raise ValidationError(f"cost must not be negative, got {amount} for call {call.call_id}")
        metadata = dict(metadata or {})
        unknown = set(metadata) - set(TOKEN_FIELDS) - {"price_source", "error"}
        if unknown:
            raise ValidationError(
                f"unknown usage metadata {sorted(unknown)}; allowed: {', '.join(TOKEN_FIELDS)}, price_source, error"
            )
        for name in TOKEN_FIELDS:
            value = metadata.get(name, 0)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValidationError(f"{name} must be a whole number >= 0, got {value!r}")
        now = self.clock()
        row = {
            "tenant": call.tenant,
            "actor": call.actor,
            "provider": call.provider,
            "model": call.model,
            "operation": call.operation,
            "category": call.category,
            "tags_json": json.dumps(dict(call.tags), sort_keys=True),
            **{name: metadata.get(name, 0) for name in TOKEN_FIELDS},
            "price_source": metadata.get("price_source", "caller"),
            "error": metadata.get("error"),
            "recorded_at": naive(now),
        }
        settled = self.ledger.settle(call.call_id, to_units(amount), row, lambda: self.targets(call, now))
        record = to_record(settled.row)
        if settled.created:
            self.bus.publish(BudgetUsageEvent(topic="budget.usage_recorded", tenant=call.tenant, record=record))
            self._announce_thresholds(call, settled.standings)
        return record

    def _announce_thresholds(self, call: LLMCall, standings: Sequence[Standing]) -> None:
        """Publish ``budget.threshold_reached`` once per policy, threshold and window (across processes)."""
        if not standings:
            return
        policies = {p.id: p for p in self.policies(call.tenant)}
        for standing in standings:
            policy = policies.get(standing.target.policy_id)
            if policy is None or not standing.limit_units:
                continue
            for pct in policy.thresholds:
                if standing.spent_units * 100 < standing.limit_units * pct:
                    continue
                key = (standing.target.policy_id, standing.target.window_start, pct)
                if key in self._announced:
                    continue  # this process already knows it was announced
                self._announced.add(key)
                if self.ledger.mark_threshold(policy.id or 0, standing.target.window_start, pct):
                    self.bus.publish(
                        BudgetThresholdEvent(
                            topic="budget.threshold_reached",
                            tenant=call.tenant,
                            policy_id=policy.id or 0,
                            policy_name=policy.name,
                            threshold=pct,
                            window_start=standing.target.window_start,
                            spent=from_units(standing.spent_units),
                            limit=from_units(standing.limit_units),
                        )
                    )

    # -- reports ----------------------------------------------------------------------------

    def _window(self, period: str, now: datetime | None, tz: str) -> tuple[Period, datetime, datetime]:
        try:
            parsed = parse_period(period)
        except ValueError as exc:
            raise ValidationError(str(exc)) from None
        start, end = window(parsed, tz, now or self.clock())
        return parsed, start, end

    def _query(self, actor: Actor, scope: Scope | dict[str, Any] | None, start: datetime, end: datetime) -> Any:
        self.permissions.require(actor, "budget:read")
        try:
            wanted = scope if isinstance(scope, Scope) else Scope.model_validate(scope or {})
        except Exception as exc:
            raise ValidationError(f"invalid report scope: {exc}") from None
        query = UsageRow.select().where(
            (UsageRow.tenant == actor.tenant)
            & (UsageRow.recorded_at >= naive(start))
            & (UsageRow.recorded_at < naive(end))
        )
        for key in DIMENSIONS:
            value = getattr(wanted, key)
            if value is not None:
                query = query.where(getattr(UsageRow, key) == value)
        tags = dict(wanted.tags)
        for key in ("team", "project", "session", "persona"):
            if getattr(wanted, key) is not None:
                tags[key] = getattr(wanted, key)
        for key, value in tags.items():
            fragment = f"{json.dumps(key)}: {json.dumps(value)}"
            query = query.where(UsageRow.tags_json.contains(fragment))
        return query

    def get_usage_summary(
        self,
        scope: Scope | dict[str, Any] | None = None,
        period: str = "month",
        *,
        actor: Actor,
        now: datetime | None = None,
        timezone: str = "UTC",
    ) -> UsageSummary:
        """Total cost, calls and tokens of the actor's tenant within ``scope`` in the current ``period``."""
        parsed, start, end = self._window(period, now, timezone)
        query = self._query(actor, scope, start, end)
        cost, calls, tin, tout = cast(
            tuple[int, int, int, int],
            query.select(
                pw.fn.COALESCE(pw.fn.SUM(UsageRow.cost_units), 0),
                pw.fn.COUNT(UsageRow.id),
                pw.fn.COALESCE(pw.fn.SUM(UsageRow.input_tokens), 0),
                pw.fn.COALESCE(pw.fn.SUM(UsageRow.output_tokens), 0),
            )
            .tuples()
            .get(),
        )
        return UsageSummary(
            tenant=actor.tenant,
            period=parsed.name,
            start=start,
            end=end,
            total_cost=from_units(int(cost)),
            calls=int(calls),
            input_tokens=int(tin),
            output_tokens=int(tout),
        )

    def get_spend_by(
        self,
        dimension: str,
        scope: Scope | dict[str, Any] | None = None,
        period: str = "month",
        *,
        actor: Actor,
        now: datetime | None = None,
        timezone: str = "UTC",
    ) -> list[SpendRow]:
        """Spend grouped by one of provider, model, category, actor, operation; largest first."""
        if dimension not in DIMENSIONS:
            raise ValidationError(f"unknown report dimension {dimension!r}; allowed: {', '.join(DIMENSIONS)}")
        _, start, end = self._window(period, now, timezone)
        column = getattr(UsageRow, dimension)
        total = pw.fn.SUM(UsageRow.cost_units)
        rows: Any = (
            self._query(actor, scope, start, end)
            .select(column, total, pw.fn.COUNT(UsageRow.id))
            .group_by(column)
            .order_by(total.desc(), column)
            .tuples()
        )
        return [SpendRow(key=key, total_cost=from_units(int(cost)), calls=int(n)) for key, cost, n in rows]

    def get_spend_by_category(
        self, scope: Scope | dict[str, Any] | None = None, period: str = "month", **kw: Any
    ) -> list[SpendRow]:
        return self.get_spend_by("category", scope, period, **kw)

    def get_spend_by_provider(
        self, scope: Scope | dict[str, Any] | None = None, period: str = "month", **kw: Any
    ) -> list[SpendRow]:
        return self.get_spend_by("provider", scope, period, **kw)

    def get_spend_trend(
        self,
        scope: Scope | dict[str, Any] | None = None,
        periods: int = 12,
        *,
        granularity: str = "day",
        actor: Actor,
        now: datetime | None = None,
        timezone: str = "UTC",
    ) -> list[TrendPoint]:
        """Spend in each of the last ``periods`` hour/day/week/month buckets, oldest first."""
        if granularity not in ("hour", "day", "week", "month"):
            raise ValidationError(f"unknown trend granularity {granularity!r}; allowed: hour, day, week, month")
        if periods < 1:
            raise ValidationError(f"periods must be at least 1, got {periods}")
        parsed = parse_period(granularity)
        bounds: list[tuple[datetime, datetime]] = []
        moment = now or self.clock()
        for _ in range(periods):
            start, end = window(parsed, timezone, moment)
            bounds.append((start, end))
            moment = start - _TICK
        bounds.reverse()
        rows: list[Any] = list(
            self._query(actor, scope, bounds[0][0], bounds[-1][1])
            .select(UsageRow.recorded_at, UsageRow.cost_units)
            .tuples()
        )
        points = []
        for start, end in bounds:
            inside = [units for at, units in rows if naive(start) <= _naive_of(at) < naive(end)]
            points.append(TrendPoint(start=start, end=end, total_cost=from_units(sum(inside)), calls=len(inside)))
        return points

    def list_usage(self, actor: Actor, limit: int = 100) -> list[UsageRecord]:
        """The most recent records of the actor's tenant."""
        self.permissions.require(actor, "budget:read")
        query = UsageRow.select().where(UsageRow.tenant == actor.tenant).order_by(UsageRow.id.desc()).limit(limit)
        return [to_record(r) for r in query]


def _naive_of(value: datetime | str) -> datetime:
    return aware(value).replace(tzinfo=None)
