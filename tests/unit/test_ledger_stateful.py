"""Generated operation sequences against the ledger, with its invariants checked after every step (issue #10).

Pre-checks, settlements, duplicate settlements, abandoned calls, expiry by another process, reused call ids,
policies created and changed mid-window, and a clock pushed across hour, day and month boundaries. Runs on
SQLite here and on PostgreSQL / MariaDB with BUDGET_TEST_BACKEND (tox -e postgres / mysql).
BUDGET_TEST_SEQUENCES sets how many sequences run (the soak environment runs many more).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from atlas_budget_plugin import BudgetSettings, bootstrap
from atlas_budget_plugin.exceptions import ConflictError, ValidationError
from atlas_budget_plugin.periods import parse_period, window
from atlas_budget_plugin.plugin import BudgetPlugin
from atlas_budget_plugin.store.models import Hold, SpendCounter, UsageRow
from atlas_budget_plugin.types import Actor
from hookspecs import CallBlocked, LLMCall, LLMUsage

from ..backends import server_url
from ..conftest import FakeClock

BACKEND = os.environ.get("BUDGET_TEST_BACKEND", "sqlite")
SEQUENCES = int(os.environ.get("BUDGET_TEST_SEQUENCES", "60" if BACKEND == "sqlite" else "25"))
UNIT = Decimal(10) ** 9
ADMIN = Actor(id="root", tenant="default", roles=frozenset({"budget:admin"}))
#: Policies that exist from the start and never change: the overspend bound is checked on these.
FIXED = {
    "tenant-hour": {"period": "hour", "limit": "1.50"},
    "alice-day": {"period": "day", "limit": "2.00", "scope": {"actor": "alice"}},
    "prod-rolling": {"period": "rolling:2h", "limit": "2.50", "scope": {"tag.env": "prod"}},
    "tenant-month": {"period": "month", "limit": "6.00", "rollover_cap": "2.00"},
    # alice belongs to team red through the scope hierarchy; gpt-4o has a sub-limit inside the team's limit
    "red-team": {"period": "day", "limit": "3.00", "scope": {"team": "red"}, "model_limits": {"gpt-4o": "1.75"}},
}
DYNAMIC_SHAPES = [
    {"period": "day", "scope": {}},
    {"period": "hour", "scope": {"actor": "bob"}},
    {"period": "month", "scope": {"tag.env": "PROD"}},
    {"period": "rolling:3h", "scope": {"actor": "alice"}},
    {"period": "total", "scope": {}},
]


@dataclass
class Flight:
    call: LLMCall
    estimate: Decimal


def matches(scope: dict[str, str], row: UsageRow) -> bool:
    """The test's own reading of a scope: a tag matches the call's own tags or the ancestors it was attributed to."""
    tags = json.loads(row.tags_json)
    lineage = json.loads(row.lineage_json)
    for key, value in scope.items():
        name = key[4:] if key.startswith("tag.") else key
        if name in ("team", "project", "session", "persona") or key.startswith("tag."):
            if tags.get(name) != value and value not in lineage.get(name, ()):
                return False
        elif getattr(row, key) != value:
            return False
    return True


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="ledger-sm-"))
        url = f"sqlite:///{self.tmp / 'budget.db'}" if BACKEND == "sqlite" else server_url(BACKEND)
        self.clock = FakeClock(datetime(2026, 3, 31, 21, 58, 30, tzinfo=timezone.utc))
        config = BudgetSettings.load(None, database_url=url, spool_path=self.tmp / "spool.jsonl")
        self.services = bootstrap(config, clock=self.clock)
        self.plugin = BudgetPlugin(self.services)
        self.in_flight: dict[str, Flight] = {}
        self.settled: set[str] = set()
        self.abandoned: set[str] = set()
        self.allowance = {name: Decimal(0) for name in FIXED}  # sum(actual - estimate) over calls over estimate
        self.counter = 0
        self.dynamic: dict[str, int] = {}

    def teardown(self) -> None:
        self.plugin.close()
        self.services.close()

    # -- set-up -----------------------------------------------------------------------------------

    @initialize()
    def fixed_policies(self) -> None:
        self.services.policies.link_scope(ADMIN, "actor=alice", "team=red")
        for name, spec in FIXED.items():
            self.services.policies.create_policy(ADMIN, {"name": name, **spec})

    # -- calls ------------------------------------------------------------------------------------

    @rule(
        actor=st.sampled_from(["alice", "bob", None]),
        env=st.sampled_from(["prod", "PROD", None]),
        cents=st.integers(min_value=1, max_value=150),
    )
    def pre(self, actor: str | None, env: str | None, cents: int) -> None:
        self.counter += 1
        estimate = Decimal(cents) / 100
        call = LLMCall(
            call_id=f"c{self.counter}",
            provider="openai",
            model="gpt-4o",
            actor=actor,
            tags={"env": env} if env else {},
            estimated_cost=estimate,
        )
        verdict = self.plugin.pre_llm_call(call)
        assert verdict is not None
        if verdict.allowed:
            self.in_flight[call.call_id] = Flight(call, estimate)

    @precondition(lambda self: self.in_flight)
    @rule(data=st.data(), delta=st.integers(min_value=-25, max_value=20))
    def post(self, data: st.DataObject, delta: int) -> None:
        self._settle(data.draw(st.sampled_from(sorted(self.in_flight))), delta)

    def _settle(self, call_id: str, delta: int) -> None:
        flight = self.in_flight.pop(call_id)
        actual = max(Decimal(0), flight.estimate + Decimal(delta) / 100)
        held = Hold.select().where(Hold.call_id == call_id).exists()
        self._allow(flight.call, actual - flight.estimate if held else actual)
        self.plugin.post_llm_call(flight.call, LLMUsage(input_tokens=1, output_tokens=1, cost=actual), None)
        self.settled.add(call_id)

    @precondition(lambda self: self.in_flight)
    @rule(data=st.data())
    def fail(self, data: st.DataObject) -> None:
        call_id = data.draw(st.sampled_from(sorted(self.in_flight)))
        flight = self.in_flight.pop(call_id)
        self.plugin.post_llm_call(flight.call, LLMUsage(), RuntimeError("provider error"))

    @precondition(lambda self: self.in_flight)
    @rule(data=st.data())
    def abandon(self, data: st.DataObject) -> None:
        """The process that made the call died: nobody settles or renews it."""
        call_id = data.draw(st.sampled_from(sorted(self.in_flight)))
        self.in_flight.pop(call_id)
        self.plugin._open.pop(call_id, None)
        self.abandoned.add(call_id)

    @precondition(lambda self: self.settled)
    @rule(data=st.data())
    def duplicate_post(self, data: st.DataObject) -> None:
        call_id = data.draw(st.sampled_from(sorted(self.settled)))
        row = UsageRow.get(UsageRow.call_id == call_id)
        call = LLMCall(call_id=call_id, provider="openai", model="gpt-4o", actor=row.actor)
        before = self._totals()
        self.plugin.post_llm_call(call, LLMUsage(input_tokens=5, output_tokens=5, cost=Decimal("0.77")), None)
        assert self._totals() == before

    @precondition(lambda self: self.settled)
    @rule(data=st.data())
    def reuse_call_id(self, data: st.DataObject) -> None:
        call_id = data.draw(st.sampled_from(sorted(self.settled)))
        call = LLMCall(call_id=call_id, provider="openai", model="gpt-4o", estimated_cost=Decimal("0.01"))
        verdict = self.plugin.pre_llm_call(call)
        assert verdict is not None and not verdict.allowed and "already recorded" in verdict.reason
        self.plugin.post_llm_call(call, LLMUsage(), CallBlocked(verdict))  # what a guard does for a blocked call

    # -- time -------------------------------------------------------------------------------------

    @rule(seconds=st.sampled_from([1, 29, 61, 91, 599, 601, 1800, 3599, 3601, 86_399, 86_401]))
    def advance(self, seconds: int) -> None:
        self.clock.advance(seconds=seconds)

    @rule(unit=st.sampled_from(["hour", "day", "month"]))
    def to_the_edge(self, unit: str) -> None:
        """One second before the next hour, day or month starts: calls in flight then cross it."""
        _, end = window(parse_period(unit), "UTC", self.clock.now)
        self.clock.now = max(self.clock.now, end - timedelta(seconds=1))

    @rule(
        unit=st.sampled_from(["hour", "day", "month"]),
        first=st.integers(min_value=1, max_value=150),
        second=st.integers(min_value=1, max_value=150),
    )
    def straddle(self, unit: str, first: int, second: int) -> None:
        """A call admitted just before a boundary settles just after it, once the next window is in use."""
        self.to_the_edge(unit)
        self.pre("alice", "prod", first)
        early = f"c{self.counter}"
        self.clock.advance(seconds=2)
        self.pre("alice", "prod", second)
        late = f"c{self.counter}"
        for call_id in (early, late):
            if call_id in self.in_flight:
                self._settle(call_id, 0)

    @rule()
    def tick_here(self) -> None:
        self.plugin.on_period_tick(self.clock.now)

    @rule()
    def tick_elsewhere(self) -> None:
        """Another process's tick: it expires what no live process renews."""
        other = BudgetPlugin(self.services)
        other.on_period_tick(self.clock.now)

    # -- policies ---------------------------------------------------------------------------------

    @rule(shape=st.sampled_from(range(len(DYNAMIC_SHAPES))), cents=st.integers(min_value=50, max_value=900))
    def create_or_update_policy(self, shape: int, cents: int) -> None:
        spec = DYNAMIC_SHAPES[shape]
        limit = str(Decimal(cents) / 100)
        name = f"dyn-{shape}"
        if name not in self.dynamic:
            try:
                created = self.services.policies.create_policy(ADMIN, {"name": name, "limit": limit, **spec})
            except (ConflictError, ValidationError):
                return  # a dynamic policy moved onto this scope and period already, or over the global ceiling
            self.dynamic[name] = created.id or 0
            return
        other = DYNAMIC_SHAPES[(shape + 1) % len(DYNAMIC_SHAPES)]
        conflict = any(
            p.scope.as_dict() == other["scope"] and p.period == other["period"]
            for p in self.services.policies.list_policies(ADMIN)
        )
        change = {"limit": limit} if conflict else {"limit": limit, "scope": other["scope"], "period": other["period"]}
        try:
            self.services.policies.update_policy(ADMIN, self.dynamic[name], change)
        except (ConflictError, ValidationError):
            pass  # another dynamic policy limits that scope and period, or the global ceiling: refused whole

    # -- invariants -------------------------------------------------------------------------------

    def _allow(self, call: LLMCall, extra: Decimal) -> None:
        if extra <= 0:
            return
        for policy in self.services.policies.matching(call):
            if policy.name in self.allowance:
                self.allowance[policy.name] += extra

    def _totals(self) -> tuple[Any, ...]:
        return (
            UsageRow.select().count(),
            [(c.spent_units, c.reserved_units) for c in SpendCounter.select().order_by(SpendCounter.id)],
        )

    @invariant()
    def counters_equal_recorded_spend_and_live_holds(self) -> None:
        usage = list(UsageRow.select())
        holds: dict[int, int] = {}
        for hold in Hold.select():
            holds[hold.counter_id] = holds.get(hold.counter_id, 0) + hold.amount_units
        policies = {p.id: p for p in self.services.policies.list_policies(ADMIN)}
        for counter in SpendCounter.select().where(SpendCounter.part != "rate"):
            policy = policies[counter.policy_id]
            period = parse_period(policy.period)
            start = counter.window_start.replace(tzinfo=timezone.utc)
            end = start + timedelta(hours=1) if period.is_rolling else window(period, policy.timezone, start)[1]
            scope = policy.scope.as_dict()
            if counter.part:  # a sub-limit counts the policy's scope narrowed to one provider or model
                kind, _, value = counter.part.partition(":")
                scope = {**scope, kind: value}
            expected = sum(
                r.cost_units
                for r in usage
                if start <= r.recorded_at.replace(tzinfo=timezone.utc) < end and matches(scope, r)
            )
            assert counter.spent_units == expected, (policy.name, start, counter.spent_units, expected)
            assert counter.reserved_units == holds.get(counter.id, 0), (policy.name, start)
        live = {h.call_id for h in Hold.select()}
        assert live <= set(self.in_flight) | self.abandoned, live - set(self.in_flight) - self.abandoned

    @invariant()
    def block_limits_hold_within_the_allowance(self) -> None:
        for policy in self.services.policies.list_policies(ADMIN):
            if policy.name not in FIXED:
                continue
            parts = ["", *(f"model:{m}" for m in policy.model_limits)]
            targets = [self.services.policies.part_target(policy, self.clock.now, part) for part in parts]
            for standing in self.services.ledger.standings([t for t in targets if t is not None]):
                spent = Decimal(standing.spent_units) / UNIT
                limit = Decimal(standing.limit_units) / UNIT
                assert spent <= limit + self.allowance[policy.name], (policy.name, standing.target.part, spent, limit)

    @invariant()
    def reports_equal_counters(self) -> None:
        for name in ("tenant-hour", "tenant-month"):
            policy = self.services.policies.repository.by_name("default", name)
            assert policy is not None
            (standing,) = self.services.ledger.standings([self.services.policies.target(policy, self.clock.now)])
            summary = self.services.tracking.get_usage_summary(None, policy.period, actor=ADMIN)
            assert summary.total_cost * UNIT == standing.spent_units, name
        everything = sum(r.cost_units for r in UsageRow.select())
        assert self.services.tracking.get_usage_summary(None, "total", actor=ADMIN).total_cost * UNIT == everything


def test_ledger_invariants_hold_for_generated_sequences(isolated_env: Path) -> None:
    run_state_machine_as_test(
        LedgerMachine,
        settings=settings(
            max_examples=SEQUENCES,
            stateful_step_count=40,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            print_blob=True,
        ),
    )
