"""Every atlas-budget command through click's runner, including bad input and permissions."""

from __future__ import annotations

import csv
import io
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from atlas_budget_plugin import BudgetSettings, bootstrap
from atlas_budget_plugin.cli import main
from hookspecs import LLMCall


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "budget.toml"
    path.write_text(
        f'database_url = "sqlite:///{tmp_path}/cli.db"\nevaluation_interval = 0\n'
        '[roles]\nreader = "budget:read"\nwriter = "budget:write"\n'
    )
    return path


def cli(config: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["--config", str(config), *args], catch_exceptions=False)


def record(config: Path, call_id: str, cost: str, **kw: Any) -> None:
    services = bootstrap(BudgetSettings.load(config))
    services.tracking.record_usage(
        LLMCall(
            call_id=call_id, provider=kw.pop("provider", "openai"), model="gpt-4o", actor=kw.pop("actor", "alice"), **kw
        ),
        Decimal(cost),
    )
    services.close()


def test_init_writes_a_commented_file_once(tmp_path: Path) -> None:
    target = tmp_path / "new" / "budget.toml"
    first = cli(target, "init")
    assert first.exit_code == 0 and target.read_text().startswith("# atlas-budget settings")
    BudgetSettings.load(target)  # the template itself is valid
    again = cli(target, "init")
    assert again.exit_code == 2 and "exists; use --force" in again.output
    assert cli(target, "init", "--force").exit_code == 0


def test_policy_lifecycle(config: Path) -> None:
    added = cli(
        config,
        "policy",
        "add",
        "--name",
        "alice-m",
        "--limit",
        "20.00",
        "--scope",
        "actor=alice",
        "--thresholds",
        "50,90",
    )
    assert added.exit_code == 0 and "created policy 1: alice-m" in added.output
    listed = cli(config, "policy", "list", "--format", "json")
    (data,) = json.loads(listed.output)
    assert data["name"] == "alice-m" and data["limit"] == "20.00" and data["scope.actor"] == "alice"
    assert "alice-m" in cli(config, "policy", "list").output
    record(config, "c1", "5")
    shown = cli(config, "policy", "show", "1")
    assert shown.exit_code == 0 and "spent 5.00" in shown.output
    updated = cli(
        config, "policy", "update", "1", "--set", "limit=25", "--set", "enabled=yes", "--set", "thresholds=80"
    )
    assert "version 2" in updated.output
    stale = cli(config, "policy", "update", "1", "--set", "limit=30", "--version", "1")
    assert stale.exit_code == 2 and "at version 2, not 1; reload it and retry" in stale.output
    audit = cli(config, "audit")
    assert "create" in audit.output and "update" in audit.output
    assert json.loads(cli(config, "audit", "--format", "json").output)[0]["action"] == "update"
    assert cli(config, "policy", "delete", "1").output.strip() == "deleted policy 1"
    missing = cli(config, "policy", "show", "1")
    assert (
        missing.exit_code == 2
        and missing.output.strip() == "atlas-budget: error: no policy with id 1 in tenant 'default'"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["policy", "add", "--name", "x", "--limit", "5", "--period", "fortnight"], "unknown period 'fortnight'"),
        (["policy", "add", "--name", "x", "--limit", "-1"], "limit must be greater than 0"),
        (["policy", "add", "--name", "x", "--limit", "5", "--scope", "colour=red"], "unknown scope key 'colour'"),
        (["policy", "add", "--name", "x", "--limit", "5", "--scope", "actor"], "is not KEY=VALUE"),
        (["policy", "add", "--name", "x", "--limit", "5", "--thresholds", "half"], "whole percents"),
        (["policy", "update", "9", "--set", "limit=1"], "no policy with id 9"),
        (["report", "summary", "--period", "eon"], "unknown period 'eon'"),
        (["report", "summary", "--output", "x.txt"], "--output needs --format"),
        (["alert", "add", "--policy", "ghost", "--threshold", "50"], "no policy named 'ghost'"),
        (["alert", "snooze", "1"], "give exactly one of --hours or --until"),
        (["usage", "list", "--since", "yesterday"], "is not a date"),
    ],
)
def test_bad_input_is_one_line_and_non_zero(config: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["--config", str(config), *args])
    assert result.exit_code != 0 and message in result.output
    assert "Traceback" not in result.output


def test_wrong_tenant_and_roles(config: Path) -> None:
    cli(config, "policy", "add", "--name", "p", "--limit", "5")
    other = cli(config, "--tenant", "acme", "policy", "show", "1")
    assert other.exit_code == 2 and "no policy with id 1 in tenant 'acme'" in other.output
    assert "p" in cli(config, "--actor", "reader", "policy", "list").output
    denied = cli(config, "--actor", "reader", "policy", "delete", "1")
    assert denied.exit_code == 2 and "actor 'reader' needs role budget:write" in denied.output
    stranger = cli(config, "--actor", "mallory", "policy", "list")
    assert stranger.exit_code == 2 and "has no budget role" in stranger.output
    assert cli(config, "--actor", "writer", "audit").exit_code == 2


def test_unreadable_settings_file(tmp_path: Path) -> None:
    folder = tmp_path / "budget.toml"
    folder.mkdir()
    result = CliRunner().invoke(main, ["--config", str(folder), "policy", "list"])
    assert result.exit_code == 2 and "is a directory" in result.output
    broken = tmp_path / "broken.toml"
    broken.write_text("limit = [\n")
    result = CliRunner().invoke(main, ["--config", str(broken), "policy", "list"])
    assert result.exit_code == 2 and result.output.startswith(f"atlas-budget: error: settings file {broken}")


def test_alert_lifecycle_and_evaluate(config: Path) -> None:
    cli(config, "policy", "add", "--name", "p", "--limit", "10", "--period", "day", "--scope", "actor=alice")
    added = cli(config, "alert", "add", "--policy", "p", "--threshold", "50", "--sink", "log", "--severity", "critical")
    assert added.exit_code == 0 and "created alert 1 on p at 50%" in added.output
    assert "p" in cli(config, "alert", "list").output
    record(config, "a1", "6")
    evaluated = cli(config, "evaluate")
    assert "alerts: 1" in evaluated.output
    active = json.loads(cli(config, "alert", "active", "--format", "json").output)
    assert active[0]["policy"] == "p" and active[0]["severity"] == "critical"
    assert "acknowledged alert 1" in cli(config, "alert", "ack", "1").output
    assert json.loads(cli(config, "alert", "active", "--format", "json").output) == []
    assert "snoozed until" in cli(config, "alert", "snooze", "1", "--hours", "2").output
    assert (
        "snoozed until 2030-01-01 09:00"
        in cli(config, "alert", "snooze", "1", "--until", "2030-01-01T09:00+00:00").output
    )
    bad = cli(config, "alert", "snooze", "1", "--until", "soon")
    assert bad.exit_code != 0
    assert "removed alert 1" in cli(config, "alert", "remove", "1").output
    assert "passes" not in cli(config, "run", "--passes", "1", "--interval", "1").output


def test_usage_and_reports(config: Path, tmp_path: Path) -> None:
    record(config, "u1", "1.25", category="code")
    record(config, "u2", "0.75", provider="google", actor="bob", category="chat")
    listed = json.loads(cli(config, "usage", "list", "--format", "json").output)
    assert {r["call_id"] for r in listed} == {"u1", "u2"}
    only_bob = json.loads(cli(config, "usage", "list", "--actor", "bob", "--format", "json").output)
    assert [r["call_id"] for r in only_bob] == ["u2"]
    assert (
        json.loads(
            cli(config, "usage", "list", "--since", "2000-01-01", "--until", "2000-01-02", "--format", "json").output
        )
        == []
    )
    assert "u1" in cli(config, "usage", "list").output
    summary = json.loads(cli(config, "report", "summary", "--period", "day", "--format", "json").output)
    assert summary["total_cost"] == "2.00" and summary["calls"] == 2
    by = json.loads(cli(config, "report", "by", "provider", "--period", "day", "--format", "json").output)
    assert {r["key"]: r["total_cost"] for r in by} == {"openai": "1.25", "google": "0.75"}
    assert "google" in cli(config, "report", "by", "provider").output
    trend = json.loads(cli(config, "report", "trend", "--periods", "3", "--format", "json").output)
    assert len(trend) == 3 and trend[-1]["total_cost"] == "2.00"
    assert "█" in cli(config, "report", "trend", "--periods", "2").output
    svg = tmp_path / "trend.svg"
    assert cli(config, "report", "trend", "--periods", "4", "--chart", str(svg)).exit_code == 0
    assert svg.read_text().startswith("<svg") and svg.read_text().count("<rect") == 4 and "2.00" in svg.read_text()
    wrong = CliRunner().invoke(main, ["--config", str(config), "report", "trend", "--chart", str(tmp_path / "x.gif")])
    assert wrong.exit_code == 2 and "must end in .svg or .png" in wrong.output
    compare = json.loads(cli(config, "report", "compare", "--period", "day", "--format", "json").output)
    assert compare["current.total_cost"] == "2.00"
    assert "projected_cost" in cli(config, "report", "projection", "--period", "day").output
    out = tmp_path / "by-model.html"
    written = cli(config, "report", "by", "model", "--format", "html", "--output", str(out))
    assert written.exit_code == 0 and "<table>" in out.read_text()
    csv_text = cli(config, "report", "summary", "--scope", "actor=bob", "--format", "csv").output
    (row,) = csv.DictReader(io.StringIO(csv_text))
    assert row["total_cost"] == "0.75" and row["calls"] == "1"
    assert "total_cost" in cli(config, "report", "compare").output


def test_doctor_shows_environment_and_spool(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATLAS_BUDGET_RESERVATION_TTL", "30")
    monkeypatch.setenv("ATLAS_BUDGET_SINKS__WEBHOOK__SECRET", "hunter2")
    result = cli(config, "doctor")
    assert "ATLAS_BUDGET_RESERVATION_TTL=30" in result.output and "hunter2" not in result.output
    assert "outage spool:" in result.output and "plugin: log" in result.output
