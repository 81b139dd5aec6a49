"""Report queries: whole hours from the hourly rollups, partial hours and tag filters from raw rows.

Every filter matches exactly what enforcement (``Scope.matches``) matches: columns
by ``=`` (exact on every backend, see ``models.exact_collation``), tags by exact
key and value, checked in Python on the raw rows a cheap SQL pre-filter leaves.
"""

from __future__ import annotations

import functools
import json
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import peewee as pw

from ..periods import bucket_hour
from .ledger import aware, naive
from .models import UsageHourly, UsageRow

HOUR = timedelta(hours=1)


@dataclass
class Totals:
    """Integer sums (money in store units) of some usage."""

    calls: int = 0
    cost_units: int = 0
    input_tokens: int = 0
    output_tokens: int = 0

    def add(self, calls: Any, cost: Any, tin: Any, tout: Any) -> None:
        self.calls += int(calls or 0)
        self.cost_units += int(cost or 0)
        self.input_tokens += int(tin or 0)
        self.output_tokens += int(tout or 0)


@dataclass(frozen=True)
class Filter:
    """What a report is restricted to: column values and tags (tags force raw rows)."""

    columns: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def rollup(self) -> tuple[str, str] | None:
        """The one (dimension, value) a rollup can answer, ('*', '') for none; None if it cannot."""
        if self.tags or len(self.columns) > 1:
            return None
        if not self.columns:
            return ("*", "")
        ((dimension, value),) = self.columns.items()
        return (dimension, value)


def _ceil_hour(moment: datetime) -> datetime:
    floor = bucket_hour(moment)
    return floor if floor == moment else floor + HOUR


#: The four sums a Totals is made of, from the rollups and from raw rows (where each row is one call).
_ROLLUP_SUMS = (
    pw.fn.SUM(UsageHourly.calls),
    pw.fn.SUM(UsageHourly.cost_units),
    pw.fn.SUM(UsageHourly.input_tokens),
    pw.fn.SUM(UsageHourly.output_tokens),
)
_RAW_SUMS = (
    pw.fn.COUNT(UsageRow.id),
    pw.fn.SUM(UsageRow.cost_units),
    pw.fn.SUM(UsageRow.input_tokens),
    pw.fn.SUM(UsageRow.output_tokens),
)


#: What one raw row adds to a Totals besides its one call.
_RAW_COLUMNS = (UsageRow.cost_units, UsageRow.input_tokens, UsageRow.output_tokens)


def _contains(column: Any, text: str) -> Any:
    """``column`` contains ``text`` somewhere (LIKE with its metacharacters escaped).

    Only a pre-filter: LIKE ignores case on SQLite (and on MariaDB before schema
    version 2), so it may keep rows with other tags; it never drops a row whose
    tags hold ``text`` as written by ``json.dumps(tags, sort_keys=True)``.
    """
    escaped = text.replace("!", "!!").replace("%", "!%").replace("_", "!_")
    return pw.NodeList((column, pw.SQL("LIKE"), f"%{escaped}%", pw.SQL("ESCAPE '!'")))


class UsageReports:
    """Sums of usage for one tenant over time ranges, grouped by a dimension or by hour."""

    def __init__(self, db: pw.Database) -> None:
        self.db = db

    # -- the two sources --------------------------------------------------------------------

    def _raw(self, tenant: str, spans: Sequence[tuple[datetime, datetime]], flt: Filter) -> Any:
        span_condition = functools.reduce(
            operator.or_,
            [(UsageRow.recorded_at >= naive(a)) & (UsageRow.recorded_at < naive(b)) for a, b in spans],
        )
        query = UsageRow.select().where((UsageRow.tenant == tenant) & span_condition)
        for column, value in flt.columns.items():
            query = query.where(getattr(UsageRow, column) == value)
        for key, value in flt.tags.items():
            # Its own tag, or a value the call was attributed to through the scope hierarchy.
            query = query.where(
                _contains(UsageRow.tags_json, f"{json.dumps(key)}: {json.dumps(value)}")
                | _contains(UsageRow.lineage_json, json.dumps(value))
            )
        return query

    def _rows(self, tenant: str, spans: Sequence[tuple[datetime, datetime]], flt: Filter, *columns: Any) -> Any:
        """``columns`` of each raw row in ``spans`` that ``flt`` matches exactly, tags included."""
        query = self._raw(tenant, spans, flt)
        if not flt.tags:
            yield from query.select(*columns).tuples().iterator()
            return
        selected = query.select(*columns, UsageRow.tags_json, UsageRow.lineage_json).tuples().iterator()
        for *values, tags_json, lineage_json in selected:
            tags = json.loads(tags_json or "{}")
            lineage = json.loads(lineage_json or "{}")
            if all(tags.get(k) == v or v in lineage.get(k, ()) for k, v in flt.tags.items()):
                yield tuple(values)

    def _spans(self, start: datetime, end: datetime, flt: Filter) -> tuple[tuple[datetime, datetime] | None, list]:
        """Split ``[start, end)`` into whole hours for the rollups and edge spans for raw rows."""
        if flt.rollup is None:
            return None, [(start, end)]
        first, last = _ceil_hour(start), bucket_hour(end)
        if first >= last:
            return None, [(start, end)]
        edges = [(a, b) for a, b in ((start, first), (last, end)) if a < b]
        return (first, last), edges

    def _rollup(self, tenant: str, hours: tuple[datetime, datetime], dimension: str, key: str | None) -> Any:
        query = UsageHourly.select().where(
            (UsageHourly.tenant == tenant)
            & (UsageHourly.dimension == dimension)
            & (UsageHourly.hour >= naive(hours[0]))
            & (UsageHourly.hour < naive(hours[1]))
        )
        if key is not None:
            query = query.where(UsageHourly.key == key)
        return query

    # -- reports ----------------------------------------------------------------------------

    def totals(self, tenant: str, start: datetime, end: datetime, flt: Filter) -> Totals:
        totals = Totals()
        hours, edges = self._spans(start, end, flt)
        if hours is not None:
            dimension, key = flt.rollup or ("*", "")
            found: Any = self._rollup(tenant, hours, dimension, key).select(*_ROLLUP_SUMS).tuples().get()
            totals.add(*found)
        if edges and not flt.tags:
            edge: Any = self._raw(tenant, edges, flt).select(*_RAW_SUMS).tuples().get()
            totals.add(*edge)
        elif edges:
            for row in self._rows(tenant, edges, flt, *_RAW_COLUMNS):
                totals.add(1, *row)
        return totals

    def by(self, dimension: str, tenant: str, start: datetime, end: datetime, flt: Filter) -> dict[str | None, Totals]:
        """Totals per value of ``dimension`` (None for a missing actor or category)."""
        result: dict[str | None, Totals] = {}
        # Rollups hold one dimension at a time: a filtered breakdown reads raw rows.
        hours, edges = self._spans(start, end, flt) if flt.rollup == ("*", "") else (None, [(start, end)])
        if hours is not None:
            rows: Any = (
                self._rollup(tenant, hours, dimension, None)
                .select(UsageHourly.key, *_ROLLUP_SUMS)
                .group_by(UsageHourly.key)
                .tuples()
            )
            for key, *sums in rows:
                result.setdefault(key or None, Totals()).add(*sums)
        column = getattr(UsageRow, dimension)
        if edges and not flt.tags:
            raw_rows: Any = self._raw(tenant, edges, flt).select(column, *_RAW_SUMS).group_by(column).tuples()
            for key, *sums in raw_rows:
                result.setdefault(key or None, Totals()).add(*sums)
        elif edges:
            for key, *row in self._rows(tenant, edges, flt, column, *_RAW_COLUMNS):
                result.setdefault(key or None, Totals()).add(1, *row)
        return result

    def by_many(
        self, dimensions: Sequence[str], tenant: str, start: datetime, end: datetime, flt: Filter
    ) -> dict[tuple[str | None, ...], Totals]:
        """Totals per combination of values of several ``dimensions`` (e.g. provider and model).

        The hourly rollups keep one dimension at a time, so a combination is summed from the
        raw rows: it covers only rows still kept (``retention_days`` prunes older ones, whose
        totals the single-dimension reports still have from the rollups).
        """
        if len(dimensions) == 1:
            return {(key,): totals for key, totals in self.by(dimensions[0], tenant, start, end, flt).items()}
        columns = [getattr(UsageRow, name) for name in dimensions]
        result: dict[tuple[str | None, ...], Totals] = {}
        if not flt.tags:
            rows: Any = self._raw(tenant, [(start, end)], flt).select(*columns, *_RAW_SUMS).group_by(*columns).tuples()
            for row in rows:
                keys = tuple(k or None for k in row[: len(columns)])
                result.setdefault(keys, Totals()).add(*row[len(columns) :])
            return result
        for row in self._rows(tenant, [(start, end)], flt, *columns, *_RAW_COLUMNS):
            keys = tuple(k or None for k in row[: len(columns)])
            result.setdefault(keys, Totals()).add(1, *row[len(columns) :])
        return result

    def hourly(self, tenant: str, start: datetime, end: datetime, flt: Filter) -> list[tuple[datetime, Totals]]:
        """Totals per moment: whole hours from rollups (at the hour), raw rows at their own time."""
        points: list[tuple[datetime, Totals]] = []
        hours, edges = self._spans(start, end, flt)
        if hours is not None:
            dimension, key = flt.rollup or ("*", "")
            rows: Any = (
                self._rollup(tenant, hours, dimension, key)
                .select(
                    UsageHourly.hour,
                    UsageHourly.calls,
                    UsageHourly.cost_units,
                    UsageHourly.input_tokens,
                    UsageHourly.output_tokens,
                )
                .tuples()
            )
            for hour, *sums in rows:
                totals = Totals()
                totals.add(*sums)
                points.append((aware(hour), totals))
        if edges:
            for at, cost, tin, tout in self._rows(tenant, edges, flt, UsageRow.recorded_at, *_RAW_COLUMNS):
                totals = Totals()
                totals.add(1, cost, tin, tout)
                points.append((aware(at), totals))
        return points

    def prune(self, before: datetime) -> int:
        """Delete raw usage rows recorded before ``before`` (the rollups keep their totals)."""
        return int(UsageRow.delete().where(UsageRow.recorded_at < naive(before)).execute())


__all__ = ["Filter", "Totals", "UsageReports"]
