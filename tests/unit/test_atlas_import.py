"""Migration from ATLAS (#14 item 9): period aliases, channel names, and the idempotent importer."""

from __future__ import annotations

import json
import sqlite3
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner

from atlas_budget_plugin import BudgetServices
from atlas_budget_plugin.atlas_import import import_atlas, import_atlas_command, load_atlas_config
from atlas_budget_plugin.exceptions import ValidationError
from atlas_budget_plugin.periods import parse_period
from atlas_budget_plugin.types import Actor, AlertConfig, Policy

# ATLAS's budget tables as modules/budget/sql_models.py declares them (SQLAlchemy on SQLite).
ATLAS_SCHEMA = """
CREATE TABLE budget_policies (
    id VARCHAR(36) PRIMARY KEY, name VARCHAR(255) NOT NULL, description TEXT,
    scope VARCHAR(32) NOT NULL DEFAULT 'global', scope_id VARCHAR(255), period VARCHAR(32) NOT NULL DEFAULT 'monthly',
    limit_amount NUMERIC(20, 8) NOT NULL, soft_limit_percent INTEGER NOT NULL DEFAULT 80,
    action VARCHAR(32) NOT NULL DEFAULT 'warn', enabled BOOLEAN NOT NULL DEFAULT 1, priority INTEGER NOT NULL DEFAULT 0,
    rollover_enabled BOOLEAN NOT NULL DEFAULT 0, rollover_max_percent INTEGER NOT NULL DEFAULT 100,
    created_at DATETIME NOT NULL, updated_at DATETIME NOT NULL, metadata JSON
);
CREATE TABLE budget_usage_records (
    id VARCHAR(36) PRIMARY KEY, timestamp DATETIME NOT NULL, provider VARCHAR(64) NOT NULL, model VARCHAR(128) NOT NULL,
    operation_type VARCHAR(32) NOT NULL DEFAULT 'inference', input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0, cached_tokens INTEGER NOT NULL DEFAULT 0,
    cost_usd NUMERIC(20, 10) NOT NULL, user_id VARCHAR(255), tenant_id VARCHAR(255), session_id VARCHAR(255),
    conversation_id VARCHAR(255), request_id VARCHAR(255), metadata JSON
);
CREATE TABLE budget_alerts (
    id VARCHAR(36) PRIMARY KEY, policy_id VARCHAR(36) NOT NULL, trigger_type VARCHAR(32) NOT NULL,
    severity VARCHAR(16) NOT NULL, message TEXT NOT NULL, current_spend NUMERIC(20, 8) NOT NULL,
    limit_amount NUMERIC(20, 8) NOT NULL, threshold_percent INTEGER NOT NULL, triggered_at DATETIME NOT NULL,
    acknowledged BOOLEAN NOT NULL DEFAULT 0, acknowledged_at DATETIME, acknowledged_by VARCHAR(255), metadata JSON
);
CREATE TABLE budget_rollovers (
    id VARCHAR(36) PRIMARY KEY, policy_id VARCHAR(36) NOT NULL UNIQUE, amount NUMERIC(20, 8) NOT NULL,
    period_start DATETIME NOT NULL, period_end DATETIME NOT NULL, created_at DATETIME NOT NULL,
    updated_at DATETIME NOT NULL
);
"""

NOW = "2026-03-01 00:00:00.000000+00:00"
POLICIES = [
    # id, name, scope, scope_id, period, limit, soft %, action, rollover, rollover max %
    ("p1", "Monthly Global", "global", None, "monthly", 100.0, 80, "block", 0, 100),
    ("p2", "Alice Daily", "user", "alice", "daily", "5.00000000", 50, "warn", 1, 40),
    ("p3", "OpenAI Week", "provider", "openai", "rolling_7d", 20, 90, "soft_block", 0, 100),
    ("p4", "Agent One", "agent", "a1", "weekly", 3, 80, "throttle", 0, 100),
    ("p5", "Nebula", "galaxy", "x", "monthly", 1, 80, "warn", 0, 100),
    ("p6", "Free", "user", "bob", "monthly", 0, 80, "warn", 0, 100),
    ("p7", "Forever", "user", "carol", "fortnightly", 1, 80, "warn", 0, 100),
]
USAGE = [
    # id, timestamp, provider, model, operation, in, out, cached, cost, user, tenant, session, metadata
    (
        "u1",
        "2026-03-10 09:00:00.000000+00:00",
        "openai",
        "gpt-4o",
        "chat_completion",
        1200,
        300,
        100,
        0.0125,
        "alice",
        None,
        "s1",
        None,
    ),
    (
        "u2",
        "2026-03-10T10:30:00",
        "openai",
        "dall-e-3",
        "image_generation",
        0,
        0,
        0,
        "0.08",
        "alice",
        None,
        None,
        json.dumps({"images_generated": 2, "image_size": "1024x1024", "image_quality": "hd"}),
    ),
    (
        "u3",
        "2026-02-14 08:00:00+00:00",
        "anthropic",
        "claude-3-5-sonnet",
        "chat_completion",
        10,
        20,
        0,
        "1.5",
        "bob",
        None,
        None,
        None,
    ),
    ("u4", "2026-03-09 08:00:00+00:00", "openai", "gpt-4o", "chat_completion", 1, 1, 0, "-1", "bob", None, None, None),
]
CONFIG: dict[str, Any] = {
    "BUDGET_POLICIES": [
        {
            "id": "c1",
            "name": "Team Red",
            "scope": "team",
            "scope_id": "red",
            "period": "quarterly",
            "limit_amount": "250",
            "soft_limit_percent": 0.6,
            "hard_limit_action": "warn",
            "model_limits": {"gpt-4o": "100"},
        },
    ],
    "BUDGET_ALERTS": {
        "enabled": True,
        "rules": [
            {"threshold": 0.8, "severity": "warning", "channels": ["email", "in_app"], "cooldown_minutes": 60},
            {"threshold": 1.0, "severity": "critical", "trigger": "limit_exceeded", "channels": ["webhook"]},
            {"threshold": 2.0, "severity": "warning", "trigger": "anomaly_detected"},
        ],
    },
}


def atlas_database(path: Path) -> Path:
    """An ATLAS installation's budget database, as its SQLAlchemy models write it on SQLite."""
    db = sqlite3.connect(path)
    db.executescript(ATLAS_SCHEMA)
    for p in POLICIES:
        db.execute(
            "INSERT INTO budget_policies (id, name, scope, scope_id, period, limit_amount, soft_limit_percent, action,"
            " rollover_enabled, rollover_max_percent, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (*p, NOW, NOW),
        )
    for u in USAGE:
        db.execute(
            "INSERT INTO budget_usage_records (id, timestamp, provider, model, operation_type, input_tokens,"
            " output_tokens, cached_tokens, cost_usd, user_id, tenant_id, session_id, metadata)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            u,
        )
    db.execute(
        "INSERT INTO budget_alerts VALUES ('al1', 'p1', 'threshold_reached', 'warning', 'm', 80, 100, 80, ?, 0,"
        " NULL, NULL, NULL)",
        (NOW,),
    )
    db.commit()
    db.close()
    return path


@pytest.fixture
def atlas(tmp_path: Path) -> Path:
    return atlas_database(tmp_path / "atlas.db")


def test_import_twice_imports_once(services: BudgetServices, admin: Actor, atlas: Path) -> None:
    dry = import_atlas(services, atlas, config=CONFIG, dry_run=True)
    assert dry.dry_run and len(dry.policies_imported) == 5 and dry.usage_imported == 3
    assert services.policies.list_policies(admin) == [] and services.tracking.list_usage(admin) == []

    first = import_atlas(services, atlas, config=CONFIG)
    assert sorted(first.policies_imported) == ["Agent One", "Alice Daily", "Monthly Global", "OpenAI Week", "Team Red"]
    assert first.usage_imported == 3 and first.usage_cost == Decimal("1.5925")
    assert first.alerts_imported == 10  # two threshold rules on each of five policies
    unmapped = "\n".join(first.not_mapped)
    assert "policy 'Nebula': its scope 'galaxy' has no equivalent" in unmapped
    assert "policy 'Free': its limit_amount is 0" in unmapped
    assert "policy 'Forever': unknown period 'fortnightly'" in unmapped
    assert "trigger 'anomaly_detected': only spend thresholds map" in unmapped
    assert "1 usage record(s), e.g. u4: a negative cost_usd (-1)" in unmapped
    notes = "\n".join(first.notes)
    assert "ATLAS alert channel 'email' maps to the apprise sink, which cannot deliver" in notes
    assert "[sinks.apprise]" in notes and "[sinks.webhook]" in notes
    assert "ATLAS's throttle named no rate, so it is imported as warn" in notes
    assert "call tag 'agent'" in notes and "1 alert(s) ATLAS triggered" in notes

    second = import_atlas(services, atlas, config=CONFIG)
    assert not second.imported_anything
    assert len(second.policies_existing) == 5 and second.alerts_existing == 10 and second.usage_existing == 3
    assert len(services.tracking.list_usage(admin)) == 3 and len(services.alerts.list_alerts(admin)) == 10


def test_what_the_import_wrote(services: BudgetServices, admin: Actor, atlas: Path) -> None:
    import_atlas(services, atlas, config=CONFIG)
    by_name = {p.name: p for p in services.policies.list_policies(admin)}
    glob, alice, week, agent, red = (
        by_name[n] for n in ("Monthly Global", "Alice Daily", "OpenAI Week", "Agent One", "Team Red")
    )
    assert (glob.scope.as_dict(), glob.period, glob.limit, glob.enforcement) == ({}, "month", Decimal(100), "block")
    assert glob.thresholds == [80, 100]
    assert (alice.scope.as_dict(), alice.period, alice.thresholds) == ({"actor": "alice"}, "day", [50, 100])
    assert alice.rollover_cap == Decimal("2")  # 40% of 5.00
    assert (week.scope.as_dict(), week.period, week.enforcement) == ({"provider": "openai"}, "rolling:7d", "soft_block")
    assert (agent.scope.as_dict(), agent.enforcement) == ({"tag.agent": "a1"}, "warn")
    assert (red.scope.as_dict(), red.period, red.thresholds) == ({"team": "red"}, "quarter", [60, 100])
    if "model_limits" in Policy.model_fields:
        assert red.model_limits == {"gpt-4o": Decimal(100)}  # type: ignore[attr-defined]
    configs = [c for c in services.alerts.list_alerts(admin) if c.policy == "Alice Daily"]
    assert sorted((c.threshold, c.severity, c.cooldown, tuple(c.sinks)) for c in configs) == [
        (80, "warning", 3600, ("log",)),  # email cannot deliver yet; in_app is the log sink
        (100, "critical", 0, ("log",)),  # webhook has no url: the alert still goes somewhere
    ]
    records = {r.call_id: r for r in services.tracking.list_usage(admin)}
    chat, image, old = records["atlas:u1"], records["atlas:u2"], records["atlas:u3"]
    assert (chat.cost, chat.operation, chat.actor, chat.tags) == (Decimal("0.0125"), "chat", "alice", {"session": "s1"})
    assert (chat.input_tokens, chat.output_tokens, chat.cache_read_tokens) == (1200, 300, 100)
    assert chat.recorded_at.isoformat() == "2026-03-10T09:00:00+00:00"
    assert image.operation == "image" and image.units == {"images": Decimal(2)}
    assert image.recorded_at.isoformat() == "2026-03-10T10:30:00+00:00"  # naive ATLAS times are UTC
    assert old.recorded_at.month == 2
    # the imported history counts against the imported budgets
    day = services.tracking.get_usage_summary({"actor": "alice"}, "day", actor=admin)
    assert day.policy == "Alice Daily" and day.total_cost == Decimal("0.0925") and day.remaining == Decimal("4.9075")
    month = services.tracking.get_usage_summary(None, "month", actor=admin)
    assert month.total_cost == Decimal("0.0925") and month.limit == Decimal(100)


def test_a_channel_configured_later_is_added_on_the_next_run(
    make_services: Any, admin: Actor, atlas: Path, tmp_path: Path
) -> None:
    before = make_services()
    import_atlas(before, atlas, config=CONFIG, usage=False)
    after = make_services(sinks={"apprise": {"urls": ["mailto://budget@example.com"]}})
    report = import_atlas(after, atlas, config=CONFIG, usage=False)
    assert report.alerts_updated == 5 and report.alerts_imported == 0
    (config,) = [c for c in after.alerts.list_alerts(admin) if c.policy == "Alice Daily" and c.threshold == 80]
    assert config.sinks == ["log", "apprise"]
    assert import_atlas(after, atlas, config=CONFIG, usage=False).alerts_updated == 0


def test_atlas_defaults_and_config_files(services: BudgetServices, admin: Actor, atlas: Path, tmp_path: Path) -> None:
    report = import_atlas(services, atlas, usage=False)  # no config: ATLAS's default rules apply
    assert report.alerts_imported == 4 * 5  # the four stored policies that map, five default rules each
    assert "ATLAS's default rules" in "\n".join(report.notes)
    thresholds = {c.threshold for c in services.alerts.list_alerts(admin)}
    assert thresholds == {50, 75, 90, 100, 125}
    as_json = tmp_path / "config.json"
    as_json.write_text(json.dumps(CONFIG))
    assert load_atlas_config(as_json)["BUDGET_ALERTS"]["enabled"] is True
    as_yaml = tmp_path / "config.yaml"
    as_yaml.write_text("BUDGET_POLICIES:\n  - name: Y\n    scope: global\n    period: yearly\n    limit_amount: 9.5\n")
    assert load_atlas_config(as_yaml)["BUDGET_POLICIES"][0]["limit_amount"] == 9.5
    with pytest.raises(ValidationError, match="ATLAS config file .* not found"):
        load_atlas_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.json"
    broken.write_text("{nope")
    with pytest.raises(ValidationError, match="cannot be read"):
        load_atlas_config(broken)


def test_bad_sources_are_refused_clearly(services: BudgetServices, tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="ATLAS database .* not found; pass the path of the SQLite file"):
        import_atlas(services, tmp_path / "nope.db")
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(ValidationError, match="neither a budget_policies nor a budget_usage_records table"):
        import_atlas(services, other)
    text = tmp_path / "notes.txt"
    text.write_text("not a database at all, just some text that is long enough" * 20)
    with pytest.raises(ValidationError, match="is not a readable SQLite database"):
        import_atlas(services, text)
    reader = Actor(id="r", tenant="default", roles=frozenset({"budget:write"}))
    with pytest.raises(Exception, match="needs role budget:admin"):
        import_atlas(services, other, actor=reader)


def test_the_atlas_database_is_left_unchanged(services: BudgetServices, atlas: Path) -> None:
    before = atlas.read_bytes()
    import_atlas(services, atlas, config=CONFIG)
    assert atlas.read_bytes() == before


def test_import_command(services: BudgetServices, admin: Actor, atlas: Path, tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps(CONFIG))
    session = SimpleNamespace(services=services, actor=Actor.system("default"))
    args = [str(atlas), "--atlas-config", str(config)]
    dry = CliRunner().invoke(import_atlas_command, [*args, "--dry-run"], obj=session)
    assert dry.exit_code == 0, dry.output
    assert "policies: would import 5, already present 0" in dry.output and services.tracking.list_usage(admin) == []
    done = CliRunner().invoke(import_atlas_command, args, obj=session)
    assert "usage records: imported 3 (cost 1.5925), already present 0" in done.output
    assert "not imported: policy 'Nebula'" in done.output
    again = CliRunner().invoke(import_atlas_command, [*args, "--no-usage"], obj=session)
    assert "policies: imported 0, already present 5" in again.output and "usage records: imported 0" in again.output


# -- period aliases and channel names -------------------------------------------------------------


@pytest.mark.parametrize(
    ("atlas_name", "ours"),
    [
        ("hourly", "hour"),
        ("daily", "day"),
        ("weekly", "week"),
        ("monthly", "month"),
        ("quarterly", "quarter"),
        ("yearly", "year"),
        ("lifetime", "total"),
        ("rolling_24h", "rolling:1d"),
        ("rolling_7d", "rolling:7d"),
        ("rolling_30d", "rolling:30d"),
        ("ROLLING_36H", "rolling:36h"),
        (" Monthly ", "month"),
    ],
)
def test_atlas_period_names_are_aliases(atlas_name: str, ours: str) -> None:
    assert parse_period(atlas_name).name == ours
    assert Policy(name="p", limit=Decimal(1), period=atlas_name).period == ours


def test_period_aliases_are_bounded_and_stored_canonically(services: BudgetServices, admin: Actor) -> None:
    policy = services.policies.create_policy(admin, {"name": "m", "period": "monthly", "limit": "5"})
    assert policy.period == "month" and services.policies.get_policy(admin, policy.id or 0).period == "month"
    with pytest.raises(ValidationError, match="rolling window 'rolling_400d' is too long"):
        services.policies.create_policy(admin, {"name": "r", "period": "rolling_400d", "limit": "5"})
    with pytest.raises(ValueError, match="unknown period 'biweekly'.*ATLAS's hourly, daily"):
        parse_period("biweekly")
    summary = services.tracking.get_usage_summary(None, "daily", actor=admin)
    assert summary.period == "day"


def test_atlas_channel_names_map_to_sinks(make_services: Any, admin: Actor) -> None:
    assert AlertConfig(policy="p", threshold=80, sinks=["email", "slack", "in_app", "webhook"]).sinks == [
        "apprise",
        "log",
        "webhook",
    ]
    plain = make_services()
    plain.policies.create_policy(admin, {"name": "p", "period": "day", "limit": "5"})
    with pytest.raises(ValidationError) as refused:
        plain.alerts.configure_alert(admin, {"policy": "p", "threshold": 80, "sinks": ["email"]})
    assert str(refused.value) == (
        "ATLAS alert channel 'email' is delivered by the 'apprise' sink here, which cannot deliver: the apprise "
        "sink has no urls: set urls under [sinks.apprise] in the settings file"
    )
    assert plain.alerts.configure_alert(admin, {"policy": "p", "threshold": 80, "sinks": ["in_app"]}).sinks == ["log"]
    ready = make_services(sinks={"apprise": {"urls": ["slack://a/b/c"]}, "webhook": {"url": "http://127.0.0.1:9/x"}})
    config = ready.alerts.configure_alert(
        admin, {"policy": "p", "threshold": 90, "sinks": ["slack", "email", "webhook"]}
    )
    assert config.sinks == ["apprise", "webhook"]


def test_tenant_scoped_policies_and_who_may_import_them(make_services: Any, atlas: Path) -> None:
    db = sqlite3.connect(atlas)
    db.execute(
        "INSERT INTO budget_policies (id, name, scope, scope_id, period, limit_amount, created_at, updated_at)"
        " VALUES ('t1', 'Acme', 'tenant', 'acme', 'monthly', 50, ?, ?)",
        (NOW, NOW),
    )
    db.execute(
        "INSERT INTO budget_usage_records (id, timestamp, provider, model, cost_usd, tenant_id)"
        " VALUES ('t-u1', ?, 'openai', 'gpt-4o', '2', 'acme')",
        ("2026-03-10 11:00:00+00:00",),
    )
    db.commit()
    db.close()
    services = make_services()
    tenant_admin = Actor(id="ann", tenant="default", roles=frozenset({"budget:admin"}))
    limited = import_atlas(services, atlas, config={"BUDGET_ALERTS": {"enabled": False}}, actor=tenant_admin)
    assert "policy 'Acme': it belongs to tenant 'acme'; import as the system actor" in "\n".join(limited.not_mapped)
    assert "1 usage record(s), e.g. t-u1: it belongs to tenant 'acme'" in "\n".join(limited.not_mapped)
    assert limited.alerts_imported == 0 and "enabled = false" in "\n".join(limited.notes)
    full = import_atlas(services, atlas, config={"BUDGET_ALERTS": {"enabled": False}})
    assert full.policies_imported == ["Acme"] and full.usage_imported == 1
    acme = Actor(id="root", tenant="acme", roles=frozenset({"budget:admin"}))
    (policy,) = services.policies.list_policies(acme)
    assert policy.name == "Acme" and policy.scope.as_dict() == {}  # the whole tenant
    assert services.tracking.get_usage_summary(None, "month", actor=acme).remaining == Decimal(48)
