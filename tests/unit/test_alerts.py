"""BudgetAlertService: thresholds once per window, forecast, anomaly, lifecycle, delivery and sinks."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from atlas_budget_plugin import BudgetServices
from atlas_budget_plugin.exceptions import NotFoundError, PermissionDenied, SettingsError, ValidationError
from atlas_budget_plugin.hookspecs import hookimpl
from atlas_budget_plugin.types import Actor, Alert, BudgetEvent
from hookspecs import LLMCall

from ..conftest import FakeClock, sample_alert
from ..httpserver import http_server

n = 0


def spend(services: BudgetServices, cost: str, actor: str = "alice") -> None:
    global n
    n += 1
    services.tracking.record_usage(LLMCall(call_id=f"a{n}", provider="openai", model="m", actor=actor), Decimal(cost))


class Sink:
    def __init__(self, fail: int = 0) -> None:
        self.alerts: list[Alert] = []
        self.fail = fail

    @hookimpl
    def budget_deliver_alert(self, alert: Alert) -> None:
        if self.fail:
            self.fail -= 1
            raise ConnectionError("sink down")
        self.alerts.append(alert)


@pytest.fixture
def sink(services: BudgetServices) -> Sink:
    sink = Sink()
    services.extensions.pm.register(sink, name="test")
    return sink


@pytest.fixture
def events(services: BudgetServices) -> list[BudgetEvent]:
    seen: list[BudgetEvent] = []
    services.bus.subscribe("budget.*", seen.append)
    return seen


ALICE_DAY = {"name": "alice-day", "scope": {"actor": "alice"}, "period": "day", "limit": "10"}


@pytest.fixture
def policy(services: BudgetServices, admin: Actor) -> Any:
    return services.policies.create_policy(admin, ALICE_DAY)


def alert_on_spend(services: BudgetServices, admin: Actor, sink: str) -> None:
    """alice-day with an alert at 10% sent to ``sink``, and alice spending 5.00 of its 10.00."""
    services.policies.create_policy(admin, ALICE_DAY)
    services.alerts.configure_alert(admin, {"policy": "alice-day", "threshold": 10, "sinks": [sink]})
    spend(services, "5")


def configure(services: BudgetServices, admin: Actor, **kw: Any) -> Any:
    return services.alerts.configure_alert(admin, {"policy": "alice-day", "sinks": ["test"], **kw})


def test_thresholds_fire_once_per_window_and_rearm(
    services: BudgetServices, admin: Actor, policy: Any, sink: Sink, clock: FakeClock, events: list[BudgetEvent]
) -> None:
    for pct in (50, 80, 100):
        configure(services, admin, threshold=pct, severity="critical" if pct == 100 else "warning")
    spend(services, "4.9")
    assert services.alerts.evaluate_alerts() == []
    spend(services, "0.2")
    assert [a.threshold for a in services.alerts.evaluate_alerts()] == [50]
    spend(services, "3.5")
    assert [a.threshold for a in services.alerts.evaluate_alerts()] == [80]
    assert services.alerts.evaluate_alerts() == []
    spend(services, "2")
    fired = services.alerts.evaluate_alerts()
    assert [a.threshold for a in fired] == [100] and "used 10.60 of 10.00 USD (106.0%)" in fired[0].message
    assert [a.threshold for a in sink.alerts] == [50, 80, 100]
    topics = [e.topic for e in events if e.topic.startswith(("budget.alert", "budget.approaching", "budget.limit"))]
    assert topics.count("budget.alert_triggered") == 3
    assert topics.count("budget.approaching_limit") == 2 and topics.count("budget.limit_exceeded") == 1
    # A new day re-arms every threshold; the old alerts are resolved.
    clock.advance(days=1)
    assert services.alerts.evaluate_alerts() == []
    assert services.alerts.get_active_alerts(admin) == []
    spend(services, "6")
    assert [a.threshold for a in services.alerts.evaluate_alerts()] == [50]


def test_concurrent_evaluators_fire_once(services: BudgetServices, admin: Actor, policy: Any, sink: Sink) -> None:
    configure(services, admin, threshold=50)
    spend(services, "7")
    results: list[list[Alert]] = []
    barrier = threading.Barrier(4)

    def evaluate() -> None:
        barrier.wait()
        results.append(services.alerts.evaluate_alerts())

    threads = [threading.Thread(target=evaluate) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(len(r) for r in results) == 1
    assert len(sink.alerts) == 1


def test_forecast_alert(services: BudgetServices, admin: Actor, policy: Any, sink: Sink, clock: FakeClock) -> None:
    clock.now = datetime(2026, 3, 10, 0, 30, tzinfo=timezone.utc)
    configure(services, admin, threshold=100, kind="forecast")
    spend(services, "1")  # after 2% of the day: too early to extrapolate
    assert services.alerts.evaluate_alerts() == []
    clock.now = datetime(2026, 3, 10, 6, tzinfo=timezone.utc)  # a quarter of the day: 1 -> 4 projected
    assert services.alerts.evaluate_alerts() == []
    spend(services, "1.6")  # 2.6 after a quarter: 10.4 projected
    (alert,) = services.alerts.evaluate_alerts()
    assert alert.kind == "forecast" and "on course to spend 10.40 of 10.00" in alert.message


def test_anomaly_alert(services: BudgetServices, admin: Actor, policy: Any, sink: Sink, clock: FakeClock) -> None:
    configure(
        services,
        admin,
        threshold=300,
        kind="anomaly",
        anomaly_window="hour",
        anomaly_baseline=4,
        anomaly_minimum="0.50",
    )
    start = clock.now
    for hour in range(4):  # a steady 0.20 an hour
        clock.now = start + timedelta(hours=hour, minutes=10)
        spend(services, "0.20")
    clock.now = start + timedelta(hours=4, minutes=20)
    spend(services, "0.40")
    assert services.alerts.evaluate_alerts() == []  # 2x usual, below 3x and below the minimum
    spend(services, "0.30")
    (alert,) = services.alerts.evaluate_alerts()
    assert alert.kind == "anomaly" and "3.5x its average of 0.2000" in alert.message
    assert services.alerts.evaluate_alerts() == []  # once per hour window


def test_cooldown_and_snooze(services: BudgetServices, admin: Actor, policy: Any, sink: Sink, clock: FakeClock) -> None:
    config = configure(services, admin, threshold=10, cooldown=30 * 3600)
    spend(services, "2")
    assert len(services.alerts.evaluate_alerts()) == 1
    clock.advance(days=1)
    spend(services, "2")
    assert services.alerts.evaluate_alerts() == []  # new window, but still cooling down
    clock.advance(hours=7)
    assert len(services.alerts.evaluate_alerts()) == 1
    snoozed = services.alerts.snooze_alert(admin, config.id, clock.now + timedelta(days=2))
    assert snoozed.snoozed_until is not None
    clock.advance(days=1)
    spend(services, "5")
    assert services.alerts.evaluate_alerts() == []
    clock.advance(days=1, hours=1)
    spend(services, "5")
    assert len(services.alerts.evaluate_alerts()) == 1
    with pytest.raises(ValidationError, match="timezone-aware"):
        services.alerts.snooze_alert(admin, config.id, datetime(2030, 1, 1))


def test_acknowledge_and_history(
    services: BudgetServices, admin: Actor, policy: Any, sink: Sink, events: list[BudgetEvent]
) -> None:
    configure(services, admin, threshold=10)
    spend(services, "5")
    (alert,) = services.alerts.evaluate_alerts()
    assert [a.id for a in services.alerts.get_active_alerts(admin)] == [alert.id]
    acked = services.alerts.acknowledge_alert(admin, alert.id)
    assert acked.acknowledged_by == "root" and not acked.active
    assert services.alerts.get_active_alerts(admin) == []
    assert events[-1].topic == "budget.alert_acknowledged"
    assert services.alerts.get_alert_history(admin)[0].acknowledged_by == "root"
    with pytest.raises(NotFoundError):
        services.alerts.acknowledge_alert(admin, 999)


def test_configuration_validation_permissions_and_isolation(
    services: BudgetServices, admin: Actor, policy: Any, sink: Sink
) -> None:
    with pytest.raises(NotFoundError, match="no policy named 'nope'"):
        services.alerts.configure_alert(admin, {"policy": "nope", "threshold": 50})
    with pytest.raises(ValidationError, match="unknown alert sink 'pager'; installed sinks: .*log"):
        configure(services, admin, threshold=50, sinks=["pager"])
    with pytest.raises(ValidationError, match="threshold"):
        configure(services, admin, threshold=0)
    config = configure(services, admin, threshold=50)
    updated = services.alerts.configure_alert(admin, {**config.model_dump(), "severity": "critical"})
    assert updated.id == config.id and updated.severity == "critical"
    other = Actor(id="eve", tenant="acme", roles=frozenset({"budget:admin"}))
    reader = Actor(id="r", roles=frozenset({"budget:read"}))
    assert services.alerts.list_alerts(other) == [] and len(services.alerts.list_alerts(reader)) == 1
    assert services.alerts.list_alerts(admin, {"actor": "bob"}) == []
    for attempt in (
        lambda: services.alerts.remove_alert(other, config.id),
        lambda: services.alerts.snooze_alert(other, config.id, datetime(2030, 1, 1, tzinfo=timezone.utc)),
        lambda: services.alerts.configure_alert(other, {**config.model_dump(), "tenant": "acme"}),
        lambda: services.alerts.configure_alert(other, {"policy": "alice-day", "threshold": 5, "tenant": "default"}),
    ):
        with pytest.raises(NotFoundError):
            attempt()
    with pytest.raises(PermissionDenied):
        services.alerts.remove_alert(reader, config.id)
    services.alerts.remove_alert(admin, config.id)
    assert services.alerts.list_alerts(admin) == []


def test_failing_sink_is_retried_with_backoff_and_never_blocks_others(
    services: BudgetServices, admin: Actor, policy: Any, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    flaky, good = Sink(fail=2), Sink()
    services.extensions.pm.register(flaky, name="flaky")
    services.extensions.pm.register(good, name="good")
    services.alerts.configure_alert(admin, {"policy": "alice-day", "threshold": 10, "sinks": ["flaky", "good"]})
    spend(services, "5")
    services.alerts.evaluate_alerts()
    assert len(good.alerts) == 1 and flaky.alerts == []
    pending = services.alerts.deliveries(admin, "pending")
    assert [(d.sink, d.attempts, d.last_error) for d in pending] == [("flaky", 1, "ConnectionError: sink down")]
    assert services.alerts.deliver_pending() == 0  # not due before its backoff
    clock.advance(seconds=31)
    assert services.alerts.deliver_pending() == 0  # second failure, next try in 60 s
    clock.advance(seconds=61)
    assert services.alerts.deliver_pending() == 1
    assert len(flaky.alerts) == 1
    assert {d.sink: d.status for d in services.alerts.deliveries(admin)} == {"flaky": "delivered", "good": "delivered"}


def test_delivery_gives_up_visibly(
    make_services: Any, admin: Actor, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    services = make_services(delivery_attempts=2, delivery_backoff=1)
    dead = Sink(fail=99)
    services.extensions.pm.register(dead, name="dead")
    alert_on_spend(services, admin, "dead")
    services.alerts.evaluate_alerts()
    clock.advance(seconds=2)
    with caplog.at_level(logging.ERROR, logger="atlas_budget_plugin.alerts"):
        services.alerts.deliver_pending()
    (failed,) = services.alerts.deliveries(admin, "failed")
    assert failed.attempts == 2 and "could not be delivered to sink 'dead' after 2 attempts" in caplog.text


def test_declared_alerts_apply_idempotently(make_services: Any, admin: Actor) -> None:
    declared = {
        "policies": [{"name": "p", "period": "day", "limit": "5"}],
        "alerts": [{"policy": "p", "threshold": 80, "sinks": ["log"]}],
    }
    first = make_services(**declared)
    again = make_services(**declared)
    assert [c.id for c in again.alerts.list_alerts(admin)] == [c.id for c in first.alerts.list_alerts(admin)]
    changed = make_services(**{**declared, "alerts": [{"policy": "p", "threshold": 80, "severity": "critical"}]})
    (config,) = changed.alerts.list_alerts(admin)
    assert config.severity == "critical"
    with pytest.raises(SettingsError, match="no policy named 'ghost'"):
        make_services(alerts=[{"policy": "ghost", "threshold": 50}])


# -- built-in sinks against a real loopback server ------------------------------------------


def test_webhook_sink_posts_signed_json(make_services: Any, admin: Actor) -> None:
    with http_server() as server:
        services = make_services(sinks={"webhook": {"url": server.url, "secret": "s3cret", "timeout": 2}})
        alert_on_spend(services, admin, "webhook")
        services.alerts.evaluate_alerts()
    (request,) = server.requests
    body = json.loads(request["body"])
    assert body["type"] == "budget.alert" and body["spent"] == "5.00" and body["limit"] == "10.00"
    expected = "sha256=" + hmac.new(b"s3cret", request["body"], hashlib.sha256).hexdigest()
    assert request["headers"]["X-Atlas-Budget-Signature"] == expected


def test_webhook_fails_twice_then_succeeds(
    make_services: Any, admin: Actor, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    with http_server([500, 503]) as server:
        services = make_services(
            sinks={"webhook": {"url": server.url.replace("/budget", "/x?token=s3cret")}}, delivery_backoff=1
        )
        alert_on_spend(services, admin, "webhook")
        with caplog.at_level(logging.WARNING):
            services.alerts.evaluate_alerts()
            clock.advance(seconds=2)
            services.alerts.deliver_pending()
            clock.advance(seconds=3)
            services.alerts.deliver_pending()
    assert len(server.requests) == 3
    (delivery,) = services.alerts.deliveries(admin)
    assert (delivery.status, delivery.attempts) == ("delivered", 3)
    assert "HTTP 500" in caplog.text and "s3cret" not in caplog.text


def test_webhook_that_never_answers_times_out_off_the_call_path(make_services: Any, admin: Actor) -> None:
    with http_server(delay=3) as server:
        services = make_services(sinks={"webhook": {"url": server.url, "timeout": 0.3}})
        alert_on_spend(services, admin, "webhook")  # the call path records; it never delivers
        assert server.requests == []
        services.alerts.evaluate_alerts()
    (delivery,) = services.alerts.deliveries(admin)
    assert delivery.status == "pending" and "timed out" in (delivery.last_error or "")


@pytest.mark.parametrize(
    ("section", "text"),
    [
        ({"url": "ftp://x"}, "must start with http"),
        ({"timeout": -1}, "positive number"),
        ({"colour": 1}, "unknown key"),
    ],
)
def test_webhook_settings_are_checked(make_services: Any, section: dict[str, Any], text: str) -> None:
    with pytest.raises(SettingsError, match=f"plugin 'webhook' refused its settings: .*{text}"):
        make_services(sinks={"webhook": section})


def test_apprise_sink_notifies_by_url(make_services: Any, admin: Actor) -> None:
    with http_server() as server:
        url = server.url.replace("http://", "json://")
        services = make_services(sinks={"apprise": {"urls": [url]}})
        alert_on_spend(services, admin, "apprise")
        services.alerts.evaluate_alerts()
    (request,) = server.requests
    body = json.loads(request["body"])
    assert body["title"] == "[warning] budget alice-day" and "5.00 of 10.00" in body["message"]
    with pytest.raises(SettingsError, match="Apprise URLs"):
        make_services(sinks={"apprise": {"urls": ["not a url"]}})


def test_apprise_sink_failures_are_raised_for_retry(tmp_path: Any) -> None:
    from atlas_budget_plugin.settings import BudgetSettings
    from atlas_budget_plugin.sinks import apprise_sink

    alert = sample_alert("80%")
    apprise_sink.budget_configure(BudgetSettings.load())
    with pytest.raises(RuntimeError, match="has no urls"):
        apprise_sink.budget_deliver_alert(alert)
    apprise_sink.budget_configure(BudgetSettings.load(None, sinks={"apprise": {"urls": "json://127.0.0.1:9/x"}}))
    with pytest.raises(RuntimeError, match="could not notify 1 url"):
        apprise_sink.budget_deliver_alert(alert)
    with pytest.raises(ValueError, match="unknown key"):
        apprise_sink.budget_configure(BudgetSettings.load(None, sinks={"apprise": {"url": "x"}}))
    apprise_sink.budget_configure(BudgetSettings.load(None, sinks={"apprise": {"urls": ["nope://x"]}}))
    with pytest.raises(RuntimeError, match="does not understand"):
        apprise_sink.budget_deliver_alert(alert)


# -- bounds, sink checks, deliveries, tenant isolation -------------------------------------------


def test_cooldown_and_ids_are_bounded(services: BudgetServices, admin: Actor, policy: Any, sink: Sink) -> None:
    with pytest.raises(ValidationError, match=r"cooldown is a number of seconds from 0 to 31536000 .*got 10{15}"):
        configure(services, admin, threshold=50, cooldown=10**15)
    with pytest.raises(ValidationError, match="cooldown"):
        configure(services, admin, threshold=50, cooldown=-1)
    config = configure(services, admin, threshold=50, cooldown=365 * 24 * 3600)
    for huge in (2**63, 2**70):
        with pytest.raises(NotFoundError):
            services.alerts.acknowledge_alert(admin, huge)
        with pytest.raises(NotFoundError):
            services.alerts.remove_alert(admin, huge)
        with pytest.raises(NotFoundError):
            services.alerts.snooze_alert(admin, huge, datetime(2026, 4, 1, tzinfo=timezone.utc))
    with pytest.raises(ValidationError, match="whole number"):
        services.alerts.remove_alert(admin, "1")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="at most 365 days ahead"):
        services.alerts.snooze_alert(admin, config.id, datetime(9999, 12, 31, tzinfo=timezone.utc))
    with pytest.raises(ValidationError, match="must be a datetime"):
        services.alerts.snooze_alert(admin, config.id, "tomorrow")  # type: ignore[arg-type]


def test_sinks_are_validated_when_an_alert_names_them(
    services: BudgetServices, admin: Actor, policy: Any, sink: Sink
) -> None:
    with pytest.raises(
        ValidationError, match=r"unknown alert sink 'webhok'; installed sinks: apprise, log, test, webhook"
    ):
        configure(services, admin, threshold=50, sinks=["webhok"])
    with pytest.raises(
        ValidationError, match=r"alert sink 'webhook' cannot deliver: .*set url under \[sinks.webhook\]"
    ):
        configure(services, admin, threshold=50, sinks=["webhook"])
    with pytest.raises(ValidationError, match=r"alert sink 'apprise' cannot deliver: .*\[sinks.apprise\]"):
        configure(services, admin, threshold=50, sinks=["apprise"])
    # An alert naming no sink goes to the installed sinks that are ready: not to the unconfigured webhook.
    assert services.alerts.ready_sinks() == ["log", "test"]
    services.alerts.configure_alert(admin, {"policy": "alice-day", "threshold": 10})
    spend(services, "5")
    services.alerts.evaluate_alerts()
    assert sorted(d.sink for d in services.alerts.deliveries(admin)) == ["log", "test"]


def test_webhook_named_when_configured(make_services: Any, admin: Actor) -> None:
    services = make_services(sinks={"webhook": {"url": "http://127.0.0.1:9/hook"}})
    services.policies.create_policy(admin, ALICE_DAY)
    assert services.alerts.configure_alert(admin, {"policy": "alice-day", "threshold": 10, "sinks": ["webhook"]})
    assert "webhook" in services.alerts.ready_sinks()


def test_list_deliveries_shows_pending_and_failed(make_services: Any, admin: Actor, clock: FakeClock) -> None:
    services = make_services(delivery_attempts=2, delivery_backoff=1)
    dead, flaky, good = Sink(fail=99), Sink(fail=1), Sink()
    for name, plugin in (("dead", dead), ("flaky", flaky), ("good", good)):
        services.extensions.pm.register(plugin, name=name)
    services.policies.create_policy(admin, ALICE_DAY)
    services.alerts.configure_alert(admin, {"policy": "alice-day", "threshold": 10, "sinks": ["dead", "flaky", "good"]})
    spend(services, "5")
    services.alerts.evaluate_alerts()
    pending = services.alerts.list_deliveries(admin)
    assert [(d.sink, d.status, d.attempts, d.last_error) for d in pending] == [
        ("dead", "pending", 1, "ConnectionError: sink down"),
        ("flaky", "pending", 1, "ConnectionError: sink down"),
    ]
    clock.advance(seconds=2)
    services.alerts.deliver_pending()
    (failed,) = services.alerts.list_deliveries(admin)
    assert (failed.sink, failed.status, failed.attempts) == ("dead", "failed", 2)
    assert [d.sink for d in services.alerts.list_deliveries(admin, "delivered")] == ["flaky", "good"]
    assert services.alerts.list_deliveries(Actor.system("other")) == []
    with pytest.raises(ValidationError, match="unknown delivery status 'lost'"):
        services.alerts.list_deliveries(admin, "lost")
    with pytest.raises(ValidationError, match="limit"):
        services.alerts.list_deliveries(admin, limit=10**20)
    with pytest.raises(PermissionDenied):
        services.alerts.list_deliveries(Actor(id="nobody"))


def test_a_bad_stored_config_of_one_tenant_does_not_stop_the_others(
    services: BudgetServices, admin: Actor, sink: Sink, caplog: pytest.LogCaptureFixture
) -> None:
    from atlas_budget_plugin.store.models import AlertConfigRow

    bad_tenant = Actor.system("acme")
    services.policies.create_policy(bad_tenant, ALICE_DAY)
    bad = services.alerts.configure_alert(bad_tenant, {"policy": "alice-day", "threshold": 10, "sinks": ["test"]})
    services.policies.create_policy(admin, ALICE_DAY)
    good = services.alerts.configure_alert(admin, {"policy": "alice-day", "threshold": 10, "sinks": ["test"]})
    # Stored before cooldown had a bound: from then on every evaluation raised OverflowError for every tenant.
    row = AlertConfigRow.get_by_id(bad.id)
    AlertConfigRow.update(config_json=row.config_json.replace('"cooldown":0', f'"cooldown":{10**15}')).where(
        AlertConfigRow.id == bad.id
    ).execute()
    spend(services, "5")
    with caplog.at_level(logging.WARNING, logger="atlas_budget_plugin.alerts"):
        fired = services.alerts.evaluate_alerts()
    assert [a.config_id for a in fired] == [good.id] and len(sink.alerts) == 1
    assert f"stored alert config {bad.id} of tenant 'acme' is invalid" in caplog.text
    assert services.alerts.list_alerts(bad_tenant) == []
    (problem,) = services.alerts.invalid_alerts(bad_tenant)
    assert "cooldown" in problem and f"alert remove {bad.id}" in problem
    with pytest.raises(ValidationError, match="is invalid"):
        services.alerts.snooze_alert(bad_tenant, bad.id, services.alerts.clock() + timedelta(hours=1))
    repaired = services.alerts.configure_alert(bad_tenant, {"id": bad.id, "policy": "alice-day", "threshold": 20})
    assert repaired.cooldown == 0 and services.alerts.invalid_alerts(bad_tenant) == []
    services.alerts.remove_alert(bad_tenant, bad.id)


def test_one_tenants_failing_evaluation_or_delivery_is_skipped(
    services: BudgetServices,
    admin: Actor,
    sink: Sink,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from atlas_budget_plugin.store.models import AlertRow

    first = Actor.system("first")
    for actor in (first, admin):
        services.policies.create_policy(actor, ALICE_DAY)
        services.alerts.configure_alert(actor, {"policy": "alice-day", "threshold": 10, "sinks": ["test"]})
    spend(services, "5")
    original = services.alerts._spend

    def spend_check(config: Any, policy: Any, now: datetime) -> Any:
        if config.tenant == "first":
            raise OverflowError("date value out of range")
        return original(config, policy, now)

    monkeypatch.setattr(services.alerts, "_spend", spend_check)
    with caplog.at_level(logging.ERROR, logger="atlas_budget_plugin.alerts"):
        fired = services.alerts.evaluate_alerts()
    assert [a.tenant for a in fired] == ["default"] and len(sink.alerts) == 1
    assert "of tenant 'first' on policy 'alice-day' could not be evaluated" in caplog.text
    # A delivery whose stored alert cannot be read is given up with the reason; the others still go out.
    monkeypatch.setattr(services.alerts, "_spend", original)
    services.alerts.configure_alert(admin, {"policy": "alice-day", "threshold": 20, "sinks": ["test"]})
    services.alerts.configure_alert(admin, {"policy": "alice-day", "threshold": 30, "sinks": ["test"]})
    real_trigger = services.alerts.repository.trigger
    broken_once: list[int] = []

    def trigger(alert: dict[str, Any], sinks: list[str], now: datetime) -> Any:
        made = real_trigger(alert, sinks, now)
        if made is not None and not broken_once:
            broken_once.append(made.id)
            AlertRow.update(sinks_json="{not json").where(AlertRow.id == made.id).execute()
        return made

    monkeypatch.setattr(services.alerts.repository, "trigger", trigger)
    services.alerts.evaluate_alerts()
    assert len(sink.alerts) == 2
    failed = services.alerts.list_deliveries(admin, "failed")
    assert [d.alert_id for d in failed] == broken_once and "cannot be read" in (failed[0].last_error or "")
