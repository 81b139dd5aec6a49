"""Shared by the console's tests (in-process and browser): seeded services, signed-in clients, a live server."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import pytest

from atlas_budget_plugin.bootstrap import BudgetServices
from atlas_budget_plugin.types import Actor
from atlas_budget_plugin.web import Logins, create_app
from hookspecs import LLMCall, LLMUsage

ADMIN = Actor(id="ada", tenant="default", roles=frozenset({"budget:admin"}))
WRITER = Actor(id="wes", tenant="default", roles=frozenset({"budget:write"}))
READER = Actor(id="rae", tenant="default", roles=frozenset({"budget:read"}))
OTHER = Actor(id="otto", tenant="other", roles=frozenset({"budget:admin"}))
TOKENS = {"admin": ADMIN, "writer": WRITER, "reader": READER, "other": OTHER}


def record(services: BudgetServices, n: int, tenant: str = "default", cost: str = "0.01", **fields: Any) -> None:
    """``n`` calls with a provider-reported cost, spread over actors and models."""
    for i in range(n):
        call = LLMCall(
            call_id=f"{tenant}-{fields.get('prefix', 'c')}-{i}-{time.monotonic_ns()}",
            provider=fields.get("provider", ("openai", "anthropic")[i % 2]),
            model=fields.get("model", ("gpt-4o-mini", "claude-3-5-haiku-latest")[i % 2]),
            tenant=tenant,
            actor=fields.get("actor", ("alice", "bob", "carol")[i % 3]),
            category=fields.get("category", "chat"),
            tags=fields.get("tags", {"team": "search" if i % 2 else "ops"}),
        )
        services.tracking.record_call(call, LLMUsage(input_tokens=100 + i, output_tokens=20, cost=Decimal(cost)))


def seed(services: BudgetServices) -> None:
    """Two tenants: policies, usage and one triggered alert in ``default``; a secret policy in ``other``."""
    system = Actor.system()
    services.policies.create_policy(system, {"name": "team-monthly", "limit": "1.00", "period": "month"})
    services.policies.create_policy(
        system, {"name": "alice-daily", "limit": "0.10", "period": "day", "scope": {"actor": "alice"}}
    )
    services.alerts.configure_alert(system, {"policy": "team-monthly", "threshold": 10, "sinks": ["log"]})
    record(services, 30)
    services.alerts.evaluate_alerts()
    other = Actor.system("other")
    services.policies.create_policy(other, {"name": "other-secret", "limit": "9.00", "period": "month"})
    services.alerts.configure_alert(other, {"policy": "other-secret", "threshold": 1, "sinks": ["log"]})
    record(services, 5, tenant="other", cost="0.50", actor="mallory")
    services.alerts.evaluate_alerts()


def make_app(services: BudgetServices, poll_seconds: float = 5.0) -> tuple[Any, dict[str, str]]:
    """The console app and a token for each actor of :data:`TOKENS` (token = name-token, for readable tests)."""
    logins = Logins()
    tokens = {name: logins.add(actor, f"{name}-token-0123456789") for name, actor in TOKENS.items()}
    return create_app(services, logins, secret_key="test-secret", poll_seconds=poll_seconds), tokens


def csrf_of(html: str) -> str:
    found = re.search(r'<meta name="csrf-token" content="([^"]*)"', html)
    assert found, "the page has no CSRF meta tag"
    return found.group(1)


@contextmanager
def live_server(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port in a thread; yields the base URL."""
    import uvicorn

    from atlas_budget_plugin.web.server import bind

    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the console did not start within 10 s"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(autouse=True)
def console_server_stubbed(monkeypatch: pytest.MonkeyPatch) -> None:
    """`atlas-budget ui` binds its socket and prints its login link, then returns instead of serving forever.

    For tests that invoke every command (the command-line fuzz): they check the arguments, not a server.
    """

    def serve(services: Any, actor: Actor, sock: Any, announce: Any, token: str | None = None) -> None:
        host, port = sock.getsockname()[:2]
        announce(f"http://{host}:{port}/login?token=stub")
        sock.close()

    monkeypatch.setattr("atlas_budget_plugin.web.server.serve", serve)
