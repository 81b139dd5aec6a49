"""What the old ATLAS budget system specified, enforced for the first time (issue #14): the global ceiling,
unpriced calls no policy covers, sub-limits per provider and model, and throttling."""

from __future__ import annotations

import threading
from decimal import Decimal
from typing import Any

import pytest

from atlas_budget_plugin import BudgetServices
from atlas_budget_plugin.exceptions import PermissionDenied, ValidationError
from atlas_budget_plugin.types import Actor
from hookspecs import LLMCall, LLMUsage

from ..conftest import FakeClock

WRITER = Actor(id="w", tenant="default", roles=frozenset({"budget:write"}))


def call(call_id: str, cost: str | None = "0.10", **kw: Any) -> LLMCall:
    kw.setdefault("provider", "openai")
    kw.setdefault("model", "gpt-4o")
    return LLMCall(call_id=call_id, estimated_cost=Decimal(cost) if cost else None, **kw)


def policy(name: str, limit: str, period: str = "day", **kw: Any) -> dict[str, Any]:
    return {"name": name, "limit": limit, "period": period, **kw}


# -- global ceiling ---------------------------------------------------------------------------------


def test_a_scoped_limit_may_not_exceed_the_whole_tenant_limit(services: BudgetServices, admin: Actor) -> None:
    services.policies.create_policy(admin, policy("tenant", "10.00"))
    with pytest.raises(ValidationError, match="'alice'.*more than the whole-tenant policy 'tenant'"):
        services.policies.create_policy(admin, policy("alice", "12.00", scope={"actor": "alice"}))
    services.policies.create_policy(admin, policy("alice", "6.00", scope={"actor": "alice"}))
    with pytest.raises(ValidationError, match="together limit 11.00.*'tenant'"):
        services.policies.create_policy(admin, policy("bob", "5.00", scope={"actor": "bob"}))
    services.policies.create_policy(admin, policy("bob", "4.00", scope={"actor": "bob"}))
    # Another level (per model) counts on its own; another period is not compared at all.
    services.policies.create_policy(admin, policy("gpt", "9.00", scope={"model": "gpt-4o"}))
    services.policies.create_policy(admin, policy("alice-month", "50.00", "month", scope={"actor": "alice"}))
    tenant = services.policies.repository.by_name("default", "tenant")
    assert tenant is not None
    with pytest.raises(ValidationError, match="more than the whole-tenant policy 'tenant' allows \\(8.00\\)"):
        services.policies.update_policy(admin, tenant.id or 0, {"limit": "8.00"})
    assert services.policies.get_policy(admin, tenant.id or 0).limit == Decimal("10.00")  # nothing half-written


def test_the_ceiling_can_be_turned_off(make_services: Any, admin: Actor) -> None:
    services = make_services(global_ceiling=False)
    services.policies.create_policy(admin, policy("tenant", "10.00"))
    services.policies.create_policy(admin, policy("alice", "12.00", scope={"actor": "alice"}))


def test_whole_tenant_policies_need_admin(services: BudgetServices, admin: Actor) -> None:
    with pytest.raises(PermissionDenied):
        services.policies.create_policy(WRITER, policy("tenant", "10.00"))
    services.policies.create_policy(WRITER, policy("alice", "1.00", scope={"actor": "alice"}))
    created = services.policies.create_policy(admin, policy("tenant", "10.00"))
    with pytest.raises(PermissionDenied):
        services.policies.update_policy(WRITER, created.id or 0, {"limit": "20.00"})


# -- no policy, no price ----------------------------------------------------------------------------


def test_an_unpriced_call_no_policy_covers_is_allowed_and_recorded_unpriced(
    services: BudgetServices, admin: Actor
) -> None:
    local = call("local", None, provider="local", model="mystery-7b")
    decision = services.policies.check_budget(local)
    assert decision.allowed and "recorded unpriced" in decision.warnings[0]
    services.policies.create_policy(admin, policy("tenant", "10.00"))
    assert not services.policies.check_budget(call("local-2", None, provider="local", model="mystery-7b")).allowed


# -- sub-limits per provider and model --------------------------------------------------------------


def test_sub_limits_are_enforced_with_the_policy_limit(services: BudgetServices, admin: Actor) -> None:
    created = services.policies.create_policy(
        admin,
        policy("tenant", "5.00", provider_limits={"anthropic": "1.00"}, model_limits={"gpt-4o": "2.00"}),
    )
    assert services.policies.get_policy(admin, created.id or 0).model_limits == {"gpt-4o": Decimal("2.00")}
    allowed = [services.policies.check_budget(call(f"g{i}", "0.80")).allowed for i in range(3)]
    assert allowed == [True, True, False]
    denied = services.policies.check_budget(call("g3", "0.80"))
    assert "'tenant [model=gpt-4o]'" in denied.reason and "limit 2.00" in denied.reason
    assert services.policies.check_budget(call("mini", "0.80", model="gpt-4o-mini")).allowed  # another model
    claude = call("c1", "0.90", provider="anthropic", model="claude-haiku-4-5")
    assert services.policies.check_budget(claude).allowed
    # Fits the policy's own limit (3.30 + 0.20 <= 5.00) but not the anthropic sub-limit (0.90 + 0.20 > 1.00).
    refused = services.policies.check_budget(call("c2", "0.20", provider="anthropic", model="claude"))
    assert not refused.allowed and "'tenant [provider=anthropic]'" in refused.reason
    held = services.ledger.outstanding_units()
    for i in range(2):
        services.tracking.record_call(
            call(f"g{i}", "0.80"), LLMUsage(input_tokens=1, output_tokens=1, cost=Decimal("0.5"))
        )
    assert services.ledger.outstanding_units() == held - 2 * 2 * 800_000_000  # policy and sub-limit holds settled
    (gpt,) = [s for s in services.policies.check_budget(call("probe", "0")).standings if "model=" in s.policy_name]
    assert gpt.spent == Decimal("1.00") and gpt.limit == Decimal("2.00")


def test_changing_a_sub_limit_recounts_it_from_recorded_spend(services: BudgetServices, admin: Actor) -> None:
    created = services.policies.create_policy(admin, policy("tenant", "10.00"))
    services.tracking.record_usage(call("old"), Decimal("1.60"))
    services.policies.update_policy(admin, created.id or 0, {"model_limits": {"gpt-4o": "1.70"}})
    denied = services.policies.check_budget(call("new", "0.20"))
    assert not denied.allowed and "spent 1.60" in denied.reason


def test_a_sub_limit_above_the_policy_limit_is_refused(services: BudgetServices, admin: Actor) -> None:
    with pytest.raises(ValidationError, match="above the policy's own limit"):
        services.policies.create_policy(admin, policy("tenant", "1.00", model_limits={"gpt-4o": "2.00"}))


# -- throttle ---------------------------------------------------------------------------------------


def test_throttle_limits_the_rate_once_past_its_threshold(
    services: BudgetServices, admin: Actor, clock: FakeClock
) -> None:
    services.policies.create_policy(
        admin, policy("tenant", "10.00", enforcement="throttle", throttle_after=50, calls_per_minute=2)
    )
    assert all(services.policies.check_budget(call(f"early{i}", "0.10")).allowed for i in range(5))  # under 50%
    services.tracking.record_usage(call("bulk"), Decimal("5.00"))
    clock.now = clock.now.replace(second=30)
    first, second, third = (services.policies.check_budget(call(f"t{i}", "0.10")) for i in range(3))
    assert first.allowed and second.allowed and not third.allowed
    assert third.retry_after == 30 and "at most 2 calls per minute" in third.reason
    assert services.ledger.outstanding_units() == 7 * 100_000_000  # the throttled call holds nothing
    clock.advance(seconds=31)
    assert services.policies.check_budget(call("next-minute", "0.10")).allowed
    over = services.policies.check_budget(call("too-big", "9.00"))
    assert not over.allowed and "would be exceeded" in over.reason  # past the limit it blocks


def test_throttle_by_money_per_minute_and_in_the_verdict(services: BudgetServices, host: Any, admin: Actor) -> None:
    services.policies.create_policy(
        admin, policy("tenant", "1.00", enforcement="throttle", throttle_after=1, spend_per_minute="0.50")
    )
    (allowed,) = host.hook.pre_llm_call(call=call("a", "0.30"))
    (denied,) = host.hook.pre_llm_call(call=call("b", "0.30"))
    assert allowed.allowed and not denied.allowed
    assert denied.details["retry_after"] > 0 and "0.50 USD per minute" in denied.reason


def test_throttle_under_threads_never_admits_more_than_its_rate(services: BudgetServices, admin: Actor) -> None:
    services.policies.create_policy(
        admin, policy("tenant", "10.00", enforcement="throttle", throttle_after=1, calls_per_minute=5)
    )
    results: list[bool] = []

    def attempt(i: int) -> None:
        results.append(services.policies.check_budget(call(f"th{i}", "0.50")).allowed)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 5 and len(results) == 20


# -- prices the catalogue lacks ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "units", "expected"),
    [
        ("dall-e-3", {"image:1024x1024:hd": 2}, Decimal("0.160")),
        ("dall-e-3", {"image:1792x1024:standard": 1}, Decimal("0.080")),
        ("dall-e-2", {"image:512x512": 3}, Decimal("0.054")),
        ("gpt-image-1", {"image:1536x1024:high": 1}, Decimal("0.25")),
        ("gpt-4o-mini-transcribe", {"audio_seconds": 120}, Decimal("0.006")),  # 2 minutes at 0.003
        ("tts-1-hd", {"characters": 1000}, Decimal("0.03")),
    ],
)
def test_image_and_audio_calls_are_priced_from_the_shipped_file(
    services: BudgetServices, admin: Actor, model: str, units: dict[str, int], expected: Decimal
) -> None:
    record = services.tracking.record_call(call("m", None, model=model, operation="image"), LLMUsage(units=units))
    assert record is not None and record.cost == expected and "media prices" in record.price_source


def test_an_override_wins_over_the_shipped_price(make_services: Any) -> None:
    services = make_services(prices={"openai/dall-e-3": {"per_unit": {"image:1024x1024:hd": "0.07"}}})
    record = services.tracking.record_call(call("m", None, model="dall-e-3"), LLMUsage(units={"image:1024x1024:hd": 1}))
    assert record is not None and record.cost == Decimal("0.07") and "settings prices" in record.price_source


def test_a_size_the_file_does_not_price_is_not_guessed(services: BudgetServices) -> None:
    record = services.tracking.record_call(call("m", "0.50", model="dall-e-3"), LLMUsage(units={"image:64x64:hd": 1}))
    assert record is not None and record.cost == Decimal("0.50") and "cannot price" in record.price_source


# -- found by an adversarial review -----------------------------------------------------------------


def test_a_new_rolling_policy_counts_earlier_spend_in_its_sub_limits(
    services: BudgetServices, admin: Actor, clock: FakeClock
) -> None:
    services.tracking.record_usage(call("old", None), Decimal("0.90"))
    clock.advance(hours=2)
    services.policies.create_policy(admin, policy("r", "5.00", "rolling:24h", model_limits={"gpt-4o": "1.00"}))
    decision = services.policies.check_budget(call("new", "0.50"))
    assert not decision.allowed and "'r [model=gpt-4o]'" in decision.reason and "spent 0.90" in decision.reason


def test_a_sub_limit_crossing_is_not_the_policys_threshold(services: BudgetServices, admin: Actor) -> None:
    from atlas_budget_plugin.types import BudgetThresholdEvent

    seen: list[BudgetThresholdEvent] = []
    services.bus.subscribe("budget.threshold_reached", seen.append)
    services.policies.create_policy(admin, policy("team", "100", thresholds=[80], model_limits={"gpt-4o": "1.00"}))
    services.tracking.record_usage(call("a", None), Decimal("0.90"))
    assert seen == []  # 90% of the sub-limit is 0.9% of the policy
    services.tracking.record_usage(call("b", None, model="gpt-4o-mini"), Decimal("85"))
    assert [(e.policy_name, e.threshold) for e in seen] == [("team", 80)]


def test_a_policy_change_keeps_the_throttles_count_for_the_minute(
    services: BudgetServices, admin: Actor, clock: FakeClock
) -> None:
    created = services.policies.create_policy(
        admin, policy("t", "10.00", enforcement="throttle", throttle_after=1, calls_per_minute=2)
    )
    assert [services.policies.check_budget(call(f"c{i}", "0.50")).allowed for i in range(3)] == [True, True, False]
    services.policies.update_policy(admin, created.id or 0, {"provider_limits": {"openai": "9.00"}})
    assert not services.policies.check_budget(call("c3", "0.50")).allowed


def test_a_soft_block_override_passes_the_policys_own_sub_limits(services: BudgetServices, admin: Actor) -> None:
    services.policies.create_policy(
        admin, policy("sb", "10.00", enforcement="soft_block", model_limits={"gpt-4o": "0.10"})
    )
    assert not services.policies.check_budget(call("no", "0.50")).allowed
    assert services.policies.check_budget(call("yes", "0.50", tags={"budget_override": "sb"})).allowed
