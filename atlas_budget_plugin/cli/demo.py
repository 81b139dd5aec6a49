"""``atlas-budget demo``: ATLAS making calls through the host contract until a budget blocks."""

from __future__ import annotations

import random
import shlex
import uuid
from pathlib import Path
from typing import Any

import click
import platformdirs
from rich.progress import Progress
from rich.table import Table

from hookspecs import CallBlocked, LLMCall, LLMUsage, guarded_call, load_plugins

from ..bootstrap import BudgetServices, bootstrap
from ..money import from_units
from ..settings import BudgetSettings
from ..types import Actor
from .core import (
    Session,
    console,
    lit,
    main,
    mask_url,
    money,
    pass_session,
    safe,
)

# -- demo ---------------------------------------------------------------------------------------

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


def explore_commands(database_url: str) -> list[str]:
    """The commands that look at the demo's store (the others read the settings' database)."""
    where = shlex.quote(mask_url(database_url))
    return [
        f"atlas-budget --database {where} {command}"
        for command in (
            "report summary --period day",
            "report by actor --period day",
            "usage list --limit 20",
            "policy list",
            "alert active",
        )
    ]


@main.command()
@click.option(
    "--database-url",
    default=None,
    help="Store for the demo (default: --database, else a fresh demo.db in the user data dir).",
)
@click.option("--seed", type=click.IntRange(0, 2**64), default=7, show_default=True, help="Random seed of the traffic.")
@click.option(
    "--max-calls", type=click.IntRange(1, 10_000), default=200, show_default=True, help="Stop after this many calls."
)
@pass_session
def demo(session: Session, database_url: str | None, seed: int, max_calls: int) -> None:
    """Simulate ATLAS making calls through the host contract until a budget blocks, then report."""
    database_url = run_demo(session, database_url, seed, max_calls)
    console.print("\n[bold]Explore the demo's data[/] (the other commands read your own store unless told):")
    for command in explore_commands(database_url):
        console.print(f"  {safe(command)}")
    where = shlex.quote(mask_url(database_url))
    console.print(f"\n[bold]Or open it in the budget console[/] (ui extra): atlas-budget --database {safe(where)} ui")


def run_demo(session: Session, database_url: str | None, seed: int, max_calls: int) -> str:
    """Fill a demo store (``database_url``, else a fresh demo.db in the user data dir); returns its URL."""
    database_url = database_url or session.database
    if database_url is None:
        path = Path(platformdirs.user_data_dir("atlas")) / "demo.db"
        path.parent.mkdir(parents=True, exist_ok=True)
        for leftover in path.parent.glob("demo.db*"):
            leftover.unlink()
        database_url = f"sqlite:///{path}"
    overrides = demo_settings(database_url)
    overrides["spool_path"] = (
        Path(database_url.removeprefix("sqlite:///") + ".spool") if database_url.startswith("sqlite") else None
    )
    settings = BudgetSettings.load(session.config_file, **overrides)
    services = bootstrap(settings)
    from .. import plugin

    plugin.set_services(services)
    try:
        pm = load_plugins()  # the host side: finds us through the `atlas` entry point
        _run_demo(pm, services, random.Random(seed), max_calls)
    finally:
        plugin.set_services(None)
        services.close()
    return database_url


def _run_demo(pm: Any, services: BudgetServices, rng: random.Random, max_calls: int) -> None:
    console.print(f"[bold]ATLAS budget demo[/] on {safe(mask_url(services.settings.database_url))}")
    for p in services.policies.list_policies(Actor.system()):
        console.print(
            f"  policy {safe(p.name)}: {money(p.limit)} {safe(p.currency)} per {safe(p.period)} "
            f"({services.policies.enforcement(p)}) scope {safe(p.scope.as_dict() or 'whole tenant')}"
        )
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("ATLAS calling models", total=max_calls)
        for n in range(1, max_calls + 1):
            progress.advance(task)
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
            try:
                with guarded_call(pm, call) as guard:
                    guard.usage = LLMUsage(input_tokens=tokens_in, output_tokens=tokens_out)
            except CallBlocked as exc:
                console.print(f"[red]call {n:3d} BLOCKED[/] {actor:5s} {model}: {safe(exc.verdict.reason)}")
                if actor == "alice":
                    break
                continue
            for warning in guard.warnings:
                console.print(f"[yellow]call {n:3d} warning[/] {actor:5s} {model}: {safe(warning)}")
    pm.hook.on_period_tick(now=services.policies.clock())  # what the host's scheduler does every minute
    for active in services.alerts.get_active_alerts(Actor.system()):
        console.print(f"[magenta]alert[/] {safe(f'[{active.severity}]')} {safe(active.message)}")
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
            table.add_row(lit(row.key or "-"), str(row.calls), money(row.total_cost))
        console.print(table)
    console.print(f"outstanding reservations: {money(from_units(services.ledger.outstanding_units()))} USD")
