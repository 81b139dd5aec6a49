"""Store opening and schema versions; the bus and the atlas_budget extension hooks."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import peewee as pw
import pytest

from atlas_budget_plugin.bus import MessageBus
from atlas_budget_plugin.exceptions import SettingsError, StoreUnavailable
from atlas_budget_plugin.extensions import Extensions, get_plugin_manager
from atlas_budget_plugin.hookspecs import hookimpl
from atlas_budget_plugin.store import database
from atlas_budget_plugin.store.models import SCHEMA_VERSION, SchemaVersion
from atlas_budget_plugin.types import Alert, BudgetEvent, BudgetThresholdEvent

from ..conftest import sample_alert


def test_sqlite_url_creates_folders_and_schema(tmp_path: Path) -> None:
    db = database.open_database(f"sqlite:///{tmp_path}/deep/er/budget.db")
    assert database.initialize(db) == SCHEMA_VERSION
    assert database.schema_version(db) == SCHEMA_VERSION
    assert (tmp_path / "deep" / "er" / "budget.db").exists()
    assert db.execute_sql("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert database.initialize(db) == SCHEMA_VERSION  # idempotent
    db.close()


def test_memory_and_bad_urls() -> None:
    assert isinstance(database.open_database("sqlite:///:memory:"), pw.SqliteDatabase)
    with pytest.raises(SettingsError, match="unsupported scheme 'oracle'"):
        database.open_database("oracle://x/y")
    with pytest.raises(SettingsError, match="is invalid"):
        database.open_database("postgresql://host-only")


def test_migrations_run_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = database.open_database(f"sqlite:///{tmp_path}/m.db")
    database.initialize(db)
    ran = []
    now = SCHEMA_VERSION
    monkeypatch.setattr(database, "SCHEMA_VERSION", now + 2)
    monkeypatch.setattr(database, "MIGRATIONS", {now: lambda d: ran.append(now), now + 1: lambda d: ran.append(9)})
    assert database.initialize(db) == now + 2 and ran == [now, 9]
    assert SchemaVersion.get().version == now + 2
    monkeypatch.setattr(database, "SCHEMA_VERSION", now + 1)
    with pytest.raises(StoreUnavailable, match="newer than this"):
        database.initialize(db)
    db.close()


def test_unreachable_database_is_store_unavailable() -> None:
    db = database.open_database("postgresql://nobody@127.0.0.1:1/none")
    with pytest.raises(StoreUnavailable, match="cannot connect"):
        database.initialize(db)


def event() -> BudgetThresholdEvent:
    from datetime import datetime, timezone
    from decimal import Decimal

    return BudgetThresholdEvent(
        topic="budget.threshold_reached",
        tenant="t",
        policy_id=1,
        policy_name="p",
        threshold=50,
        window_start=datetime.now(timezone.utc),
        spent=Decimal(1),
        limit=Decimal(2),
    )


class Bridge:
    def __init__(self) -> None:
        self.seen: list[BudgetEvent] = []

    @hookimpl
    def budget_event(self, event: BudgetEvent) -> None:
        self.seen.append(event)


class BrokenBridge:
    @hookimpl
    def budget_event(self, event: BudgetEvent) -> None:
        raise RuntimeError("bridge down")


def test_bus_fans_out_to_subscribers_and_hooks(caplog: pytest.LogCaptureFixture) -> None:
    pm = get_plugin_manager(load=False)
    bridge = Bridge()
    pm.register(BrokenBridge(), name="broken")
    pm.register(bridge, name="bridge")
    bus = MessageBus(Extensions(pm))
    got: list[str] = []
    unsubscribe = bus.subscribe("budget.threshold_*", lambda e: got.append(e.topic))
    bus.subscribe("budget.*", lambda e: 1 / 0)
    with caplog.at_level(logging.ERROR):
        bus.publish(event())
    assert got == ["budget.threshold_reached"] and len(bridge.seen) == 1
    assert "bridge down" in caplog.text or "broken" in caplog.text
    unsubscribe()
    unsubscribe()
    bus.publish(event())
    assert got == ["budget.threshold_reached"] and len(bridge.seen) == 2
    with pytest.raises(ValueError, match="unknown event topic"):
        bus.publish(BudgetEvent(topic="budget.nonsense", tenant="t"))


class Sink:
    def __init__(self) -> None:
        self.alerts: list[Alert] = []

    @hookimpl
    def budget_deliver_alert(self, alert: Alert) -> None:
        self.alerts.append(alert)


def test_deliver_to_named_sink_only(caplog: pytest.LogCaptureFixture) -> None:

    pm = get_plugin_manager()  # the installed built-ins, found through entry points
    sink = Sink()
    pm.register(sink, name="mine")
    ext = Extensions(pm)
    assert {"log", "mine"} <= set(ext.sink_names())
    alert = sample_alert("80% used")
    with caplog.at_level(logging.INFO, logger="atlas_budget_plugin.alerts"):
        ext.deliver(alert, "log")
    assert "80% used" in caplog.text and sink.alerts == []
    ext.deliver(alert, "mine")
    assert sink.alerts == [alert]
    with pytest.raises(LookupError, match="no alert sink named 'nope'"):
        ext.deliver(alert, "nope")
    infos = {i.name: i for i in ext.plugins()}
    assert infos["log"].distribution == "atlas-budget-plugin" and infos["log"].hooks == ("budget_deliver_alert",)


def test_extension_plugins_list_unregistered_names(monkeypatch: Any) -> None:
    pm = get_plugin_manager(load=False)
    assert Extensions(pm).plugins() == []


class Configured:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.seen: list[Any] = []

    @hookimpl
    def budget_configure(self, settings: Any) -> None:
        if self.fail:
            raise ValueError("needs a colour")
        self.seen.append(settings.sinks.get("configured"))


def test_budget_configure_hands_plugins_their_section(tmp_path: Path) -> None:
    from atlas_budget_plugin.settings import BudgetSettings

    settings = BudgetSettings.load(None, sinks={"configured": {"colour": "red"}})
    pm = get_plugin_manager(load=False)
    plugin = Configured()
    pm.register(plugin, name="configured")
    Extensions(pm).configure(settings)
    assert plugin.seen == [{"colour": "red"}]
    pm.register(Configured(fail=True), name="picky")
    with pytest.raises(
        SettingsError, match=r"plugin 'picky' refused its settings: needs a colour\. Fix its \[sinks.picky\]"
    ):
        Extensions(pm).configure(settings)


def test_group_commit_runs_each_body_in_its_own_savepoint(tmp_path: Path) -> None:
    """Bodies queued by many threads commit together; one body's error reaches only its own caller."""
    db = database.open_database(f"sqlite:///{tmp_path}/g.db")
    db.execute_sql("CREATE TABLE t (n INTEGER UNIQUE)")
    outcomes: dict[int, object] = {}

    def body(n: int) -> int:
        db.execute_sql("INSERT INTO t (n) VALUES (?)", (n,))
        if n % 7 == 3:
            raise ValueError(f"body {n} fails after writing")
        return n * 10

    def caller(n: int) -> None:
        try:
            outcomes[n] = database.run_grouped(db, lambda: body(n))
        except ValueError as exc:
            outcomes[n] = exc

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stored = {row[0] for row in db.execute_sql("SELECT n FROM t").fetchall()}
    failing = {n for n in range(40) if n % 7 == 3}
    assert stored == set(range(40)) - failing  # a failed body left nothing behind
    assert all(outcomes[n] == n * 10 for n in stored)
    assert all(isinstance(outcomes[n], ValueError) and str(n) in str(outcomes[n]) for n in failing)
    db.close()
