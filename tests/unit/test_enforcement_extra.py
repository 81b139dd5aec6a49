"""Degrade suggestions, unknown-model verdicts, scope matching properties and tenant isolation."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from atlas_budget_plugin import BudgetServices
from atlas_budget_plugin.exceptions import NotFoundError
from atlas_budget_plugin.types import SCOPE_KEYS, TAG_DIMENSIONS, Actor, Scope
from hookspecs import LLMCall


def call(call_id: str, **kw: Any) -> LLMCall:
    return LLMCall(**{"call_id": call_id, "provider": "openai", "model": "gpt-4o", "actor": "alice", **kw})


def test_degrade_names_cheapest_model_that_fits(services: BudgetServices, admin: Actor) -> None:
    services.policies.create_policy(admin, {"name": "d", "period": "day", "limit": "0.004", "enforcement": "degrade"})
    big = call("big", input_tokens=2000, max_output_tokens=1000)
    decision = services.policies.check_budget(big)
    assert not decision.allowed
    assert decision.alternative_model is not None and decision.alternative_estimate is not None
    assert decision.alternative_estimate <= Decimal("0.004")
    assert f"try {decision.alternative_model}" in decision.reason
    # The suggestion is the cheapest catalogue alternative that fits.
    options = services.pricer.alternatives(big)
    assert decision.alternative_model == next(m for m, est in options if est <= Decimal("0.004"))


def test_degrade_prefers_configured_alternatives(services: BudgetServices, admin: Actor) -> None:
    services.policies.create_policy(
        admin,
        {
            "name": "d",
            "period": "day",
            "limit": "0.004",
            "enforcement": "degrade",
            "alternatives": ["gpt-4o-mini", "no-such-model"],
        },
    )
    decision = services.policies.check_budget(call("c", input_tokens=2000, max_output_tokens=1000))
    assert decision.alternative_model == "gpt-4o-mini"
    tight = services.policies.check_budget(
        call("c2", input_tokens=2000, max_output_tokens=1000, estimated_cost=Decimal("5"))
    )
    assert tight.alternative_model == "gpt-4o-mini"
    services.policies.update_policy(admin, 1, {"limit": "0.0000001"})
    none_fit = services.policies.check_budget(call("c3", input_tokens=2000, max_output_tokens=1000))
    assert not none_fit.allowed and none_fit.alternative_model is None


def test_unknown_model_verdict_says_which_mode(make_services: Any, admin: Actor) -> None:
    unpriced = make_services(unknown_model="allow_unpriced")
    decision = unpriced.policies.check_budget(call("u", provider="local", model="mystery"))
    assert decision.allowed and "unknown_model = allow_unpriced" in decision.warnings[0]
    priced = make_services(unknown_model="2.00")
    priced.policies.create_policy(admin, {"name": "all", "period": "day", "limit": "1"})
    decision = priced.policies.check_budget(
        call("v", provider="local", model="mystery", input_tokens=1000, max_output_tokens=0)
    )
    assert decision.estimated_cost == Decimal("0.002") and "default price" in decision.warnings[0]


values = st.sampled_from(["a", "b"])


@given(
    scope=st.dictionaries(st.sampled_from(SCOPE_KEYS), values, max_size=4),
    fields=st.fixed_dictionaries({k: values for k in ("actor", "provider", "model", "operation", "category")}),
    tags=st.dictionaries(st.sampled_from(TAG_DIMENSIONS), values, max_size=4),
)
def test_scope_matches_exactly_when_every_key_agrees(
    scope: dict[str, str], fields: dict[str, str], tags: dict[str, str]
) -> None:
    c = LLMCall(call_id="x", **fields, tags=tags)
    have = {**fields, **tags}
    assert Scope(**scope).matches(c) == all(have.get(k) == v for k, v in scope.items())
    assert Scope().matches(c)


@given(
    st.dictionaries(st.sampled_from(["env", "region"]), values, max_size=2),
    st.dictionaries(st.sampled_from(["env", "region"]), values, max_size=2),
)
def test_tag_scopes(scope_tags: dict[str, str], call_tags: dict[str, str]) -> None:
    scope = Scope(**{f"tag.{k}": v for k, v in scope_tags.items()})
    assert scope.matches(call("t", tags=call_tags)) == all(call_tags.get(k) == v for k, v in scope_tags.items())
    assert Scope.model_validate(scope.as_dict()) == scope


def test_empty_tag_key_is_an_error() -> None:
    with pytest.raises(ValueError, match="needs a tag name"):
        Scope(**{"tag.": "x"})


def test_tenant_b_cannot_touch_tenant_a(services: BudgetServices, admin: Actor) -> None:
    created = services.policies.create_policy(admin, {"name": "a", "period": "day", "limit": "5"})
    services.tracking.record_usage(call("a1", tenant="default"), Decimal("1.25"))
    b = Actor(id="bob", tenant="b", roles=frozenset({"budget:admin"}))
    pid = created.id or 0
    denied = [
        lambda: services.policies.get_policy(b, pid),
        lambda: services.policies.update_policy(b, pid, {"limit": "1"}),
        lambda: services.policies.delete_policy(b, pid),
        lambda: services.policies.create_policy(b, {"name": "x", "tenant": "default", "period": "day", "limit": "1"}),
    ]
    for attempt in denied:
        with pytest.raises(NotFoundError):
            attempt()
    assert services.policies.list_policies(b) == []
    assert services.policies.audit_trail(b) == []
    assert services.tracking.get_usage_summary(None, "day", actor=b).calls == 0
    assert services.tracking.get_spend_by_provider(None, "day", actor=b) == []
    assert all(p.calls == 0 for p in services.tracking.get_spend_trend(None, 3, actor=b))
    assert services.tracking.list_usage(b) == []
    # A call of tenant b is not limited by tenant a's policy.
    assert services.policies.check_budget(call("b1", tenant="b", estimated_cost=Decimal("50"))).allowed
    # Tenant a still sees its own.
    assert services.tracking.get_usage_summary(None, "day", actor=admin).total_cost == Decimal("1.25")


@given(st.decimals(min_value=-(10**9) + 1, max_value=Decimal(0), allow_nan=False, places=4))
def test_non_positive_limits_are_refused(limit: Decimal) -> None:
    from atlas_budget_plugin.types import Policy

    with pytest.raises(ValueError, match="limit must be greater than 0"):
        Policy(name="p", limit=limit)


@given(st.decimals(min_value=10**9, allow_nan=False, allow_infinity=False))
def test_absurd_amounts_are_refused_clearly(amount: Decimal) -> None:
    from atlas_budget_plugin.types import Policy

    with pytest.raises(ValueError, match="is too large"):
        Policy(name="p", limit=amount)
    with pytest.raises(ValueError, match="is too large"):
        Policy(name="p", limit=-amount)


@given(
    st.text(min_size=1, max_size=12).filter(
        lambda t: t.strip().lower() not in ("hour", "day", "week", "month", "quarter", "year", "total", "lifetime")
    )
)
def test_unknown_periods_name_what_is_allowed(text: str) -> None:
    from atlas_budget_plugin.periods import parse_period

    try:
        period = parse_period(text)
    except ValueError as exc:
        assert "allowed" in str(exc) or "at least 1h" in str(exc)
    else:  # only rolling windows written as <N>h / <N>d (optionally rolling:) get through
        assert period.kind == "rolling" and period.hours > 0


@given(
    st.dictionaries(
        st.text(min_size=1, max_size=8).filter(lambda k: k not in SCOPE_KEYS and not k.startswith("tag.")),
        st.just("x"),
        min_size=1,
        max_size=2,
    )
)
def test_unknown_scope_keys_are_refused(keys: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="unknown scope key"):
        Scope(**keys)
