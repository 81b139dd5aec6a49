"""``atlas-budget alert ...``: alert configurations, triggered alerts and their deliveries."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import click
from rich.table import Table

from .core import (
    ID,
    MAX_SNOOZE_HOURS,
    ROWS,
    HoursType,
    Session,
    console,
    emit,
    format_option,
    lit,
    main,
    one_line,
    output_option,
    parse_time,
    pass_session,
    render_cell,
    safe,
)


@main.group()
def alert() -> None:
    """Configure, list, acknowledge, snooze and remove alerts; list their deliveries."""


@alert.command("add")
@click.option("--policy", "policy_name", required=True)
@click.option(
    "--threshold",
    type=click.IntRange(1, 100_000),
    required=True,
    help="Percent (of the limit, or of usual spend for anomaly).",
)
@click.option("--kind", type=click.Choice(["actual", "forecast", "anomaly"]), default="actual", show_default=True)
@click.option(
    "--severity", type=click.Choice(["info", "warning", "critical", "emergency"]), default="warning", show_default=True
)
@click.option("--sink", "sinks", multiple=True, help="Sink name (repeat); none = every installed sink that is ready.")
@click.option(
    "--cooldown",
    type=click.IntRange(0, 365 * 24 * 3600),
    default=0,
    show_default=True,
    help="Seconds before it may fire again (at most 365 days).",
)
@pass_session
def alert_add(
    session: Session, policy_name: str, threshold: int, kind: str, severity: str, sinks: tuple[str, ...], cooldown: int
) -> None:
    """Create an alert on a policy."""
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
    console.print(
        f"created alert {created.id} on {safe(created.policy)} at {created.threshold}% ({safe(created.kind)})"
    )


@alert.command("list")
@format_option
@pass_session
def alert_list(session: Session, fmt: str) -> None:
    """List alert configurations."""
    configs = session.services.alerts.list_alerts(session.actor)
    for problem in session.services.alerts.invalid_alerts(session.actor):
        click.echo(f"atlas-budget: warning: {one_line(problem)}", err=True)
    table = Table("id", "policy", "kind", "threshold", "severity", "sinks", "snoozed until", title="alerts")
    for c in configs:
        table.add_row(
            str(c.id),
            lit(c.policy),
            lit(c.kind),
            f"{c.threshold}%",
            lit(c.severity),
            lit(", ".join(c.sinks) or "(all ready)"),
            lit(c.snoozed_until),
        )
    emit(configs, fmt, None, "alerts", lambda: table)


@alert.command("active")
@format_option
@pass_session
def alert_active(session: Session, fmt: str) -> None:
    """Triggered alerts not yet acknowledged or resolved."""
    active = session.services.alerts.get_active_alerts(session.actor)
    table = Table("id", "severity", "policy", "triggered", "message", title="active alerts")
    for a in active:
        table.add_row(str(a.id), lit(a.severity), lit(a.policy), lit(a.triggered_at), lit(a.message))
    emit(active, fmt, None, "active alerts", lambda: table)


@alert.command("deliveries")
@click.option(
    "--status",
    type=click.Choice(["pending", "failed", "delivered"]),
    default=None,
    help="Only deliveries in this state (default: pending and failed, the ones that need attention).",
)
@click.option("--limit", "count", type=ROWS, default=1000, show_default=True)
@format_option
@output_option
@pass_session
def alert_deliveries(session: Session, status: str | None, count: int, fmt: str, output: str | None) -> None:
    """Alert deliveries still being retried or given up, with attempts and the last error."""
    rows = session.services.alerts.list_deliveries(session.actor, status, count)
    table = Table("alert", "sink", "status", "attempts", "next attempt", "last error", title="alert deliveries")
    for d in rows:
        table.add_row(
            str(d.alert_id),
            lit(d.sink),
            lit(d.status),
            str(d.attempts),
            lit(d.next_attempt_at if d.status == "pending" else None),
            lit(d.last_error),
        )
    emit(rows, fmt, output, "alert deliveries", lambda: table)


@alert.command("ack")
@click.argument("alert_id", type=ID)
@pass_session
def alert_ack(session: Session, alert_id: int) -> None:
    """Acknowledge a triggered alert."""
    acked = session.services.alerts.acknowledge_alert(session.actor, alert_id)
    console.print(f"acknowledged alert {acked.id} ({safe(acked.policy)})")


@alert.command("resolve")
@click.argument("alert_id", type=ID, required=False)
@click.option("--policy", "policy_name", default=None, help="Resolve every active alert of this policy instead.")
@pass_session
def alert_resolve(session: Session, alert_id: int | None, policy_name: str | None) -> None:
    """Close a triggered alert by hand (or all of one policy's): audited; it does not fire again this window."""
    if (alert_id is None) == (policy_name is None):
        raise click.UsageError("give an ALERT_ID or --policy NAME (one of them)")
    if alert_id is not None:
        done = [session.services.alerts.resolve_alert(session.actor, alert_id)]
    else:
        done = session.services.alerts.resolve_policy_alerts(session.actor, policy_name or "")
    for alert_ in done:
        console.print(f"resolved alert {alert_.id} ({safe(alert_.policy)})")
    if not done:
        console.print("no active alert to resolve")


@alert.command("snooze")
@click.argument("alert_id", type=ID)
@click.option("--hours", type=HoursType(MAX_SNOOZE_HOURS), default=None, help="Snooze for this many hours.")
@click.option("--until", "until", default=None, help="Snooze until this ISO time, e.g. 2026-12-01T09:00+00:00.")
@pass_session
def alert_snooze(session: Session, alert_id: int, hours: float | None, until: str | None) -> None:
    """Keep an alert configuration quiet for a while (at most a year)."""
    if (hours is None) == (until is None):
        raise click.UsageError("give exactly one of --hours or --until")
    if hours is not None:
        moment = datetime.now(timezone.utc) + timedelta(hours=hours)
    else:
        moment = parse_time(str(until), "--until", default_utc=False)
        if moment.tzinfo is None:
            raise click.BadParameter(
                f"{until!r} has no time zone; write it as 2026-12-01T09:00+00:00", param_hint="--until"
            )
    config = session.services.alerts.snooze_alert(session.actor, alert_id, moment)
    console.print(f"alert {config.id} snoozed until {render_cell(config.snoozed_until)} UTC")


@alert.command("remove")
@click.argument("alert_id", type=ID)
@pass_session
def alert_remove(session: Session, alert_id: int) -> None:
    """Remove an alert configuration."""
    session.services.alerts.remove_alert(session.actor, alert_id)
    console.print(f"removed alert {alert_id}")
