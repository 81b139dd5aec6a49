"""BudgetTrackingService: exact, idempotent usage recording and the spend reports."""

from __future__ import annotations

import bisect
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from hookspecs import LLMCall, LLMUsage

from .bus import MessageBus, maker
from .exceptions import ValidationError
from .money import from_units, quantize, tidy, to_units
from .periods import Period, parse_period, previous_window, window
from .permissions import BudgetPermissionChecker
from .policy_service import check_recorded_call
from .pricing import Pricer
from .store import Ledger, Standing, StoreRangeError, Target, aware, naive, target_for
from .store.database import STORE_ERRORS, reset_connection
from .store.ledger import USAGE_COLUMNS
from .store.models import UsageRow
from .store.reports import Filter, Totals, UsageReports
from .store.spool import Spool
from .types import (
    CALL_DIMENSIONS,
    CALL_FIELD_LENGTHS,
    MAX_COUNT,
    MAX_LIST_LIMIT,
    MAX_TREND_PERIODS,
    TAG_DIMENSIONS,
    TOKEN_FIELDS,
    Actor,
    BudgetThresholdEvent,
    BudgetUsageEvent,
    PeriodComparison,
    Policy,
    Projection,
    Scope,
    SpendRow,
    TrendPoint,
    UsageRecord,
    UsageSummary,
    bounded_period,
    check_cost,
    check_moment,
    check_number,
    check_text,
    check_zone,
    scope_arg,
    trend_change,
    usage_metadata,
    utcnow,
)

log = logging.getLogger("atlas_budget_plugin")

Clock = Callable[[], datetime]
_TICK = timedelta(microseconds=1)


def to_record(row: UsageRow | dict[str, Any]) -> UsageRecord:
    """A stored usage row (model instance or column dict) as the API's UsageRecord."""
    data = row if isinstance(row, dict) else {"id": row.id, **{c: getattr(row, c) for c in USAGE_COLUMNS}}
    return UsageRecord(
        id=data.get("id"),
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
        units={k: Decimal(v) for k, v in json.loads(data.get("units_json") or "{}").items()},
        price_source=data["price_source"],
        error=data["error"],
        recorded_at=aware(data["recorded_at"]),
    )


_new_usage_record = maker(UsageRecord)


def _new_record(row: dict[str, Any], call: LLMCall, metadata: dict[str, Any]) -> UsageRecord:
    """:func:`to_record` of a row this process just wrote from ``call`` and checked ``metadata``: the same
    record, built from the values themselves instead of parsing back the JSON made of them and re-validating."""
    tags, units = call.tags, metadata["units"]
    return _new_usage_record(
        row["call_id"],
        row["tenant"],
        row["actor"],
        row["provider"],
        row["model"],
        row["operation"],
        row["category"],
        {k: tags[k] for k in sorted(tags)} if tags else {},  # as the JSON (sorted keys) reads back
        int(row["input_tokens"]),
        int(row["output_tokens"]),
        int(row["cache_read_tokens"]),
        int(row["cache_write_tokens"]),
        from_units(int(row["cost_units"])),
        row["price_source"],
        {k: Decimal(str(units[k])) for k in sorted(units)} if units else {},
        row["error"],
        aware(row["recorded_at"]),
        None,  # the store's row id is not read back on a record just written
    )


def _lineage_json(attributed: Mapping[str, frozenset[str]]) -> str:
    return json.dumps({k: sorted(v) for k, v in attributed.items()}, sort_keys=True) if attributed else "{}"


def _dimensions(dimension: Any) -> tuple[str, ...]:
    """The report dimensions asked for: one name or a sequence of distinct names from CALL_DIMENSIONS."""
    names = (dimension,) if isinstance(dimension, str) else dimension
    if not isinstance(names, (tuple, list)) or not names:
        raise ValidationError(
            f"report dimension must be one of {', '.join(CALL_DIMENSIONS)} or a list of them, got {dimension!r}"[:300]
        )
    for name in names:
        if name not in CALL_DIMENSIONS:
            raise ValidationError(f"unknown report dimension {str(name)[:50]!r}; allowed: {', '.join(CALL_DIMENSIONS)}")
    if len(set(names)) != len(names):
        raise ValidationError(f"report dimensions repeat a name: {', '.join(names)}; give each once")
    return tuple(names)


def filter_for(scope: Scope) -> Filter:
    """The report filter equivalent to a scope (team, project, session, persona are call tags)."""
    columns = {k: getattr(scope, k) for k in CALL_DIMENSIONS if getattr(scope, k) is not None}
    tags = dict(scope.tags)
    tags.update({k: getattr(scope, k) for k in TAG_DIMENSIONS if getattr(scope, k) is not None})
    return Filter(columns, tags)


class BudgetTrackingService:
    """Records what calls cost and answers where the money went."""

    def __init__(
        self,
        ledger: Ledger,
        pricer: Pricer,
        bus: MessageBus,
        targets: Callable[[LLMCall, datetime], tuple[Sequence[Target], int | None]],
        policies: Callable[[str], Sequence[Policy]],
        permissions: BudgetPermissionChecker | None = None,
        clock: Clock = utcnow,
        spool: Spool | None = None,
        attribution: Callable[[LLMCall], Mapping[str, frozenset[str]]] | None = None,
    ) -> None:
        self.spool = spool
        self.attribution = attribution or (lambda call: {})
        self.ledger = ledger
        self.reports = UsageReports(ledger.db)
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

        Never raises for what it cannot read or price, and never records a billed call at zero by
        mistake: usage it cannot read or price, or a successful call that reported no usage at all, is
        recorded at the call's estimate (what it held), flagged in ``price_source`` and logged. Returns
        the record (the first one if this ``call_id`` was already recorded), or None when the call
        consumed nothing and failed, or the record could not be written (spooled, or logged loudly).
        """
        try:
            resolved = self.pricer.resolve_usage(call, usage)
        except Exception as exc:  # a response body we cannot read: the provider still billed the call
            return self._record_estimate(call, f"usage unreadable: {exc}", error)
        if error is not None and resolved.is_empty and not usage.billed:
            try:
                self.ledger.release(call.call_id)
            except STORE_ERRORS as exc:
                reset_connection(self.ledger.db)
                log.warning("budget store unreachable (%s); the hold of call %s expires on its own", exc, call.call_id)
            return None
        if resolved.cost is None and resolved.is_empty:
            # billed: the provider started answering (a stream abandoned before its usage arrived)
            why = "billed, but no usage reported" if usage.billed else "no usage reported"
            return self._record_estimate(call, why, error)
        try:
            price = self.pricer.price(call, resolved)
            metadata = self._metadata(resolved, price.source, error)
        except Exception as exc:  # unknown units, an unpriced model, counts the store cannot hold
            return self._record_estimate(call, f"cannot price: {exc}", error, resolved)
        return self._store(call, price.cost, metadata)

    @staticmethod
    def _metadata(usage: LLMUsage, source: str, error: BaseException | None) -> dict[str, Any]:
        metadata: dict[str, Any] = {name: getattr(usage, name) for name in TOKEN_FIELDS}
        for name in TOKEN_FIELDS:
            if metadata[name] > MAX_COUNT:
                raise ValidationError(f"{name} = {metadata[name]} is more than the {MAX_COUNT:,} one call may record")
        metadata["price_source"] = source[:200]
        if usage.units:
            metadata["units"] = dict(usage.units)
        if error is not None:
            metadata["error"] = f"{type(error).__name__}: {error}"[:2000]
        return metadata

    def _record_estimate(
        self, call: LLMCall, why: str, error: BaseException | None, usage: LLMUsage | None = None
    ) -> UsageRecord | None:
        """Record a call whose real cost is unknown at what it held (else its fresh estimate), flagged."""
        try:
            held = self.ledger.held_units(call.call_id)
        except STORE_ERRORS:
            reset_connection(self.ledger.db)
            held = None
        if held is not None:
            cost, basis = from_units(held), "reservation estimate"
        else:
            try:
                cost, basis = self.pricer.estimate(call).cost, "estimate"
            except Exception as exc:
                cost, basis = Decimal(0), f"unpriced ({exc})"
        log.warning("call %s recorded at its %s %s: %s", call.call_id, basis, cost, why)
        try:
            metadata = self._metadata(usage or LLMUsage(), f"{basis}; {why}", error)
        except ValidationError:
            metadata = self._metadata(LLMUsage(), f"{basis}; {why}", error)
        metadata.pop("units", None)
        return self._store(call, cost, metadata)

    def _store(self, call: LLMCall, cost: Decimal, metadata: dict[str, Any]) -> UsageRecord | None:
        """Write the record; when the store is down, spool it; when even that fails, keep the hold and shout."""
        now = self.clock()
        try:
            return self.record_usage(call, cost, metadata, recorded_at=now)
        except STORE_ERRORS as exc:
            reset_connection(self.ledger.db)
            if self.spool is None:
                log.critical("budget store unreachable (%s): usage of call %s NOT recorded", exc, call.call_id)
                return None
            try:
                self._spool(call, cost, metadata, now)
            except Exception as spool_exc:
                log.critical(
                    "budget store unreachable (%s) and the spool %s cannot be written (%s): usage of call %s "
                    "(cost %s) is NOT recorded; its hold stays counted until reservation_ttl",
                    exc,
                    self.spool.path,
                    spool_exc,
                    call.call_id,
                    cost,
                )
                return None
            log.warning(
                "budget store unreachable (%s): usage of call %s spooled to %s", exc, call.call_id, self.spool.path
            )
            return None
        except (StoreRangeError, ValidationError) as exc:
            log.critical("usage of call %s (cost %s) cannot be recorded: %s; its hold stays", call.call_id, cost, exc)
            return None
        except Exception as exc:  # a bug must never drop a billed call: keep it for the replay
            log.critical("recording call %s failed unexpectedly (%r); spooling it", call.call_id, exc, exc_info=True)
            if self.spool is not None:
                try:
                    self._spool(call, cost, metadata, now)
                except Exception:
                    log.critical(
                        "the spool cannot be written either: call %s (cost %s) NOT recorded", call.call_id, cost
                    )
            return None

    def _spool(self, call: LLMCall, cost: Decimal, metadata: dict[str, Any], now: datetime) -> None:
        assert self.spool is not None
        self.spool.append(
            {
                "call": {k: (str(v) if isinstance(v, Decimal) else v) for k, v in asdict(call).items()},
                "cost": str(cost),
                "metadata": {**metadata, "units": {k: str(v) for k, v in metadata.get("units", {}).items()}},
                "recorded_at": now.isoformat(),
            }
        )

    def replay_spool(self) -> int:
        """Record what was spooled while the store was down (idempotent); returns how many were recorded."""
        if self.spool is None or not self.spool.path.exists():
            return 0
        done = self.spool.replay(self._replay_one, stop_on=STORE_ERRORS)
        if done:
            log.info("replayed %d spooled usage record(s) into the store", done)
        return done

    def _replay_one(self, data: dict[str, Any]) -> None:
        try:
            self.record_usage(
                LLMCall(**data["call"]),
                Decimal(data["cost"]),
                {**data["metadata"], "units": {k: Decimal(v) for k, v in data["metadata"].get("units", {}).items()}},
                recorded_at=datetime.fromisoformat(data["recorded_at"]),
            )
        except STORE_ERRORS:
            reset_connection(self.ledger.db)
            raise

    def record_usage(
        self,
        operation: LLMCall,
        cost: Decimal,
        metadata: dict[str, Any] | None = None,
        *,
        recorded_at: datetime | None = None,
    ) -> UsageRecord:
        """Record ``cost`` for a call durably before returning; idempotent on ``call_id``.

        ``metadata`` may give token counts (``input_tokens``, ``output_tokens``,
        ``cache_read_tokens``, ``cache_write_tokens``), ``price_source`` and ``error``.
        Settles the call's reservation in the same transaction.
        """
        call = operation
        # Everything is checked before anything is written: a refused record leaves no row.
        check_recorded_call(call)
        amount = check_cost(cost)
        metadata = usage_metadata(metadata)
        now = recorded_at or self.clock()
        row = {
            "tenant": call.tenant,
            "actor": call.actor,
            "provider": call.provider,
            "model": call.model,
            "operation": call.operation,
            "category": call.category,
            "tags_json": json.dumps(dict(call.tags), sort_keys=True) if call.tags else "{}",
            **{name: metadata[name] for name in TOKEN_FIELDS},
            "units_json": (
                json.dumps({k: str(v) for k, v in metadata["units"].items()}, sort_keys=True)
                if metadata["units"]
                else "{}"
            ),
            "price_source": metadata["price_source"],
            "error": metadata["error"],
            "recorded_at": naive(now),
            # The ancestors the call belongs to, kept with it so reports and counters agree later: worked out
            # inside the settling transaction, right after the policies it is charged to.
            "lineage_json": lambda: _lineage_json(self.attribution(call)),
        }
        checked: list[int | None] = [None]  # the policy generation the targets were matched under

        def targets(moment: datetime) -> Sequence[Target]:
            found, checked[0] = self.targets(call, moment)
            return found

        settled = self.ledger.settle(call.call_id, to_units(amount), row, targets, lambda: checked[0])
        if not settled.created:
            return to_record(settled.row)  # the first record of this call, as the store has it
        record = _new_record(settled.row, call, metadata)
        if self.bus.wants("budget.usage_recorded"):
            self.bus.publish(BudgetUsageEvent(topic="budget.usage_recorded", tenant=call.tenant, record=record))
        self._announce_thresholds(call, settled.standings)
        return record

    def _announce_thresholds(self, call: LLMCall, standings: Sequence[Standing]) -> None:
        """Publish ``budget.threshold_reached`` once per policy, threshold and window (across processes)."""
        policies: dict[int | None, Policy] | None = None
        for standing in standings:
            target = standing.target
            if target.part:  # a sub-limit is not the policy: its thresholds are the policy's own
                continue
            limit, spent = standing.limit_units, standing.spent_units * 100
            # Thresholds are percents from 1 up: below 1% of the limit, none of them is reached.
            if not limit or spent < limit:
                continue
            if policies is None:
                policies = {p.id: p for p in self.policies(call.tenant)}
            policy = policies.get(target.policy_id)
            if policy is None:
                continue
            for pct in policy.thresholds:
                if spent < limit * pct:
                    continue
                key = (standing.target.policy_id, standing.target.window_start, pct)
                if key in self._announced:
                    continue  # this process already knows it was announced
                if len(self._announced) > 10_000:  # old windows' keys; the store still dedupes
                    self._announced.clear()
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
        moment = check_moment(now, "now") if now is not None else self.clock()
        check_zone(tz)
        try:
            parsed = bounded_period(period)
            start, end = window(parsed, tz, moment)
        except ValueError as exc:
            raise ValidationError(str(exc)) from None
        return parsed, start, end

    def _filter(self, actor: Actor, scope: Scope | dict[str, Any] | None) -> tuple[Scope, Filter]:
        self.permissions.require(actor, "budget:read")
        wanted = scope_arg(scope, "report scope")
        return wanted, filter_for(wanted)

    def _policy_for(self, tenant: str, scope: Scope, period: Period) -> Policy | None:
        for policy in self.policies(tenant):
            if policy.scope == scope and policy.period == period.name:
                return policy
        return None

    def get_usage_summary(
        self,
        scope: Scope | dict[str, Any] | None = None,
        period: str = "month",
        *,
        actor: Actor,
        now: datetime | None = None,
        timezone: str = "UTC",
    ) -> UsageSummary:
        """Total cost, calls and tokens of the actor's tenant within ``scope`` in the current ``period``.

        When a policy limits exactly this scope and period, the summary also gives
        its limit and the percent of it used.
        """
        wanted, flt = self._filter(actor, scope)
        parsed, start, end = self._window(period, now, timezone)
        return self._summary(actor.tenant, wanted, flt, parsed, start, end)

    def _summary(
        self, tenant: str, wanted: Scope, flt: Filter, parsed: Period, start: datetime, end: datetime
    ) -> UsageSummary:
        totals = self.reports.totals(tenant, start, end, flt)
        policy = self._policy_for(tenant, wanted, parsed)
        cost = from_units(totals.cost_units)
        limit = policy.limit if policy else None
        if policy is not None and policy.rollover_cap and parsed.kind not in ("rolling", "total"):
            # The effective limit, as enforcement sees it: the limit plus what the last window carried over.
            (standing,) = self.ledger.standings([target_for(policy, start)])
            limit = from_units(standing.limit_units)
        return UsageSummary(
            tenant=tenant,
            period=parsed.name,
            start=start,
            end=end,
            total_cost=cost,
            calls=totals.calls,
            input_tokens=totals.input_tokens,
            output_tokens=totals.output_tokens,
            policy=policy.name if policy else None,
            limit=limit,
            percent_used=tidy(cost * 100 / limit) if limit else None,
        )

    def get_spend_by(
        self,
        dimension: str | Sequence[str],
        scope: Scope | dict[str, Any] | None = None,
        period: str = "month",
        *,
        actor: Actor,
        now: datetime | None = None,
        timezone: str = "UTC",
    ) -> list[SpendRow]:
        """Spend grouped by one or several of provider, model, category, actor, operation; largest first.

        ``dimension`` is one name (``"provider"``) or several (``("provider", "model")``): each row's
        ``keys`` then gives every value and ``key`` joins them with " / ". One dimension is read
        from the hourly rollups; several are summed from the raw rows (rollups hold one dimension
        each), so they cover only the rows ``retention_days`` has kept.
        """
        dimensions = _dimensions(dimension)
        _, flt = self._filter(actor, scope)
        _, start, end = self._window(period, now, timezone)
        groups = self.reports.by_many(dimensions, actor.tenant, start, end, flt)
        rows = [
            SpendRow(
                key=keys[0] if len(keys) == 1 else " / ".join(k if k is not None else "-" for k in keys),
                keys=dict(zip(dimensions, keys, strict=True)),
                total_cost=from_units(t.cost_units),
                calls=t.calls,
                input_tokens=t.input_tokens,
                output_tokens=t.output_tokens,
            )
            for keys, t in groups.items()
        ]
        return sorted(rows, key=lambda r: (-r.total_cost, [k or "" for k in r.keys.values()]))

    def get_spend_by_dimensions(
        self, dimensions: Sequence[str], scope: Scope | dict[str, Any] | None = None, period: str = "month", **kw: Any
    ) -> list[SpendRow]:
        """Spend grouped by several dimensions at once, e.g. ``("provider", "model")`` (see :meth:`get_spend_by`)."""
        return self.get_spend_by(tuple(dimensions), scope, period, **kw)

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
        """Spend in each of the last ``periods`` hour/day/week/month buckets, oldest first.

        Each bucket after the first says how it moved from the one before: ``change_percent``
        and ``direction`` (up, down, or stable within ``TREND_STABLE_PERCENT`` = 5%). The last
        bucket is the current one, still running.
        """
        if granularity not in ("hour", "day", "week", "month"):
            raise ValidationError(f"unknown trend granularity {granularity!r}; allowed: hour, day, week, month")
        check_number(periods, "periods", 1, MAX_TREND_PERIODS)
        check_zone(timezone)
        if now is not None:
            check_moment(now, "now")
        _, flt = self._filter(actor, scope)
        parsed = parse_period(granularity)
        bounds: list[tuple[datetime, datetime]] = []
        moment = now or self.clock()
        for _ in range(periods):
            start, end = window(parsed, timezone, moment)
            bounds.append((start, end))
            moment = start - _TICK
        bounds.reverse()
        sums = [Totals() for _ in bounds]
        starts = [b[0] for b in bounds]
        for at, totals in self.reports.hourly(actor.tenant, bounds[0][0], bounds[-1][1], flt):
            index = bisect.bisect_right(starts, at) - 1
            sums[index].add(totals.calls, totals.cost_units, totals.input_tokens, totals.output_tokens)
        points = []
        previous: Decimal | None = None
        for (a, b), t in zip(bounds, sums, strict=True):
            cost = from_units(t.cost_units)
            direction, percent = trend_change(previous, cost)
            points.append(
                TrendPoint(start=a, end=b, total_cost=cost, calls=t.calls, change_percent=percent, direction=direction)
            )
            previous = cost
        return points

    def compare_periods(
        self,
        scope: Scope | dict[str, Any] | None = None,
        period: str = "month",
        *,
        actor: Actor,
        now: datetime | None = None,
        timezone: str = "UTC",
    ) -> PeriodComparison:
        """The current ``period`` so far next to the whole previous one."""
        wanted, flt = self._filter(actor, scope)
        parsed, start, end = self._window(period, now, timezone)
        if parsed.kind == "total":
            raise ValidationError("a lifetime period has no previous period to compare with")
        previous = previous_window(parsed, timezone, now or self.clock())
        prev_start, prev_end = previous or (start - (end - start), start)
        current = self._summary(actor.tenant, wanted, flt, parsed, start, end)
        before = self._summary(actor.tenant, wanted, flt, parsed, prev_start, prev_end)
        change = current.total_cost - before.total_cost
        percent = tidy(change * 100 / before.total_cost) if before.total_cost else None
        return PeriodComparison(current=current, previous=before, change=change, change_percent=percent)

    def get_projection(
        self,
        scope: Scope | dict[str, Any] | None = None,
        period: str = "month",
        *,
        actor: Actor,
        now: datetime | None = None,
        timezone: str = "UTC",
    ) -> Projection:
        """Spend so far in the current ``period``, extrapolated linearly to the period's end."""
        wanted, flt = self._filter(actor, scope)
        moment = now or self.clock()
        parsed, start, end = self._window(period, moment, timezone)
        if parsed.kind == "total":
            raise ValidationError("a lifetime period has no end to project to")
        summary = self._summary(actor.tenant, wanted, flt, parsed, start, end)
        elapsed = Decimal((moment - start).total_seconds())
        length = Decimal((end - start).total_seconds())
        projected = quantize(summary.total_cost * length / elapsed) if elapsed > 0 else summary.total_cost
        return Projection(
            summary=summary,
            elapsed_fraction=tidy(quantize(elapsed / length)),
            projected_cost=projected,
            projected_percent=tidy(projected * 100 / summary.limit) if summary.limit else None,
        )

    def list_usage(
        self,
        actor: Actor,
        limit: int = 100,
        filters: dict[str, Any] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        before: tuple[datetime, int] | None = None,
    ) -> list[UsageRecord]:
        """The most recent records of the actor's tenant, filtered by column values and ``[since, until)``.

        Newest first by ``recorded_at`` (then ``id``), read through the (tenant, recorded_at) index, so the
        first page of millions of rows costs what the page does. ``before`` = the ``(recorded_at, id)`` of the
        last record of the previous page gives the next page (keyset pagination: stable while calls arrive).
        """
        self.permissions.require(actor, "budget:read")
        if before is not None:
            if not (isinstance(before, tuple) and len(before) == 2 and isinstance(before[1], int)):
                raise ValidationError("before must be the (recorded_at, id) of the last record of the previous page")
            check_moment(before[0], "before")
        check_number(limit, "limit", 1, MAX_LIST_LIMIT)
        for name, moment in (("since", since), ("until", until)):
            if moment is not None:
                check_moment(moment, name)
        for key, value in (filters or {}).items():
            if key not in CALL_DIMENSIONS:
                raise ValidationError(f"unknown usage filter {str(key)[:100]!r}; allowed: {', '.join(CALL_DIMENSIONS)}")
            if value is not None:
                try:
                    check_text(value, f"usage filter {key}", CALL_FIELD_LENGTHS[key])
                except ValueError as exc:
                    raise ValidationError(str(exc)) from None
        query = UsageRow.select().where(UsageRow.tenant == actor.tenant)
        if since is not None:
            query = query.where(UsageRow.recorded_at >= naive(since))
        if until is not None:
            query = query.where(UsageRow.recorded_at < naive(until))
        for key, value in (filters or {}).items():
            if key not in CALL_DIMENSIONS:
                raise ValidationError(f"unknown usage filter {key!r}; allowed: {', '.join(CALL_DIMENSIONS)}")
            query = query.where(getattr(UsageRow, key) == value)
        if before is not None:
            moment, last_id = naive(before[0]), before[1]
            query = query.where(
                (UsageRow.recorded_at < moment) | ((UsageRow.recorded_at == moment) & (UsageRow.id < last_id))
            )
        ordered = query.order_by(UsageRow.recorded_at.desc(), UsageRow.id.desc()).limit(limit)
        return [to_record(r) for r in ordered]

    def prune(self, retention_days: int, now: datetime | None = None) -> int:
        """Delete raw usage rows older than ``retention_days`` (0 keeps everything); totals stay exact."""
        if retention_days <= 0:
            return 0
        return self.reports.prune((now or self.clock()) - timedelta(days=retention_days))
