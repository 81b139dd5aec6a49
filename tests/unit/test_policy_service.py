"""BudgetPolicyService: CRUD, validation, permissions, tenant isolation, audit and enforcement."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pydantic
import pytest

from atlas_budget_plugin import BudgetServices
from atlas_budget_plugin.exceptions import ConflictError, NotFoundError, PermissionDenied, ValidationError
from atlas_budget_plugin.types import Actor, BudgetEvent
from hookspecs import LLMCall, LLMUsage

from ..conftest import FakeClock

n = 0


def call(actor: str = "alice", tenant: str = "default", cost: str | None = "1.00", **kw: Any) -> LLMCall:
    global n
    n += 1
    return LLMCall(
        call_id=f"call-{n}",
        provider="openai",
        model="gpt-4o",
        actor=actor,
        tenant=tenant,
        estimated_cost=Decimal(cost) if cost is not None else None,
        **kw,
    )


def policy(**kw: Any) -> dict[str, Any]:
    return {"name": "alice-day", "scope": {"actor": "alice"}, "period": "day", "limit": "10.00", **kw}


def spend(services: BudgetServices, c: LLMCall, cost: str) -> None:
    services.tracking.record_call(c, LLMUsage(input_tokens=1, cost=Decimal(cost)))


@pytest.fixture
def events(services: BudgetServices) -> list[BudgetEvent]:
    seen: list[BudgetEvent] = []
    services.bus.subscribe("budget.*", seen.append)
    return seen


# -- CRUD -------------------------------------------------------------------------------------


def test_crud_with_events_and_audit(services: BudgetServices, admin: Actor, events: list[BudgetEvent]) -> None:
    created = services.policies.create_policy(admin, policy())
    assert created.id and created.version == 1 and created.tenant == "default"
    assert services.policies.get_policy(admin, created.id) == created
    updated = services.policies.update_policy(admin, created.id, {"limit": "12.50", "version": 1})
    assert updated.limit == Decimal("12.50") and updated.version == 2
    with pytest.raises(ConflictError, match="at version 2, not 1"):
        services.policies.update_policy(admin, created.id, {"limit": "13"}, expected_version=1)
    assert [p.name for p in services.policies.list_policies(admin, {"actor": "alice"})] == ["alice-day"]
    assert services.policies.list_policies(admin, {"actor": "bob"}) == []
    assert services.policies.list_policies(admin, None, {"period": "month"}) == []
    services.policies.delete_policy(admin, created.id)
    with pytest.raises(NotFoundError):
        services.policies.get_policy(admin, created.id)
    assert [e.topic for e in events] == ["budget.policy_created", "budget.policy_updated", "budget.policy_deleted"]
    trail = services.policies.audit_trail(admin)
    assert [t["action"] for t in trail] == ["delete", "update", "create"]
    assert trail[1]["before"]["limit"] == "10.00" and trail[1]["after"]["limit"] == "12.50"
    assert trail[0]["actor"] == "root"


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (policy(limit="0"), "limit must be greater than 0"),
        (policy(limit="-1"), "limit must be greater than 0"),
        (policy(scope={"colour": "red"}), "unknown scope key 'colour'"),
        (policy(timezone="Moon/Base"), "unknown timezone"),
        (policy(period="rolling:0d"), "at least 1h"),
        (policy(period="sometimes"), "unknown period"),
        (policy(thresholds=[0]), "thresholds are percents"),
        (policy(rollover_cap="-1"), "rollover_cap must not be negative"),
        (policy(limit=2.5), "not a float"),
    ],
)
def test_validation_errors(services: BudgetServices, admin: Actor, data: dict[str, Any], text: str) -> None:
    with pytest.raises(ValidationError, match=text):
        services.policies.create_policy(admin, data)


def test_duplicates_are_conflicts(services: BudgetServices, admin: Actor) -> None:
    services.policies.create_policy(admin, policy())
    with pytest.raises(ConflictError, match="already exists"):
        services.policies.create_policy(admin, policy(limit="3"))
    with pytest.raises(ConflictError, match="already limits scope"):
        services.policies.create_policy(admin, policy(name="other"))
    with pytest.raises(ValidationError, match="cannot be changed"):
        services.policies.update_policy(admin, 1, {"tenant": "x"})


def test_permissions_and_tenant_isolation(services: BudgetServices, admin: Actor) -> None:
    created = services.policies.create_policy(admin, policy())
    reader = Actor(id="r", roles=frozenset({"budget:read"}))
    nobody = Actor(id="n")
    other = Actor(id="eve", tenant="acme", roles=frozenset({"budget:admin"}))
    assert services.policies.get_policy(reader, created.id or 0).name == "alice-day"
    with pytest.raises(PermissionDenied, match="needs role budget:write"):
        services.policies.create_policy(reader, policy(name="x", scope={}))
    with pytest.raises(PermissionDenied, match="budget:read"):
        services.policies.list_policies(nobody)
    with pytest.raises(PermissionDenied, match="budget:admin"):
        services.policies.audit_trail(reader)
    # Another tenant's admin cannot see, change or delete it, and is told "not found".
    assert services.policies.list_policies(other) == []
    for attempt in (
        lambda: services.policies.get_policy(other, created.id or 0),
        lambda: services.policies.update_policy(other, created.id or 0, {"limit": "1"}),
        lambda: services.policies.delete_policy(other, created.id or 0),
        lambda: services.policies.create_policy(other, policy(tenant="default", name="sneaky")),
    ):
        with pytest.raises(NotFoundError):
            attempt()
    assert services.policies.audit_trail(other) == []
    # Its own policy with the same name lives side by side.
    assert services.policies.create_policy(other, policy()).tenant == "acme"


def test_declared_policies_apply_idempotently(make_services: Any) -> None:
    declared = [policy(), {"name": "all", "period": "month", "limit": "100"}]
    first = make_services(policies=declared)
    ids = [p.id for p in first.policies.list_policies(Actor.system())]
    again = make_services(policies=declared)
    assert [p.id for p in again.policies.list_policies(Actor.system())] == ids
    changed = make_services(policies=[policy(limit="11")])
    stored = changed.policies.repository.by_name("default", "alice-day")
    assert stored is not None and stored.limit == Decimal("11") and stored.version == 2


# -- enforcement ------------------------------------------------------------------------------


def test_block_denies_what_does_not_fit(services: BudgetServices, admin: Actor, events: list[BudgetEvent]) -> None:
    services.policies.create_policy(admin, policy(limit="2.50"))
    first, second, third = call(), call(), call()
    assert services.policies.check_budget(first).allowed
    assert services.policies.check_budget(second).allowed
    decision = services.policies.check_budget(third)
    assert not decision.allowed and decision.deciding_policy == "alice-day"
    assert "limit 2.50, spent 0.00, reserved 2.00, this call ~1.00" in decision.reason
    assert events[-1].topic == "budget.limit_exceeded"
    # Settling at a lower actual frees room.
    spend(services, first, "0.40")
    assert services.policies.check_budget(call()).allowed
    assert not services.policies.check_budget(call(actor="alice", cost="0.2")).allowed
    assert services.policies.check_budget(call(actor="bob")).reason == "no budget policy applies"


def test_retried_check_does_not_hold_twice(services: BudgetServices, admin: Actor) -> None:
    services.policies.create_policy(admin, policy(limit="1.50"))
    c = call()
    assert services.policies.check_budget(c).allowed
    assert services.policies.check_budget(c).allowed
    assert services.ledger.outstanding_units() == 1_000_000_000


def test_warn_allows_with_warning(services: BudgetServices, admin: Actor, events: list[BudgetEvent]) -> None:
    services.policies.create_policy(admin, policy(limit="1.00", enforcement="warn"))
    decision = services.policies.check_budget(call(cost="1.50"))
    assert decision.allowed and "over its limit of 1.00" in decision.warnings[0]
    assert "budget.limit_exceeded" in [e.topic for e in events]


def test_default_enforcement_from_settings(make_services: Any, admin: Actor) -> None:
    services = make_services(default_enforcement="warn")
    services.policies.create_policy(admin, policy(limit="1.00"))
    assert services.policies.check_budget(call(cost="5")).allowed


def test_soft_block_honours_override_tag(services: BudgetServices, admin: Actor) -> None:
    services.policies.create_policy(admin, policy(limit="1.00", enforcement="soft_block"))
    assert not services.policies.check_budget(call(cost="2")).allowed
    assert not services.policies.check_budget(call(cost="2", tags={"budget_override": "other"})).allowed
    assert services.policies.check_budget(call(cost="2", tags={"budget_override": "alice-day"})).allowed
    assert services.policies.check_budget(call(cost="2", tags={"budget_override": "*"})).allowed


def test_threshold_warnings(services: BudgetServices, admin: Actor) -> None:
    services.policies.create_policy(admin, policy(limit="10", thresholds=[50, 80]))
    assert services.policies.check_budget(call(cost="4")).warnings == ()
    warnings = services.policies.check_budget(call(cost="2")).warnings
    assert warnings == ("this call takes policy 'alice-day' past 50% of 10.00",)
    warnings = services.policies.check_budget(call(cost="4")).warnings
    assert warnings == ("this call takes policy 'alice-day' past 80% of 10.00",)


def test_every_matching_policy_or_none(services: BudgetServices, admin: Actor) -> None:
    services.policies.create_policy(admin, policy(limit="10"))
    services.policies.create_policy(
        admin, {"name": "gpt4o", "scope": {"model": "gpt-4o"}, "period": "day", "limit": "1.5"}
    )
    assert services.policies.check_budget(call()).allowed
    decision = services.policies.check_budget(call())
    assert not decision.allowed and decision.deciding_policy == "gpt4o"
    # The denied call held nothing on the policy that had room.
    assert services.ledger.outstanding_units() == 2 * 1_000_000_000
    assert len(decision.standings) == 2


def test_unknown_model_is_denied_with_the_fix(services: BudgetServices, admin: Actor) -> None:
    services.policies.create_policy(admin, policy())
    c = LLMCall(call_id="u", provider="local", model="mystery", actor="alice")
    decision = services.policies.check_budget(c)
    assert not decision.allowed and '[prices."local/mystery"]' in decision.reason


def test_caller_estimate_and_negative(services: BudgetServices, admin: Actor) -> None:
    services.policies.create_policy(admin, policy(limit="1"))
    assert not services.policies.check_budget(call(cost=None), estimated_cost=Decimal("2")).allowed
    with pytest.raises(ValidationError, match="must not be negative"):
        services.policies.check_budget(call(), estimated_cost=Decimal("-1"))


def test_disabled_policy_is_ignored(services: BudgetServices, admin: Actor) -> None:
    created = services.policies.create_policy(admin, policy(limit="1", enabled=False))
    assert services.policies.check_budget(call(cost="5")).allowed
    services.policies.update_policy(admin, created.id or 0, {"enabled": True})
    assert not services.policies.check_budget(call(cost="5")).allowed


def test_period_boundary_and_rollover(services: BudgetServices, admin: Actor, clock: FakeClock) -> None:
    services.policies.create_policy(admin, policy(limit="1.00", rollover_cap="0.30"))
    spend(services, call(), "0.20")
    assert not services.policies.check_budget(call(cost="0.81")).allowed
    clock.advance(days=1)  # new window: limit 1.00 + min(0.30, unused 0.80)
    big = call(cost="1.30")
    decision = services.policies.check_budget(big)
    assert decision.allowed and decision.standings[0].limit == Decimal("1.30")
    spend(services, big, "1.30")
    clock.advance(days=1)  # yesterday used 1.30 of 1.00 -> nothing to carry
    assert services.policies.check_budget(call(cost="1.00")).allowed
    assert not services.policies.check_budget(call(cost="0.01")).allowed


def test_no_rollover_into_the_first_window(services: BudgetServices, admin: Actor) -> None:
    services.policies.create_policy(admin, policy(limit="1.00", rollover_cap="5"))
    assert not services.policies.check_budget(call(cost="1.01")).allowed


def test_rolling_window(services: BudgetServices, admin: Actor, clock: FakeClock) -> None:
    services.policies.create_policy(admin, policy(period="rolling:24h", limit="1.00"))
    spend(services, call(), "0.70")
    clock.advance(hours=12)
    spend(services, call(), "0.20")
    assert not services.policies.check_budget(call(cost="0.20")).allowed
    clock.advance(hours=13)  # the first 0.70 left the window
    assert services.policies.check_budget(call(cost="0.75")).allowed


def test_abandoned_reservation_expires_and_late_usage_still_counts(
    services: BudgetServices, admin: Actor, clock: FakeClock
) -> None:
    services.policies.create_policy(admin, policy(limit="1.00"))
    abandoned = call(cost="0.90")
    assert services.policies.check_budget(abandoned).allowed
    assert not services.policies.check_budget(call(cost="0.20")).allowed
    clock.advance(seconds=599)
    assert services.policies.expire_reservations() == 0
    clock.advance(seconds=2)
    assert services.policies.expire_reservations() == 1
    assert services.ledger.outstanding_units() == 0
    spend(services, abandoned, "0.50")  # the host called back after all
    decision = services.policies.check_budget(call(cost="0.60"))
    assert not decision.allowed and decision.standings[0].spent == Decimal("0.50")


# -- bounds on what enters (issue #11) -----------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (policy(priority=10**20), "priority: Input should be less than or equal to 1000000"),
        (policy(priority=-(10**20)), "priority: Input should be greater than or equal to -1000000"),
        (policy(thresholds=[10**20]), "thresholds are percents between 1 and 1000"),
        (policy(thresholds=list(range(1, 30))), "thresholds: List should have at most 20 items"),
        (policy(limit="1e30"), "limit '1e30' is too large; amounts must stay below 1,000,000,000"),
        (policy(limit="NaN"), "limit must be a finite amount"),
        (policy(rollover_cap="Infinity"), "rollover_cap must be a finite amount"),
        (policy(name="x" * 201), "name: name must have 1 to 200 characters, got 201"),
        (policy(name=""), r"name: name must have 1 to 200 characters, got 0 \(''\)"),
        (policy(currency="EURO"), "currency: currency must have 3 characters, got 4"),
        (policy(name="bad\x00name"), r"name contains a NUL character \(\\x00\)"),
        (policy(name="bad\ud800"), "name contains a lone surrogate"),
        (policy(scope={"actor": "a" * 201}), "scope actor must have 0 to 200 characters, got 201"),
        (policy(scope={"operation": "o" * 51}), "scope operation must have 0 to 50 characters"),
        (policy(scope={"tag.env": "\x00"}), "scope tag 'env' contains a NUL character"),
        (policy(scope={"team": "t" * 300, "project": "p" * 300}), "at most 500 allowed"),
        (policy(period="rolling:100000000h"), r"too long; allowed: 1h to 8784h \(366d\)"),
        (policy(period="rolling:99999999999999999999d"), "too long; allowed: 1h to 8784h"),
        (policy(timezone="x" * 10_000), "timezone must have 1 to 64 characters"),
        (policy(timezone="UTC\x00"), "timezone contains a NUL character"),
        (policy(alternatives=["m" * 201]), "alternative model must have 1 to 200 characters"),
        (policy(currency="U\x00D"), "currency contains a NUL character"),
    ],
)
def test_out_of_bounds_values_are_refused_before_anything_is_written(
    services: BudgetServices, admin: Actor, data: dict[str, Any], text: str
) -> None:
    with pytest.raises(ValidationError, match=text):
        services.policies.create_policy(admin, data)
    assert services.policies.list_policies(admin) == []
    assert services.policies.audit_trail(admin) == []


def test_longest_accepted_values_are_stored_exactly(services: BudgetServices, admin: Actor) -> None:
    data = policy(
        name="n" * 200,
        scope={"actor": "a" * 200, "tag.env": "名前🙂[/]%_'\"\\"},
        priority=1_000_000,
        period="rolling:366d",
        limit="999999999.999999999",
        rollover_cap="999999999.999999999",
        thresholds=[1, 1000],
    )
    created = services.policies.create_policy(admin, data)
    assert created.period == "rolling:366d" and created.priority == 1_000_000
    assert services.policies.get_policy(admin, created.id or 0) == created
    assert created.scope.actor == "a" * 200 and created.scope.tags == {"env": "名前🙂[/]%_'\"\\"}
    assert created.limit == Decimal("999999999.999999999")


@pytest.mark.parametrize("policy_id", [2**63, 2**63 - 1, 10**20, 0, -1, -(2**63) - 1])
def test_ids_out_of_range_are_not_found(services: BudgetServices, admin: Actor, policy_id: int) -> None:
    services.policies.create_policy(admin, policy())
    trail = services.policies.audit_trail(admin)
    for attempt in (
        lambda: services.policies.get_policy(admin, policy_id),
        lambda: services.policies.update_policy(admin, policy_id, {"limit": "1"}),
        lambda: services.policies.delete_policy(admin, policy_id),
    ):
        with pytest.raises(NotFoundError, match=f"no policy with id {str(policy_id)[:30]} in tenant 'default'"):
            attempt()
    assert services.policies.audit_trail(admin) == trail


def test_an_id_that_is_not_a_number_is_a_validation_error(services: BudgetServices, admin: Actor) -> None:
    with pytest.raises(ValidationError, match="policy_id must be a whole number, got str '1'"):
        services.policies.get_policy(admin, "1")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="policy_id must be a whole number, got bool"):
        services.policies.get_policy(admin, True)


def test_list_filters_name_the_allowed_keys_and_validate_values(services: BudgetServices, admin: Actor) -> None:
    services.policies.create_policy(admin, policy())
    with pytest.raises(ValidationError, match=r"unknown policy filter 'colour'; allowed: id, name, tenant, scope"):
        services.policies.list_policies(admin, None, {"colour": "red"})
    with pytest.raises(ValidationError, match="invalid policy filter: period: unknown period 'sometimes'"):
        services.policies.list_policies(admin, None, {"period": "sometimes"})
    with pytest.raises(ValidationError, match=r"invalid scope: scope actor contains a NUL character \(\\x00\)"):
        services.policies.list_policies(admin, {"actor": "\x00"})
    # Values are compared as the policy holds them: "DAY" is the period "day", "10" the limit 10.00.
    assert [p.name for p in services.policies.list_policies(admin, None, {"period": "DAY", "limit": "10"})] == [
        "alice-day"
    ]


def test_update_out_of_bounds_changes_nothing(services: BudgetServices, admin: Actor) -> None:
    created = services.policies.create_policy(admin, policy())
    trail = services.policies.audit_trail(admin)
    for updates in ({"priority": 10**20}, {"name": "\x00"}, {"limit": "NaN"}, {"period": "rolling:9999999h"}):
        with pytest.raises(ValidationError):
            services.policies.update_policy(admin, created.id or 0, updates)
    assert services.policies.get_policy(admin, created.id or 0) == created
    assert services.policies.audit_trail(admin) == trail


def test_actor_values_are_bounded_where_they_enter() -> None:
    with pytest.raises(pydantic.ValidationError, match="actor id must have 1 to 200 characters, got 201"):
        Actor(id="a" * 201)
    with pytest.raises(pydantic.ValidationError, match="actor tenant contains a NUL character"):
        Actor(id="a", tenant="t\x00")
    with pytest.raises(pydantic.ValidationError, match="actor id contains a lone surrogate"):
        Actor(id="\udc80")


def test_standings_report_what_enforcement_sees(services: BudgetServices, admin: Actor) -> None:
    from hookspecs import LLMCall

    created = services.policies.create_policy(admin, {"name": "all", "period": "day", "limit": "5.00"})
    call = LLMCall(call_id="s1", provider="openai", model="gpt-4o", estimated_cost=Decimal("1.25"))
    assert services.policies.check_budget(call).allowed
    services.tracking.record_usage(LLMCall(call_id="s2", provider="openai", model="gpt-4o"), Decimal("0.50"))
    (standing,) = services.policies.standings(admin, [created.id or 0])
    assert (standing.spent, standing.reserved, standing.limit) == (Decimal("0.50"), Decimal("1.25"), Decimal("5.00"))
    assert [s.policy_name for s in services.policies.standings(admin)] == ["all"]
    other = Actor(id="x", tenant="other", roles=frozenset({"budget:read"}))
    with pytest.raises(NotFoundError):
        services.policies.standings(other, [created.id or 0])
