"""``atlas-budget policy ...`` and ``audit``: budget policies and who changed them."""

from __future__ import annotations

import json
from typing import Any

import click
from rich.table import Table

from .core import (
    ID,
    MAX_ID,
    ROWS,
    TIMEZONE,
    Session,
    console,
    emit,
    format_option,
    generic_table,
    lit,
    main,
    money,
    output_option,
    parse_pairs,
    pass_session,
    policy_changes,
    safe,
    scope_option,
)


@main.group()
def policy() -> None:
    """Add, list, show, update and delete budget policies."""


@policy.command("add")
@click.option("--name", required=True)
@click.option("--limit", required=True, help='Amount per period, e.g. "20.00".')
@click.option("--period", default="month", show_default=True)
@scope_option
@click.option("--enforcement", type=click.Choice(["block", "soft_block", "warn", "degrade", "throttle"]))
@click.option("--timezone", "tz", type=TIMEZONE, default="UTC", show_default=True)
@click.option("--thresholds", default="50,80,100", show_default=True, help="Percents, comma separated.")
@click.option("--rollover-cap", default="0", show_default=True)
@click.option("--currency", default="USD", show_default=True)
@click.option("--provider-limit", multiple=True, help="A sub-limit: PROVIDER=AMOUNT (repeatable).")
@click.option("--model-limit", multiple=True, help="A sub-limit: MODEL=AMOUNT (repeatable).")
@click.option("--throttle-after", type=click.IntRange(1, 100), help="throttle: from this percent of the limit on.")
@click.option("--calls-per-minute", type=click.IntRange(1, 1_000_000), help="throttle: calls admitted per minute.")
@click.option("--spend-per-minute", help='throttle: money admitted per minute, e.g. "0.50".')
@pass_session
def policy_add(
    session: Session,
    name: str,
    limit: str,
    period: str,
    scope: tuple[str, ...],
    enforcement: str | None,
    tz: str,
    thresholds: str,
    rollover_cap: str,
    currency: str,
    provider_limit: tuple[str, ...],
    model_limit: tuple[str, ...],
    throttle_after: int | None,
    calls_per_minute: int | None,
    spend_per_minute: str | None,
) -> None:
    """Create a policy."""
    extra: dict[str, Any] = {
        "provider_limits": parse_pairs(provider_limit, "--provider-limit"),
        "model_limits": parse_pairs(model_limit, "--model-limit"),
        "calls_per_minute": calls_per_minute,
        "spend_per_minute": spend_per_minute,
    }
    if throttle_after is not None:
        extra["throttle_after"] = throttle_after
    try:
        percents = [int(p) for p in thresholds.split(",") if p.strip()]
    except ValueError:
        raise click.BadParameter("thresholds are whole percents, e.g. 50,80,100", param_hint="--thresholds") from None
    created = session.services.policies.create_policy(
        session.actor,
        {
            "name": name,
            "limit": limit,
            "period": period,
            "scope": parse_pairs(scope, "--scope"),
            "enforcement": enforcement,
            "timezone": tz,
            "thresholds": percents,
            "rollover_cap": rollover_cap,
            "currency": currency,
            **extra,
        },
    )
    console.print(f"created policy {created.id}: {safe(created.name)}")


def policy_table(policies: list[Any]) -> Table:
    table = Table("id", "name", "scope", "period", "limit", "enforcement", "enabled", "version", title="policies")
    for p in policies:
        table.add_row(
            str(p.id),
            lit(p.name),
            lit(json.dumps(p.scope.as_dict(), ensure_ascii=False) if p.scope.as_dict() else "whole tenant"),
            lit(p.period),
            lit(f"{money(p.limit)} {p.currency}"),
            lit(p.enforcement or "(default)"),
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
    policies = session.services.policies.list_policies(session.actor, parse_pairs(scope, "--scope"))
    emit(policies, fmt, output, "policies", lambda: policy_table(policies))


@policy.command("show")
@click.argument("policy_id", type=ID)
@format_option
@pass_session
def policy_show(session: Session, policy_id: int, fmt: str) -> None:
    """Show one policy with its spend in the current window."""
    found = session.services.policies.get_policy(session.actor, policy_id)
    emit(found, fmt, None, found.name, lambda: generic_table(found, found.name))
    (standing,) = session.services.policies.standings(session.actor, [policy_id])
    if fmt == "table":
        console.print(
            f"this {safe(found.period)}: spent {money(standing.spent)}, reserved {money(standing.reserved)} of "
            f"{money(standing.limit)} {safe(found.currency)}"
        )


@policy.command("update")
@click.argument("policy_id", type=ID)
@click.option(
    "--set",
    "changes",
    multiple=True,
    required=True,
    metavar="FIELD=VALUE",
    help='e.g. --set limit=25.00 --set enforcement=warn --set enabled=false --set \'scope={"actor": "bob"}\'',
)
@click.option(
    "--version",
    "expected",
    type=click.IntRange(0, MAX_ID),
    default=None,
    help="Fail unless the policy is at this version.",
)
@pass_session
def policy_update(session: Session, policy_id: int, changes: tuple[str, ...], expected: int | None) -> None:
    """Change fields of a policy."""
    updates, expected = policy_changes(changes, expected)
    updated = session.services.policies.update_policy(session.actor, policy_id, updates, expected)
    console.print(f"updated policy {updated.id}: {safe(updated.name)} (version {updated.version})")


@policy.command("delete")
@click.argument("policy_id", type=ID)
@pass_session
def policy_delete(session: Session, policy_id: int) -> None:
    """Delete a policy (its spend history stays in the usage records)."""
    session.services.policies.delete_policy(session.actor, policy_id)
    console.print(f"deleted policy {policy_id}")


@main.command()
@click.option("--limit", "count", type=ROWS, default=50, show_default=True)
@format_option
@pass_session
def audit(session: Session, count: int, fmt: str) -> None:
    """Who changed which policy, when, before and after (needs budget:admin)."""
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
            lit(e["actor"]),
            lit(e["action"]),
            lit(e["object_id"]),
            lit(", ".join(f"{k}: {a} -> {b}" for k, (a, b) in sorted(changed.items()))[:120]),
        )
    console.print(table)
