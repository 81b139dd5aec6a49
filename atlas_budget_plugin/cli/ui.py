"""``atlas-budget ui``: serve the budget console (web UI and JSON API) for the acting actor."""

from __future__ import annotations

import click

from .core import CliError, Session, console, main, mask_url, pass_session, safe
from .demo import run_demo


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (loopback unless told).")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True, help="Port (0: any free one).")
@click.option("--demo", is_flag=True, help="Fill a fresh demo store first (like 'atlas-budget demo') and open it.")
@pass_session
def ui(session: Session, host: str, port: int, demo: bool) -> None:
    """Serve the budget console: dashboard, policies, history, reports, alerts and the /api/v1 JSON API.

    Prints a login link with a one-time random token; the console acts as --actor in --tenant with the
    role [roles] gives it (system is the tenant's admin).
    """
    try:
        from ..web.server import bind, is_loopback, serve
    except ImportError as exc:
        raise CliError(f"the console needs the ui extra: pip install 'atlas-budget-plugin[ui]' ({exc})") from None
    if demo:
        session.database = run_demo(session, session.database, 7, 200)
    actor = session.actor
    if not actor.roles:
        raise CliError(
            f"actor {actor.id!r} has no budget role in the settings' [roles]; "
            "give it one (budget:read, budget:write or budget:admin) or use --actor system"
        )
    services = session.services
    try:
        sock = bind(host, port)
    except UnicodeError:  # the IDNA encoding of a host name refuses it (bad characters, a label too long)
        raise CliError(f"--host {host[:60]!r} is not a host name or IP address") from None
    except OSError as exc:
        raise CliError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another --port") from None
    if not is_loopback(host):
        click.echo(
            f"atlas-budget: warning: listening on {host}, not a loopback address: anyone who can reach it and "
            "gets the link can sign in, and the connection is not encrypted (put a TLS proxy in front)",
            err=True,
        )

    def announce(url: str) -> None:
        console.print(f"Budget console on {safe(mask_url(services.settings.database_url))}")
        console.print(f"as {safe(actor.id)} in tenant {safe(actor.tenant)} ({safe(', '.join(sorted(actor.roles)))})")
        console.print("Open this link to sign in (Ctrl+C stops the console):")
        click.echo(f"    {url}")

    serve(services, actor, sock, announce)
