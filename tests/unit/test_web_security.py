"""The console's safety: no way in without the token, roles and tenants enforced, CSRF, escaping, headers."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("fastapi", reason="the console needs the ui extra")
from click.testing import CliRunner
from fastapi.testclient import TestClient
from starlette.routing import Mount

from atlas_budget_plugin.bootstrap import BudgetServices
from atlas_budget_plugin.cli import main
from atlas_budget_plugin.types import Actor
from atlas_budget_plugin.web.auth import CONTENT_SECURITY_POLICY

from ..browser.support import ADMIN, OTHER, csrf_of, make_app, seed


@pytest.fixture
def console(services: BudgetServices) -> tuple[Any, dict[str, str]]:
    seed(services)
    return make_app(services)


@pytest.fixture
def anonymous(console: tuple[Any, dict[str, str]]) -> Iterator[TestClient]:
    with TestClient(console[0], follow_redirects=False) as client:
        yield client


def signed_in(console: tuple[Any, dict[str, str]], who: str) -> TestClient:
    app, tokens = console
    client = TestClient(app, follow_redirects=False)
    assert client.get("/login", params={"token": tokens[who]}).status_code == 303
    return client


def routes(app: Any) -> list[tuple[str, str]]:
    """Every (method, path) the console serves, with ids filled in (included routers opened up)."""
    found = []
    pending = list(app.routes)
    while pending:
        route = pending.pop(0)
        inner = getattr(route, "original_router", None)
        if inner is not None:
            pending += list(inner.routes)
            continue
        if isinstance(route, Mount) or not hasattr(route, "methods"):
            continue
        path = route.path
        if path == "/login":
            continue
        path = re.sub(r"\{(\w+_id)\}", "1", path).replace("{kind}", "summary")
        for method in sorted(route.methods or ()):
            if method != "HEAD":
                found.append((method, path))
    return found


def test_every_page_and_api_route_refuses_a_request_without_session_or_token(
    console: tuple[Any, dict[str, str]], anonymous: TestClient
) -> None:
    served = routes(console[0])
    assert len(served) >= 35
    assert ("GET", "/api/v1/openapi.json") in served
    for method, path in served:
        answer = anonymous.request(method, path)
        if path == "/" and method == "GET":
            assert answer.status_code == 303
            assert answer.headers["location"] == "/login"
            continue
        assert answer.status_code == 401, (method, path, answer.status_code)
        wrong = anonymous.request(method, path, headers={"authorization": "Bearer not-the-token"})
        assert wrong.status_code == 401, (method, path)


def test_a_wrong_token_or_a_forged_cookie_does_not_sign_in(anonymous: TestClient) -> None:
    assert anonymous.get("/login", params={"token": "guess"}).status_code == 401
    anonymous.cookies.set("atlas_budget_session", "eyJsb2dpbiI6ICJ4In0=.forged.sig")
    assert anonymous.get("/api/v1/me").status_code == 401


def test_the_login_link_starts_a_session_and_logout_ends_it(console: tuple[Any, dict[str, str]]) -> None:
    client = signed_in(console, "admin")
    page = client.get("/")
    assert page.status_code == 200
    assert "ada · tenant default" in page.text
    assert client.post("/logout", data={"csrf_token": csrf_of(page.text)}).status_code == 303
    assert client.get("/api/v1/me").status_code == 401


def test_csrf_less_and_cross_site_posts_are_refused(
    console: tuple[Any, dict[str, str]], services: BudgetServices
) -> None:
    client = signed_in(console, "admin")
    token = csrf_of(client.get("/policies").text)
    form = {"name": "sneaky", "limit": "1.00", "period": "day", "scope": "actor=zed", "enabled": "on"}
    assert client.post("/policies", data=form).status_code == 403
    assert client.post("/policies", data={**form, "csrf_token": "wrong"}).status_code == 403
    assert client.post("/api/v1/policies", json={"name": "sneaky", "limit": "1"}).status_code == 403
    cross = client.post("/policies", data={**form, "csrf_token": token}, headers={"origin": "https://evil.example"})
    assert cross.status_code == 403
    assert "sneaky" not in [p.name for p in services.policies.list_policies(ADMIN)]
    assert client.post("/policies", data={**form, "csrf_token": token}).status_code == 303
    header = client.post(
        "/api/v1/policies", json={"name": "s2", "limit": "1", "scope": {"actor": "s2"}}, headers={"x-csrf-token": token}
    )
    assert header.status_code == 201
    assert {"sneaky", "s2"} <= {p.name for p in services.policies.list_policies(ADMIN)}


def test_read_only_role_sees_no_change_controls_and_cannot_change(
    console: tuple[Any, dict[str, str]], services: BudgetServices
) -> None:
    client = signed_in(console, "reader")
    before = services.policies.list_policies(ADMIN)
    policies = client.get("/policies").text
    assert "Create policy" not in policies
    assert "/delete" not in policies
    assert "needs budget:write" in policies
    alerts = client.get("/alerts").text
    assert "Acknowledge" not in alerts
    assert "Add alert" not in alerts
    token = csrf_of(policies)
    policy_id = before[0].id
    alert_id = services.alerts.get_active_alerts(ADMIN)[0].id
    config_id = services.alerts.list_alerts(ADMIN)[0].id
    for path, data in [
        ("/policies", {"name": "r", "limit": "1"}),
        (f"/policies/{policy_id}", {"name": "r", "limit": "1", "version": "0"}),
        (f"/policies/{policy_id}/enabled", {"enabled": "false", "version": "0"}),
        (f"/policies/{policy_id}/delete", {}),
        (f"/alerts/{alert_id}/acknowledge", {}),
        ("/alerts/configs", {"policy": "team-monthly", "threshold": "5"}),
        (f"/alerts/configs/{config_id}/snooze", {"hours": "1"}),
        (f"/alerts/configs/{config_id}/remove", {}),
    ]:
        answer = client.post(path, data={**data, "csrf_token": token})
        assert answer.status_code == 403, path
        assert "budget:write" in answer.text
    headers = {"x-csrf-token": token}
    for method, path, body in [
        ("POST", "/api/v1/policies", {"name": "r", "limit": "1"}),
        ("PATCH", f"/api/v1/policies/{policy_id}", {"limit": "9"}),
        ("DELETE", f"/api/v1/policies/{policy_id}", None),
        ("POST", f"/api/v1/alerts/{alert_id}/acknowledge", None),
        ("POST", "/api/v1/alerts/configs", {"policy": "team-monthly", "threshold": 5}),
        ("POST", f"/api/v1/alerts/configs/{config_id}/snooze", {"hours": 1}),
        ("DELETE", f"/api/v1/alerts/configs/{config_id}", None),
    ]:
        answer = client.request(method, path, json=body, headers=headers)
        assert answer.status_code == 403, (method, path)
        assert answer.json()["error"]["status"] == 403
    assert services.policies.list_policies(ADMIN) == before
    assert len(services.alerts.get_active_alerts(ADMIN)) == 1


def test_tenant_a_never_sees_tenant_b(console: tuple[Any, dict[str, str]], services: BudgetServices) -> None:
    client = signed_in(console, "admin")
    secret = services.policies.list_policies(OTHER)[0]
    other_alert = services.alerts.get_active_alerts(OTHER)[0]
    other_config = services.alerts.list_alerts(OTHER)[0]
    token = csrf_of(client.get("/").text)
    headers = {"x-csrf-token": token}
    assert client.get(f"/api/v1/policies/{secret.id}").status_code == 404
    assert client.get(f"/policies/{secret.id}").status_code == 404
    assert client.get(f"/api/v1/policies/{secret.id}/standing").status_code == 404
    assert client.patch(f"/api/v1/policies/{secret.id}", json={"limit": "1"}, headers=headers).status_code == 404
    assert client.delete(f"/api/v1/policies/{secret.id}", headers=headers).status_code == 404
    assert client.post(f"/api/v1/alerts/{other_alert.id}/acknowledge", headers=headers).status_code == 404
    assert client.delete(f"/api/v1/alerts/configs/{other_config.id}", headers=headers).status_code == 404
    for page in ("/", "/policies", "/history", "/alerts", "/reports", "/api/v1/usage?limit=500", "/api/v1/alerts"):
        text = client.get(page).text
        assert "other-secret" not in text, page
        assert "mallory" not in text, page
    assert services.alerts.get_active_alerts(OTHER) == [other_alert]
    assert services.policies.get_policy(OTHER, secret.id) == secret


def test_script_in_a_stored_name_renders_as_text(console: tuple[Any, dict[str, str]], services: BudgetServices) -> None:
    evil = "<script>alert(1)</script>"
    created = services.policies.create_policy(
        Actor.system(), {"name": evil, "limit": "1.00", "period": "day", "scope": {"actor": evil}}
    )
    client = signed_in(console, "admin")
    for page in ("/", "/policies", f"/policies/{created.id}"):
        text = client.get(page).text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text, page
        assert evil not in text, page


def test_every_answer_carries_the_strict_content_security_policy(
    console: tuple[Any, dict[str, str]], anonymous: TestClient
) -> None:
    client = signed_in(console, "admin")
    for answer in (client.get("/"), client.get("/api/v1/policies"), anonymous.get("/login"), client.get("/nope")):
        assert answer.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert answer.headers["x-frame-options"] == "DENY"
        assert answer.headers["referrer-policy"] == "same-origin"
    assert "'unsafe-inline'" not in CONTENT_SECURITY_POLICY
    cookie = client.get("/login", params={"token": console[1]["admin"]}).headers["set-cookie"].lower()
    assert "httponly" in cookie
    assert "samesite=strict" in cookie


# -- the `ui` command -------------------------------------------------------------------------------------------


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Replace the server loop: record what `atlas-budget ui` would serve and announce its link."""
    calls: list[dict[str, Any]] = []

    def fake_serve(services: Any, actor: Actor, sock: Any, announce: Any, token: str | None = None) -> None:
        host, port = sock.getsockname()[:2]
        announce(f"http://{host}:{port}/login?token=TOKEN")
        calls.append({"actor": actor, "host": host, "port": port})
        sock.close()

    monkeypatch.setattr("atlas_budget_plugin.web.server.serve", fake_serve)
    return calls


def test_ui_binds_loopback_by_default_and_prints_the_login_link(tmp_path: Any, served: list[dict[str, Any]]) -> None:
    result = CliRunner().invoke(main, ["--database", f"sqlite:///{tmp_path}/ui.db", "ui", "--port", "0"])
    assert result.exit_code == 0, result.output
    assert served[0]["host"] == "127.0.0.1"
    assert served[0]["actor"] == Actor.system()
    assert re.search(r"http://127\.0\.0\.1:\d+/login\?token=TOKEN", result.output)
    assert "warning" not in result.output


def test_ui_warns_on_a_non_loopback_address(tmp_path: Any, served: list[dict[str, Any]]) -> None:
    result = CliRunner().invoke(
        main, ["--database", f"sqlite:///{tmp_path}/ui.db", "ui", "--host", "0.0.0.0", "--port", "0"]
    )
    assert result.exit_code == 0, result.output
    assert served[0]["host"] == "0.0.0.0"
    assert "not a loopback address" in result.output


def test_ui_refuses_an_actor_without_a_role(tmp_path: Any, served: list[dict[str, Any]]) -> None:
    result = CliRunner().invoke(main, ["--database", f"sqlite:///{tmp_path}/ui.db", "--actor", "nobody", "ui"])
    assert result.exit_code == 2
    assert "has no budget role" in result.output
    assert served == []


def test_ui_demo_fills_the_store_it_serves(tmp_path: Any, served: list[dict[str, Any]]) -> None:
    result = CliRunner().invoke(main, ["--database", f"sqlite:///{tmp_path}/demo.db", "ui", "--demo", "--port", "0"])
    assert result.exit_code == 0, result.output
    assert "ATLAS budget demo" in result.output
    assert "login?token=" in result.output
    assert (tmp_path / "demo.db").stat().st_size > 0
