"""What the hot path (issue #12) caches or skips gives exactly what the work it replaces gave."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import pluggy
import pytest
from hypothesis import given
from hypothesis import strategies as st

from atlas_budget_plugin import BudgetServices
from atlas_budget_plugin.bus import MessageBus, maker
from atlas_budget_plugin.exceptions import ValidationError
from atlas_budget_plugin.extensions import Extensions, get_plugin_manager
from atlas_budget_plugin.hookspecs import hookimpl
from atlas_budget_plugin.money import from_units
from atlas_budget_plugin.policy_service import check_recorded_call, unstorable
from atlas_budget_plugin.tracking_service import to_record
from atlas_budget_plugin.types import Actor, BudgetDecision, BudgetEvent, PolicyStanding, UsageRecord, check_call
from hookspecs import LLMCall, LLMUsage

n = 0


def call(actor: str | None = "alice", **kw: Any) -> LLMCall:
    global n
    n += 1
    kw.setdefault("call_id", f"hot-{n}")
    kw.setdefault("estimated_cost", Decimal("1.00"))
    return LLMCall(provider="openai", model="gpt-4o", actor=actor, **kw)


def refusal(c: LLMCall) -> str | None:
    try:
        check_call(c)
    except ValidationError as exc:
        return str(exc)
    return None


# -- the call check ------------------------------------------------------------------------------


@pytest.mark.parametrize("bad_id", ["x\x00y", "x" * 201, "\ud800"])
def test_a_bad_id_is_refused_even_when_the_rest_of_the_call_passed_before(bad_id: str) -> None:
    assert unstorable(call(tags={"team": "red"})) is None  # this shape is now known to pass
    bad = call(call_id=bad_id, tags={"team": "red"})
    assert unstorable(bad) == refusal(bad) is not None


def test_a_recorded_call_is_checked_unless_these_very_values_passed_before() -> None:
    good = call(call_id="same-id")
    assert unstorable(good) is None
    check_recorded_call(good)  # passed before: not checked again
    changed = call(call_id="same-id", category="x" * 101)  # same id, other values: checked in full
    with pytest.raises(ValidationError, match="LLMCall.category"):
        check_recorded_call(changed)
    with pytest.raises(ValidationError, match="LLMCall.category"):
        check_recorded_call(changed)
    check_recorded_call(good)  # the memo was used up, so the full check runs again, and passes


# -- policy matching, cached per call shape ----------------------------------------------------------


def test_matching_follows_policy_and_link_changes(services: BudgetServices) -> None:
    admin = Actor(id="root", roles=frozenset({"budget:admin"}))
    first = call()
    assert services.policies.matching(first) == []
    services.policies.create_policy(admin, {"name": "team", "scope": {"team": "red"}, "limit": "10"})
    assert services.policies.matching(call()) == []
    services.policies.link_scope(admin, "actor=alice", "team=red")
    assert [p.name for p in services.policies.matching(call())] == ["team"]
    created = services.policies.create_policy(admin, {"name": "all", "limit": "10"})
    assert [p.name for p in services.policies.matching(call())] == ["team", "all"]
    services.policies.update_policy(admin, created.id or 0, {"enabled": False})
    assert [p.name for p in services.policies.matching(call())] == ["team"]
    services.policies.unlink_scope(admin, "actor=alice", "team=red")
    assert services.policies.matching(call()) == []


def test_targets_move_with_the_window(services: BudgetServices, clock: Any) -> None:
    admin = Actor(id="root", roles=frozenset({"budget:admin"}))
    services.policies.create_policy(admin, {"name": "hour", "period": "hour", "limit": "10"})
    services.policies.create_policy(admin, {"name": "day", "period": "day", "limit": "10"})
    before = services.policies.targets_for(call())
    clock.advance(hours=1)
    after = services.policies.targets_for(call())
    assert [t.window_start for t in after] == [before[0].window_start.replace(hour=13), before[1].window_start]
    assert services.policies.targets_for(call(), before[0].window_start) == before  # an earlier admission


# -- the bus --------------------------------------------------------------------------------------


class Listener:
    def __init__(self) -> None:
        self.seen: list[BudgetEvent] = []

    @hookimpl
    def budget_event(self, event: BudgetEvent) -> None:
        self.seen.append(event)


def test_the_bus_wants_an_event_only_when_someone_gets_it() -> None:
    pm = get_plugin_manager(load=False)
    bus = MessageBus(Extensions(pm))
    assert not bus.wants("budget.usage_recorded")
    unsubscribe = bus.subscribe("budget.policy_*", lambda event: None)
    assert bus.wants("budget.policy_created") and not bus.wants("budget.usage_recorded")
    unsubscribe()
    pm.register(Listener())
    assert bus.wants("budget.usage_recorded")
    assert not MessageBus().wants("budget.usage_recorded")

    class Sink:
        def publish(self, event: BudgetEvent) -> None: ...

    assert MessageBus(Sink()).wants("budget.usage_recorded")  # a sink of another kind may want all


def test_usage_events_reach_hook_listeners(services: BudgetServices) -> None:
    listener = Listener()
    pm: pluggy.PluginManager = services.extensions.pm
    pm.register(listener)
    recorded = services.tracking.record_call(call(), LLMUsage(input_tokens=3, cost=Decimal("0.5")))
    assert [e.topic for e in listener.seen] == ["budget.usage_recorded"]
    assert listener.seen[0].record == recorded  # type: ignore[attr-defined]


# -- models built from trusted values --------------------------------------------------------------


def test_maker_builds_what_validation_builds() -> None:
    now = datetime(2026, 3, 10, tzinfo=timezone.utc)
    values: dict[str, Any] = {
        "policy_id": 1,
        "policy_name": "p",
        "enforcement": "warn",
        "window_start": now,
        "window_end": now,
        "limit": Decimal("10.00"),
        "spent": Decimal("1.50"),
        "reserved": Decimal("0.00"),
        "requested": Decimal("0.25"),
    }
    built, validated = maker(PolicyStanding)(*values.values()), PolicyStanding(**values)
    assert built == validated and repr(built) == repr(validated)
    assert built.model_fields_set == validated.model_fields_set
    assert built.model_dump_json() == validated.model_dump_json()
    with pytest.raises(TypeError, match="takes 9 values"):
        maker(PolicyStanding)(1, "p")
    with pytest.raises(pydantic_error()):
        built.spent = Decimal(0)  # type: ignore[misc]  # still frozen


def pydantic_error() -> type[Exception]:
    import pydantic

    return pydantic.ValidationError


def test_a_new_record_is_the_record_read_back(services: BudgetServices) -> None:
    c = call(tags={"z": "1", "a": "2"}, category="chat")
    usage = LLMUsage(input_tokens=10, output_tokens=5, cost=Decimal("0.1230"), units={"images": 2})
    new = services.tracking.record_call(c, usage)
    row = services.ledger.usage_row(c.call_id)
    assert row is not None and new is not None
    again = to_record(row)
    assert new == again and repr(new) == repr(again) and new.model_dump_json() == again.model_dump_json()
    assert list(new.tags) == ["a", "z"] and new.units == {"images": Decimal(2)}
    assert isinstance(new, UsageRecord) and new.cost == from_units(123_000_000)
    repeated = services.tracking.record_call(c, usage)  # the first record stands
    assert repeated == again
    assert json.loads(row["tags_json"]) == {"a": "2", "z": "1"}


# -- the verdict's integer arithmetic ---------------------------------------------------------------


@given(
    limit=st.integers(1, 10**12),
    spent=st.integers(0, 10**12),
    reserved=st.integers(0, 10**12),
    requested=st.integers(0, 10**12),
    pct=st.integers(1, 1000),
)
def test_threshold_crossing_in_units_is_the_decimal_rule(
    limit: int, spent: int, reserved: int, requested: int, pct: int
) -> None:
    view = PolicyStanding(
        policy_id=1,
        policy_name="p",
        enforcement="warn",
        window_start=datetime(2026, 1, 1, tzinfo=timezone.utc),
        window_end=datetime(2026, 1, 2, tzinfo=timezone.utc),
        limit=from_units(limit),
        spent=from_units(spent),
        reserved=from_units(reserved),
        requested=from_units(requested),
    )
    remaining = limit - spent - reserved - requested
    assert (remaining >= 0) == view.fits
    mark = view.limit * pct / 100
    decimal_rule = view.spent + view.reserved < mark <= view.limit - view.remaining_after
    used_before = spent + reserved
    assert (used_before * 100 < limit * pct <= (limit - remaining) * 100) == decimal_rule


def test_warnings_and_deciding_policy_unchanged(services: BudgetServices) -> None:
    admin = Actor(id="root", roles=frozenset({"budget:admin"}))
    services.policies.create_policy(admin, {"name": "wide", "limit": "10", "enforcement": "warn"})
    services.policies.create_policy(
        admin, {"name": "tight", "scope": {"actor": "alice"}, "limit": "2", "enforcement": "warn"}
    )
    first: BudgetDecision = services.policies.check_budget(call())
    assert first.allowed and first.deciding_policy == "tight"
    assert first.warnings == ("this call takes policy 'tight' past 50% of 2.00",)
    second = services.policies.check_budget(call(estimated_cost=Decimal("0.60")))
    assert second.warnings == ("this call takes policy 'tight' past 80% of 2.00",)
    third = services.policies.check_budget(call())
    assert third.allowed and third.deciding_policy == "tight"
    assert third.warnings == (
        "policy 'tight' (warn) is over its limit of 2.00: spent 0.00 + reserved 1.60 + this call 1.00",
    )
    fourth = services.policies.check_budget(call(estimated_cost=Decimal("2.40")))
    assert fourth.warnings[1:] == ("this call takes policy 'wide' past 50% of 10.00",)


# -- catalogue prices ---------------------------------------------------------------------------------


def test_catalogue_prices_are_reused_only_while_they_cannot_change(tmp_path: Any) -> None:
    from genai_prices import data_snapshot

    from atlas_budget_plugin import BudgetSettings
    from atlas_budget_plugin.pricing import Pricer, _catalogued

    pricer = Pricer(BudgetSettings.load(None, database_url=f"sqlite:///{tmp_path}/p.db"))
    usage = LLMUsage(input_tokens=1234, output_tokens=321)
    gpt = LLMCall(call_id="p1", provider="openai", model="gpt-4o")
    first = pricer.price(gpt, usage)
    assert first == pricer._catalogue_price(gpt, usage)  # what the catalogue says, not cached
    assert pricer.price(gpt, usage) == first
    key = ("openai", "gpt-4o", 1234, 321, 0, 0, None)
    assert key in _catalogued
    # A tier whose variants carry start dates, and a model priced by the time of day: priced afresh each time.
    tiered = LLMUsage(input_tokens=1234, output_tokens=321, service_tier="priority")
    deepseek = LLMCall(call_id="p2", provider="deepseek", model="deepseek-chat")
    assert pricer.price(gpt, tiered) == pricer._catalogue_price(gpt, tiered)
    assert pricer.price(deepseek, usage).source.startswith("genai-prices")
    assert ("openai", "gpt-4o", 1234, 321, 0, 0, "priority") not in _catalogued
    assert ("deepseek", "deepseek-chat", 1234, 321, 0, 0, None) not in _catalogued
    # Another catalogue snapshot (an update): the prices of the old one are not used.
    original = data_snapshot.get_snapshot()
    changed = data_snapshot.DataSnapshot(providers=original.providers, from_auto_update=False)
    data_snapshot.set_custom_snapshot(changed)
    try:
        assert pricer.price(gpt, usage) == first
        assert _catalogued[key][0] is changed
    finally:
        data_snapshot.set_custom_snapshot(None)
