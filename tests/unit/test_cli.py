"""The atlas-budget command through click's test runner."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

from click.testing import CliRunner

from atlas_budget_plugin import BudgetSettings, bootstrap
from atlas_budget_plugin.cli import main
from atlas_budget_plugin.store import SCHEMA_VERSION
from atlas_budget_plugin.types import Actor


def test_demo_blocks_and_reports_same_totals_as_service(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/demo.db"
    result = CliRunner().invoke(main, ["demo", "--database-url", url, "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert "BLOCKED" in result.output and "alice" in result.output
    services = bootstrap(BudgetSettings.load(None, database_url=url))
    summary = services.tracking.get_usage_summary(None, "day", actor=Actor.system())
    services.close()
    assert f"Today: {summary.calls} calls, {summary.total_cost:f} USD" in result.output
    alice = [line for line in result.output.splitlines() if line.startswith("│ alice")]
    assert alice and Decimal(alice[0].split("│")[3].strip()) <= Decimal("0.05")
    assert "outstanding reservations: 0" in result.output


def test_demo_default_store_under_home(isolated_env: Path) -> None:
    result = CliRunner().invoke(main, ["demo", "--max-calls", "3"])
    assert result.exit_code == 0, result.output
    assert (isolated_env / ".local" / "share" / "atlas" / "demo.db").exists()


def test_plugins_lists_builtin_sink() -> None:
    result = CliRunner().invoke(main, ["plugins"])
    assert result.exit_code == 0 and "log" in result.output and "budget_deliver_alert" in result.output


def test_doctor(tmp_path: Path) -> None:
    config = tmp_path / "budget.toml"
    config.write_text(f'database_url = "sqlite:///{tmp_path}/d.db"\n')
    result = CliRunner().invoke(main, ["--config", str(config), "doctor"])
    assert result.exit_code == 0, result.output
    assert f"settings file: {config} (found)" in result.output and f"schema version: {SCHEMA_VERSION}" in result.output
    assert "server routines: not needed (SQLite)" in result.output


def test_bad_settings_file_is_one_line_error(tmp_path: Path) -> None:
    config = tmp_path / "budget.toml"
    config.write_text("limit = \n")
    result = CliRunner().invoke(main, ["--config", str(config), "doctor"])
    assert result.exit_code == 2
    assert result.output.startswith("atlas-budget: error: settings file") and "Traceback" not in result.output


def test_report_summary_json(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/r.db"
    CliRunner().invoke(main, ["demo", "--database-url", url, "--max-calls", "5"])
    config = tmp_path / "budget.toml"
    config.write_text(f'database_url = "{url}"\n')
    result = CliRunner().invoke(
        main, ["--config", str(config), "report", "summary", "--period", "day", "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["calls"] == 5 and Decimal(data["total_cost"]) > 0
    table = CliRunner().invoke(main, ["--config", str(config), "report", "summary", "--period", "day"])
    assert "│ calls" in table.output and "│ 5 " in table.output
    bad = CliRunner().invoke(main, ["--config", str(config), "report", "summary", "--period", "eon"])
    assert bad.exit_code == 2 and "unknown period 'eon'" in bad.output
