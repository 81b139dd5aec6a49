"""The scope hierarchy (issue #14 item 2): links between scope values, attribution of calls to ancestors in
enforcement and reports, several parents, and cycles refused."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atlas_budget_plugin import BudgetServices
from atlas_budget_plugin.exceptions import PermissionDenied, SettingsError, ValidationError
from atlas_budget_plugin.store.models import ScopeLink
from atlas_budget_plugin.types import Actor
from hookspecs import LLMCall, LLMUsage

READER = Actor(id="r", tenant="default", roles=frozenset({"budget:read"}))


def call(call_id: str, cost: str = "0.80", **kw: Any) -> LLMCall:
    return LLMCall(call_id=call_id, provider="openai", model="gpt-4o", estimated_cost=Decimal(cost), **kw)


def spend(services: BudgetServices, c: LLMCall, cost: str) -> None:
    assert services.policies.check_budget(c).allowed
    services.tracking.record_call(c, LLMUsage(input_tokens=1, output_tokens=1, cost=Decimal(cost)))


def test_a_call_naming_only_a_user_counts_for_the_team(services: BudgetServices, admin: Actor) -> None:
    services.policies.link_scope(admin, "actor=alice", "team=red")
    services.policies.link_scope(admin, "team=red", "project=apollo")
    services.policies.create_policy(admin, {"name": "red", "scope": {"team": "red"}, "period": "day", "limit": "1.00"})
    spend(services, call("a1", actor="alice"), "0.60")
    denied = services.policies.check_budget(call("a2", actor="alice"))
    assert not denied.allowed and denied.deciding_policy == "red"
    assert services.policies.check_budget(call("b1", actor="bob")).allowed  # bob is in no team
    red = services.tracking.get_usage_summary({"team": "red"}, "day", actor=admin)
    apollo = services.tracking.get_usage_summary({"project": "apollo"}, "day", actor=admin)
    assert red.total_cost == apollo.total_cost == Decimal("0.60") and red.calls == 1
    assert services.policies.descendants(admin, "project=apollo") == ["actor=alice", "team=red"]
    assert services.policies.ancestors(READER, "actor=alice") == ["project=apollo", "team=red"]
    assert services.policies.lineage(READER, "actor=alice") == [["actor=alice", "team=red", "project=apollo"]]


def test_several_parents_all_count_the_call(services: BudgetServices, admin: Actor) -> None:
    services.policies.link_scope(admin, "actor=alice", "team=red")
    services.policies.link_scope(admin, "actor=alice", "team=blue")
    for team in ("red", "blue"):
        services.policies.create_policy(
            admin, {"name": team, "scope": {"team": team}, "period": "day", "limit": "5.00"}
        )
    spend(services, call("a1", actor="alice"), "0.70")
    for team in ("red", "blue"):
        assert services.tracking.get_usage_summary({"team": team}, "day", actor=admin).total_cost == Decimal("0.70")
    (decision,) = [services.policies.check_budget(call("probe", "0", actor="alice"))]
    assert {s.policy_name: s.spent for s in decision.standings} == {"red": Decimal("0.70"), "blue": Decimal("0.70")}
    assert len(services.policies.lineage(admin, "actor=alice")) == 2


def test_links_are_checked(services: BudgetServices, admin: Actor) -> None:
    services.policies.link_scope(admin, "actor=alice", "team=red")
    with pytest.raises(ValidationError, match="cycle"):
        services.policies.link_scope(admin, "team=red", "team=red")
    services.policies.link_scope(admin, "team=red", "project=apollo")
    with pytest.raises(ValidationError, match="cycle"):
        services.policies.link_scope(admin, "project=apollo", "team=red")
    with pytest.raises(ValidationError, match="must be a team, project"):
        services.policies.link_scope(admin, "actor=alice", "actor=bob")
    with pytest.raises(ValidationError, match="key=value"):
        services.policies.link_scope(admin, "alice", "team=red")
    with pytest.raises(PermissionDenied):
        services.policies.link_scope(READER, "actor=bob", "team=red")
    assert services.policies.link_scope(admin, "actor=alice", "team=red") is False  # already there
    assert ScopeLink.select().count() == 2
    assert services.policies.unlink_scope(admin, "actor=alice", "team=red") is True
    assert services.policies.scope_links(admin) == [("team=red", "project=apollo")]


def test_declared_links_are_applied_at_start_and_a_cycle_is_a_settings_error(make_services: Any) -> None:
    links = [{"child": "actor=alice", "parent": "team=red"}, {"child": "team=red", "parent": "tag.org=acme"}]
    services = make_services(scope_links=links)
    assert services.policies.ancestors(Actor.system(), "actor=alice") == ["tag.org=acme", "team=red"]
    make_services(scope_links=links)  # idempotent on the same store
    with pytest.raises(SettingsError, match="cycle"):
        make_services(scope_links=[*links, {"child": "tag.org=acme", "parent": "team=red"}])


NAMES = [f"team=t{i}" for i in range(7)]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edges=st.sets(st.tuples(st.integers(0, 6), st.integers(0, 6)), max_size=14))
def test_random_dags_attribute_to_the_closure_and_refuse_cycles(
    make_services: Any, edges: set[tuple[int, int]]
) -> None:
    services = make_services()
    admin = Actor.system()
    for child, parent in list(services.policies.scope_links(admin)):
        services.policies.unlink_scope(admin, child, parent)
    parents: dict[int, set[int]] = {}

    def above(node: int) -> set[int]:
        seen: set[int] = set()
        todo = list(parents.get(node, ()))
        while todo:
            n = todo.pop()
            if n not in seen:
                seen.add(n)
                todo.extend(parents.get(n, ()))
        return seen

    for child, parent in sorted(edges):
        cycle = child == parent or child in above(parent)
        if cycle:
            with pytest.raises(ValidationError, match="cycle"):
                services.policies.link_scope(admin, NAMES[child], NAMES[parent])
        else:
            services.policies.link_scope(admin, NAMES[child], NAMES[parent])
            parents.setdefault(child, set()).add(parent)
    for node in range(7):
        expected = sorted(NAMES[n] for n in above(node))
        assert services.policies.ancestors(admin, NAMES[node]) == expected
        attributed = services.policies.attribution(call("x", tags={"team": f"t{node}"}))
        assert sorted(f"team={v}" for v in attributed.get("team", ())) == expected


def test_a_tag_named_like_a_call_field_is_not_that_field(services: BudgetServices, admin: Actor) -> None:
    services.policies.link_scope(admin, "actor=alice", "team=red")
    bob = call("b", actor="bob", tags={"actor": "alice"})
    assert services.policies.attribution(bob) == {}
    with pytest.raises(ValidationError, match="call field, not a tag"):
        services.policies.link_scope(admin, "tag.actor=alice", "team=red")


def test_lineage_terminates_even_on_a_cycle_in_the_store() -> None:
    from atlas_budget_plugin.hierarchy import Hierarchy

    looped = Hierarchy.of([(("team", "a"), ("team", "b")), (("team", "b"), ("team", "a"))])
    assert looped.lineage(("team", "a")) == [[("team", "a"), ("team", "b")]]
