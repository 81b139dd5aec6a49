"""The ``atlas-budget`` command: policies, alerts, usage, reports, plugins and a demo, from a terminal."""

from __future__ import annotations

import json
import os
import random
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import click
import platformdirs
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table

from hookspecs import CallBlocked, LLMCall, LLMUsage, guarded_call, load_plugins

from . import __version__
from .bootstrap import BudgetServices, bootstrap
from .exceptions import BudgetError
from .export import FORMATS, render, rows_of, trend_svg
from .extensions import Extensions, get_plugin_manager
from .money import from_units
from .settings import CONFIG_ENV, ENV_PREFIX, BudgetSettings, default_config_file
from .store import schema_version
from .types import CALL_DIMENSIONS, Actor

console = Console(highlight=False)
OUTPUT_FORMATS = ("table", *FORMATS)


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


class Session:
    """What every command needs: settings, the services (opened on first use) and the acting actor."""

    def __init__(self, config_file: str | None, actor: str | None, tenant: str | None) -> None:
        self.config_file = config_file
        self.actor_name = actor
        self.tenant = tenant
        self._settings: BudgetSettings | None = None
        self._services: BudgetServices | None = None

    @property
    def settings(self) -> BudgetSettings:
        if self._settings is None:
            self._settings = BudgetSettings.load(self.config_file)
        return self._settings

    @property
    def services(self) -> BudgetServices:
        if self._services is None:
            self._services = bootstrap(self.settings)
        return self._services

    @property
    def actor(self) -> Actor:
        return self.settings.actor_for(self.actor_name, self.tenant)

    def close(self) -> None:
        if self._services is not None:
            self._services.close()


pass_session = click.make_pass_decorator(Session)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="atlas-budget")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    envvar=CONFIG_ENV,
    help="Settings file (default: ~/.config/atlas/budget.toml).",
)
@click.option("--actor", default=None, help="Act as this user (default: settings 'actor', i.e. system).")
@click.option("--tenant", default=None, help="Act in this tenant (default: settings 'tenant').")
@click.pass_context
def main(ctx: click.Context, config_file: str | None, actor: str | None, tenant: str | None) -> None:
    """Budgets for ATLAS LLM calls: policies, alerts, usage and reports."""
    session = Session(config_file, actor, tenant)
    ctx.obj = session
    ctx.call_on_close(session.close)


def parse_pairs(values: tuple[str, ...], what: str) -> dict[str, str]:
    pairs = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE (e.g. actor=alice)", param_hint=what)
        pairs[key.strip()] = value.strip()
    return pairs


def emit(report: Any, fmt: str, output: str | None, title: str, table: Callable[[], Table]) -> None:
    """Print a report as a rich table, or render it in ``fmt`` to stdout or ``output``."""
    if fmt == "table":
        if output:
            raise click.BadParameter("--output needs --format json, csv, markdown or html", param_hint="--output")
        console.print(table())
        return
    text = render(report, fmt, title)
    if output:
        Path(output).write_text(text, encoding="utf-8")
        console.print(f"wrote {output}")
    else:
        click.echo(text, nl=False)


def generic_table(report: Any, title: str) -> Table:
    rows = rows_of(report)
    if len(rows) == 1 and not isinstance(report, list):  # one result: a field per line reads better
        table = Table("field", "value", title=title)
        for key, value in rows[0].items():
            table.add_row(key, escape(render_cell(value)))
        return table
    table = Table(*(rows[0].keys() if rows else ["(empty)"]), title=title)
    for row in rows:
        table.add_row(*(escape(render_cell(v)) for v in row.values()))
    return table


def render_cell(value: Any) -> str:
    if isinstance(value, Decimal):
        return money(value)
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M")
    return "" if value is None else str(value)


format_option = click.option("--format", "fmt", type=click.Choice(OUTPUT_FORMATS), default="table", show_default=True)
output_option = click.option("--output", type=click.Path(dir_okay=False), help="Write the report to this file.")
scope_option = click.option(
    "--scope",
    multiple=True,
    metavar="KEY=VALUE",
    help="Restrict to a scope (actor, provider, model, category, team, tag.<k>, ...).",
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
        click.echo(f"atlas-budget: error: {path} exists; use --force to overwrite it", err=True)
        sys.exit(2)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(SETTINGS_TEMPLATE, encoding="utf-8")
    console.print(f"wrote {path}")


@main.command()
def plugins() -> None:
    """List the installed atlas_budget plugins (sinks, pricing, event bridges)."""
    table = Table("name", "distribution", "version", "hooks")
    for info in Extensions(get_plugin_manager()).plugins():
        table.add_row(info.name, info.distribution, info.version, ", ".join(info.hooks))
    console.print(table)


@main.command()
@pass_session
def doctor(session: Session) -> None:
    """Show the settings in effect, the database and its schema version, spool and plugins."""
    with clear_errors():
        settings = session.settings
        file = settings.config_file
        console.print(f"settings file: {file} ({'found' if file.exists() else 'not found, using defaults'})")
        for name in sorted(k for k in os.environ if k.startswith(ENV_PREFIX)):
            shown = "***" if any(w in name for w in ("SECRET", "PASSWORD", "TOKEN")) else os.environ[name]
            console.print(f"environment: {name}={escape(shown)}")
        console.print(f"database_url: {settings.database_url}")
        services = session.services
        console.print(f"schema version: {schema_version(services.db)}")
        spool = services.tracking.spool
        console.print(f"outage spool: {spool.path if spool else '-'} ({spool.pending() if spool else 0} waiting)")
        console.print(f"policies declared in settings: {len(settings.policies)}")
        for info in services.extensions.plugins():
            console.print(f"plugin: {info.name} {info.version} ({', '.join(info.hooks)})")


@main.command()
@pass_session
def evaluate(session: Session) -> None:
    """Run one pass of the periodic work: replay spool, expire holds, evaluate and deliver alerts."""
    with clear_errors():
        done = session.services.tick(datetime.now(timezone.utc))
        console.print(", ".join(f"{k}: {v}" for k, v in done.items()))


@main.command()
@click.option("--interval", type=int, default=None, help="Seconds between passes (default: evaluation_interval).")
@click.option("--passes", type=int, default=0, help="Stop after this many passes (0: until interrupted).")
@pass_session
def run(session: Session, interval: int | None, passes: int) -> None:
    """Run the background evaluator in the foreground (for servers without a host scheduler)."""
    with clear_errors():
        every = interval or session.settings.evaluation_interval or 60
        count = 0
        try:
            while True:
                done = session.services.tick(datetime.now(timezone.utc))
                count += 1
                console.print(f"{datetime.now():%H:%M:%S} " + ", ".join(f"{k}: {v}" for k, v in done.items()))
                if passes and count >= passes:
                    return
                time.sleep(every)
        except KeyboardInterrupt:
            console.print("stopped")


# -- policies -----------------------------------------------------------------------------------


@main.group()
def policy() -> None:
    """Add, list, show, update and delete budget policies."""


@policy.command("add")
@click.option("--name", required=True)
@click.option("--limit", required=True, help='Amount per period, e.g. "20.00".')
@click.option("--period", default="month", show_default=True)
@scope_option
@click.option("--enforcement", type=click.Choice(["block", "soft_block", "warn", "degrade"]))
@click.option("--timezone", default="UTC", show_default=True)
@click.option("--thresholds", default="50,80,100", show_default=True, help="Percents, comma separated.")
@click.option("--rollover-cap", default="0", show_default=True)
@click.option("--currency", default="USD", show_default=True)
@pass_session
def policy_add(
    session: Session,
    name: str,
    limit: str,
    period: str,
    scope: tuple[str, ...],
    enforcement: str | None,
    timezone: str,
    thresholds: str,
    rollover_cap: str,
    currency: str,
) -> None:
    """Create a policy."""
    with clear_errors():
        try:
            percents = [int(p) for p in thresholds.split(",") if p.strip()]
        except ValueError:
            raise click.BadParameter(
                "thresholds are whole percents, e.g. 50,80,100", param_hint="--thresholds"
            ) from None
        created = session.services.policies.create_policy(
            session.actor,
            {
                "name": name,
                "limit": limit,
                "period": period,
                "scope": parse_pairs(scope, "--scope"),
                "enforcement": enforcement,
                "timezone": timezone,
                "thresholds": percents,
                "rollover_cap": rollover_cap,
                "currency": currency,
            },
        )
        console.print(f"created policy {created.id}: {created.name}")


def policy_table(policies: list[Any]) -> Table:
    table = Table("id", "name", "scope", "period", "limit", "enforcement", "enabled", "version", title="policies")
    for p in policies:
        table.add_row(
            str(p.id),
            p.name,
            escape(str(p.scope.as_dict() or "whole tenant")),
            p.period,
            f"{money(p.limit)} {p.currency}",
            p.enforcement or "(default)",
            str(p.enabled),
            str(p.version),
        )
    return table


@policy.command("list")
@scope_option
@format_option
@output_option
@pass_session
def policy_list(session: Session, scope: tuple[str, ...], fmt: str, output: str | None) -> None:
    """List the tenant's policies."""
    with clear_errors():
        policies = session.services.policies.list_policies(session.actor, parse_pairs(scope, "--scope"))
        emit(policies, fmt, output, "policies", lambda: policy_table(policies))


@policy.command("show")
@click.argument("policy_id", type=int)
@format_option
@pass_session
def policy_show(session: Session, policy_id: int, fmt: str) -> None:
    """Show one policy with its spend in the current window."""
    with clear_errors():
        found = session.services.policies.get_policy(session.actor, policy_id)
        emit(found, fmt, None, found.name, lambda: generic_table(found, found.name))
        target = session.services.policies.target(found, datetime.now(timezone.utc))
        (standing,) = session.services.ledger.standings([target])
        if fmt == "table":
            console.print(
                f"this {found.period}: spent {money(from_units(standing.spent_units))}, "
                f"reserved {money(from_units(standing.reserved_units))} of "
                f"{money(from_units(standing.limit_units))} {found.currency}"
            )


@policy.command("update")
@click.argument("policy_id", type=int)
@click.option(
    "--set",
    "changes",
    multiple=True,
    required=True,
    metavar="FIELD=VALUE",
    help="e.g. --set limit=25.00 --set enforcement=warn",
)
@click.option("--version", "expected", type=int, default=None, help="Fail if the policy is not at this version.")
@pass_session
def policy_update(session: Session, policy_id: int, changes: tuple[str, ...], expected: int | None) -> None:
    """Change fields of a policy."""
    with clear_errors():
        updates: dict[str, Any] = dict(parse_pairs(changes, "--set"))
        if "thresholds" in updates:
            updates["thresholds"] = [int(p) for p in str(updates["thresholds"]).split(",") if p.strip()]
        if "enabled" in updates:
            updates["enabled"] = str(updates["enabled"]).lower() in ("1", "true", "yes", "on")
        updated = session.services.policies.update_policy(session.actor, policy_id, updates, expected)
        console.print(f"updated policy {updated.id}: {updated.name} (version {updated.version})")


@policy.command("delete")
@click.argument("policy_id", type=int)
@pass_session
def policy_delete(session: Session, policy_id: int) -> None:
    """Delete a policy (its spend history stays in the usage records)."""
    with clear_errors():
        session.services.policies.delete_policy(session.actor, policy_id)
        console.print(f"deleted policy {policy_id}")


@main.command()
@click.option("--limit", "count", default=50, show_default=True)
@format_option
@pass_session
def audit(session: Session, count: int, fmt: str) -> None:
    """Who changed which policy, when, before and after (needs budget:admin)."""
    with clear_errors():
        entries = session.services.policies.audit_trail(session.actor, count)
        if fmt != "table":
            click.echo(json.dumps(entries, default=str, indent=2))
            return
        table = Table("at", "actor", "action", "policy", "change", title="audit trail")
        for e in entries:
            before, after = e["before"] or {}, e["after"] or {}
            changed = {
                k: (before.get(k), after.get(k))
                for k in set(before) | set(after)
                if before.get(k) != after.get(k) and k not in ("updated_at", "version")
            }
            table.add_row(
                f"{e['at']:%Y-%m-%d %H:%M:%S}",
                e["actor"],
                e["action"],
                e["object_id"],
                escape(", ".join(f"{k}: {a} -> {b}" for k, (a, b) in sorted(changed.items()))[:120]),
            )
        console.print(table)


# -- alerts -------------------------------------------------------------------------------------


@main.group()
def alert() -> None:
    """Configure, list, acknowledge, snooze and remove alerts."""


@alert.command("add")
@click.option("--policy", "policy_name", required=True)
@click.option("--threshold", type=int, required=True, help="Percent (of the limit, or of usual spend for anomaly).")
@click.option("--kind", type=click.Choice(["actual", "forecast", "anomaly"]), default="actual", show_default=True)
@click.option(
    "--severity", type=click.Choice(["info", "warning", "critical", "emergency"]), default="warning", show_default=True
)
@click.option("--sink", "sinks", multiple=True, help="Sink name (repeat); none = every installed sink.")
@click.option("--cooldown", type=int, default=0, show_default=True, help="Seconds before it may fire again.")
@pass_session
def alert_add(
    session: Session, policy_name: str, threshold: int, kind: str, severity: str, sinks: tuple[str, ...], cooldown: int
) -> None:
    """Create an alert on a policy."""
    with clear_errors():
        created = session.services.alerts.configure_alert(
            session.actor,
            {
                "policy": policy_name,
                "threshold": threshold,
                "kind": kind,
                "severity": severity,
                "sinks": list(sinks),
                "cooldown": cooldown,
            },
        )
        console.print(f"created alert {created.id} on {created.policy} at {created.threshold}% ({created.kind})")


@alert.command("list")
@format_option
@pass_session
def alert_list(session: Session, fmt: str) -> None:
    """List alert configurations."""
    with clear_errors():
        configs = session.services.alerts.list_alerts(session.actor)
        table = Table("id", "policy", "kind", "threshold", "severity", "sinks", "snoozed until", title="alerts")
        for c in configs:
            table.add_row(
                str(c.id),
                c.policy,
                c.kind,
                f"{c.threshold}%",
                c.severity,
                ", ".join(c.sinks) or "(all)",
                render_cell(c.snoozed_until),
            )
        emit(configs, fmt, None, "alerts", lambda: table)


@alert.command("active")
@format_option
@pass_session
def alert_active(session: Session, fmt: str) -> None:
    """Triggered alerts not yet acknowledged or resolved."""
    with clear_errors():
        active = session.services.alerts.get_active_alerts(session.actor)
        table = Table("id", "severity", "policy", "triggered", "message", title="active alerts")
        for a in active:
            table.add_row(str(a.id), a.severity, a.policy, render_cell(a.triggered_at), escape(a.message))
        emit(active, fmt, None, "active alerts", lambda: table)


@alert.command("ack")
@click.argument("alert_id", type=int)
@pass_session
def alert_ack(session: Session, alert_id: int) -> None:
    """Acknowledge a triggered alert."""
    with clear_errors():
        acked = session.services.alerts.acknowledge_alert(session.actor, alert_id)
        console.print(f"acknowledged alert {acked.id} ({acked.policy})")


@alert.command("snooze")
@click.argument("alert_id", type=int)
@click.option("--hours", type=float, default=None, help="Snooze for this many hours.")
@click.option("--until", "until", default=None, help="Snooze until this ISO time, e.g. 2026-12-01T09:00+00:00.")
@pass_session
def alert_snooze(session: Session, alert_id: int, hours: float | None, until: str | None) -> None:
    """Keep an alert configuration quiet for a while."""
    with clear_errors():
        if (hours is None) == (until is None):
            raise click.UsageError("give exactly one of --hours or --until")
        if hours is not None:
            moment = datetime.now(timezone.utc) + timedelta(hours=hours)
        else:
            try:
                moment = datetime.fromisoformat(str(until))
            except ValueError:
                raise click.BadParameter(
                    f"{until!r} is not an ISO time such as 2026-12-01T09:00+00:00", param_hint="--until"
                ) from None
        config = session.services.alerts.snooze_alert(session.actor, alert_id, moment)
        console.print(f"alert {config.id} snoozed until {render_cell(config.snoozed_until)} UTC")


@alert.command("remove")
@click.argument("alert_id", type=int)
@pass_session
def alert_remove(session: Session, alert_id: int) -> None:
    """Remove an alert configuration."""
    with clear_errors():
        session.services.alerts.remove_alert(session.actor, alert_id)
        console.print(f"removed alert {alert_id}")


# -- usage and reports --------------------------------------------------------------------------


def parse_day(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date such as 2026-11-01", param_hint=option) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


@main.group()
def usage() -> None:
    """Recorded calls."""


@usage.command("list")
@click.option("--actor", "who", default=None)
@click.option("--provider", default=None)
@click.option("--model", default=None)
@click.option("--category", default=None)
@click.option("--since", default=None, help="From this date/time (UTC unless given).")
@click.option("--until", "until", default=None, help="Before this date/time.")
@click.option("--limit", "count", default=50, show_default=True)
@format_option
@output_option
@pass_session
def usage_list(
    session: Session,
    who: str | None,
    provider: str | None,
    model: str | None,
    category: str | None,
    since: str | None,
    until: str | None,
    count: int,
    fmt: str,
    output: str | None,
) -> None:
    """The most recent recorded calls."""
    with clear_errors():
        filters = {
            k: v
            for k, v in {"actor": who, "provider": provider, "model": model, "category": category}.items()
            if v is not None
        }
        records = session.services.tracking.list_usage(
            session.actor, count, filters, parse_day(since, "--since"), parse_day(until, "--until")
        )
        table = Table(
            "recorded", "call", "actor", "provider/model", "tokens in/out", "cost", "price source", title="usage"
        )
        for r in records:
            table.add_row(
                render_cell(r.recorded_at),
                r.call_id,
                r.actor or "",
                f"{r.provider}/{r.model}",
                f"{r.input_tokens}/{r.output_tokens}",
                money(r.cost),
                escape(r.price_source),
            )
        emit(records, fmt, output, "usage", lambda: table)


@main.group()
def report() -> None:
    """Spend reports: summary, by dimension, trend, compare, projection."""


period_option = click.option("--period", default="month", show_default=True)
tz_option = click.option("--timezone", "tz", default="UTC", show_default=True)


def report_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--period, --scope, --timezone, --format and --output, shared by the period reports."""
    for option in (output_option, format_option, tz_option, scope_option, period_option):
        command = option(command)
    return command


@report.command("summary")
@report_options
@pass_session
def report_summary(
    session: Session, period: str, scope: tuple[str, ...], tz: str, fmt: str, output: str | None
) -> None:
    """Total spend, calls and tokens in the current period (and the limit, if a policy sets one)."""
    with clear_errors():
        summary = session.services.tracking.get_usage_summary(
            parse_pairs(scope, "--scope"), period, actor=session.actor, timezone=tz
        )

        def table() -> Table:
            t = generic_table(summary, f"spend this {summary.period}")
            return t

        emit(summary, fmt, output, f"spend this {summary.period}", table)


@report.command("by")
@click.argument("dimension", type=click.Choice(CALL_DIMENSIONS))
@report_options
@pass_session
def report_by(
    session: Session, dimension: str, period: str, scope: tuple[str, ...], tz: str, fmt: str, output: str | None
) -> None:
    """Spend grouped by provider, model, category, actor or operation."""
    with clear_errors():
        rows = session.services.tracking.get_spend_by(
            dimension, parse_pairs(scope, "--scope"), period, actor=session.actor, timezone=tz
        )

        def table() -> Table:
            t = Table(dimension, "calls", "cost", title=f"spend by {dimension} this {period}")
            for r in rows:
                t.add_row(escape(r.key or "-"), str(r.calls), money(r.total_cost))
            return t

        emit(rows, fmt, output, f"spend by {dimension}", table)


@report.command("trend")
@click.option("--granularity", type=click.Choice(["hour", "day", "week", "month"]), default="day", show_default=True)
@click.option("--periods", type=int, default=12, show_default=True)
@scope_option
@tz_option
@format_option
@output_option
@click.option("--chart", type=click.Path(dir_okay=False), help="Also draw the trend to FILE.svg (or FILE.png).")
@pass_session
def report_trend(
    session: Session,
    granularity: str,
    periods: int,
    scope: tuple[str, ...],
    tz: str,
    fmt: str,
    output: str | None,
    chart: str | None,
) -> None:
    """Spend per hour, day, week or month, oldest first."""
    with clear_errors():
        points = session.services.tracking.get_spend_trend(
            parse_pairs(scope, "--scope"), periods, granularity=granularity, actor=session.actor, timezone=tz
        )
        if chart:
            draw_chart(points, Path(chart), f"spend per {granularity}")

        def table() -> Table:
            t = Table(granularity, "calls", "cost", title=f"spend per {granularity}")
            peak = max((p.total_cost for p in points), default=Decimal(0)) or Decimal(1)
            for p in points:
                bar = "█" * int(20 * p.total_cost / peak)
                t.add_row(render_cell(p.start), str(p.calls), f"{money(p.total_cost):>14} {bar}")
            return t

        emit(points, fmt, output, f"spend per {granularity}", table)


def draw_chart(points: list[Any], path: Path, title: str) -> None:
    """Write the trend as SVG (built in) or PNG (with the optional ``chart`` extra, matplotlib)."""
    if path.suffix.lower() == ".svg":
        path.write_text(trend_svg(points, title), encoding="utf-8")
    elif path.suffix.lower() == ".png":
        try:
            import matplotlib

            matplotlib.use("Agg")
            from matplotlib import pyplot
        except ImportError:
            raise click.UsageError(
                "PNG charts need matplotlib: pip install 'atlas-budget-plugin[chart]' (or use a .svg file)"
            ) from None
        figure, axes = pyplot.subplots(figsize=(8, 4))  # pragma: no cover - needs the optional extra
        axes.bar([p.start.strftime("%m-%d %H:%M") for p in points], [float(p.total_cost) for p in points])
        axes.set_title(title)
        axes.tick_params(axis="x", labelrotation=45)
        figure.tight_layout()
        figure.savefig(path)
        pyplot.close(figure)
    else:
        raise click.BadParameter("the chart file must end in .svg or .png", param_hint="--chart")
    console.print(f"wrote {path}")


@report.command("compare")
@report_options
@pass_session
def report_compare(
    session: Session, period: str, scope: tuple[str, ...], tz: str, fmt: str, output: str | None
) -> None:
    """This period so far next to the previous one."""
    with clear_errors():
        comparison = session.services.tracking.compare_periods(
            parse_pairs(scope, "--scope"), period, actor=session.actor, timezone=tz
        )
        emit(comparison, fmt, output, f"this {period} vs the last", lambda: generic_table(comparison, "comparison"))


@report.command("projection")
@report_options
@pass_session
def report_projection(
    session: Session, period: str, scope: tuple[str, ...], tz: str, fmt: str, output: str | None
) -> None:
    """Spend so far, extrapolated to the end of the period."""
    with clear_errors():
        projection = session.services.tracking.get_projection(
            parse_pairs(scope, "--scope"), period, actor=session.actor, timezone=tz
        )
        emit(
            projection,
            fmt,
            output,
            f"projection to the end of this {period}",
            lambda: generic_table(projection, "projection"),
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


@main.command()
@click.option(
    "--database-url", default=None, help="Store for the demo (default: a fresh demo.db in the user data dir)."
)
@click.option("--seed", default=7, show_default=True, help="Random seed of the simulated traffic.")
@click.option("--max-calls", default=200, show_default=True, help="Stop after this many calls.")
@pass_session
def demo(session: Session, database_url: str | None, seed: int, max_calls: int) -> None:
    """Simulate ATLAS making calls through the host contract until a budget blocks, then report."""
    with clear_errors():
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
    for p in services.policies.list_policies(Actor.system()):
        console.print(
            f"  policy {p.name}: {money(p.limit)} {p.currency} per {p.period} "
            f"({services.policies.enforcement(p)}) scope {p.scope.as_dict() or 'whole tenant'}"
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
                console.print(f"[red]call {n:3d} BLOCKED[/] {actor:5s} {model}: {escape(exc.verdict.reason)}")
                if actor == "alice":
                    break
                continue
            for warning in guard.warnings:
                console.print(f"[yellow]call {n:3d} warning[/] {actor:5s} {model}: {escape(warning)}")
    pm.hook.on_period_tick(now=services.policies.clock())  # what the host's scheduler does every minute
    for active in services.alerts.get_active_alerts(Actor.system()):
        console.print(f"[magenta]alert[/] {escape(f'[{active.severity}]')} {escape(active.message)}")
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
    console.print(f"outstanding reservations: {money(from_units(services.ledger.outstanding_units()))} USD")


if __name__ == "__main__":  # pragma: no cover
    main()
