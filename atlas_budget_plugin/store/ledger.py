"""The ledger: atomic check-and-reserve, settle, release and expiry of holds on spend counters.

All amounts here are integer nano-units. Every method that writes runs in one
write transaction, so a reservation is all-or-nothing across the policies of a
call and usage is recorded together with the settlement of its holds.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, cast

import peewee as pw

from ..periods import Period
from .database import is_sqlite, run_in_transaction
from .models import Hold, SpendCounter, ThresholdMark, UsageRow


def naive(moment: datetime) -> datetime:
    """Aware datetime -> naive UTC, the form stored in every DateTimeField."""
    return moment.astimezone(timezone.utc).replace(tzinfo=None)


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
    """What ``settle`` did: the usage row (new or the first one recorded) and the policies touched."""

    row: UsageRow
    created: bool
    policy_ids: tuple[int, ...]


class Ledger:
    """Spend counters and holds on one database."""

    def __init__(self, db: pw.Database) -> None:
        self.db = db

    # -- counters ---------------------------------------------------------------------------

    def _carry(self, target: Target) -> int:
        if not target.rollover_cap_units or target.previous_window_start is None:
            return 0
        if target.policy_created_at and target.policy_created_at >= target.window_start:
            return 0  # the policy did not exist during the previous window
        prev = SpendCounter.get_or_none(
            (SpendCounter.policy_id == target.policy_id)
            & (SpendCounter.window_start == naive(target.previous_window_start))
        )
        unused = target.limit_units - (prev.spent_units if prev else 0)
        return max(0, min(target.rollover_cap_units, unused))

    def _lock_counters(self, targets: Sequence[Target]) -> dict[int, SpendCounter]:
        condition = functools.reduce(
            operator.or_,
            [(SpendCounter.policy_id == t.policy_id) & (SpendCounter.window_start == naive(t.key)) for t in targets],
        )
        query = SpendCounter.select().where(condition).order_by(SpendCounter.id)
        if not is_sqlite(self.db):
            query = query.for_update()
        return {row.policy_id: row for row in query}

    def _ensure_counters(self, targets: Sequence[Target]) -> dict[int, SpendCounter]:
        """Lock the targets' counters in id order (no deadlocks), creating the missing ones first."""
        if not targets:
            return {}
        counters = self._lock_counters(targets)
        missing = sorted((t for t in targets if t.policy_id not in counters), key=lambda t: (t.policy_id, t.key))
        if not missing:
            return counters  # the usual case: one locking read, no inserts
        for target in missing:
            SpendCounter.insert(
                policy_id=target.policy_id, window_start=naive(target.key), carry_units=self._carry(target)
            ).on_conflict_ignore().execute()
        return self._lock_counters(targets)

    def _standing(self, target: Target, counter: SpendCounter) -> Standing:
        if not target.period.is_rolling:
            return Standing(target, counter.spent_units, counter.reserved_units, counter.carry_units)
        spent, reserved = cast(
            tuple[int, int],
            SpendCounter.select(
                pw.fn.COALESCE(pw.fn.SUM(SpendCounter.spent_units), 0),
                pw.fn.COALESCE(pw.fn.SUM(SpendCounter.reserved_units), 0),
            )
            .where(
                (SpendCounter.policy_id == target.policy_id)
                & (SpendCounter.window_start >= naive(target.window_start))
                & (SpendCounter.window_start < naive(target.window_end))
            )
            .tuples()
            .get(),
        )
        return Standing(target, int(spent), int(reserved), 0)

    def standings(self, targets: Sequence[Target]) -> list[Standing]:
        """Current standings of ``targets`` (creates their counters; for reports and verdicts)."""

        def work() -> Any:
            counters = self._ensure_counters(targets)
            return [self._standing(t, counters[t.policy_id]) for t in targets]

        return run_in_transaction(self.db, work)

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

        def work() -> Any:
            counters = self._ensure_counters(targets)
            standings = [self._standing(t, counters[t.policy_id]) for t in targets]
            if Hold.select().where(Hold.call_id == call_id).exists():
                return standings, True
            if not decide(standings):
                return standings, False
            if amount_units and targets:
                rows = []
                for target in sorted(targets, key=lambda t: counters[t.policy_id].id):
                    counter = counters[target.policy_id]
                    SpendCounter.update(reserved_units=SpendCounter.reserved_units + amount_units).where(
                        SpendCounter.id == counter.id
                    ).execute()
                    rows.append(
                        {
                            "call_id": call_id,
                            "counter_id": counter.id,
                            "policy_id": target.policy_id,
                            "amount_units": amount_units,
                            "created_at": naive(now),
                            "expires_at": naive(expires_at),
                        }
                    )
                Hold.insert_many(rows).execute()
            return standings, True

        return run_in_transaction(self.db, work)

    def _drop_holds(self, holds: Iterable[Hold], spent_units: int) -> set[int]:
        policy_ids = set()
        for hold in sorted(holds, key=lambda h: h.counter_id):
            SpendCounter.update(
                reserved_units=SpendCounter.reserved_units - hold.amount_units,
                spent_units=SpendCounter.spent_units + spent_units,
            ).where(SpendCounter.id == hold.counter_id).execute()
            Hold.delete().where(Hold.id == hold.id).execute()
            policy_ids.add(hold.policy_id)
        return policy_ids

    # -- settle, release, expire ------------------------------------------------------------

    def settle(
        self,
        call_id: str,
        cost_units: int,
        usage: dict[str, Any],
        fallback_targets: Callable[[], Sequence[Target]],
    ) -> Settlement:
        """Record a call's usage once and turn its holds into spend, in one transaction.

        When the call has no holds (never reserved, or they expired), its cost is
        added to the policies ``fallback_targets()`` returns. A second call with the
        same ``call_id`` changes nothing and returns the first record.
        """
        if cost_units < 0:
            raise ValueError(f"cost must not be negative, got {cost_units} units")

        def work() -> Any:
            holds_query = Hold.select().where(Hold.call_id == call_id).order_by(Hold.id)
            if not is_sqlite(self.db):
                holds_query = holds_query.for_update()  # a concurrent settle of this call waits here
            holds = list(holds_query)
            existing = UsageRow.get_or_none(UsageRow.call_id == call_id)
            if existing is not None:
                return Settlement(existing, False, ())
            if holds:
                policy_ids = self._drop_holds(holds, cost_units)
            else:
                targets = fallback_targets()
                counters = self._ensure_counters(targets)
                for counter in sorted(counters.values(), key=lambda c: c.id):
                    SpendCounter.update(spent_units=SpendCounter.spent_units + cost_units).where(
                        SpendCounter.id == counter.id
                    ).execute()
                policy_ids = set(counters)
            row_id = UsageRow.insert(call_id=call_id, cost_units=cost_units, **usage).execute()
            row = UsageRow.get_by_id(row_id)
            return Settlement(row, True, tuple(sorted(policy_ids)))

        try:
            return run_in_transaction(self.db, work)
        except pw.IntegrityError:
            # A concurrent settle of the same call committed first (call_id is unique);
            # this transaction was rolled back whole, so the first record stands.
            return Settlement(UsageRow.get(UsageRow.call_id == call_id), False, ())

    def release(self, call_id: str) -> int:
        """Drop a call's holds without spend (the call failed or was blocked elsewhere)."""

        def work() -> Any:
            holds = list(Hold.select().where(Hold.call_id == call_id))
            self._drop_holds(holds, 0)
            return len(holds)

        return run_in_transaction(self.db, work)

    def expire(self, now: datetime) -> int:
        """Drop holds whose time is up (the host never called back); returns how many."""

        def work() -> Any:
            holds = list(Hold.select().where(Hold.expires_at <= naive(now)))
            self._drop_holds(holds, 0)
            return len(holds)

        return run_in_transaction(self.db, work)

    def outstanding_units(self) -> int:
        """Total held across all counters (0 once every call has ended)."""
        total = SpendCounter.select(pw.fn.COALESCE(pw.fn.SUM(SpendCounter.reserved_units), 0)).scalar()
        return int(total or 0)

    def mark_threshold(self, policy_id: int, window_start: datetime, threshold: int) -> bool:
        """Remember that a threshold was announced; False when it already was (by any process)."""
        query = ThresholdMark.insert(
            policy_id=policy_id, window_start=naive(window_start), threshold=threshold
        ).on_conflict_ignore()

        def work() -> Any:
            cursor = self.db.execute(query)
            return bool(cursor.rowcount == 1)

        return run_in_transaction(self.db, work)
