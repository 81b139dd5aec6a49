"""``atlas-budget init``, ``plugins``, ``doctor``, ``evaluate`` and ``run``: setup, diagnostics, periodic work."""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path

import click
from rich.table import Table

from .. import settings as settings_module
from ..extensions import Extensions, get_plugin_manager
from ..settings import ENV_PREFIX, default_config_file
from ..store import routines, schema_version
from .core import (
    CliError,
    Session,
    console,
    lit,
    main,
    mask_env,
    mask_url,
    mask_value,
    pass_session,
    safe,
    write_file,
)

# -- setup and diagnostics ----------------------------------------------------------------------

SETTINGS_TEMPLATE = """# atlas-budget settings. Values here are overridden by ATLAS_BUDGET_* environment variables.
# Money is written as a quoted decimal ("20.00"): floats are refused because they are inexact.

# Where usage is kept. SQLite (the default) for one machine; postgresql:// or mysql:// to share a budget.
# database_url = "sqlite:///~/.local/share/atlas/budget.db"

default_enforcement = "block"   # block | warn, for policies that do not say
on_store_error = "deny"         # deny | allow, while the database cannot be reached (usage is spooled)
evaluation_interval = 60        # seconds between background alert evaluations; 0 = only on host ticks
reservation_ttl = 600           # seconds before the hold of a call that never reported back is released
unknown_model = "block"         # block | allow_unpriced | a default price per million tokens, e.g. "1.00"

# [roles]                       # what named command-line actors may do (system is always admin)
# alice = "budget:read"

# [[policies]]
# name = "alice-monthly"
# scope = { actor = "alice" }   # actor, provider, model, operation, category, team, project, session,
#                               # persona, "tag.<name>"; empty = the whole tenant
# period = "month"              # hour | day | week | month | quarter | year | total | rolling:<N>h | rolling:<N>d
# limit = "20.00"
# enforcement = "block"         # block | soft_block | warn | degrade
# thresholds = [50, 80, 100]

# [[alerts]]
# policy = "alice-monthly"
# threshold = 80
# kind = "actual"               # actual | forecast | anomaly
# sinks = ["log"]

# [sinks.webhook]
# url = "https://hooks.example.com/budget"
# secret = "change-me"

# [prices."local/llama-3-8b"]   # per million tokens; wins over the genai-prices catalogue
# input = "0.10"
# output = "0.20"
"""


@main.command()
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
@click.pass_context
def init(ctx: click.Context, force: bool) -> None:
    """Write a commented settings file to start from."""
    session: Session = ctx.obj
    path = Path(session.config_file).expanduser() if session.config_file else default_config_file()
    if path.exists() and not force:
        raise CliError(f"{path} exists; use --force to overwrite it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"cannot create the folder {str(path.parent)!r}: {exc.strerror or exc}") from None
    write_file(path, SETTINGS_TEMPLATE, "settings")
    console.print(f"wrote {safe(path)}")


@main.command()
def plugins() -> None:
    """List the installed atlas_budget plugins (sinks, pricing, event bridges)."""
    table = Table("name", "distribution", "version", "hooks")
    for info in Extensions(get_plugin_manager()).plugins():
        table.add_row(lit(info.name), lit(info.distribution), lit(info.version), lit(", ".join(info.hooks)))
    console.print(table)


@main.command()
@pass_session
def doctor(session: Session) -> None:
    """Show the settings in effect (secrets masked), the store and its schema version, spool and plugins."""
    settings = session.settings
    file = settings.config_file
    console.print(f"settings file: {safe(file)} ({'found' if file.exists() else 'not found, using defaults'})")
    for name in sorted(k for k in os.environ if k.upper().startswith(ENV_PREFIX)):
        console.print(f"environment: {safe(name)}={safe(mask_env(name, os.environ[name]))}")
    unknown = getattr(settings_module, "unknown_env_variables", None)
    for line in unknown() if callable(unknown) else []:
        console.print(f"[yellow]warning[/]: {safe(line)}")
    source = "--database" if session.database else "settings"
    console.print(f"store: {safe(mask_url(settings.database_url))} (from {source})")
    for sink, section in sorted(settings.sinks.items()):
        shown = json.dumps(mask_value(sink, section), sort_keys=True, default=str)
        console.print(f"sink settings {safe(f'[sinks.{sink}]')}: {safe(shown)}")
    services = session.services
    console.print(f"schema version: {schema_version(services.db)}")
    console.print(f"server routines: {safe(routines.status(services.db))}")
    spool = services.tracking.spool
    console.print(f"outage spool: {safe(spool.path if spool else '-')} ({spool.pending() if spool else 0} waiting)")
    console.print(f"policies declared in settings: {len(settings.policies)}")
    console.print(f"alerts declared in settings: {len(settings.alerts)}")
    for info in services.extensions.plugins():
        console.print(f"plugin: {safe(info.name)} {safe(info.version)} ({safe(', '.join(info.hooks))})")
    ready = services.alerts.ready_sinks()
    for name in services.extensions.sink_names():
        state = "ready" if name in ready else "[yellow]not ready[/]: an alert naming it is refused"
        console.print(f"sink: {safe(name)} ({state})")


@main.command()
@pass_session
def evaluate(session: Session) -> None:
    """Run one pass of the periodic work: replay spool, expire holds, evaluate and deliver alerts."""
    done = session.services.tick(datetime.now(timezone.utc))
    console.print(safe(", ".join(f"{k}: {v}" for k, v in done.items())))


@main.command()
@click.option(
    "--interval",
    type=click.IntRange(1, 86_400),
    default=None,
    help="Seconds between passes, 1 to 86400 (default: evaluation_interval).",
)
@click.option(
    "--passes", type=click.IntRange(0, 10**9), default=0, help="Stop after this many passes (0: until interrupted)."
)
@pass_session
def run(session: Session, interval: int | None, passes: int) -> None:
    """Run the background evaluator in the foreground (for servers without a host scheduler)."""
    every = interval or session.settings.evaluation_interval or 60
    count = 0
    try:
        while True:
            done = session.services.tick(datetime.now(timezone.utc))
            count += 1
            console.print(f"{datetime.now():%H:%M:%S} " + safe(", ".join(f"{k}: {v}" for k, v in done.items())))
            if passes and count >= passes:
                return
            time.sleep(every)
    except KeyboardInterrupt:
        console.print("stopped")
