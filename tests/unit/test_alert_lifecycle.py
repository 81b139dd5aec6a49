"""Alert lifecycle (#14 item 5): get one alert, filter and order active alerts, resolve by hand."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from atlas_budget_plugin import BudgetServices
from atlas_budget_plugin.exceptions import NotFoundError, PermissionDenied, ValidationError
from atlas_budget_plugin.types import Actor, Alert, BudgetAlertEvent, BudgetEvent
from hookspecs import LLMCall

from ..conftest import FakeClock

n = 0


def spend(services: BudgetServices, cost: str, actor: str = "alice", tenant: str = "default") -> None:
    global n
    n += 1
    call = LLMCall(call_id=f"life{n}", provider="openai", model="m", actor=actor, tenant=tenant)
    services.tracking.record_usage(call, Decimal(cost))


@pytest.fixture
def events(services: BudgetServices) -> list[BudgetEvent]:
    seen: list[BudgetEvent] = []
    services.bus.subscribe("budget.alert_*", seen.append)
    return seen


def fire(services: BudgetServices, admin: Actor, clock: FakeClock) -> dict[str, Alert]:
    """Two policies with alerts of every severity, fired at different moments; returns them by name."""
    services.policies.create_policy(
        admin, {"name": "alice", "scope": {"actor": "alice"}, "period": "day", "limit": "10"}
    )
    services.policies.create_policy(admin, {"name": "bob", "scope": {"actor": "bob"}, "period": "day", "limit": "10"})
    for policy, threshold, severity in [
        ("alice", 10, "info"),
        ("alice", 20, "critical"),
        ("alice", 30, "warning"),
        ("bob", 10, "warning"),
        ("bob", 20, "emergency"),
    ]:
        services.alerts.configure_alert(
            admin, {"policy": policy, "threshold": threshold, "severity": severity, "sinks": ["log"]}
        )
    spend(services, "5", "alice")
    fired = {f"alice-{a.severity}": a for a in services.alerts.evaluate_alerts()}
    clock.advance(minutes=5)
    spend(services, "5", "bob")
    fired.update({f"bob-{a.severity}": a for a in services.alerts.evaluate_alerts()})
    assert len(fired) == 5
    return fired


def test_active_alerts_most_severe_first_then_newest(services: BudgetServices, admin: Actor, clock: FakeClock) -> None:
    fired = fire(services, admin, clock)
    order = [(a.policy, a.severity) for a in services.alerts.get_active_alerts(admin)]
    # bob's alerts are five minutes newer, so they lead within a severity
    assert order == [
        ("bob", "emergency"),
        ("alice", "critical"),
        ("bob", "warning"),
        ("alice", "warning"),
        ("alice", "info"),
    ]
    only_alice = services.alerts.get_active_alerts(admin, policy="alice")
    assert [a.severity for a in only_alice] == ["critical", "warning", "info"]
    warnings = services.alerts.get_active_alerts(admin, severity="warning")
    assert [a.id for a in warnings] == [fired["bob-warning"].id, fired["alice-warning"].id]
    assert services.alerts.get_active_alerts(admin, policy="bob", severity="info") == []
    assert services.alerts.get_active_alerts(admin, policy="nobody") == []
    with pytest.raises(ValidationError, match="unknown alert severity 'loud'; allowed: info, warning, critical"):
        services.alerts.get_active_alerts(admin, severity="loud")
    with pytest.raises(ValidationError, match="policy must have 1 to 200 characters"):
        services.alerts.get_active_alerts(admin, policy="")


def test_get_alert_by_id_in_any_state(services: BudgetServices, admin: Actor, clock: FakeClock) -> None:
    fired = fire(services, admin, clock)
    alert = fired["alice-critical"]
    assert services.alerts.get_alert(admin, alert.id) == alert
    services.alerts.acknowledge_alert(admin, alert.id)
    assert services.alerts.get_alert(admin, alert.id).acknowledged_by == "root"
    reader = Actor(id="r", tenant="default", roles=frozenset({"budget:read"}))
    assert services.alerts.get_alert(reader, alert.id).id == alert.id
    for missing in (0, -1, 2**63, 10**30, 999_999):
        with pytest.raises(NotFoundError, match=f"no triggered alert with id {missing} in tenant 'default'"):
            services.alerts.get_alert(admin, missing)
    with pytest.raises(ValidationError, match="alert id must be a whole number"):
        services.alerts.get_alert(admin, "1")  # type: ignore[arg-type]


def test_resolve_one_alert_emits_event_and_audits(
    services: BudgetServices, admin: Actor, clock: FakeClock, events: list[BudgetEvent]
) -> None:
    fired = fire(services, admin, clock)
    events.clear()
    alert = fired["alice-critical"]
    clock.advance(minutes=1)
    resolved = services.alerts.resolve_alert(admin, alert.id)
    assert resolved.resolved_at == clock.now and not resolved.active
    assert alert.id not in [a.id for a in services.alerts.get_active_alerts(admin)]
    (event,) = events
    assert isinstance(event, BudgetAlertEvent)
    assert event.topic == "budget.alert_resolved" and event.actor == "root" and event.alert == resolved
    (entry,) = [e for e in services.policies.audit_trail(admin) if e["object_type"] == "alert"]
    assert entry["action"] == "resolve" and entry["actor"] == "root" and entry["object_id"] == str(alert.id)
    assert entry["before"]["resolved_at"] is None and entry["after"]["resolved_at"] is not None
    # resolving again changes nothing and says nothing
    again = services.alerts.resolve_alert(admin, alert.id)
    assert again.resolved_at == resolved.resolved_at and len(events) == 1
    # a resolved alert does not fire again in the same window
    spend(services, "1", "alice")
    assert [a for a in services.alerts.evaluate_alerts() if a.config_id == alert.config_id] == []


def test_resolve_every_alert_of_a_policy(
    services: BudgetServices, admin: Actor, clock: FakeClock, events: list[BudgetEvent]
) -> None:
    fired = fire(services, admin, clock)
    services.alerts.acknowledge_alert(admin, fired["alice-info"].id)  # acknowledged, still unresolved
    events.clear()
    resolved = services.alerts.resolve_policy_alerts(admin, "alice")
    assert sorted(a.id for a in resolved) == sorted(fired[k].id for k in fired if k.startswith("alice"))
    assert all(a.resolved_at == clock.now for a in resolved)
    assert [e.topic for e in events] == ["budget.alert_resolved"] * 3
    assert {a.policy for a in services.alerts.get_active_alerts(admin)} == {"bob"}
    audited = [e for e in services.policies.audit_trail(admin) if e["object_type"] == "alert"]
    assert len(audited) == 3
    assert services.alerts.resolve_policy_alerts(admin, "alice") == []  # nothing left open
    bob = services.policies.list_policies(admin, None)
    (bob_id,) = [p.id or 0 for p in bob if p.name == "bob"]
    assert len(services.alerts.resolve_policy_alerts(admin, bob_id)) == 2  # by policy id too
    with pytest.raises(NotFoundError, match="no policy named 'carol' in tenant 'default'"):
        services.alerts.resolve_policy_alerts(admin, "carol")


def test_alerts_of_a_deleted_policy_can_still_be_resolved(
    services: BudgetServices, admin: Actor, clock: FakeClock
) -> None:
    fire(services, admin, clock)
    (bob,) = [p for p in services.policies.list_policies(admin, None) if p.name == "bob"]
    services.policies.delete_policy(admin, bob.id or 0)
    assert len(services.alerts.resolve_policy_alerts(admin, "bob")) == 2


def test_tenants_and_roles_are_enforced(services: BudgetServices, admin: Actor, clock: FakeClock) -> None:
    fired = fire(services, admin, clock)
    other = Actor(id="eve", tenant="other", roles=frozenset({"budget:admin"}))
    alert: Any = fired["alice-critical"]
    for attempt in (
        lambda: services.alerts.get_alert(other, alert.id),
        lambda: services.alerts.resolve_alert(other, alert.id),
        lambda: services.alerts.acknowledge_alert(other, alert.id),
    ):
        with pytest.raises(NotFoundError, match=f"no triggered alert with id {alert.id} in tenant 'other'"):
            attempt()
    assert services.alerts.get_active_alerts(other) == []
    with pytest.raises(NotFoundError, match="no policy named 'alice' in tenant 'other'"):
        services.alerts.resolve_policy_alerts(other, "alice")
    reader = Actor(id="r", tenant="default", roles=frozenset({"budget:read"}))
    with pytest.raises(PermissionDenied):
        services.alerts.resolve_alert(reader, alert.id)
    with pytest.raises(PermissionDenied):
        services.alerts.resolve_policy_alerts(reader, "alice")
    assert services.alerts.get_alert(admin, alert.id).resolved_at is None  # nothing was changed
