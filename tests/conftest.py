"""Shared fixtures: isolated settings and store per test, a controllable clock, a host plugin manager."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pluggy
import pytest

import hookspecs.specs as host_specs
from atlas_budget_plugin import BudgetServices, BudgetSettings, bootstrap
from atlas_budget_plugin.plugin import BudgetPlugin
from atlas_budget_plugin.types import Actor, Alert

from .backends import server_url


def sample_alert(message: str = "80% used") -> Alert:
    """A triggered alert as sinks receive it, for tests of sinks themselves."""
    now = datetime.now(timezone.utc)
    return Alert(
        id=1,
        config_id=1,
        tenant="t",
        policy="p",
        kind="actual",
        severity="critical",
        threshold=80,
        window_start=now,
        spent=Decimal(8),
        limit=Decimal(10),
        message=message,
        triggered_at=now,
    )


class FakeClock:
    """A clock tests move by hand."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


@pytest.fixture(autouse=True)
def isolated_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No test reads or writes the real user's config, data or ATLAS_* variables."""
    home = tmp_path_factory.mktemp("home")
    for name in list(os.environ):
        if name.startswith(("ATLAS_BUDGET_", "ATLAS_PLUGINS_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / ".local" / "share"))
    return home


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2026, 3, 10, 12, 0, tzinfo=timezone.utc))


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """SQLite by default; BUDGET_TEST_BACKEND=postgres|mysql runs the same tests on that server (emptied)."""
    backend = os.environ.get("BUDGET_TEST_BACKEND", "sqlite")
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'budget.db'}"
    return server_url(backend)


@pytest.fixture
def make_services(db_url: str, clock: FakeClock, tmp_path: Path) -> Iterator[Any]:
    made: list[BudgetServices] = []

    def make(**overrides: Any) -> BudgetServices:
        overrides.setdefault("database_url", db_url)
        settings = BudgetSettings.load(None, **overrides)  # ATLAS_BUDGET_CONFIG is unset: defaults
        services = bootstrap(settings, clock=clock)
        made.append(services)
        return services

    yield make
    for services in made:
        services.close()


@pytest.fixture
def services(make_services: Any) -> BudgetServices:
    return make_services()


@pytest.fixture
def admin() -> Actor:
    return Actor(id="root", tenant="default", roles=frozenset({"budget:admin"}))


@pytest.fixture
def host(services: BudgetServices) -> pluggy.PluginManager:
    """A host plugin manager with the budget plugin registered in-process."""
    pm = pluggy.PluginManager(host_specs.PROJECT)
    pm.add_hookspecs(host_specs)
    pm.register(BudgetPlugin(services), name="budget")
    return pm
