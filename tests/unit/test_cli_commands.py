"""Every atlas-budget command through click's runner, including bad input and permissions."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timedelta, timezone
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
    soon = (datetime.now(timezone.utc) + timedelta(days=30)).replace(hour=9, minute=0, second=0, microsecond=0)
    assert (
        f"snoozed until {soon:%Y-%m-%d} 09:00"
        in cli(config, "alert", "snooze", "1", "--until", soon.isoformat()).output
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


# -- every user error is one line, exit 2; user data is printed literally ------------------------


def one_line_error(result: Result) -> str:
    """The error line of a failed command, after checking it is the only thing printed and no traceback."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    assert result.stdout == "" and result.stderr.count("\n") == 1, result.output
    assert result.stderr.startswith("atlas-budget: error: ")
    return result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["policy", "show", "99999999999999999999"], "is not in the range 1<=x<=9223372036854775807"),
        (["policy", "delete", "0"], "is not in the range"),
        (["policy", "show", "abc"], "'abc' is not a valid integer"),
        (["usage", "list", "--limit", "100000000000000000000"], "is not in the range 1<=x<=100000"),
        (["audit", "--limit", "0"], "is not in the range"),
        (["alert", "snooze", "1", "--hours", "nan"], "hours must be a number greater than 0 and at most 8760"),
        (["alert", "snooze", "1", "--hours", "inf"], "at most 8760"),
        (["alert", "snooze", "1", "--hours", "-1"], "greater than 0"),
        (["alert", "snooze", "1", "--until", "2026-12-01T09:00"], "has no time zone"),
        (["alert", "snooze", "1", "--until", "9999-12-31T23:59-23:59"], "out of range"),
        (["alert", "add", "--policy", "p", "--threshold", "50", "--cooldown", str(10**15)], "0<=x<=31536000"),
        (["report", "trend", "--timezone", "Mars/Base"], "unknown timezone 'Mars/Base'"),
        (["report", "summary", "--timezone", "\x00"], "unknown timezone"),
        (["report", "trend", "--periods", "0"], "is not in the range"),
        (["report", "summary", "--format", "csv", "--output", "/nonexistent/dir/x.csv"], "cannot write the --output"),
        (["report", "trend", "--chart", "/nonexistent/dir/x.svg"], "cannot write the --chart file"),
        (["policy", "update", "1", "--set", "thresholds=abc"], "thresholds are whole numbers"),
        (["policy", "update", "1", "--set", "enabled=ture"], "enabled must be one of true, false, yes, no, 1, 0"),
        (["policy", "update", "1", "--set", "priority=high"], "priority must be a whole number"),
        (["policy", "update", "1", "--set", "scope=[1]"], "scope is a JSON object"),
        (["policy", "update", "1", "--set", "scope=" + "[" * 100_000], "scope is a JSON object"),
        (["policy", "update", "1", "--set", "colour=red"], "unknown policy field 'colour'; fields: "),
        (["policy", "update", "1", "--set", "tenant=acme"], "policy field 'tenant' cannot be changed"),
        (["policy", "update", "1", "--set", "version=x"], "version must be a whole number"),
        (["policy", "update", "1", "--set", "version=1"], "nothing to change"),
        (["policy", "update", "1", "--set", "version=1", "--set", "limit=2", "--version", "2"], "disagree"),
        (["run", "--interval", "-5"], "is not in the range 1<=x<=86400"),
        (["usage", "list", "--bogus"], "No such option '--bogus'. (see atlas-budget usage list --help)"),
        (["nosuchcommand"], "No such command 'nosuchcommand'"),
        (["--config", "typo.toml", "policy", "list"], "does not exist"),
    ],
)
def test_user_errors_are_one_line_exit_2(
    config: Path, args: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cli(config, "policy", "add", "--name", "p", "--limit", "10")
    monkeypatch.chdir(tmp_path)
    full = args if args[0] == "--config" else ["--config", str(config), *args]
    line = one_line_error(CliRunner().invoke(main, full, prog_name="atlas-budget"))
    assert message in line


def test_debug_shows_the_traceback_and_bugs_are_one_line_exit_1(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plain = CliRunner().invoke(main, ["--config", str(config), "policy", "show", "5"])
    assert "no policy with id 5" in one_line_error(plain)
    debug = CliRunner().invoke(main, ["--config", str(config), "--debug", "policy", "show", "5"])
    assert debug.exit_code == 2 and "Traceback" in debug.stderr and "NotFoundError" in debug.stderr
    assert debug.stderr.rstrip().splitlines()[-1] == "atlas-budget: error: no policy with id 5 in tenant 'default'"

    from atlas_budget_plugin.policy_service import BudgetPolicyService

    def broken(*args: Any, **kw: Any) -> Any:
        raise RuntimeError("bug \x1b[31m here")

    monkeypatch.setattr(BudgetPolicyService, "list_policies", broken)
    bug = CliRunner().invoke(main, ["--config", str(config), "policy", "list"])
    assert bug.exit_code == 1 and "Traceback" not in bug.output and "\x1b" not in bug.output
    assert bug.stderr.startswith("atlas-budget: error: internal error RuntimeError: bug \\x1b[31m here. Run again")


def wide(config: Path, *args: str) -> Result:
    """A command with a wide terminal, so table cells are not wrapped."""
    return CliRunner(env={"COLUMNS": "300"}).invoke(main, ["--config", str(config), *args])


@pytest.mark.parametrize("name", ["[/]", "[bold red]boss", "x\x1b[31mred\x1b[0m", "a\nb", ":thumbs_up:", "\u202eevil"])
def test_user_data_is_printed_literally(config: Path, name: str) -> None:
    from atlas_budget_plugin.export import visible

    added = cli(config, "policy", "add", "--name", name, "--limit", "10", "--scope", f"actor={name}")
    assert added.exit_code == 0, added.output
    shown = visible(name)
    assert f"created policy 1: {shown}" in added.output
    cli(config, "alert", "add", "--policy", name, "--threshold", "10", "--sink", "log")
    record(config, "x1", "5", actor=name)
    cli(config, "evaluate")
    for args in (
        ("policy", "list"),
        ("policy", "show", "1"),
        ("alert", "list"),
        ("alert", "active"),
        ("usage", "list"),
        ("report", "by", "actor"),
        ("report", "summary", "--scope", f"actor={name}"),
    ):
        result = wide(config, *args)
        assert result.exit_code == 0, (args, result.output)
        assert shown in result.output, (args, result.output)
        assert "\x1b" not in result.output and "\u202e" not in result.output and "👍" not in result.output
    audit = wide(config, "audit")
    assert audit.exit_code == 0 and "\x1b" not in audit.output and "\u202e" not in audit.output
    for fmt in ("csv", "markdown", "html", "json"):
        exported = wide(config, "policy", "list", "--format", fmt)
        assert exported.exit_code == 0 and "\x1b" not in exported.output and "\u202e" not in exported.output


def test_set_values_are_typed_by_the_policy_field(config: Path) -> None:
    cli(config, "policy", "add", "--name", "p", "--limit", "10")
    typo = cli(config, "policy", "update", "1", "--set", "enabled=ture")
    assert typo.exit_code == 2
    assert json.loads(cli(config, "policy", "list", "--format", "json").output)[0]["enabled"] is True
    updated = cli(
        config,
        "policy",
        "update",
        "1",
        "--set",
        "enabled=No",
        "--set",
        "thresholds=90, 50",
        "--set",
        'scope={"actor": "bob", "tag.env": "prod"}',
        "--set",
        "enforcement=warn",
        "--set",
        "limit=12.50",
        "--set",
        "version=1",
    )
    assert updated.exit_code == 0 and "(version 2)" in updated.output, updated.output
    (data,) = json.loads(cli(config, "policy", "list", "--format", "json").output)
    assert data["enabled"] is False and data["thresholds"] == [50, 90] and data["enforcement"] == "warn"
    assert data["scope.actor"] == "bob" and data["scope.tags"] == {"env": "prod"} and data["limit"] == "12.50"
    assert cli(config, "policy", "update", "1", "--set", "enforcement=none", "--set", "version=2").exit_code == 0
    assert json.loads(cli(config, "policy", "list", "--format", "json").output)[0]["enforcement"] is None
    stale = cli(config, "policy", "update", "1", "--set", "enabled=1", "--set", "version=2")
    assert stale.exit_code == 2 and "at version 3, not 2" in stale.output


def test_doctor_masks_every_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "budget.toml"
    config.write_text(
        f'database_url = "sqlite:///{tmp_path}/d.db"\n'
        "[sinks.apprise]\n"
        'urls = ["slack://TokenA/TokenB/TokenC/#budget", "mailto://mailuser:MAILPASS@example.com"]\n'
        "[sinks.webhook]\n"
        'url = "https://hookuser:hookpass@hooks.example.com/services/T0/SLACKPATH?token=QUERYTOKEN"\n'
        'secret = "WEBHOOKSECRET"\n'
    )
    monkeypatch.setenv("ATLAS_BUDGET_SINKS__WEBHOOK__SECRET", "ENVSECRET")
    monkeypatch.setenv("ATLAS_BUDGET_SINKS", '{"jsonl": {"api_key": "JSONKEY", "to": "json://jsonuser:JSONPASS@h/x"}}')
    monkeypatch.setenv("ATLAS_BUDGET_RESERVATIONTTL", "5")
    result = CliRunner().invoke(main, ["--config", str(config), "doctor"])
    assert result.exit_code == 0, result.output
    for secret in ("hookpass", "SLACKPATH", "QUERYTOKEN", "WEBHOOKSECRET", "TokenA", "MAILPASS", "ENVSECRET"):
        assert secret not in result.output, secret
    assert "JSONPASS" not in result.output and "mailuser" not in result.output and "JSONKEY" not in result.output
    assert "slack://***" in result.output or "ATLAS_BUDGET_SINKS=" in result.output
    assert "ATLAS_BUDGET_SINKS__WEBHOOK__SECRET=***" in result.output
    assert "https://***@hooks.example.com/***?***" in result.output and "[sinks.webhook]" in result.output
    assert f"store: sqlite:///{tmp_path}/d.db (from settings)" in result.output
    assert "ATLAS_BUDGET_RESERVATIONTTL matches no setting" in result.output
    assert "sink: webhook (ready)" in result.output and "plugin: log" in result.output


def test_doctor_masks_the_database_password(tmp_path: Path) -> None:
    url = "postgresql://budget:DBPASS@127.0.0.1:1/budget?sslpassword=SSLPASS"
    result = CliRunner().invoke(main, ["--config", str(write_config(tmp_path, "")), "--database", url, "doctor"])
    assert "store: postgresql://budget:***@127.0.0.1:1/budget?sslpassword=*** (from --database)" in result.output
    assert "DBPASS" not in result.output and "SSLPASS" not in result.output and "Traceback" not in result.output


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "other.toml"
    path.write_text(text)
    return path


def test_mask_url() -> None:
    from atlas_budget_plugin.cli import mask_env, mask_url

    assert mask_url("mysql://root@127.0.0.1:3306/test") == "mysql://root@127.0.0.1:3306/test"
    assert mask_url("postgresql://u:p@h/db") == "postgresql://u:***@h/db"
    assert mask_url("https://u:p@h/x?a=1", keep_path=False) == "https://***@h/***?***"
    assert mask_url("discord://webhook_id/webhook_token") == "discord://***"
    assert mask_url("http://[::1") == "***" and mask_url("user:pw@host") == "***"
    assert mask_env("ATLAS_BUDGET_DATABASE_URL", "postgresql://u:pw@h/db") == "postgresql://u:***@h/db"
    assert mask_env("ATLAS_BUDGET_SINKS", '{"webhook": {"secret": "s", "url": "https://h/p"}}') == (
        '{"webhook": {"secret": "***", "url": "https://h/***"}}'
    )
    assert mask_env("ATLAS_BUDGET_SINKS", "{not json") == "***"
    assert mask_env("ATLAS_BUDGET_RESERVATION_TTL", "30") == "30"


def test_demo_tells_how_to_explore_its_data(tmp_path: Path) -> None:
    import shlex

    url = f"sqlite:///{tmp_path}/demo.db"
    result = CliRunner().invoke(main, ["demo", "--database-url", url, "--max-calls", "5"])
    assert result.exit_code == 0, result.output
    commands = [line.strip() for line in result.output.splitlines() if line.strip().startswith("atlas-budget --")]
    assert f"atlas-budget --database {url} report summary --period day" in commands
    for command in commands:
        explored = CliRunner().invoke(main, shlex.split(command)[1:])
        assert explored.exit_code == 0, (command, explored.output)
    usage_json = CliRunner().invoke(main, ["--database", url, "usage", "list", "--format", "json"])
    assert len(json.loads(usage_json.output)) == 5


def test_alert_sinks_are_checked_and_deliveries_listed(tmp_path: Path) -> None:
    config = tmp_path / "budget.toml"
    config.write_text(f'database_url = "sqlite:///{tmp_path}/a.db"\n')
    cli(config, "policy", "add", "--name", "p", "--limit", "10", "--period", "day")
    typo = CliRunner().invoke(main, ["--config", str(config), "alert", "add", "--policy", "p", "--threshold", "5",
                                     "--sink", "webhok"])  # fmt: skip
    assert "unknown alert sink 'webhok'; installed sinks: apprise, log, webhook" in one_line_error(typo)
    no_url = CliRunner().invoke(main, ["--config", str(config), "alert", "add", "--policy", "p", "--threshold", "5",
                                       "--sink", "webhook"])  # fmt: skip
    assert "alert sink 'webhook' cannot deliver" in one_line_error(no_url)
    assert "set url under [sinks.webhook]" in no_url.stderr
    config.write_text(
        f'database_url = "sqlite:///{tmp_path}/a.db"\n[sinks.webhook]\nurl = "http://127.0.0.1:9/hook"\ntimeout = 1\n'
    )
    assert cli(config, "alert", "add", "--policy", "p", "--threshold", "5", "--sink", "webhook").exit_code == 0
    record(config, "d1", "1", actor="bob")
    assert "alerts: 1" in cli(config, "evaluate").output
    listed = wide(config, "alert", "deliveries")
    assert listed.exit_code == 0 and "webhook" in listed.output and "pending" in listed.output
    assert "unreachable" in listed.output
    (row,) = json.loads(cli(config, "alert", "deliveries", "--format", "json").output)
    assert row["sink"] == "webhook" and row["attempts"] == 1 and "127.0.0.1" in row["last_error"]
    assert json.loads(cli(config, "alert", "deliveries", "--status", "delivered", "--format", "json").output) == []
    out = tmp_path / "deliveries.csv"
    assert cli(config, "alert", "deliveries", "--format", "csv", "--output", str(out)).exit_code == 0
    assert out.read_text().startswith("alert_id,sink,status,attempts")


def test_trend_rows_are_labelled_by_granularity(config: Path, tmp_path: Path) -> None:
    record(config, "t1", "1")
    now = datetime.now(timezone.utc)
    hourly = wide(config, "report", "trend", "--granularity", "hour", "--periods", "2")
    assert f"{now:%m-%d %H}:00" in hourly.output
    assert f"{now:%Y-%m}" in wide(config, "report", "trend", "--granularity", "month", "--periods", "1").output
    assert f"{now:%G-W%V}" in wide(config, "report", "trend", "--granularity", "week", "--periods", "1").output
    pytest.importorskip("matplotlib")
    png = tmp_path / "trend.png"
    drawn = cli(config, "report", "trend", "--granularity", "hour", "--periods", "3", "--chart", str(png))
    assert drawn.exit_code == 0 and png.read_bytes().startswith(b"\x89PNG")
