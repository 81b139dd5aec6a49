"""The ledger: atomic check-and-reserve, settle, release and expiry of holds on spend counters.

All amounts here are integer nano-units. Every method that writes runs in one
write transaction, so a reservation is all-or-nothing across the policies of a
call and usage is recorded together with the settlement of its holds.

This is the hot path of every LLM call, so it speaks SQL directly (a handful of
short statements per transaction) instead of building peewee queries; the
tables are the peewee models in ``models.py``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import peewee as pw

from ..periods import Period
from ..types import CALL_DIMENSIONS, TOKEN_FIELDS
from .database import is_sqlite, run_in_transaction
from .models import ThresholdMark


def naive(moment: datetime) -> datetime:
    """Aware datetime -> naive UTC, the form stored in every DateTimeField."""
    return moment.astimezone(timezone.utc).replace(tzinfo=None)


@functools.lru_cache(maxsize=4096)
def _sqlite_text(moment: datetime) -> str:
    """A moment as SQLite stores it (the same few window starts recur on every call, hence the cache)."""
    return str(naive(moment))


def aware(moment: datetime | str) -> datetime:
    """Stored naive UTC (or its text on SQLite) -> aware UTC datetime."""
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    return moment.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class Target:
    """A policy as the ledger needs it at one moment: its window and its limit."""

    policy_id: int
    period: Period
    window_start: datetime
    window_end: datetime
    limit_units: int
    rollover_cap_units: int = 0
    previous_window_start: datetime | None = None
    policy_created_at: datetime | None = None
    counter_start: datetime | None = None  # rolling windows write to the current hour's counter

    @property
    def key(self) -> datetime:
        return self.counter_start or self.window_start


@dataclass(frozen=True)
class Standing:
    """Spend and holds of a target's window, as read inside the transaction."""

    target: Target
    spent_units: int
    reserved_units: int
    carry_units: int

    @property
    def limit_units(self) -> int:
        return self.target.limit_units + self.carry_units


@dataclass(frozen=True)
class Settlement:
    """What ``settle`` did: the usage row (new, or the first one recorded) and standings after it."""

    row: dict[str, Any]
    created: bool
    standings: tuple[Standing, ...] = ()


USAGE_COLUMNS = (
    "call_id",
    "tenant",
    "actor",
    "provider",
    "model",
    "operation",
    "category",
    "tags_json",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cost_units",
    "units_json",
    "price_source",
    "error",
    "recorded_at",
)
_ROLLUP = "budget_usage_hourly"
_ROLLUP_KEYS = ["tenant", "dimension", "dim_value", "hour"]
_ROLLUP_SUMS = ["calls", "cost_units", *TOKEN_FIELDS]
_COUNTER = "budget_spend_counter"
_HOLD = "budget_hold"
_USAGE = "budget_usage"


class Ledger:
    """Spend counters and holds on one database."""

    def __init__(self, db: pw.Database) -> None:
        self.db = db
        self.sqlite = is_sqlite(db)
        self.kind = "sqlite" if self.sqlite else ("mysql" if isinstance(db, pw.MySQLDatabase) else "postgres")
        self._lock = "" if self.sqlite else " FOR UPDATE"

    # -- SQL helpers ------------------------------------------------------------------------

    def _sql(self, sql: str, params: Sequence[Any] = ()) -> Any:
        if not self.sqlite:
            sql = sql.replace("?", "%s")
        return self.db.execute_sql(sql, tuple(params))

    def _dt(self, moment: datetime) -> Any:
        return _sqlite_text(moment) if self.sqlite else naive(moment)

    @staticmethod
    def _marks(count: int) -> str:
        return ", ".join("?" * count)

    # -- counters ---------------------------------------------------------------------------

    def _carry(self, target: Target) -> int:
        if not target.rollover_cap_units or target.previous_window_start is None:
            return 0
        if target.policy_created_at and target.policy_created_at >= target.window_start:
            return 0  # the policy did not exist during the previous window
        prev = self._sql(
            f"SELECT spent_units FROM {_COUNTER} WHERE policy_id = ? AND window_start = ?",
            (target.policy_id, self._dt(target.previous_window_start)),
        ).fetchone()
        unused = target.limit_units - (int(prev[0]) if prev else 0)
        return max(0, min(target.rollover_cap_units, unused))

    def _lock_counters(self, targets: Sequence[Target]) -> dict[int, tuple[int, int, int, int]]:
        """policy_id -> (counter id, spent, reserved, carry), rows locked in ascending id order.

        Every writer locks counters by primary key in ascending order, which is what
        keeps concurrent transactions from deadlocking. A locking read through the
        (policy_id, window_start) index would lock in that index's order instead
        (InnoDB locks as it scans), so servers first find the ids, then lock by id.
        """
        pairs = ", ".join("(?, ?)" for _ in targets)
        params = [v for t in targets for v in (t.policy_id, self._dt(t.key))]
        columns = "id, policy_id, spent_units, reserved_units, carry_units"
        if self.sqlite:  # BEGIN IMMEDIATE already holds the only write lock
            rows = self._sql(
                f"SELECT {columns} FROM {_COUNTER} WHERE (policy_id, window_start) IN ({pairs})", params
            ).fetchall()
        elif self.kind == "postgres":  # PostgreSQL locks rows after sorting them: one round trip
            rows = self._sql(
                f"SELECT {columns} FROM {_COUNTER} WHERE (policy_id, window_start) IN ({pairs}) ORDER BY id FOR UPDATE",
                params,
            ).fetchall()
        else:
            ids = sorted(
                int(r[0])
                for r in self._sql(
                    f"SELECT id FROM {_COUNTER} WHERE (policy_id, window_start) IN ({pairs})", params
                ).fetchall()
            )
            if not ids:
                return {}
            rows = self._sql(
                f"SELECT {columns} FROM {_COUNTER} WHERE id IN ({self._marks(len(ids))}) ORDER BY id FOR UPDATE", ids
            ).fetchall()
        return {int(r[1]): (int(r[0]), int(r[2]), int(r[3]), int(r[4])) for r in rows}

    def _ensure_counters(self, targets: Sequence[Target]) -> dict[int, tuple[int, int, int, int]]:
        """Lock the targets' counters in id order (no deadlocks), creating the missing ones first."""
        if not targets:
            return {}
        counters = self._lock_counters(targets)
        missing = sorted((t for t in targets if t.policy_id not in counters), key=lambda t: (t.policy_id, t.key))
        if not missing:
            return counters  # the usual case: one locking read, no inserts
        ignore = {"sqlite": "INSERT OR IGNORE INTO", "mysql": "INSERT IGNORE INTO"}
        tail = " ON CONFLICT DO NOTHING" if self.kind == "postgres" else ""
        for target in missing:
            self._sql(
                f"{ignore.get(self.kind, 'INSERT INTO')} {_COUNTER} (policy_id, window_start, spent_units, "
                f"reserved_units, carry_units) VALUES (?, ?, 0, 0, ?){tail}",
                (target.policy_id, self._dt(target.key), self._carry(target)),
            )
        return self._lock_counters(targets)

    def _standings(self, targets: Sequence[Target], counters: dict[int, tuple[int, int, int, int]]) -> list[Standing]:
        rolling = [t for t in targets if t.period.is_rolling]
        sums: dict[int, tuple[int, int]] = {}
        if rolling:
            where = " OR ".join("(policy_id = ? AND window_start >= ? AND window_start < ?)" for _ in rolling)
            params = [v for t in rolling for v in (t.policy_id, self._dt(t.window_start), self._dt(t.window_end))]
            for policy_id, spent, reserved in self._sql(
                f"SELECT policy_id, SUM(spent_units), SUM(reserved_units) FROM {_COUNTER} WHERE {where} "
                "GROUP BY policy_id",
                params,
            ).fetchall():
                sums[int(policy_id)] = (int(spent or 0), int(reserved or 0))
        result = []
        for target in targets:
            _, spent, reserved, carry = counters[target.policy_id]
            if target.period.is_rolling:
                spent, reserved = sums.get(target.policy_id, (0, 0))
                carry = 0
            result.append(Standing(target, spent, reserved, carry))
        return result

    def standings(self, targets: Sequence[Target]) -> list[Standing]:
        """Current standings of ``targets`` (creates their counters; for reports and verdicts)."""
        return run_in_transaction(self.db, lambda: self._standings(targets, self._ensure_counters(targets)))

    # -- reserve ----------------------------------------------------------------------------

    def reserve(
        self,
        call_id: str,
        targets: Sequence[Target],
        amount_units: int,
        now: datetime,
        expires_at: datetime,
        decide: Callable[[list[Standing]], bool],
    ) -> tuple[list[Standing], bool]:
        """Check and hold ``amount_units`` on every target, or on none.

        ``decide`` sees the standings read under lock and says whether to hold. A
        repeated call with the same ``call_id`` does not hold twice.
        :return: the standings before the hold, and whether the amount is held.
        """

        def work() -> tuple[list[Standing], bool]:
            counters = self._ensure_counters(targets)
            standings = self._standings(targets, counters)
            if self._sql(f"SELECT 1 FROM {_HOLD} WHERE call_id = ?", (call_id,)).fetchone():
                return standings, True
            if not decide(standings):
                return standings, False
            if amount_units and targets:
                ids = sorted(counters[t.policy_id][0] for t in targets)
                self._sql(
                    f"UPDATE {_COUNTER} SET reserved_units = reserved_units + ? WHERE id IN ({self._marks(len(ids))})",
                    [amount_units, *ids],
                )
                rows = [
                    (call_id, counters[t.policy_id][0], t.policy_id, amount_units, self._dt(now), self._dt(expires_at))
                    for t in targets
                ]
                self._sql(
                    f"INSERT INTO {_HOLD} (call_id, counter_id, policy_id, amount_units, created_at, expires_at) "
                    f"VALUES {', '.join('(?, ?, ?, ?, ?, ?)' for _ in rows)}",
                    [v for row in rows for v in row],
                )
            return standings, True

        return run_in_transaction(self.db, work)

    def _holds(self, where: str, params: Sequence[Any]) -> list[tuple[int, int, int, int]]:
        """(hold id, counter id, policy id, amount) of matching holds, locked, in counter order."""
        rows = self._sql(
            f"SELECT id, counter_id, policy_id, amount_units FROM {_HOLD} WHERE {where} "
            f"ORDER BY counter_id, id{self._lock}",
            params,
        ).fetchall()
        return [(int(a), int(b), int(c), int(d)) for a, b, c, d in rows]

    def _drop_holds(self, holds: Sequence[tuple[int, int, int, int]], spent_units: int) -> set[int]:
        """Turn holds into ``spent_units`` of spend on their counters and delete them."""
        if not holds:
            return set()
        by_amount: dict[int, list[int]] = {}
        for _, counter_id, _, amount in holds:
            by_amount.setdefault(amount, []).append(counter_id)
        if not self.sqlite:  # lock the counters in id order first, as reserve does: no deadlocks
            ids = sorted({h[1] for h in holds})
            self._sql(f"SELECT id FROM {_COUNTER} WHERE id IN ({self._marks(len(ids))}) ORDER BY id FOR UPDATE", ids)
        for amount, counter_ids in sorted(by_amount.items()):
            self._sql(
                f"UPDATE {_COUNTER} SET reserved_units = reserved_units - ?, spent_units = spent_units + ? "
                f"WHERE id IN ({self._marks(len(counter_ids))})",
                [amount, spent_units, *counter_ids],
            )
        ids = [h[0] for h in holds]
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            self._sql(f"DELETE FROM {_HOLD} WHERE id IN ({self._marks(len(chunk))})", chunk)
        return {h[2] for h in holds}

    # -- settle, release, expire ------------------------------------------------------------

    def usage_row(self, call_id: str) -> dict[str, Any] | None:
        row = self._sql(f"SELECT {', '.join(USAGE_COLUMNS)} FROM {_USAGE} WHERE call_id = ?", (call_id,)).fetchone()
        return dict(zip(USAGE_COLUMNS, row, strict=True)) if row else None

    def settle(
        self,
        call_id: str,
        cost_units: int,
        usage: dict[str, Any],
        targets: Callable[[], Sequence[Target]],
    ) -> Settlement:
        """Record a call's usage once and turn its holds into spend, in one transaction.

        When the call has no holds (never reserved, or they expired), its cost is
        added to the policies ``targets()`` returns. A second call with the same
        ``call_id`` changes nothing and returns the first record. The settlement
        carries the standings of the touched policies after the spend, for
        threshold announcements.
        """
        if cost_units < 0:
            raise ValueError(f"cost must not be negative, got {cost_units} units")
        row = {**usage, "call_id": call_id, "cost_units": cost_units}
        missing = [c for c in USAGE_COLUMNS if c not in row]
        if missing:
            raise ValueError(f"usage row lacks {missing}")

        def work() -> Settlement:
            # A concurrent settle of this call waits here. A repeated one finds no holds
            # and fails on the unique call_id below, which rolls all of this back.
            holds = self._holds("call_id = ?", (call_id,))
            current = list(targets())
            if holds:
                touched = self._drop_holds(holds, cost_units)
            else:
                counters = self._ensure_counters(current)
                ids = sorted(c[0] for c in counters.values())
                if ids and cost_units:
                    self._sql(
                        f"UPDATE {_COUNTER} SET spent_units = spent_units + ? WHERE id IN ({self._marks(len(ids))})",
                        [cost_units, *ids],
                    )
                touched = set(counters)
            values = [row[c] for c in USAGE_COLUMNS]
            values[USAGE_COLUMNS.index("recorded_at")] = self._dt(aware(row["recorded_at"]))
            self._sql(
                f"INSERT INTO {_USAGE} ({', '.join(USAGE_COLUMNS)}) VALUES ({self._marks(len(USAGE_COLUMNS))})",
                values,
            )
            self._roll_up(row)
            after = [t for t in current if t.policy_id in touched]
            standings = self._standings(after, self._lock_counters(after)) if after else []
            return Settlement(row, True, tuple(standings))

        try:
            return run_in_transaction(self.db, work)
        except pw.IntegrityError:
            # A concurrent settle of the same call committed first (call_id is unique);
            # this transaction was rolled back whole, so the first record stands.
            first = self.usage_row(call_id)
            if first is None:  # pragma: no cover - the unique key was not call_id
                raise
            return Settlement(first, False)

    def _roll_up(self, row: dict[str, Any]) -> None:
        """Add the usage row to its hourly bucket (an upsert, in the settling transaction)."""
        hour = self._dt(aware(row["recorded_at"]).replace(minute=0, second=0, microsecond=0))
        sums = [1, row["cost_units"], *(row[c] for c in TOKEN_FIELDS)]
        rows = [[row["tenant"], "*", "", hour, *sums]]
        rows += [[row["tenant"], dim, row[dim] or "", hour, *sums] for dim in CALL_DIMENSIONS]
        columns = ", ".join(_ROLLUP_KEYS + _ROLLUP_SUMS)
        marks = ", ".join(f"({self._marks(len(_ROLLUP_KEYS) + len(_ROLLUP_SUMS))})" for _ in rows)
        if self.kind == "mysql":
            update = ", ".join(f"{c} = {c} + VALUES({c})" for c in _ROLLUP_SUMS)
            tail = f"ON DUPLICATE KEY UPDATE {update}"
        else:
            update = ", ".join(f"{c} = {_ROLLUP}.{c} + excluded.{c}" for c in _ROLLUP_SUMS)
            tail = f"ON CONFLICT ({', '.join(_ROLLUP_KEYS)}) DO UPDATE SET {update}"
        self._sql(f"INSERT INTO {_ROLLUP} ({columns}) VALUES {marks} {tail}", [v for r in rows for v in r])

    def release(self, call_id: str) -> int:
        """Drop a call's holds without spend (the call failed or was blocked elsewhere)."""

        def work() -> int:
            holds = self._holds("call_id = ?", (call_id,))
            self._drop_holds(holds, 0)
            return len(holds)

        return run_in_transaction(self.db, work)

    def expire(self, now: datetime) -> int:
        """Drop holds whose time is up (the host never called back); returns how many."""

        def work() -> int:
            holds = self._holds("expires_at <= ?", (self._dt(now),))
            self._drop_holds(holds, 0)
            return len(holds)

        return run_in_transaction(self.db, work)

    def outstanding_units(self) -> int:
        """Total held across all counters (0 once every call has ended)."""
        row = self._sql(f"SELECT COALESCE(SUM(reserved_units), 0) FROM {_COUNTER}").fetchone()
        return int(row[0] or 0)

    def mark_threshold(self, policy_id: int, window_start: datetime, threshold: int) -> bool:
        """Remember that a threshold was announced; False when it already was (by any process)."""
        query = ThresholdMark.insert(
            policy_id=policy_id, window_start=naive(window_start), threshold=threshold
        ).on_conflict_ignore()

        def work() -> bool:
            cursor = self.db.execute(query)
            return bool(cursor.rowcount == 1)

        return run_in_transaction(self.db, work)
