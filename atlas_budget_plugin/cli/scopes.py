"""``atlas-budget scope ...``: the scope hierarchy (which user, agent or project belongs to which team)."""

from __future__ import annotations

import click

from .core import Session, console, main, pass_session, safe

VALUE = "KEY=VALUE, e.g. actor=alice, team=red or tag.agent=planner"


@main.group()
def scope() -> None:
    """Link scope values into a hierarchy: a call naming a child also counts for its ancestors."""


@scope.command("link")
@click.argument("child")
@click.argument("parent")
@pass_session
def scope_link(session: Session, child: str, parent: str) -> None:
    """Make CHILD (e.g. actor=alice) belong to PARENT (e.g. team=red)."""
    made = session.services.policies.link_scope(session.actor, child, parent)
    console.print(f"{safe(child)} -> {safe(parent)}: {'linked' if made else 'already linked'}")


@scope.command("unlink")
@click.argument("child")
@click.argument("parent")
@pass_session
def scope_unlink(session: Session, child: str, parent: str) -> None:
    """Remove the link from CHILD to PARENT."""
    removed = session.services.policies.unlink_scope(session.actor, child, parent)
    console.print(f"{safe(child)} -> {safe(parent)}: {'unlinked' if removed else 'was not linked'}")


@scope.command("list")
@pass_session
def scope_list(session: Session) -> None:
    """Every link of the tenant."""
    for child, parent in session.services.policies.scope_links(session.actor):
        console.print(f"{safe(child)} -> {safe(parent)}")


@scope.command("lineage")
@click.argument("value")
@pass_session
def scope_lineage(session: Session, value: str) -> None:
    """Where VALUE belongs (each path up) and what belongs to it."""
    for path in session.services.policies.lineage(session.actor, value):
        console.print(" -> ".join(safe(node) for node in path))
    below = session.services.policies.descendants(session.actor, value)
    console.print(f"belonging to it: {', '.join(safe(n) for n in below) if below else 'nothing'}")
