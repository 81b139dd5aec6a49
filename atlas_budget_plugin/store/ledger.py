"""The ledger: atomic check-and-reserve, settle, release and expiry of holds on spend counters.

All amounts here are integer nano-units. Every method that writes runs in one
write transaction, so a reservation is all-or-nothing across the policies of a
call and usage is recorded together with the settlement of its holds.

This is the hot path of every LLM call, so it speaks SQL directly (a handful of
short statements per transaction) instead of building peewee queries; the
tables are the peewee models in ``models.py``.
"""

from __future__ import annotations

import enum
import functools
import json
import logging
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any

import peewee as pw

from ..exceptions import ValidationError
from ..money import to_units
from ..periods import Period, bucket_hour, parse_period, previous_window, window
from ..types import CALL_DIMENSIONS, TAG_DIMENSIONS, TOKEN_FIELDS, Policy, Scope
from . import routines
from .database import driver_error_in, is_retryable, is_sqlite, run_grouped, run_in_transaction
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


_HOUR = timedelta(hours=1)
_peewee_log = logging.getLogger("peewee")
_log = logging.getLogger(__name__)
#: What peewee's ``execute_sql`` wraps a statement in: sqlite3's errors raised as peewee's (IntegrityError, ...).
_SQLITE_ERRORS: Any = vars(pw)["__exception_wrapper__"]

#: A counter series: (policy id, part) — the policy's own limit has part ''.
Ident = tuple[int, str]


@dataclass(frozen=True)
class Target:
    """A policy as the ledger needs it at one moment: its window, its limit and its scope.

    ``scope`` and ``tenant`` let the ledger start a new counter from the spend
    already recorded in its window (a policy created or changed mid-window).
    """

    policy_id: int
    period: Period
    window_start: datetime
    window_end: datetime
    limit_units: int
    rollover_cap_units: int = 0
    previous_window_start: datetime | None = None
    policy_created_at: datetime | None = None
    counter_start: datetime | None = None  # rolling windows write to the current hour's counter
    tenant: str | None = None
    scope: Scope | None = field(default=None, compare=False, hash=False)
    part: str = ""  # '' for the policy's own limit, ``provider:<p>`` / ``model:<m>`` for a sub-limit

    @functools.cached_property
    def ident(self) -> tuple[int, str]:
        """Which counter series this target is: the policy's own, or one of its sub-limits."""
        return (self.policy_id, self.part)

    @property
    def key(self) -> datetime:
        return self.counter_start or self.window_start

    # The policy service reuses a target for as long as its window (or hour) lasts, so what the SQLite ledger
    # derives from one is worked out once per target, not on every call (cached_property: the dataclass's
    # fields, equality and hash are untouched, and ``replace`` makes a new target with nothing cached).

    @functools.cached_property
    def sqlite_key(self) -> tuple[int, str, str]:
        """(policy id, part, counter key as SQLite stores it): the identity of the target's counter row."""
        return (self.policy_id, self.part, _sqlite_text(self.key))

    @functools.cached_property
    def sqlite_span(self) -> tuple[int, str, str, str]:
        """(policy id, part, window start, window end as SQLite stores them): a rolling window's counters."""
        return (self.policy_id, self.part, _sqlite_text(self.window_start), _sqlite_text(self.window_end))

    @property
    def counter_end(self) -> datetime:
        """End of the span the counter keyed ``key`` covers (an hour for rolling windows)."""
        return self.key + _HOUR if self.period.is_rolling else self.window_end


def target_for(policy: Policy, now: datetime) -> Target:
    """The target of ``policy`` for the window containing ``now``."""
    period = parse_period(policy.period)
    start, end = window(period, policy.timezone, now)
    prev = previous_window(period, policy.timezone, now)
    return Target(
        policy_id=policy.id or 0,
        period=period,
        window_start=start,
        window_end=end,
        limit_units=to_units(policy.limit),
        rollover_cap_units=to_units(policy.rollover_cap),
        previous_window_start=prev[0] if prev else None,
        policy_created_at=policy.created_at,
        counter_start=bucket_hour(now) if period.is_rolling else None,
        tenant=policy.tenant,
        scope=policy.scope,
    )


def scope_matches_row(scope: Scope, row: dict[str, Any]) -> bool:
    """``Scope.matches`` for a stored usage row: its columns, its tags, and the tag values it was attributed
    to through the scope hierarchy when recorded (``lineage_json``), as enforcement matched the call."""
    for key in CALL_DIMENSIONS:
        wanted = getattr(scope, key)
        if wanted is not None and row[key] != wanted:
            return False
    tags = json.loads(row["tags_json"] or "{}")
    lineage = json.loads(row.get("lineage_json") or "{}")
    wanted_tags = {key: getattr(scope, key) for key in TAG_DIMENSIONS if getattr(scope, key) is not None}
    wanted_tags.update(scope.tags)
    return all(tags.get(k) == v or v in lineage.get(k, ()) for k, v in wanted_tags.items())


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


@dataclass(frozen=True)
class HoldRow:
    """One hold as read under lock."""

    id: int
    counter_id: int
    policy_id: int
    amount_units: int
    created_at: datetime


class Reservation(enum.Enum):
    """What ``reserve`` did."""

    HELD = "held"  # the amount is held on every target (or already was, for this call id)
    DENIED = "denied"  # ``decide`` said no: nothing held
    RECORDED = "recorded"  # this call id was already recorded: a finished call cannot hold again
    THROTTLED = "throttled"  # a throttle's rate for this minute is used up: nothing held
    STALE = "stale"  # the policies the targets came from changed since (``generation``): nothing held


@dataclass(frozen=True)
class Rate:
    """A throttle: at most ``max_calls`` calls and ``max_units`` of estimates admitted in the minute ``bucket``."""

    policy_id: int
    bucket: datetime
    max_calls: int | None
    max_units: int | None


@dataclass(frozen=True)
class Reserved:
    """What ``reserve`` found and did; ``throttled_by`` names the rate that was used up."""

    standings: list[Standing]
    outcome: Reservation
    throttled_by: Rate | None = None


#: Largest value any money or token column may reach. SQLite turns an integer sum past 2**63 into an
#: inexact REAL, so every write that adds to a stored total checks it stays at or below this first.
MAX_STORED = 2**62


class StoreRangeError(ValidationError):
    """An amount would take a stored total past :data:`MAX_STORED` (nothing was written)."""


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
    "lineage_json",
)
_RECORDED_AT = USAGE_COLUMNS.index("recorded_at")
#: The usage row's values the settle routine takes after the targets, in this order.
_SETTLE_USAGE = tuple(c for c in USAGE_COLUMNS if c not in ("call_id", "cost_units", "recorded_at"))
_ROLLUP = "budget_usage_hourly"
_ROLLUP_KEYS = ["tenant", "dimension", "dim_value", "hour"]
_ROLLUP_SUMS = ["calls", "cost_units", *TOKEN_FIELDS]
_COUNTER = "budget_spend_counter"
_HOLD = "budget_hold"
_USAGE = "budget_usage"


_BACKFILL_COLUMNS = ("cost_units", "tenant", *CALL_DIMENSIONS, "tags_json", "lineage_json")


class Ledger:
    """Spend counters and holds on one database.

    The rule for which window a call's cost belongs to, the same in counters,
    rollups, reports and alerts: **the window of the moment the call was admitted**
    (when ``pre_llm_call`` took its hold). A call settled after its window ended
    is charged to the window that admitted it, so a limit checked at admission is
    the limit the cost counts against. A call recorded without a live hold (never
    checked, or its hold expired) belongs to the moment it is recorded. The usage
    row's ``recorded_at`` is that moment, so reports and rollups agree with the
    counters. A hold is always released from the counter it was taken on.
    """

    def __init__(self, db: pw.Database, durability: str = "full") -> None:
        self.db = db
        self._peewee: Any = db  # the same, for its connection state (``_state``), which peewee's types do not name
        self.sqlite = is_sqlite(db)
        self.kind = "sqlite" if self.sqlite else ("mysql" if isinstance(db, pw.MySQLDatabase) else "postgres")
        self._lock = "" if self.sqlite else " FOR UPDATE"
        # One fsync per call on SQLite: a hold commits without a sync (WAL at synchronous=NORMAL still
        # survives a killed process), and the settlement's synced commit (FULL) makes everything
        # before it durable too. A hold lost to a power cut only un-reserves a call that died with it.
        self._unsynced_holds = self.sqlite and durability == "full"
        self.group_commit = self._unsynced_holds  # where commits sync, callers arriving together share one
        # PostgreSQL/MariaDB: reserve and settle in one round trip each through server-side routines
        # (store/routines.py), known present on first use. The moment each hold this process took was
        # admitted is kept until the call settles, so the settling routine can be told which window to charge.
        self._routines: bool | None = False if self.sqlite else None
        self._admitted: dict[str, datetime] = {}
        self._admitted_lock = threading.Lock()
        #: Called when a routine finds that the policy generation a caller matched against has moved on
        #: (the policy cache then reloads); set by ``bootstrap`` to the repository's ``forget``.
        self.policies_changed: Callable[[], None] = lambda: None
        #: SQL texts built once per shape (statement kind and row count), then reused.
        self._texts: dict[tuple[Any, ...], str] = {}

    # -- SQL helpers ------------------------------------------------------------------------

    def _sql(self, sql: str, params: Sequence[Any] = ()) -> Any:
        if self.sqlite:
            # Straight to the sqlite3 connection (its statement cache keeps each text prepared), with peewee's
            # translation of sqlite3's errors into its own: what ``execute_sql`` does, less its bookkeeping.
            # Through ``execute_sql`` when there is no connection yet (it connects), when it is not sqlite3's
            # (another driver's errors), or when someone watches queries (hooks, peewee's debug log).
            conn = self._peewee._state.conn
            hooks = getattr(self._peewee, "query_hooks", None)  # peewee 4 (3.17 has none)
            if isinstance(conn, sqlite3.Connection) and not hooks and not _peewee_log.isEnabledFor(logging.DEBUG):
                with _SQLITE_ERRORS:
                    return conn.execute(sql, params)
            return self.db.execute_sql(sql, tuple(params))
        return self.db.execute_sql(sql.replace("?", "%s"), tuple(params))

    def _dt(self, moment: datetime) -> Any:
        return _sqlite_text(moment) if self.sqlite else naive(moment)

    def _dt_now(self, moment: datetime) -> Any:
        """:meth:`_dt` of a moment that will not recur (a call's own time): not worth the cache."""
        return str(naive(moment)) if self.sqlite else naive(moment)

    def _text(self, key: tuple[Any, ...], build: Callable[..., str]) -> str:
        """The SQL text of a statement shape, ``key`` = (kind, *counts): ``build(*counts)``, once (the first few
        hundred shapes are kept)."""
        sql = self._texts.get(key)
        if sql is None:
            sql = build(*key[1:])
            if len(self._texts) < 256:
                self._texts[key] = sql
        return sql

    @staticmethod
    def _marks(count: int) -> str:
        return ", ".join("?" * count)

    # -- spend already recorded (for counters that start mid-window) ------------------------

    def _scoped_rows(self, tenant: str, scope: Scope, start: datetime, end: datetime) -> list[tuple[Any, ...]]:
        """(recorded_at, *_BACKFILL_COLUMNS) of the usage rows of ``tenant`` in ``[start, end)`` that ``scope`` covers.

        The scope's columns (actor, model, ...) narrow the read in SQL, where every backend compares text
        exactly; tags and the scope hierarchy are matched here, exactly as enforcement matches calls. A
        per-user policy's first counter of a window reads that user's rows, not the whole tenant's.
        """
        wanted = [(key, getattr(scope, key)) for key in CALL_DIMENSIONS if getattr(scope, key) is not None]
        narrowed = "".join(f" AND {key} = ?" for key, _ in wanted)
        rows = self._sql(
            f"SELECT recorded_at, {', '.join(_BACKFILL_COLUMNS)} FROM {_USAGE} "
            f"WHERE tenant = ? AND recorded_at >= ? AND recorded_at < ?{narrowed}",
            (tenant, self._dt(start), self._dt(end), *(value for _, value in wanted)),
        ).fetchall()
        return [
            values
            for values in rows
            if values[2] == tenant and scope_matches_row(scope, dict(zip(_BACKFILL_COLUMNS, values[1:], strict=True)))
        ]

    def recorded_units(self, tenant: str, scope: Scope, start: datetime, end: datetime) -> int:
        """Cost of the usage rows of ``tenant`` in ``[start, end)`` that ``scope`` covers.

        Reads raw rows, so spend older than ``retention_days`` (pruned) is not seen.
        """
        return sum(int(values[1]) for values in self._scoped_rows(tenant, scope, start, end))

    def _hours_with_spend(self, tenant: str, scope: Scope, start: datetime, end: datetime) -> set[datetime]:
        """The UTC hours in ``[start, end)`` in which calls ``scope`` covers were recorded."""
        return {bucket_hour(aware(values[0])) for values in self._scoped_rows(tenant, scope, start, end)}

    def _backfill(self, target: Target, start: datetime, end: datetime) -> int:
        if target.scope is None or target.tenant is None:
            return 0
        return self.recorded_units(target.tenant, target.scope, start, end)

    # -- counters ---------------------------------------------------------------------------

    def _carry(self, target: Target) -> int:
        """Unused budget of the previous window, capped: computed from that window as it stands now."""
        if not target.rollover_cap_units or target.previous_window_start is None:
            return 0
        if target.policy_created_at and target.policy_created_at >= target.window_start:
            return 0  # the policy did not exist during the previous window
        prev = self._sql(
            f"SELECT spent_units, reserved_units FROM {_COUNTER} WHERE policy_id = ? AND part = ? AND window_start = ?",
            (target.policy_id, target.part, self._dt(target.previous_window_start)),
        ).fetchone()
        if prev is not None:
            used = int(prev[0]) + int(prev[1])  # holds of that window become its spend when they settle
        else:
            # No call held money in that window: count what was recorded, and keep it as that window's
            # counter (as any counter starts), so later calls read it instead of recounting raw rows.
            used = self._backfill(target, target.previous_window_start, target.window_start)
            previous = replace(target, window_start=target.previous_window_start, counter_start=None)
            self._insert_counter(previous, used)
        return max(0, min(target.rollover_cap_units, target.limit_units - used))

    def _find_counters(self, targets: Sequence[Target]) -> dict[Ident, int]:
        """(policy_id, part) -> counter id of each target's current counter (no lock)."""
        # OR of equalities, not a row-value IN: SQLite scans the whole index for the latter.
        pairs = " OR ".join("(policy_id = ? AND part = ? AND window_start = ?)" for _ in targets)
        params = [v for t in targets for v in (t.policy_id, t.part, self._dt(t.key))]
        rows = self._sql(f"SELECT id, policy_id, part FROM {_COUNTER} WHERE {pairs}", params).fetchall()
        return {(int(r[1]), r[2]): int(r[0]) for r in rows}

    def _lock_ids(self, ids: Iterable[int]) -> dict[int, tuple[int, int, int]]:
        """counter id -> (policy_id, spent, reserved), rows locked in ascending id order.

        Every writer locks counters by primary key in ascending order, which is what
        keeps concurrent transactions from deadlocking (InnoDB locks rows in the
        order it scans them, so the lock goes through the primary key).
        """
        ordered = sorted(set(ids))
        if not ordered:
            return {}
        rows = self._sql(
            f"SELECT id, policy_id, spent_units, reserved_units FROM {_COUNTER} "
            f"WHERE id IN ({self._marks(len(ordered))}) ORDER BY id{self._lock}",
            ordered,
        ).fetchall()
        return {int(r[0]): (int(r[1]), int(r[2]), int(r[3])) for r in rows}

    def _create_counters(self, targets: Sequence[Target]) -> None:
        """Insert the targets' missing counters, each starting from the spend already recorded in its span.

        A counter that a concurrent transaction created first is left alone (its
        creator counted what was recorded before it; later calls add themselves).
        """
        for target in sorted(targets, key=lambda t: (t.ident, t.key)):
            self._insert_counter(target, self._backfill(target, target.key, target.counter_end))

    def _insert_counter(self, target: Target, spent: int) -> None:
        """Insert ``target``'s counter starting at ``spent``, unless it exists (then it is left alone)."""
        ignore = {"sqlite": "INSERT OR IGNORE INTO", "mysql": "INSERT IGNORE INTO"}
        tail = " ON CONFLICT DO NOTHING" if self.kind == "postgres" else ""
        self._sql(
            f"{ignore.get(self.kind, 'INSERT INTO')} {_COUNTER} (policy_id, part, window_start, spent_units, "
            f"reserved_units, carry_units) VALUES (?, ?, ?, ?, 0, 0){tail}",
            (target.policy_id, target.part, self._dt(target.key), spent),
        )

    def _sqlite_read(
        self, targets: Sequence[Target], call_id: str | None = None, rolling: Sequence[Target] = ()
    ) -> tuple[dict[Ident, tuple[int, int, int, int]], tuple[bool, bool], dict[Ident, tuple[int, int]]]:
        """In one statement: (policy_id, part) -> (counter id, policy_id, spent, reserved) of the targets' counters,
        whether ``call_id`` holds money and was already recorded, and the sums of the ``rolling`` targets' windows.

        BEGIN IMMEDIATE already holds SQLite's only write lock, so this plain read is a locked one.
        """
        shape = (len(targets), call_id is not None, len(rolling))
        sql = self._text(("read", *shape), self._read_sql)
        params: list[Any] = [v for t in targets for v in t.sqlite_key]
        if call_id is not None:
            params += (call_id, call_id)
        for index, target in enumerate(rolling):
            params.append(index)
            params += target.sqlite_span
        counters: dict[Ident, tuple[int, int, int, int]] = {}
        state = (False, False)
        sums: dict[Ident, tuple[int, int]] = {}
        for kind, a, b, c, d, part in self._sql(sql, params).fetchall():
            if kind == 0:
                counters[(b, part)] = (a, b, int(c), int(d))
            elif kind == 1:
                state = (bool(b), bool(c))
            else:
                sums[rolling[a].ident] = (int(c or 0), int(d or 0))
        return counters, state, sums

    def _read_sql(self, counters: int, state: bool, rolling: int) -> str:
        """The text of :meth:`_sqlite_read` for so many targets, the call's state or not, so many rolling sums."""
        arms = []
        if counters:
            # OR of equalities, not a row-value IN: SQLite scans the whole index for the latter.
            pairs = " OR ".join("(policy_id = ? AND part = ? AND window_start = ?)" for _ in range(counters))
            arms.append(f"SELECT 0, id, policy_id, spent_units, reserved_units, part FROM {_COUNTER} WHERE {pairs}")
        if state:
            arms.append(
                f"SELECT 1, 0, EXISTS (SELECT 1 FROM {_HOLD} WHERE call_id = ?), "
                f"EXISTS (SELECT 1 FROM {_USAGE} WHERE call_id = ?), 0, ''"
            )
        # One indexed range sum per rolling window (an OR of ranges plus GROUP BY is slower).
        arms += [
            f"SELECT 2, ?, 0, SUM(spent_units), SUM(reserved_units), '' FROM {_COUNTER} "
            "WHERE policy_id = ? AND part = ? AND window_start >= ? AND window_start < ?"
        ] * rolling
        return " UNION ALL ".join(arms)

    def _ensure_counters(
        self, targets: Sequence[Target], also_lock: Iterable[int] = ()
    ) -> tuple[dict[Ident, int], dict[int, tuple[int, int, int]]]:
        """Create the targets' missing counters, then lock them (and ``also_lock``) in id order.

        :return: (policy_id, part) -> counter id of each target, and the locked rows by counter id.
        """
        if self.sqlite:  # BEGIN IMMEDIATE already holds the only write lock: find and read in one statement
            read = self._sqlite_read(targets)[0] if targets else {}
            if len(read) < len({t.ident for t in targets}):
                self._create_counters([t for t in targets if t.ident not in read])
                read = self._sqlite_read(targets)[0]
            rows = {r[0]: (r[1], r[2], r[3]) for r in read.values()}
            extra = [i for i in also_lock if i not in rows]
            if extra:
                rows.update(self._lock_ids(extra))
            return {pid: r[0] for pid, r in read.items()}, rows
        for _ in range(5):
            found = self._find_counters(targets) if targets else {}
            missing = [t for t in targets if t.ident not in found]
            if missing:
                self._create_counters(missing)
                found = self._find_counters(targets)
            rows = self._lock_ids([*found.values(), *also_lock])
            # The ids were found without a lock: a policy change that committed while we waited for the
            # lock may have dropped those counters. Then look again (and create them anew).
            if all(counter_id in rows for counter_id in found.values()):
                return found, rows
        raise pw.OperationalError("counters kept changing under a concurrent policy change; try again")

    def _rolling_sums(self, rolling: Sequence[Target]) -> dict[Ident, tuple[int, int]]:
        """(policy_id, part) -> (spent, reserved) summed over each rolling target's window."""
        if not rolling:
            return {}
        if self.sqlite:
            return self._sqlite_read((), None, rolling)[2]
        # One indexed range sum per policy, glued with UNION ALL (an OR of ranges plus GROUP BY is slower).
        one = (
            f"SELECT ?, SUM(spent_units), SUM(reserved_units) FROM {_COUNTER} "
            "WHERE policy_id = ? AND part = ? AND window_start >= ? AND window_start < ?"
        )
        params = [
            v
            for i, t in enumerate(rolling)
            for v in (i, t.policy_id, t.part, self._dt(t.window_start), self._dt(t.window_end))
        ]
        sums = {}
        for index, spent, reserved in self._sql(" UNION ALL ".join(one for _ in rolling), params).fetchall():
            sums[rolling[int(index)].ident] = (int(spent or 0), int(reserved or 0))
        return sums

    def _standings(
        self,
        targets: Sequence[Target],
        ids: dict[Ident, int],
        rows: dict[int, tuple[int, int, int]],
        sums: dict[Ident, tuple[int, int]] | None = None,
    ) -> list[Standing]:
        """The targets' standings from their counters' ``rows``; a rolling window's from ``sums`` (read when None)."""
        if sums is None:
            sums = self._rolling_sums([t for t in targets if t.period.is_rolling])
        result = []
        for target in targets:
            if target.period.is_rolling:
                spent, reserved = sums.get(target.ident, (0, 0))
                result.append(Standing(target, spent, reserved, 0))
            else:
                _, spent, reserved = rows[ids[target.ident]]
                result.append(Standing(target, spent, reserved, self._carry(target)))
        return result

    def standings(self, targets: Sequence[Target]) -> list[Standing]:
        """Current standings of ``targets`` (creates their counters; for reports and verdicts)."""

        def work() -> list[Standing]:
            ids, rows = self._ensure_counters(targets)
            return self._standings(targets, ids, rows)

        return run_in_transaction(self.db, work)

    # -- server-side routines (PostgreSQL, MariaDB) -------------------------------------------

    def _use_routines(self) -> bool:
        if self._routines is None:
            self._routines = routines.present(self.db)
            if not self._routines:
                _log.warning(
                    "the budget's server-side routines are missing or may not be run by this database user; every "
                    "call takes the longer way (%s)",
                    routines.HOW_TO_ENABLE,
                )
        return self._routines

    @property
    def checks_generation(self) -> bool:
        """Whether ``reserve``/``settle`` check the ``generation`` they are given in the store (server routines):
        callers may then match calls against their cached policies without asking the store first."""
        return self._use_routines()

    def _carries(self, target: Target) -> bool:
        """Whether ``target``'s limit may grow by the unused budget of its previous window (see ``_carry``)."""
        return bool(
            target.rollover_cap_units
            and target.previous_window_start is not None
            and not target.period.is_rolling
            and not (target.policy_created_at and target.policy_created_at >= target.window_start)
        )

    def _routine_targets(self, targets: Sequence[Target]) -> list[Any]:
        """The targets as the routines take them: eight parallel arrays (PostgreSQL), one JSON array (MariaDB)."""
        rolling = [t.period.is_rolling for t in targets]
        if self.kind == "mysql":
            text = _sqlite_text  # 'YYYY-MM-DD HH:MM:SS[.ffffff]' naive UTC, which MariaDB reads as a DATETIME
            rows = [
                [
                    t.policy_id,
                    t.part,
                    text(t.key),
                    text(t.window_start) if r else None,
                    text(t.window_end) if r else None,
                    t.limit_units,
                    t.rollover_cap_units,
                    text(t.previous_window_start) if self._carries(t) else None,
                ]
                for t, r in zip(targets, rolling, strict=True)
            ]
            return [json.dumps(rows)]
        return [
            [t.policy_id for t in targets],
            [t.part for t in targets],
            [naive(t.key) for t in targets],
            [naive(t.window_start) if r else None for t, r in zip(targets, rolling, strict=True)],
            [naive(t.window_end) if r else None for t, r in zip(targets, rolling, strict=True)],
            [t.limit_units for t in targets],
            [t.rollover_cap_units for t in targets],
            [naive(t.previous_window_start) if self._carries(t) else None for t in targets],  # type: ignore[arg-type]
        ]

    def _call_routine(self, name: str, params: Sequence[Any]) -> tuple[Any, ...]:
        """Run one routine in its own transaction (one round trip), again after a deadlock."""

        def build(count: int) -> str:
            if self.kind == "postgres":  # every routine takes four values, the targets' arrays, then the rest
                marks = ["%s"] * 4 + list(routines.PG_TARGET_CASTS) + ["%s"] * (count - 12)
                return f"SELECT status, spent, reserved, carry FROM {name}({', '.join(marks)})"
            return f"CALL {name}({', '.join(['%s'] * count)})"

        sql = self._text((name, len(params)), build)
        for attempt in range(8):
            try:
                cursor = self.db.execute_sql(sql, tuple(params))
                row = cursor.fetchone()
                while self.kind == "mysql" and cursor.nextset():  # a CALL's own status answer follows
                    pass
                return routines.decode(self.kind, row)
            except (pw.OperationalError, pw.InternalError, pw.ProgrammingError) as exc:
                if driver_error_in(exc, routines.UNUSABLE_PG, routines.UNUSABLE_MYSQL):  # dropped, or forbidden
                    self._routines = False
                    _log.warning("%s; every call takes the longer way from now on (%s)", exc, routines.HOW_TO_ENABLE)
                    return "missing", [], [], []
                if attempt == 7 or not is_retryable(exc):
                    raise
                time.sleep(random.uniform(0, 0.005 * 2**attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    def _admit(self, call_id: str, moment: datetime) -> None:
        """Remember when this process's hold for ``call_id`` was taken (bounded: oldest forgotten first)."""
        with self._admitted_lock:
            self._admitted.setdefault(call_id, moment)
            while len(self._admitted) > 100_000:
                del self._admitted[next(iter(self._admitted))]

    def _forget(self, call_id: str) -> datetime | None:
        with self._admitted_lock:
            return self._admitted.pop(call_id, None)

    def _reserve_on_server(
        self,
        call_id: str,
        targets: Sequence[Target],
        amount_units: int,
        now: datetime,
        expires_at: datetime,
        decide: Callable[[list[Standing]], bool],
        generation: int | None,
    ) -> Reserved | None:
        """``reserve`` in one round trip; None when the Python path must do it (nothing was written then)."""
        params = [call_id, amount_units, naive(now), naive(expires_at), *self._routine_targets(targets), generation]
        status, spent, reserved, carry = self._call_routine(routines.RESERVE, params)
        if status == "stale":
            self.policies_changed()
            return Reserved([], Reservation.STALE)
        if status in ("missing", "range"):
            return None
        standings = [
            Standing(t, int(s), int(r), int(c)) for t, s, r, c in zip(targets, spent, reserved, carry, strict=True)
        ]
        if status == "held":
            return Reserved(standings, Reservation.HELD)
        if status == "recorded":
            return Reserved(standings, Reservation.RECORDED)
        if status == "check":  # over some limit: the policies decide; a denial needs nothing more
            return Reserved(standings, Reservation.DENIED) if not decide(standings) else None
        if amount_units:  # a zero estimate holds nothing: its settlement expects no hold
            self._admit(call_id, now)
        if decide(standings):  # it fit every limit, so every policy admits it
            return Reserved(standings, Reservation.HELD)
        self.release(call_id)  # pragma: no cover - a policy that blocks a call within its limit
        return None  # pragma: no cover

    def _settle_on_server(
        self,
        call_id: str,
        cost_units: int,
        row: dict[str, Any],
        targets: Callable[[datetime], Sequence[Target]],
        generation: int | Callable[[], int | None] | None,
    ) -> Settlement | None:
        """``settle`` in one round trip; None when the Python path must do it (nothing was written then)."""
        held_at = self._admitted.get(call_id)
        moment = held_at or aware(row["recorded_at"])
        if self.kind == "mysql":  # its DATETIME columns keep whole seconds (it truncates): as the hold was stored
            moment = moment.replace(microsecond=0)
        current = list(targets(moment))
        params = [
            call_id,
            cost_units,
            naive(held_at) if held_at else None,
            naive(moment),
            *self._routine_targets(current),
            *(row[c] for c in _SETTLE_USAGE),
            generation() if callable(generation) else generation,  # after ``targets``: theirs
        ]
        try:
            status, spent, reserved, carry = self._call_routine(routines.SETTLE, params)
        except pw.IntegrityError:
            first = self.usage_row(call_id)  # a concurrent settle of the same call committed first
            if first is None:  # pragma: no cover - the unique key was not call_id
                raise
            return Settlement(first, False)
        except pw.DatabaseError as exc:
            if routines.FALLBACK not in str(exc):
                raise
            return None
        if status == "recorded":
            first = self.usage_row(call_id)
            return Settlement(first, False) if first is not None else None
        if status == "stale":
            self.policies_changed()  # the Python path asks ``targets`` again, from reloaded policies
        if status != "settled":
            return None
        self._forget(call_id)
        after = tuple(
            Standing(t, int(s), int(r), int(c)) for t, s, r, c in zip(current, spent, reserved, carry, strict=True)
        )
        return Settlement({**row, "recorded_at": naive(moment)}, True, after)

    # -- reserve ----------------------------------------------------------------------------

    def _call_state(self, call_id: str) -> tuple[bool, bool]:
        """(the call holds money, the call was already recorded)."""
        row = self._sql(
            f"SELECT (SELECT COUNT(*) FROM {_HOLD} WHERE call_id = ?), "
            f"(SELECT COUNT(*) FROM {_USAGE} WHERE call_id = ?)",
            (call_id, call_id),
        ).fetchone()
        return bool(row[0]), bool(row[1])

    def _sqlite_reserve_read(
        self, call_id: str, targets: Sequence[Target]
    ) -> tuple[bool, bool, dict[Ident, int], dict[int, tuple[int, int, int]], list[Standing]]:
        """What ``reserve`` reads first, in one statement on SQLite (the targets' missing counters created):
        (the call holds money, the call was recorded, counter ids, counter rows, standings)."""
        rolling = [t for t in targets if t.period.is_rolling]
        read, (held, recorded), sums = self._sqlite_read(targets, call_id, rolling)
        if len(read) < len({t.ident for t in targets}):
            self._create_counters([t for t in targets if t.ident not in read])
            read, (held, recorded), sums = self._sqlite_read(targets, call_id, rolling)
        ids = {ident: r[0] for ident, r in read.items()}
        rows = {r[0]: (r[1], r[2], r[3]) for r in read.values()}
        return held, recorded, ids, rows, self._standings(targets, ids, rows, sums)

    def reserve(
        self,
        call_id: str,
        targets: Sequence[Target],
        amount_units: int,
        now: datetime,
        expires_at: datetime,
        decide: Callable[[list[Standing]], bool],
        rates: Callable[[list[Standing]], Sequence[Rate]] | None = None,
        generation: int | None = None,
    ) -> Reserved:
        """Check and hold ``amount_units`` on every target, or on none.

        ``decide`` sees the standings read under lock and says whether to hold; ``rates``
        then names the throttles that apply, each checked and counted in the same
        transaction. A repeated call with the same ``call_id`` does not hold twice; a
        ``call_id`` that was already recorded holds nothing (:attr:`Reservation.RECORDED`).
        ``generation`` is the policy generation the targets were matched under: where the server
        checks it (PostgreSQL, MariaDB) a moved generation holds nothing and answers
        :attr:`Reservation.STALE`, so the caller matches again instead of asking the store first.
        :return: the standings before the hold, and what was done.
        """
        if amount_units > MAX_STORED:
            raise StoreRangeError(f"an estimate of {amount_units} units is beyond what the store can total")
        if targets and rates is None and self._use_routines():
            fast = self._reserve_on_server(call_id, targets, amount_units, now, expires_at, decide, generation)
            if fast is not None:
                return fast

        def work() -> Reserved:
            if self.sqlite:
                held, recorded, ids, rows, standings = self._sqlite_reserve_read(call_id, targets)
            else:
                held, recorded = self._call_state(call_id)
                ids, rows = self._ensure_counters(targets)
                standings = self._standings(targets, ids, rows)
            if held:
                return Reserved(standings, Reservation.HELD)
            if recorded:
                return Reserved(standings, Reservation.RECORDED)
            if not decide(standings):
                return Reserved(standings, Reservation.DENIED)
            used_up = self._take_rates(rates(standings) if rates else (), amount_units)
            if used_up is not None:
                return Reserved(standings, Reservation.THROTTLED, used_up)
            if amount_units and targets:
                self._check_range(rows, ids.values(), amount_units, reserved=True)
                counter_ids = sorted(ids[t.ident] for t in targets)
                count = len(counter_ids)
                sql = self._text(
                    ("hold", count),
                    lambda n: (
                        f"UPDATE {_COUNTER} SET reserved_units = reserved_units + ? WHERE id IN ({self._marks(n)})"
                    ),
                )
                self._sql(sql, [amount_units, *counter_ids])
                created, expires = self._dt_now(now), self._dt_now(expires_at)
                params: list[Any] = []
                for t in targets:
                    params += (call_id, ids[t.ident], t.policy_id, amount_units, created, expires)
                sql = self._text(
                    ("holds", count),
                    lambda n: (
                        f"INSERT INTO {_HOLD} (call_id, counter_id, policy_id, amount_units, created_at, expires_at) "
                        f"VALUES {', '.join('(?, ?, ?, ?, ?, ?)' for _ in range(n))}"
                    ),
                )
                self._sql(sql, params)
            return Reserved(standings, Reservation.HELD)

        if not self._unsynced_holds:
            result = run_in_transaction(self.db, work)
        else:
            self._sql("PRAGMA synchronous = NORMAL")
            try:
                result = run_in_transaction(self.db, work)
            finally:
                self._sql("PRAGMA synchronous = FULL")
        if result.outcome is Reservation.HELD and self._routines and amount_units and targets:
            self._admit(call_id, now)
        return result

    def _take_rates(self, rates: Sequence[Rate], amount_units: int) -> Rate | None:
        """Count this call in each throttle's minute, or return the first whose minute is used up."""
        if not rates:
            return None
        ignore = {"sqlite": "INSERT OR IGNORE INTO", "mysql": "INSERT IGNORE INTO"}
        tail = " ON CONFLICT DO NOTHING" if self.kind == "postgres" else ""
        counters = []
        for rate in sorted(rates, key=lambda r: r.policy_id):
            self._sql(
                f"{ignore.get(self.kind, 'INSERT INTO')} {_COUNTER} (policy_id, part, window_start, spent_units, "
                f"reserved_units, carry_units) VALUES (?, 'rate', ?, 0, 0, 0){tail}",
                (rate.policy_id, self._dt(rate.bucket)),
            )
            row = self._sql(
                f"SELECT id, spent_units, carry_units FROM {_COUNTER} WHERE policy_id = ? AND part = 'rate' "
                f"AND window_start = ?{self._lock}",
                (rate.policy_id, self._dt(rate.bucket)),
            ).fetchone()
            counter_id, units, calls = int(row[0]), int(row[1]), int(row[2])
            if rate.max_calls is not None and calls + 1 > rate.max_calls:
                return rate
            if rate.max_units is not None and units + amount_units > rate.max_units:
                return rate
            counters.append(counter_id)
        self._sql(
            f"UPDATE {_COUNTER} SET spent_units = spent_units + ?, carry_units = carry_units + 1 "
            f"WHERE id IN ({self._marks(len(counters))})",
            [amount_units, *counters],
        )
        return None

    @staticmethod
    def _check_range(
        rows: dict[int, tuple[int, int, int]], counter_ids: Iterable[int], amount: int, reserved: bool = False
    ) -> None:
        for counter_id in counter_ids:
            _, spent, held = rows[counter_id]
            if (held if reserved else spent) + amount > MAX_STORED:
                raise StoreRangeError(
                    f"adding {amount} units to a counter already at {held if reserved else spent} units would "
                    f"pass the store's exact range ({MAX_STORED} units)"
                )

    # -- holds ------------------------------------------------------------------------------

    def _sqlite_holds(
        self, call_id: str
    ) -> tuple[
        list[int],
        dict[int, tuple[int, int]],
        datetime | None,
        dict[tuple[int, str, str], int],
        dict[int, tuple[int, int, int]],
    ]:
        """The call's holds with their counters, in one statement (SQLite: the write lock is already held).

        :return: the holds' ids in counter order (as :meth:`_holds` reads them), the deltas that give back what
            they hold (as :meth:`_given_back`), the moment the first was taken (None: no hold), the counter id by
            (policy id, part, window start as stored), and the counters' rows (policy_id, spent, reserved) by id.
        """
        rows = self._sql(
            "SELECT h.id, h.counter_id, h.amount_units, h.created_at, c.policy_id, c.part, c.window_start, "
            "c.spent_units, c.reserved_units "
            f"FROM {_HOLD} h LEFT JOIN {_COUNTER} c ON c.id = h.counter_id WHERE h.call_id = ? "
            "ORDER BY h.counter_id, h.id",
            (call_id,),
        ).fetchall()
        ids = []
        deltas: dict[int, tuple[int, int]] = {}
        taken: set[Any] = set()
        held_on: dict[tuple[int, str, str], int] = {}
        counters: dict[int, tuple[int, int, int]] = {}
        for hold_id, counter_id, amount, created, owner, part, start, spent, reserved in rows:
            ids.append(hold_id)
            taken.add(created)
            given = deltas.get(counter_id)
            deltas[counter_id] = (-int(amount), 0) if given is None else (given[0] - int(amount), 0)
            if owner is not None:  # a counter dropped under the hold leaves nothing to give back to
                held_on[(owner, part, start)] = counter_id
                counters[counter_id] = (owner, int(spent), int(reserved))
        held_at = min(aware(t) for t in taken) if taken else None  # a call's holds share one moment: parsed once
        return ids, deltas, held_at, held_on, counters

    def _holds(self, where: str, params: Sequence[Any]) -> list[HoldRow]:
        """Matching holds, locked, in counter order."""
        rows = self._sql(
            f"SELECT id, counter_id, policy_id, amount_units, created_at FROM {_HOLD} WHERE {where} "
            f"ORDER BY counter_id, id{self._lock}",
            params,
        ).fetchall()
        return [HoldRow(int(a), int(b), int(c), int(d), aware(e)) for a, b, c, d, e in rows]

    def _apply(self, deltas: dict[int, tuple[int, int]]) -> None:
        """Add (reserved, spent) deltas to counters, one statement per distinct pair of deltas."""
        by_delta: dict[tuple[int, int], list[int]] = {}
        for counter_id, delta in deltas.items():
            if delta != (0, 0):
                by_delta.setdefault(delta, []).append(counter_id)
        for (reserved, spent), counter_ids in sorted(by_delta.items()):
            counter_ids.sort()
            count = len(counter_ids)
            sql = self._text(
                ("apply", count),
                lambda n: (
                    f"UPDATE {_COUNTER} SET reserved_units = reserved_units + ?, spent_units = spent_units + ? "
                    f"WHERE id IN ({self._marks(n)})"
                ),
            )
            self._sql(sql, [reserved, spent, *counter_ids])

    def _delete_holds(self, holds: Sequence[HoldRow]) -> None:
        self._delete_hold_ids([h.id for h in holds])

    def _delete_hold_ids(self, ids: Sequence[int]) -> None:
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            count = len(chunk)
            self._sql(
                self._text(("drop", count), lambda n: f"DELETE FROM {_HOLD} WHERE id IN ({self._marks(n)})"), chunk
            )

    @staticmethod
    def _given_back(holds: Sequence[HoldRow]) -> dict[int, tuple[int, int]]:
        """(reserved, spent) deltas that give back exactly what each hold held, summed per counter."""
        deltas: dict[int, tuple[int, int]] = {}
        for hold in holds:
            reserved, spent = deltas.get(hold.counter_id, (0, 0))
            deltas[hold.counter_id] = (reserved - hold.amount_units, spent)
        return deltas

    def _release(self, holds: Sequence[HoldRow]) -> None:
        """Give back exactly what each hold held, on the counter it was taken on, and delete the holds."""
        if not holds:
            return
        deltas = self._given_back(holds)
        self._lock_ids(deltas)  # in id order, as every writer does: no deadlocks
        self._apply(deltas)
        self._delete_holds(holds)

    # -- settle, release, expire, renew -----------------------------------------------------

    def usage_row(self, call_id: str) -> dict[str, Any] | None:
        row = self._sql(f"SELECT {', '.join(USAGE_COLUMNS)} FROM {_USAGE} WHERE call_id = ?", (call_id,)).fetchone()
        return dict(zip(USAGE_COLUMNS, row, strict=True)) if row else None

    def held_units(self, call_id: str) -> int | None:
        """What the call holds on each of its policies (its estimate), or None when it holds nothing."""
        row = self._sql(f"SELECT MAX(amount_units) FROM {_HOLD} WHERE call_id = ?", (call_id,)).fetchone()
        return int(row[0]) if row and row[0] is not None else None

    def settle(
        self,
        call_id: str,
        cost_units: int,
        usage: dict[str, Any],
        targets: Callable[[datetime], Sequence[Target]],
        generation: int | Callable[[], int | None] | None = None,
    ) -> Settlement:
        """Record a call's usage once and turn its holds into spend, in one transaction.

        The cost is charged to the window that admitted the call (see the class
        docstring): ``targets(moment)`` gives the policies matching the call at that
        moment, and each of their counters for that window gets the cost; the call's
        holds are released from the counters they were taken on. A second call with
        the same ``call_id`` changes nothing and returns the first record. The
        settlement carries the standings of the charged policies after the spend,
        for threshold announcements. ``generation``: as for :meth:`reserve` (or a callable giving
        it, asked after ``targets``); a moved one reloads the policies (``policies_changed``) and
        asks ``targets`` again.
        """
        if cost_units < 0:
            raise ValueError(f"cost must not be negative, got {cost_units} units")
        if cost_units > MAX_STORED:
            raise StoreRangeError(f"a cost of {cost_units} units is beyond what the store can total")
        row = {**usage, "call_id": call_id, "cost_units": cost_units}
        missing = [c for c in USAGE_COLUMNS if c not in row]
        if missing:
            raise ValueError(f"usage row lacks {missing}")
        if self._use_routines():
            if callable(row["lineage_json"]):
                row["lineage_json"] = row["lineage_json"]()
            fast = self._settle_on_server(call_id, cost_units, row, targets, generation)
            if fast is not None:
                return fast

        def work() -> Settlement:
            # A concurrent settle of this call waits here. A repeated one finds no holds
            # and fails on the unique call_id below, which rolls all of this back.
            if self.sqlite:
                hold_ids, deltas, held_at, held_on, rows = self._sqlite_holds(call_id)
            else:
                holds = self._holds("call_id = ?", (call_id,))
                hold_ids, deltas = [h.id for h in holds], self._given_back(holds)
                held_at = min(h.created_at for h in holds) if holds else None
            moment = held_at or aware(row["recorded_at"])
            current = list(targets(moment))
            if self.sqlite:
                # The holds name the counters of the window that admitted the call: the targets whose counter
                # is one of them need no look-up; the others (no hold, or one taken under other policies) do.
                ids: dict[Ident, int] = {}
                rest = []
                for target in current:
                    counter_id = held_on.get(target.sqlite_key)
                    if counter_id is None:
                        rest.append(target)
                    else:
                        ids[target.ident] = counter_id
                if rest:
                    found, more = self._ensure_counters(rest)
                    ids.update(found)
                    rows.update(more)
            else:
                ids, rows = self._ensure_counters(current, also_lock=[h.counter_id for h in holds])
            if cost_units:
                self._check_range(rows, ids.values(), cost_units)
                for counter_id in ids.values():
                    reserved, spent = deltas.get(counter_id, (0, 0))
                    deltas[counter_id] = (reserved, spent + cost_units)
            self._apply(deltas)
            self._delete_hold_ids(hold_ids)
            lineage = row.get("lineage_json", "{}")
            at = naive(moment)
            stored = {**row, "recorded_at": at, "lineage_json": lineage() if callable(lineage) else lineage}
            values = [stored[c] for c in USAGE_COLUMNS]
            hour = None
            if self.sqlite:
                values[_RECORDED_AT] = text = str(at)
                hour = f"{text[:14]}00:00"  # 'YYYY-MM-DD HH:' of the stored text: the hour's bucket, as stored
            sql = self._text(
                ("usage",),
                lambda: f"INSERT INTO {_USAGE} ({', '.join(USAGE_COLUMNS)}) VALUES ({self._marks(len(USAGE_COLUMNS))})",
            )
            self._sql(sql, values)
            self._roll_up(stored, hour)
            changed = {
                cid: (pid, spent + deltas.get(cid, (0, 0))[1], held + deltas.get(cid, (0, 0))[0])
                for cid, (pid, spent, held) in rows.items()
            }
            after = self._standings(current, ids, changed) if current else []
            return Settlement(stored, True, tuple(after))

        self._forget(call_id)
        try:
            # Settlements arriving together from several threads share one durable commit.
            return (run_grouped if self.group_commit else run_in_transaction)(self.db, work)
        except pw.IntegrityError:
            # A concurrent settle of the same call committed first (call_id is unique);
            # this transaction was rolled back whole, so the first record stands.
            first = self.usage_row(call_id)
            if first is None:  # pragma: no cover - the unique key was not call_id
                raise
            return Settlement(first, False)

    def _roll_up(self, row: dict[str, Any], hour: Any = None) -> None:
        """Add the usage row to its hourly bucket (an upsert, in the settling transaction); ``hour``: the bucket
        as stored, when the caller has it.

        On SQLite the upsert returns the new sums, so a total that left the exact
        integer range (SQLite would silently make it a REAL) fails the transaction.
        """
        if hour is None:
            hour = self._dt(aware(row["recorded_at"]).replace(minute=0, second=0, microsecond=0))
        sums = [1, row["cost_units"], *(row[c] for c in TOKEN_FIELDS)]
        tenant = row["tenant"]
        params = [tenant, "*", "", hour, *sums]
        for dim in CALL_DIMENSIONS:
            params += (tenant, dim, row[dim] or "", hour, *sums)
        cursor = self._sql(self._text(("rollup",), self._rollup_sql), params)
        if self.sqlite:
            for (exact,) in cursor.fetchall():
                if not exact:
                    raise StoreRangeError(
                        f"recording this call would take an hourly total past the store's exact range "
                        f"({MAX_STORED} units or tokens)"
                    )

    def _rollup_sql(self) -> str:
        columns = ", ".join(_ROLLUP_KEYS + _ROLLUP_SUMS)
        one = f"({self._marks(len(_ROLLUP_KEYS) + len(_ROLLUP_SUMS))})"
        marks = ", ".join(one for _ in range(1 + len(CALL_DIMENSIONS)))
        if self.kind == "mysql":
            update = ", ".join(f"{c} = {c} + VALUES({c})" for c in _ROLLUP_SUMS)
            tail = f"ON DUPLICATE KEY UPDATE {update}"
        else:
            update = ", ".join(f"{c} = {_ROLLUP}.{c} + excluded.{c}" for c in _ROLLUP_SUMS)
            tail = f"ON CONFLICT ({', '.join(_ROLLUP_KEYS)}) DO UPDATE SET {update}"
        if self.sqlite:  # whether every new sum is still an exact integer within MAX_STORED (not a REAL)
            exact = " AND ".join(f"typeof({c}) = 'integer' AND {c} <= {MAX_STORED}" for c in _ROLLUP_SUMS)
            tail += f" RETURNING {exact}"
        return f"INSERT INTO {_ROLLUP} ({columns}) VALUES {marks} {tail}"

    def release(self, call_id: str) -> int:
        """Drop a call's holds without spend (the call failed or was blocked elsewhere)."""

        self._forget(call_id)
        # Most released calls were denied and hold nothing: one plain read then, no write transaction.
        if not self._sql(f"SELECT 1 FROM {_HOLD} WHERE call_id = ?", (call_id,)).fetchone():
            return 0

        def work() -> int:
            holds = self._holds("call_id = ?", (call_id,))
            self._release(holds)
            return len(holds)

        return run_in_transaction(self.db, work)

    def expire(self, now: datetime) -> int:
        """Drop holds whose time is up (the host never called back); returns how many."""

        def work() -> int:
            holds = self._holds("expires_at <= ?", (self._dt(now),))
            self._release(holds)
            return len(holds)

        return run_in_transaction(self.db, work)

    def renew(self, call_ids: Sequence[str], expires_at: datetime) -> int:
        """Push the expiry of the holds of calls still in progress to ``expires_at``; returns holds renewed."""
        if not call_ids:
            return 0

        def work() -> int:
            renewed = 0
            for start in range(0, len(call_ids), 500):
                chunk = list(call_ids[start : start + 500])
                cursor = self._sql(
                    f"UPDATE {_HOLD} SET expires_at = ? WHERE call_id IN ({self._marks(len(chunk))}) "
                    "AND expires_at < ?",
                    [self._dt(expires_at), *chunk, self._dt(expires_at)],
                )
                renewed += max(0, cursor.rowcount)
            return renewed

        return run_in_transaction(self.db, work)

    def reset_policy(
        self,
        policy_id: int,
        target_at: Callable[[datetime, str], Target | None],
        now: datetime,
        sub_parts: Sequence[str] = (),
    ) -> None:
        """Rebuild a policy's counters after its scope, period, timezone or sub-limits changed.

        The old counters counted other calls, so they are dropped; the counter of
        the current window (and, for rolling windows, of every hour in it with spend) starts
        from the spend recorded in its span under the new scope, and the holds of
        calls in flight move onto the counter of the window that admitted them (a hold on
        a sub-limit that no longer exists is released). ``target_at(moment, part)`` is the
        policy's target for a part ('' = its own limit), or None for a part it no longer has.
        """

        def work() -> None:
            # Lock the policy's counters first (ascending ids, as every writer): a reservation that holds one
            # commits its hold before this reads the holds, and one that comes later waits, then finds them gone.
            self._lock_ids(
                int(row[0])
                for row in self._sql(f"SELECT id FROM {_COUNTER} WHERE policy_id = ?", (policy_id,)).fetchall()
            )
            holds = self._holds("policy_id = ?", (policy_id,))
            parts = dict(self._sql(f"SELECT id, part FROM {_COUNTER} WHERE policy_id = ?", (policy_id,)).fetchall())
            # A throttle's minute counts ('rate') are admissions, not spend: they stay, or a change of the
            # policy would reset its rate in the middle of a minute.
            self._sql(f"DELETE FROM {_COUNTER} WHERE policy_id = ? AND part <> 'rate'", (policy_id,))
            current = target_at(now, "")
            assert current is not None
            wanted: dict[tuple[str, datetime], Target] = {("", current.key): current}
            if current.period.is_rolling and current.tenant is not None:
                # Only the hours that have recorded spend get a counter: a 30-day window is 720 hours.
                # The sub-limits' own counters cover the same window, each under its narrower scope.
                for part in ["", *sub_parts]:
                    target = target_at(now, part)
                    if target is None or target.scope is None:
                        continue
                    spent_hours = self._hours_with_spend(current.tenant, target.scope, target.window_start, target.key)
                    for hour in spent_hours:
                        wanted.setdefault((part, hour), replace(target, counter_start=hour))
            by_hold: dict[int, Target] = {}
            for hold in holds:
                part = parts.get(hold.counter_id, "")
                if part == "rate":
                    continue
                target = target_at(hold.created_at, part)
                if target is not None:
                    by_hold[hold.id] = target
                    wanted.setdefault((target.part, target.key), target)
            gone = [h for h in holds if h.id not in by_hold]
            self._delete_holds(gone)  # their counters were dropped above: nothing to give back
            self._create_counters(list(wanted.values()))
            counter_of = {
                (part, aware(start)): int(counter_id)
                for counter_id, part, start in self._sql(
                    f"SELECT id, part, window_start FROM {_COUNTER} WHERE policy_id = ?", (policy_id,)
                ).fetchall()
            }
            deltas: dict[int, tuple[int, int]] = {}
            for hold in holds:
                target = by_hold.get(hold.id)
                if target is None:
                    continue
                counter_id = counter_of[(target.part, target.key)]
                reserved, _ = deltas.get(counter_id, (0, 0))
                deltas[counter_id] = (reserved + hold.amount_units, 0)
                self._sql(f"UPDATE {_HOLD} SET counter_id = ? WHERE id = ?", (counter_id, hold.id))
            self._lock_ids(deltas)
            self._apply(deltas)

        run_in_transaction(self.db, work)

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
