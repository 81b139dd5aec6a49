"""The ``atlas-budget`` command: demo, plugins, doctor, policies and reports from a terminal."""

from __future__ import annotations

import json
import random
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import click
import platformdirs
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from hookspecs import CallBlocked, LLMCall, LLMUsage, guarded_call, load_plugins

from . import __version__
from .bootstrap import BudgetServices, bootstrap
from .exceptions import BudgetError
from .extensions import Extensions, get_plugin_manager
from .settings import BudgetSettings
from .store import schema_version
from .types import Actor

F = TypeVar("F", bound=Callable[..., Any])
console = Console(highlight=False)


def money(amount: Decimal) -> str:
    return format(amount, "f")


@contextmanager
def clear_errors() -> Iterator[None]:
    """Turn our errors into one line on stderr and exit code 2 (no traceback)."""
    try:
        yield
    except BudgetError as exc:
        click.echo(f"atlas-budget: error: {exc}", err=True)
        sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="atlas-budget")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    envvar="ATLAS_BUDGET_CONFIG",
    help="Settings file (default: ~/.config/atlas/budget.toml).",
)
@click.pass_context
def main(ctx: click.Context, config_file: str | None) -> None:
    """Budgets for ATLAS LLM calls: check, record, report."""
    ctx.ensure_object(dict)
    ctx.obj["config_file"] = config_file


def _services(ctx: click.Context, **overrides: Any) -> BudgetServices:
    settings = BudgetSettings.load(ctx.obj.get("config_file"), **overrides)
    return bootstrap(settings)


@main.command()
def plugins() -> None:
    """List the installed atlas_budget plugins (sinks, pricing, event bridges)."""
    table = Table("name", "distribution", "version", "hooks")
    for info in Extensions(get_plugin_manager()).plugins():
        table.add_row(info.name, info.distribution, info.version, ", ".join(info.hooks))
    console.print(table)


@main.command()
@click.pass_context
def doctor(ctx: click.Context) -> None:
    """Show the settings in effect, the database and its schema version, and the plugins."""
    with clear_errors():
        settings = BudgetSettings.load(ctx.obj.get("config_file"))
        file = settings.config_file
        console.print(f"settings file: {file} ({'found' if file.exists() else 'not found, using defaults'})")
        console.print(f"database_url: {settings.database_url}")
        services = bootstrap(settings)
        console.print(f"schema version: {schema_version(services.db)}")
        console.print(f"policies declared in settings: {len(settings.policies)}")
        console.print(f"alert sinks: {', '.join(services.extensions.sink_names()) or 'none'}")
        services.close()


DEMO_MODELS = [
    ("openai", "gpt-4o-mini"),
    ("anthropic", "claude-3-5-haiku-latest"),
    ("openai", "gpt-4o"),
    ("google", "gemini-1.5-flash"),
]


def demo_settings(database_url: str) -> dict[str, Any]:
    return {
        "database_url": database_url,
        "policies": [
            {
                "name": "alice-daily",
                "scope": {"actor": "alice"},
                "period": "day",
                "limit": "0.05",
                "enforcement": "block",
                "thresholds": [50, 80, 100],
            },
            {"name": "bob-daily", "scope": {"actor": "bob"}, "period": "day", "limit": "0.02", "enforcement": "warn"},
            {"name": "team-monthly", "period": "month", "limit": "5.00", "enforcement": "block"},
        ],
        "alerts": [
            {"policy": "alice-daily", "threshold": 80, "severity": "warning", "sinks": ["log"]},
            {"policy": "bob-daily", "threshold": 100, "severity": "critical", "sinks": ["log"]},
        ],
        "evaluation_interval": 0,
    }


@main.command()
@click.option(
    "--database-url", default=None, help="Store for the demo (default: a fresh demo.db in the user data dir)."
)
@click.option("--seed", default=7, show_default=True, help="Random seed of the simulated traffic.")
@click.option("--max-calls", default=200, show_default=True, help="Stop after this many calls.")
@click.pass_context
def demo(ctx: click.Context, database_url: str | None, seed: int, max_calls: int) -> None:
    """Simulate ATLAS making calls through the host contract until a budget blocks, then report."""
    with clear_errors():
        if database_url is None:
            path = Path(platformdirs.user_data_dir("atlas")) / "demo.db"
            path.parent.mkdir(parents=True, exist_ok=True)
            for leftover in path.parent.glob("demo.db*"):
                leftover.unlink()
            database_url = f"sqlite:///{path}"
        settings = BudgetSettings.load(ctx.obj.get("config_file"), **demo_settings(database_url))
        services = bootstrap(settings)
        from . import plugin

        plugin.set_services(services)
        try:
            pm = load_plugins()  # the host side: finds us through the `atlas` entry point
            _run_demo(pm, services, random.Random(seed), max_calls)
        finally:
            plugin.set_services(None)
            services.close()


def _run_demo(pm: Any, services: BudgetServices, rng: random.Random, max_calls: int) -> None:
    console.print(f"[bold]ATLAS budget demo[/] on {services.settings.database_url}")
    for policy in services.policies.list_policies(Actor.system()):
        console.print(
            f"  policy {policy.name}: {money(policy.limit)} {policy.currency} per {policy.period} "
            f"({services.policies.enforcement(policy)}) scope {policy.scope.as_dict() or 'whole tenant'}"
        )
    blocked = 0
    with console.status("calling models...") as status:
        for n in range(1, max_calls + 1):
            actor = rng.choice(["alice", "alice", "bob", "carol"])
            provider, model = rng.choice(DEMO_MODELS)
            tokens_in, tokens_out = rng.randint(200, 3000), rng.randint(50, 800)
            call = LLMCall(
                call_id=str(uuid.uuid4()),
                provider=provider,
                model=model,
                actor=actor,
                category=rng.choice(["chat", "summarise", "code"]),
                input_tokens=tokens_in,
                max_output_tokens=800,
            )
            status.update(f"call {n}: {actor} -> {provider}/{model}")
            try:
                with guarded_call(pm, call) as guard:
                    guard.usage = LLMUsage(input_tokens=tokens_in, output_tokens=tokens_out)
            except CallBlocked as exc:
                blocked += 1
                console.print(f"[red]call {n:3d} BLOCKED[/] {actor:5s} {model}: {exc.verdict.reason}")
                if actor == "alice":
                    break
                continue
            for warning in guard.warnings:
                console.print(f"[yellow]call {n:3d} warning[/] {actor:5s} {model}: {warning}")
    pm.hook.on_period_tick(now=services.policies.clock())  # what the host's scheduler does every minute
    for alert in services.alerts.get_active_alerts(Actor.system()):
        console.print(f"[magenta]alert[/] {escape(f'[{alert.severity}]')} {escape(alert.message)}")
    _report(services)


def _report(services: BudgetServices) -> None:
    admin = Actor.system()
    summary = services.tracking.get_usage_summary(None, "day", actor=admin)
    console.print(
        f"\n[bold]Today[/]: {summary.calls} calls, {money(summary.total_cost)} USD, "
        f"{summary.input_tokens} input / {summary.output_tokens} output tokens"
    )
    for dimension in ("actor", "provider", "model"):
        table = Table(dimension, "calls", "cost (USD)", title=f"spend by {dimension}")
        for row in services.tracking.get_spend_by(dimension, None, "day", actor=admin):
            table.add_row(row.key or "-", str(row.calls), money(row.total_cost))
        console.print(table)
    console.print(f"outstanding reservations: {money(services.ledger.outstanding_units() * Decimal('1e-9'))} USD")


@main.group()
def report() -> None:
    """Spend reports."""


@report.command("summary")
@click.option("--period", default="month", show_default=True)
@click.option("--tenant", default=None)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.pass_context
def report_summary(ctx: click.Context, period: str, tenant: str | None, fmt: str) -> None:
    """Total spend, calls and tokens in the current period."""
    with clear_errors():
        services = _services(ctx)
        actor = Actor.system(tenant or services.settings.tenant)
        summary = services.tracking.get_usage_summary(None, period, actor=actor)
        if fmt == "json":
            data = summary.model_dump(mode="json")
            data["total_cost"] = money(summary.total_cost)
            click.echo(json.dumps(data, sort_keys=True))
        else:
            console.print(
                f"{summary.period} from {summary.start:%Y-%m-%d %H:%M} UTC: {summary.calls} calls, "
                f"{money(summary.total_cost)}, {summary.input_tokens} in / {summary.output_tokens} out tokens"
            )
        services.close()


if __name__ == "__main__":  # pragma: no cover
    main()
