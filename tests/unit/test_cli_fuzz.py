"""A generated run over every atlas-budget command with hostile arguments (click's CliRunner).

For each command, every parameter in turn gets every hostile value of its kind while the others keep a
working value. Whatever happens, the answer is exit code 0 or 2 (never 1, a bug), never a traceback, and
never a raw control character: user data is printed literally.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from atlas_budget_plugin import BudgetSettings, bootstrap
from atlas_budget_plugin.cli import main
from atlas_budget_plugin.export import visible
from atlas_budget_plugin.types import Actor
from hookspecs import LLMCall

from ..browser.support import console_server_stubbed  # noqa: F401  (autouse: `ui` must not serve forever here)

#: The names the seeded store holds: markup, an escape sequence, a bidi override.
BOSS = "[bold red]boss"
ESCAPED = "evil\x1b[31m\x1b]0;title\x07"
SCOPE_ACTOR = "[/]"

NUMBERS = [
    "",
    "0",
    "-1",
    "-5",
    "1",
    "99999999999999999999",
    "9223372036854775808",
    "nan",
    "inf",
    "-inf",
    "1e400",
    "1.5",
    "0x10",
    "1_000",
    "\x00",
    "٣",  # an Arabic-Indic digit: int() takes it
]
TEXT = [
    *NUMBERS,
    " ",
    "[/]",
    BOSS,
    "[link=file:///etc/passwd]x[/link]",
    ":thumbs_up:",
    "\x1b[31mred\x1b[0m",
    "\u202eevil",
    "a\nb",
    "\r\n",
    "\udcff",
    "x" * 5000,
    "=1+1",
    "{}",
    "[1]",
    "null",
    "Mars/Base",
    "rolling:100000000h",
    "rolling:0h",
    "2026-13-45",
    "9999-12-31T23:59:59-23:59",
    "0001-01-01T00:00:00+14:00",
    "%s%n",
    "'; DROP TABLE budget_policy; --",
]
PAIRS = [
    "actor=[/]",
    "actor=\x1b[31m",
    "colour=red",
    "tag.=x",
    "tag.env=" + "x" * 5000,
    "actor",
    "=x",
    "actor=",
    "team=\x00",
]
SETS = [
    "enabled=ture",
    "enabled=",
    "thresholds=abc",
    "thresholds=0,-1",
    "thresholds=99999999999999999999",
    "scope=[1]",
    "scope={",
    'scope={"tag.": "x"}',
    'scope={"actor": 5}',
    "scope=" + "[" * 5000,
    "version=3",
    "version=-1",
    "version=99999999999999999999",
    "limit=nan",
    "limit=1e400",
    "limit=-1",
    "limit=0.0000000001",
    "priority=99999999999999999999",
    "period=rolling:100000000h",
    "period=rolling:0d",
    "timezone=Mars/Base",
    "name=",
    "name=" + "x" * 5000,
    "name=[/]",
    "id=5",
    "tenant=x",
    "=x",
    "colour=red",
    "alternatives=" + "a," * 100,
    "currency=\x1b[31m",
    "enforcement=ture",
    "enforcement=none",
    "rollover_cap=-5",
]


def paths(tmp_path: Path) -> list[str]:
    """Hostile file names that stay inside tmp_path (the suite runs as root: never /etc)."""
    return [
        "",
        str(tmp_path / "no" / "such" / "dir" / "x.csv"),
        str(tmp_path / "x.gif"),
        str(tmp_path / "[bold]x\x1b[31m.svg"),
        str(tmp_path / "out.png"),
        str(tmp_path),
        str(tmp_path / ("x" * 300)),
    ]


def databases(tmp_path: Path) -> list[str]:
    return [
        "",
        "nosuchscheme://x",
        "ftp://host/x",
        "postgresql://u:FUZZPASSWORD@127.0.0.1:1/x",
        "mysql://u:FUZZPASSWORD@127.0.0.1:1/x",
        "sqlite:///:memory:",
        f"sqlite:///{tmp_path}/fuzz-other.db",
        "sqlite://",
        "\x1b[31m",
    ]


def seed(tmp_path: Path) -> Path:
    """A store with hostile names everywhere: policies, scope, usage, a triggered alert."""
    config = tmp_path / "budget.toml"
    config.write_text(
        f'database_url = "sqlite:///{tmp_path}/fuzz.db"\nevaluation_interval = 0\n[roles]\nreader = "budget:read"\n'
    )
    services = bootstrap(BudgetSettings.load(config))
    admin = Actor.system()
    services.policies.create_policy(
        admin, {"name": BOSS, "limit": "10", "period": "day", "scope": {"actor": SCOPE_ACTOR}}
    )
    services.policies.create_policy(admin, {"name": ESCAPED, "limit": "10", "period": "month"})
    services.alerts.configure_alert(admin, {"policy": BOSS, "threshold": 10, "sinks": ["log"]})
    services.tracking.record_usage(
        LLMCall(call_id="\x1b[2Jcall", provider="openai", model="gpt-4o", actor=SCOPE_ACTOR, category=ESCAPED),
        Decimal("5"),
    )
    services.alerts.evaluate_alerts()
    services.close()
    return config


def leaf_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], click.Command]:
    found: dict[tuple[str, ...], click.Command] = {}
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found.update(leaf_commands(command, (*prefix, name)))
        else:
            found[(*prefix, name)] = command
    return found


COMMANDS = leaf_commands(main)

#: A working invocation of each command (hostile values replace one part at a time).
BASELINE: dict[tuple[str, ...], list[str]] = {
    ("init",): ["--force"],
    ("run",): ["--passes", "1", "--interval", "1"],
    ("demo",): ["--max-calls", "2"],
    ("policy", "add"): ["--name", "fz", "--limit", "5", "--scope", "actor=fz"],
    ("policy", "show"): ["1"],
    ("policy", "update"): ["1", "--set", "limit=6"],
    ("policy", "delete"): ["2"],
    ("alert", "add"): ["--policy", BOSS, "--threshold", "50", "--sink", "log"],
    ("alert", "ack"): ["1"],
    ("alert", "snooze"): ["1", "--hours", "1"],
    ("alert", "remove"): ["1"],
    ("alert", "resolve"): ["1"],
    ("report", "by"): ["provider"],
    ("report", "summary"): ["--period", "day"],
    ("report", "trend"): ["--periods", "2"],
    ("scope", "link"): ["actor=fz", "team=fz"],
    ("scope", "unlink"): ["actor=fz", "team=fz"],
    ("scope", "lineage"): ["actor=fz"],
}
#: Values that would make a run last long however right they are (run --passes 0 loops until interrupted).
SLOW = {("run", "--passes"): {"0", "1_000", "٣", "1"}, ("demo", "--max-calls"): {"1_000"}}


def values_for(param: click.Parameter, tmp_path: Path) -> list[str]:
    names = set(param.opts)
    if names & {"--output", "--chart", "--config"}:
        return paths(tmp_path)
    if names & {"--database", "--database-url"}:
        return databases(tmp_path)
    if "--set" in names:
        return SETS
    if "--scope" in names:
        return PAIRS
    if isinstance(param.type, (click.types.IntParamType, click.types.FloatParamType)) or param.name == "hours":
        return NUMBERS
    if isinstance(param.type, click.Choice):
        return ["", "[/]", "\x1b[31m", "TABLE", "x" * 1000]
    return TEXT


def replace(args: list[str], param: click.Parameter, value: str) -> list[str]:
    """``args`` with ``param`` set to ``value`` (an argument is positional, the first one)."""
    if isinstance(param, click.Argument):
        return [value, *args[1:]] if args and not args[0].startswith("-") else [value, *args]
    option = param.opts[0]
    kept: list[str] = []
    skip = False
    for item in args:
        if skip:
            skip = False
            continue
        if item == option:
            skip = True
            continue
        kept.append(item)
    return [*kept, option, value]


def check(result: Result, args: list[str], problems: list[str]) -> None:
    where = " ".join(repr(a) if len(a) < 60 else repr(a[:60] + "...") for a in args)
    if result.exit_code not in (0, 2):
        problems.append(f"exit {result.exit_code}: {where}: {result.output[-300:]!r}")
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        problems.append(f"raised {type(result.exception).__name__}: {where}: {result.exception}")
    if "Traceback" in result.output:
        problems.append(f"traceback: {where}")
    for raw in ("\x1b", "\x07", "\u202e", "\x00"):
        if raw in result.output:
            problems.append(f"raw {raw!r} in the output: {where}: {result.output[-300:]!r}")
    if "FUZZPASSWORD" in result.output:
        problems.append(f"a password reached the output: {where}")
    if result.exit_code == 2 and result.stderr and not result.stderr.startswith(("atlas-budget: error: ", "Usage:")):
        problems.append(f"error not one line: {where}: {result.stderr[:300]!r}")


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=" ".join)
def test_every_command_survives_hostile_arguments(
    path: tuple[str, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = seed(tmp_path)
    monkeypatch.chdir(tmp_path)
    command = COMMANDS[path]
    runner = CliRunner(env={"COLUMNS": "200"})
    base = BASELINE.get(path, [])
    if path == ("init",):
        config = tmp_path / "init.toml"
    if path == ("demo",):
        base = [*base, "--database-url", f"sqlite:///{tmp_path}/demo.db"]
    if path == ("import-atlas",):
        from .test_atlas_import import atlas_database

        base = [str(atlas_database(tmp_path / "atlas.db")), "--dry-run"]
    prefix = ["--config", str(config)]
    problems: list[str] = []
    first = runner.invoke(main, [*prefix, *path, *base])
    check(first, [*path, *base], problems)
    assert first.exit_code == 0, first.output  # the baseline works, so each failure below is the hostile value's
    runs = 1
    for param in command.params:
        if getattr(param, "is_flag", False) or param.name in ("help",):
            continue
        for value in values_for(param, tmp_path):
            if value in SLOW.get((path[0], param.opts[0] if param.opts else ""), set()):
                continue
            args = [*path, *replace(base, param, value)]
            check(runner.invoke(main, [*prefix, *args]), args, problems)
            runs += 1
    assert runs > 1 or all(getattr(p, "is_flag", False) for p in command.params)
    assert not problems, f"{len(problems)} of {runs} runs went wrong:\n" + "\n".join(problems[:40])


@pytest.mark.parametrize("option", ["--actor", "--tenant", "--config", "--database"])
def test_global_options_survive_hostile_values(option: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = seed(tmp_path)
    monkeypatch.chdir(tmp_path)
    param = next(p for p in main.params if option in p.opts)
    problems: list[str] = []
    for value in values_for(param, tmp_path):
        for command in (["policy", "list"], ["report", "summary"], ["doctor"]):
            args = (
                [option, value, *command]
                if option == "--config"
                else ["--config", str(config), option, value, *command]
            )
            check(CliRunner(env={"COLUMNS": "200"}).invoke(main, args), args, problems)
    assert not problems, "\n".join(problems[:40])


LISTINGS = [
    ["policy", "list"],
    ["policy", "show", "1"],
    ["policy", "show", "2"],
    ["alert", "list"],
    ["alert", "active"],
    ["usage", "list"],
    ["report", "by", "category", "--period", "day"],
    ["report", "by", "actor", "--period", "day"],
]


@pytest.mark.parametrize("fmt", ["table", "csv", "markdown", "html"])
def test_user_data_is_printed_literally_in_every_listing(fmt: str, tmp_path: Path) -> None:
    config = seed(tmp_path)
    seen = ""
    for args in LISTINGS:
        result = CliRunner(env={"COLUMNS": "250"}).invoke(main, ["--config", str(config), *args, "--format", fmt])
        assert result.exit_code == 0, (args, result.output)
        assert "\x1b" not in result.output and "\x07" not in result.output, (args, result.output)
        seen += result.output
    if fmt == "table":
        assert BOSS in seen and visible(ESCAPED) in seen and f"{SCOPE_ACTOR}" in seen
        assert visible("\x1b[2Jcall") in seen
    elif fmt == "csv":
        assert BOSS in seen and visible(ESCAPED) in seen
    else:
        assert "boss" in seen and "evil" in seen and "\\x1b" in seen
