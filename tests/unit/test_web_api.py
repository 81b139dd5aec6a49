"""The console's JSON API, route by route, against the service each route wraps (including error shapes)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("fastapi", reason="the console needs the ui extra")
from fastapi.testclient import TestClient

from atlas_budget_plugin.bootstrap import BudgetServices
from atlas_budget_plugin.exceptions import BudgetError

from ..browser.support import ADMIN, READER, WRITER, make_app, record, seed


@pytest.fixture
def console(services: BudgetServices) -> tuple[Any, dict[str, str]]:
    seed(services)
    return make_app(services)


def bearer(console: tuple[Any, dict[str, str]], who: str = "admin") -> Iterator[TestClient]:
    app, tokens = console
    with TestClient(app, headers={"authorization": f"Bearer {tokens[who]}"}) as client:
        yield client


@pytest.fixture
def api(console: tuple[Any, dict[str, str]]) -> Iterator[TestClient]:
    yield from bearer(console)


def as_json(value: Any) -> Any:
    """What the API must answer for a service result: its JSON form (money as decimal strings)."""
    if isinstance(value, list):
        return [as_json(v) for v in value]
    return json.loads(value.model_dump_json())


def service_error(call: Any) -> str:
    with pytest.raises(BudgetError) as caught:
        call()
    return str(caught.value)


def test_me_names_the_actor(api: TestClient) -> None:
    assert api.get("/api/v1/me").json() == {"id": "ada", "tenant": "default", "roles": ["budget:admin"]}


def test_policies_list_get_create_update_delete(api: TestClient, services: BudgetServices) -> None:
    assert api.get("/api/v1/policies").json() == as_json(services.policies.list_policies(ADMIN))
    assert api.get("/api/v1/policies", params={"actor": "alice"}).json() == as_json(
        services.policies.list_policies(ADMIN, {"actor": "alice"})
    )
    created = api.post("/api/v1/policies", json={"name": "bob", "limit": "0.50", "scope": {"actor": "bob"}})
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["limit"] == "0.50"
    assert body == as_json(services.policies.get_policy(ADMIN, body["id"]))
    assert api.get(f"/api/v1/policies/{body['id']}").json() == body
    updated = api.patch(f"/api/v1/policies/{body['id']}", json={"limit": "0.75", "version": body["version"]})
    assert updated.status_code == 200
    assert updated.json()["limit"] == "0.75"
    assert str(services.policies.get_policy(ADMIN, body["id"]).limit) == "0.75"
    assert api.delete(f"/api/v1/policies/{body['id']}").status_code == 204
    assert api.get(f"/api/v1/policies/{body['id']}").status_code == 404


def test_policy_errors_carry_the_service_message(api: TestClient, services: BudgetServices) -> None:
    bad = {"name": "x", "limit": "-1", "period": "fortnight"}
    answer = api.post("/api/v1/policies", json=bad)
    assert answer.status_code == 400
    assert answer.json() == {
        "error": {"status": 400, "message": service_error(lambda: services.policies.create_policy(ADMIN, bad))}
    }
    duplicate = api.post("/api/v1/policies", json={"name": "team-monthly", "limit": "1.00"})
    assert duplicate.status_code == 409
    assert "team-monthly" in duplicate.json()["error"]["message"]
    policy = services.policies.list_policies(ADMIN)[0]
    stale = api.patch(f"/api/v1/policies/{policy.id}", json={"limit": "5.00", "version": policy.version + 7})
    assert stale.status_code == 409
    assert f"at version {policy.version}" in stale.json()["error"]["message"]
    assert api.get("/api/v1/policies/999999").status_code == 404
    assert api.get("/api/v1/policies/not-a-number").status_code == 400
    assert (
        api.post("/api/v1/policies", content=b"[1, 2]", headers={"content-type": "application/json"}).status_code == 400
    )


def test_standing_and_audit(api: TestClient, services: BudgetServices) -> None:
    policy = services.policies.list_policies(ADMIN, filters={"name": "team-monthly"})[0]
    standing = api.get(f"/api/v1/policies/{policy.id}/standing").json()
    summary = services.tracking.get_usage_summary(policy.scope, policy.period, actor=ADMIN)
    assert standing["spent"] == str(summary.total_cost) == "0.30"
    assert standing["limit"] == "1.00"
    assert standing["percent_used"] == "30.0"
    audit = api.get("/api/v1/audit", params={"limit": 5}).json()
    trail = services.policies.audit_trail(ADMIN, 5)
    assert [(e["action"], e["object_id"], e["actor"]) for e in audit] == [
        (e["action"], e["object_id"], e["actor"]) for e in trail
    ]
    assert len(audit) == 2


def test_usage_pages_walk_every_row_once_in_service_order(api: TestClient, services: BudgetServices) -> None:
    expected = [r.call_id for r in services.tracking.list_usage(ADMIN, 1000)]
    seen: list[str] = []
    cursor = None
    for _ in range(20):
        params = {"limit": 7, **({"cursor": cursor} if cursor else {})}
        page = api.get("/api/v1/usage", params=params).json()
        seen += [r["call_id"] for r in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == expected
    assert len(expected) == 30


def test_usage_filters_match_the_service(api: TestClient, services: BudgetServices) -> None:
    got = api.get("/api/v1/usage", params={"provider": "openai", "actor": "alice", "limit": 100}).json()["items"]
    want = services.tracking.list_usage(ADMIN, 100, {"provider": "openai", "actor": "alice"})
    assert got == as_json(want)
    assert got
    tagged = api.get("/api/v1/usage", params={"tag": "team=search", "limit": 100}).json()["items"]
    assert tagged and all(r["tags"]["team"] == "search" for r in tagged)
    assert len(tagged) == 15


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"cursor": "!!nope"}, "cursor"),
        ({"since": "2026-03-10", "until": "2026-03-01"}, "since must be before until"),
        ({"since": "yesterday"}, "since"),
        ({"limit": "0"}, "limit"),
        ({"provider": "x" * 5000}, "provider"),
    ],
)
def test_bad_usage_queries_are_400_with_the_reason(api: TestClient, params: dict[str, str], message: str) -> None:
    answer = api.get("/api/v1/usage", params=params)
    assert answer.status_code == 400
    assert message in answer.json()["error"]["message"]


def test_usage_export_csv_neutralises_formulas(api: TestClient, services: BudgetServices) -> None:
    record(services, 1, category="=HYPERLINK(1)", prefix="formula")
    answer = api.get("/api/v1/usage/export", params={"format": "csv", "category": "=HYPERLINK(1)"})
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(answer.text)))
    assert len(rows) == 1
    assert rows[0]["category"] == "'=HYPERLINK(1)"
    everything = api.get("/api/v1/usage/export", params={"format": "json"}).json()
    assert len(everything) == 31
    assert api.get("/api/v1/usage/export", params={"format": "xlsx"}).status_code == 400


@pytest.mark.parametrize(
    ("kind", "params", "call"),
    [
        ("summary", {"period": "month"}, lambda s: s.tracking.get_usage_summary(None, "month", actor=ADMIN)),
        (
            "by",
            {"dimension": "actor", "period": "day"},
            lambda s: s.tracking.get_spend_by("actor", None, "day", actor=ADMIN),
        ),
        (
            "trend",
            {"granularity": "hour", "periods": "5"},
            lambda s: s.tracking.get_spend_trend(None, 5, granularity="hour", actor=ADMIN),
        ),
        ("compare", {"period": "week"}, lambda s: s.tracking.compare_periods(None, "week", actor=ADMIN)),
        (
            "projection",
            {"period": "month", "scope": "actor=alice"},
            lambda s: s.tracking.get_projection({"actor": "alice"}, "month", actor=ADMIN),
        ),
    ],
)
def test_reports_equal_the_tracking_service(
    api: TestClient, services: BudgetServices, kind: str, params: dict[str, str], call: Any
) -> None:
    answer = api.get(f"/api/v1/reports/{kind}", params=params)
    assert answer.status_code == 200
    assert answer.json() == as_json(call(services))
    exported = api.get(f"/api/v1/reports/{kind}/export", params={**params, "format": "csv"})
    assert exported.status_code == 200
    assert exported.text.count("\n") >= 2


def test_report_errors(api: TestClient) -> None:
    assert api.get("/api/v1/reports/nonsense").status_code == 400
    assert "dimension" in api.get("/api/v1/reports/by", params={"dimension": "colour"}).json()["error"]["message"]
    assert api.get("/api/v1/reports/summary", params={"period": "fortnight"}).status_code == 400
    assert api.get("/api/v1/reports/projection", params={"period": "total"}).status_code == 400
    svg = api.get("/api/v1/reports/trend/export", params={"format": "svg"})
    assert svg.headers["content-type"].startswith("image/svg+xml")
    assert svg.text.startswith("<svg")
    assert api.get("/api/v1/reports/summary/export", params={"format": "svg"}).status_code == 400


def test_alert_configs_add_snooze_remove(api: TestClient, services: BudgetServices) -> None:
    assert api.get("/api/v1/alerts/configs").json() == as_json(services.alerts.list_alerts(ADMIN))
    created = api.post("/api/v1/alerts/configs", json={"policy": "alice-daily", "threshold": 90, "sinks": ["log"]})
    assert created.status_code == 201
    config_id = created.json()["id"]
    assert config_id in [c.id for c in services.alerts.list_alerts(ADMIN)]
    snoozed = api.post(f"/api/v1/alerts/configs/{config_id}/snooze", json={"hours": 2})
    assert snoozed.status_code == 200
    assert snoozed.json()["snoozed_until"] is not None
    both = api.post(f"/api/v1/alerts/configs/{config_id}/snooze", json={"hours": 2, "until": "2027-01-01"})
    assert both.status_code == 400
    assert "exactly one" in both.json()["error"]["message"]
    bad = api.post("/api/v1/alerts/configs", json={"policy": "alice-daily", "threshold": -5})
    assert bad.status_code == 400
    assert "threshold" in bad.json()["error"]["message"]
    assert api.post("/api/v1/alerts/configs", json={"policy": "nope", "threshold": 5}).status_code in (400, 404)
    assert api.delete(f"/api/v1/alerts/configs/{config_id}").status_code == 204
    assert config_id not in [c.id for c in services.alerts.list_alerts(ADMIN)]
    assert api.delete(f"/api/v1/alerts/configs/{config_id}").status_code == 404


def test_triggered_alerts_acknowledge_and_deliveries(api: TestClient, services: BudgetServices) -> None:
    active = api.get("/api/v1/alerts").json()
    assert active == as_json(services.alerts.get_active_alerts(ADMIN))
    assert len(active) == 1
    alert_id = active[0]["id"]
    acked = api.post(f"/api/v1/alerts/{alert_id}/acknowledge")
    assert acked.status_code == 200
    assert acked.json()["acknowledged_by"] == "ada"
    assert api.get("/api/v1/alerts").json() == []
    assert [a["id"] for a in api.get("/api/v1/alerts", params={"state": "acknowledged"}).json()] == [alert_id]
    assert len(api.get("/api/v1/alerts", params={"state": "all"}).json()) == 1
    assert api.get("/api/v1/alerts", params={"state": "weird"}).status_code == 400
    assert api.post("/api/v1/alerts/987654/acknowledge").status_code == 404
    resolved = api.post(f"/api/v1/alerts/{alert_id}/resolve")
    assert resolved.status_code == 200 and resolved.json()["resolved_at"] is not None
    assert services.alerts.get_alert(ADMIN, alert_id).resolved_at is not None
    assert api.post("/api/v1/alerts/987654/resolve").status_code == 404
    assert api.get("/api/v1/alerts/deliveries").json() == as_json(services.alerts.list_deliveries(ADMIN))
    assert api.get("/api/v1/alerts/deliveries", params={"status": "all"}).json() == as_json(
        services.alerts.deliveries(ADMIN)
    )
    assert api.get("/api/v1/alerts/deliveries", params={"status": "lost"}).status_code == 400


def test_openapi_describes_every_resource(api: TestClient) -> None:
    spec = api.get("/api/v1/openapi.json").json()
    for path in ("/api/v1/policies", "/api/v1/usage", "/api/v1/reports/{kind}", "/api/v1/alerts/configs"):
        assert path in spec["paths"]
    assert "Policy" in spec["components"]["schemas"]


@pytest.mark.parametrize("who", ["writer", "reader"])
def test_roles_below_admin_get_403_on_the_audit(console: tuple[Any, dict[str, str]], who: str) -> None:
    for client in bearer(console, who):
        answer = client.get("/api/v1/audit")
        assert answer.status_code == 403
        assert "budget:admin" in answer.json()["error"]["message"]


def test_writer_can_change_policies(console: tuple[Any, dict[str, str]], services: BudgetServices) -> None:
    for client in bearer(console, "writer"):
        assert (
            client.post("/api/v1/policies", json={"name": "w", "limit": "1", "scope": {"actor": "w"}}).status_code
            == 201
        )
    assert [p.name for p in services.policies.list_policies(WRITER) if p.name == "w"] == ["w"]
    assert READER.roles == frozenset({"budget:read"})
