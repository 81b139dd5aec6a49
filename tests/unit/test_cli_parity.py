"""The command line for ATLAS parity (issue #14): throttle and sub-limit options, the scope hierarchy, import-atlas."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from atlas_budget_plugin import BudgetSettings, bootstrap
from atlas_budget_plugin.cli import main


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "budget.toml"
    path.write_text(
        f'database_url = "sqlite:///{tmp_path}/cli.db"\nevaluation_interval = 0\n[roles]\nr = "budget:read"\n'
    )
    return path


def cli(config: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["--config", str(config), *args], catch_exceptions=False)


def test_policy_add_takes_throttle_and_sub_limits(config: Path) -> None:
    added = cli(
        config,
        *("policy", "add", "--name", "team", "--limit", "10", "--period", "day", "--scope", "team=red"),
        *("--enforcement", "throttle", "--calls-per-minute", "5", "--throttle-after", "60"),
        *("--model-limit", "gpt-4o=2.50", "--provider-limit", "anthropic=1"),
    )
    assert added.exit_code == 0, added.output
    services = bootstrap(BudgetSettings.load(config))
    (policy,) = services.policies.repository.all("default")
    assert policy.enforcement == "throttle" and policy.calls_per_minute == 5 and policy.throttle_after == 60
    assert policy.model_limits == {"gpt-4o": Decimal("2.50")} and policy.provider_limits == {"anthropic": Decimal(1)}
    services.close()
    bad = cli(config, "policy", "add", "--name", "x", "--limit", "1", "--model-limit", "gpt-4o=5")
    assert bad.exit_code == 2 and "above the policy's own limit" in bad.output


def test_scope_commands(config: Path) -> None:
    assert "linked" in cli(config, "scope", "link", "actor=alice", "team=red").output
    assert "linked" in cli(config, "scope", "link", "team=red", "project=apollo").output
    assert cli(config, "scope", "list").output.splitlines() == ["actor=alice -> team=red", "team=red -> project=apollo"]
    lineage = cli(config, "scope", "lineage", "team=red").output
    assert "team=red -> project=apollo" in lineage and "belonging to it: actor=alice" in lineage
    cycle = cli(config, "scope", "link", "project=apollo", "actor=alice")
    assert cycle.exit_code == 2 and "must be a team, project" in cycle.output
    cycle = cli(config, "scope", "link", "project=apollo", "team=red")
    assert cycle.exit_code == 2 and "cycle" in cycle.output
    reader = cli(config, "--actor", "r", "scope", "link", "actor=bob", "team=red")
    assert reader.exit_code == 2 and "budget:admin" in reader.output
    assert "unlinked" in cli(config, "scope", "unlink", "actor=alice", "team=red").output


def test_import_atlas_through_the_main_command(config: Path, tmp_path: Path) -> None:
    from .test_atlas_import import atlas_database

    source = atlas_database(tmp_path / "atlas.db")
    dry = cli(config, "import-atlas", str(source), "--dry-run")
    assert dry.exit_code == 0 and "would import" in dry.output, dry.output
    done = cli(config, "import-atlas", str(source))
    again = cli(config, "import-atlas", str(source))
    assert done.exit_code == again.exit_code == 0 and "imported 0" in again.output
    missing = cli(config, "import-atlas", str(tmp_path / "nowhere.db"))
    assert missing.exit_code == 2 and "atlas-budget: error:" in missing.output


def test_alert_resolve(config: Path) -> None:
    from hookspecs import LLMCall

    services = bootstrap(BudgetSettings.load(config))
    admin = services.settings.actor_for()
    services.policies.create_policy(admin, {"name": "all", "period": "day", "limit": "1.00"})
    services.alerts.configure_alert(admin, {"policy": "all", "threshold": 50, "sinks": ["log"]})
    services.tracking.record_usage(LLMCall(call_id="a", provider="openai", model="gpt-4o"), Decimal("0.80"))
    (alert,) = services.alerts.evaluate_alerts()
    services.close()
    assert cli(config, "alert", "resolve").exit_code == 2  # an id or --policy is needed
    done = cli(config, "alert", "resolve", str(alert.id))
    assert done.exit_code == 0 and f"resolved alert {alert.id} (all)" in done.output
    assert "no active alert" in cli(config, "alert", "resolve", "--policy", "all").output
    assert cli(config, "alert", "resolve", "99999").exit_code == 2
