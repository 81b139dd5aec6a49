"""The ``atlas-budget`` command: policies, alerts, usage, reports, plugins and a demo, from a terminal.

Every user error is one line ``atlas-budget: error: ...`` on stderr and exit code 2 (``--debug`` adds the
traceback). User data (names, scopes, messages) is printed literally: never read as Rich markup, and with
control characters and terminal escape sequences made visible (:func:`lit` and :func:`safe`).
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shlex
import time
import traceback
import types
import typing
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import click
import platformdirs
import pydantic
from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table
from rich.text import Text

from hookspecs import CallBlocked, LLMCall, LLMUsage, guarded_call, load_plugins

from . import __version__
from . import settings as settings_module
from .bootstrap import BudgetServices, bootstrap
from .exceptions import BudgetError, ValidationError
from .export import FORMATS, bucket_label, render, rows_of, trend_svg, visible
from .extensions import Extensions, get_plugin_manager
from .money import from_units
from .periods import parse_timezone
from .settings import CONFIG_ENV, ENV_PREFIX, BudgetSettings, default_config_file
from .store import schema_version
from .types import CALL_DIMENSIONS, Actor, Policy

#: Lines are never wrapped (a path or a command printed stays one line to copy); tables fit the terminal.
console = Console(highlight=False, emoji=False, soft_wrap=True)
OUTPUT_FORMATS = ("table", *FORMATS)
#: Largest id the store holds (signed 64-bit); a larger one is refused before it reaches the database.
MAX_ID = 2**63 - 1
#: Most rows one listing prints or exports.
MAX_ROWS = 100_000
#: Longest snooze, in hours (a year).
MAX_SNOOZE_HOURS = 365 * 24


def money(amount: Decimal) -> str:
    return format(amount, "f")


# -- user text to the terminal ------------------------------------------------------------------


def render_cell(value: Any) -> str:
    if isinstance(value, Decimal):
        return money(value)
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M")
    return "" if value is None else str(value)


def lit(value: Any) -> Text:
    """User data as a Rich renderable: printed literally (no markup), control characters made visible."""
    return Text(visible(render_cell(value)))


def safe(value: Any) -> str:
    """User data inside a Rich markup string: markup escaped, control characters made visible."""
    return escape(visible(render_cell(value)))


# -- secrets ------------------------------------------------------------------------------------

#: A setting or variable whose name contains one of these holds a secret: its value is never shown.
SECRET_WORDS = ("secret", "token", "password", "passwd", "pass", "key", "auth", "credential", "signature")
#: URL schemes whose host is an address (shown); for others (apprise's slack://, mailto://...) the whole
#: rest of the URL may be credentials, so only the scheme is shown.
HOST_SCHEMES = ("http", "https", "postgres", "postgresql", "mysql", "mariadb", "sqlite", "cockroachdb")
MASK = "***"
_SURROGATE = re.compile("[\ud800-\udfff]")
_CREDENTIALS = re.compile(r"(?P<head>[A-Za-z][\w+.-]*://[^\s/:@]*:)[^\s@/]*@")


def is_secret_name(name: str) -> bool:
    low = name.lower()
    return any(word in low for word in SECRET_WORDS)


def mask_url(url: str, keep_path: bool = True) -> str:
    """``url`` without its password and query values (and, unless ``keep_path``, its user and path)."""
    if "://" not in url:
        return MASK if "@" in url else url
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return MASK
    scheme = parts.scheme.lower()
    if scheme.split("+")[0] not in HOST_SCHEMES:
        return f"{parts.scheme}://{MASK}"
    netloc = (parts.hostname or "") + (f":{port}" if port else "")
    if parts.username is not None or parts.password is not None:
        user = parts.username or "" if keep_path else MASK
        netloc = f"{user}{':' + MASK if parts.password is not None and keep_path else ''}@{netloc}"
    if keep_path:
        path = parts.path
        query = "&".join(f"{k}={MASK}" for k, _ in parse_qsl(parts.query, keep_blank_values=True))
    else:
        path = "/" + MASK if parts.path.strip("/") else ""
        query = MASK if parts.query else ""
    return f"{parts.scheme}://{netloc}{path}{'?' + query if query else ''}"


def mask_value(key: str, value: Any) -> Any:
    """A setting's value as doctor shows it: secrets masked, at any depth."""
    if is_secret_name(key) and value not in (None, ""):
        return MASK
    if isinstance(value, dict):
        return {k: mask_value(str(k), v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [mask_value(key, v) for v in value]
    if isinstance(value, str) and "://" in value:
        return mask_url(value, keep_path=key == "database_url")
    return value


def mask_env(name: str, value: str) -> str:
    """An ``ATLAS_BUDGET_*`` variable's value as doctor shows it."""
    key = name[len(ENV_PREFIX) :].lower()
    if name.upper() == CONFIG_ENV:
        return value
    if is_secret_name(key):
        return MASK
    if value.lstrip().startswith(("{", "[")):
        try:
            return json.dumps(mask_value(key, json.loads(value)))
        except (ValueError, RecursionError):
            return MASK
    last = key.rsplit("__", 1)[-1]
    shown = mask_value("database_url" if key == "database_url" else last, value)
    return str(shown)


# -- one-line errors ----------------------------------------------------------------------------


def one_line(message: str) -> str:
    """An error message as one visible line, with any password in a URL masked."""
    text = " ".join(part.strip() for part in str(message).splitlines() if part.strip())
    return visible(_CREDENTIALS.sub(rf"\g<head>{MASK}@", text))


class CliError(click.ClickException):
    """A user error: ``atlas-budget: error: <message>`` on stderr, exit code 2."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(f"atlas-budget: error: {one_line(self.message)}", err=True)


class InternalError(CliError):
    """A bug, not a user error: one line (the traceback with --debug), exit code 1."""

    exit_code = 1


def _from_click(exc: click.ClickException) -> CliError:
    message = exc.format_message()
    ctx = getattr(exc, "ctx", None)
    if isinstance(exc, click.UsageError) and ctx is not None:
        message += f" (see {ctx.command_path} --help)"
    return CliError(message)


def _from_exception(exc: Exception) -> CliError:
    if isinstance(exc, BudgetError):
        return CliError(str(exc))
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        return CliError(f"{where}{exc.strerror or exc}")
    return InternalError(
        f"internal error {type(exc).__name__}: {exc}. Run again with --debug for the traceback, and please report it"
    )


class BudgetGroup(click.Group):
    """The top-level group: every error of every command becomes one line (and a traceback with --debug)."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        for position, arg in enumerate(args, 1):
            if _SURROGATE.search(arg):  # bytes that are not UTF-8 (Python keeps them as lone surrogates)
                raise CliError(f"argument {position} ({visible(arg)[:60]}) is not valid UTF-8 text")
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except (click.exceptions.NoArgsIsHelpError, CliError):
            raise
        except click.UsageError as exc:
            raise _from_click(exc) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.Abort, click.exceptions.NoArgsIsHelpError, CliError):
            raise
        except click.ClickException as exc:
            raise _from_click(exc) from None
        except (KeyboardInterrupt, EOFError):
            raise
        except Exception as exc:
            if ctx.params.get("debug"):
                traceback.print_exc()
            raise _from_exception(exc) from exc


class Session:
    """What every command needs: settings, the services (opened on first use) and the acting actor."""

    def __init__(
        self,
        config_file: str | None,
        actor: str | None,
        tenant: str | None,
        database: str | None = None,
    ) -> None:
        self.config_file = config_file
        self.actor_name = actor
        self.tenant = tenant
        self.database = database
        self._settings: BudgetSettings | None = None
        self._services: BudgetServices | None = None

    def overrides(self) -> dict[str, Any]:
        return {"database_url": self.database} if self.database else {}

    @property
    def settings(self) -> BudgetSettings:
        if self._settings is None:
            self._settings = BudgetSettings.load(self.config_file, **self.overrides())
        return self._settings

    @property
    def services(self) -> BudgetServices:
        if self._services is None:
            self._services = bootstrap(self.settings)
        return self._services

    @property
    def actor(self) -> Actor:
        try:
            return self.settings.actor_for(self.actor_name, self.tenant)
        except pydantic.ValidationError as exc:
            raise ValidationError.from_pydantic(exc, "--actor or --tenant") from None

    def close(self) -> None:
        if self._services is not None:
            self._services.close()


pass_session = click.make_pass_decorator(Session)


@click.group(cls=BudgetGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="atlas-budget")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    envvar=CONFIG_ENV,
    help="Settings file (default: ~/.config/atlas/budget.toml). A file named here must exist.",
)
@click.option(
    "--database",
    metavar="URL",
    default=None,
    help="Use this store instead of the settings' database_url, e.g. sqlite:///path/to/demo.db.",
)
@click.option("--actor", default=None, help="Act as this user (default: settings 'actor', i.e. system).")
@click.option("--tenant", default=None, help="Act in this tenant (default: settings 'tenant').")
@click.option("--debug", is_flag=True, help="Show the traceback of an error.")
@click.pass_context
def main(
    ctx: click.Context,
    config_file: str | None,
    database: str | None,
    actor: str | None,
    tenant: str | None,
    debug: bool,
) -> None:
    """Budgets for ATLAS LLM calls: policies, alerts, usage and reports."""
    session = Session(config_file, actor, tenant, database)
    ctx.obj = session
    ctx.call_on_close(session.close)


# -- arguments ----------------------------------------------------------------------------------


def parse_pairs(values: tuple[str, ...], what: str) -> dict[str, str]:
    pairs = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r} is not KEY=VALUE (e.g. actor=alice)", param_hint=what)
        pairs[key.strip()] = value.strip()
    return pairs


class TimezoneType(click.ParamType):
    """An IANA time zone name, checked before any work."""

    name = "timezone"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            parse_timezone(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        return str(value)


class HoursType(click.ParamType):
    """A finite number of hours greater than 0 and at most ``maximum`` (nan and inf are refused)."""

    name = "hours"

    def __init__(self, maximum: float) -> None:
        self.maximum = maximum

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            hours = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of hours", param, ctx)
        if not (math.isfinite(hours) and 0 < hours <= self.maximum):
            self.fail(f"hours must be a number greater than 0 and at most {self.maximum:g}, got {value!r}", param, ctx)
        return hours


ID = click.IntRange(1, MAX_ID)
ROWS = click.IntRange(1, MAX_ROWS)
TIMEZONE = TimezoneType()

#: What --set enabled=... (and every other boolean) accepts.
BOOLEANS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
#: Policy fields --set cannot change.
FIXED_FIELDS = ("id", "tenant", "created_at", "updated_at")


def parse_bool(text: str, what: str) -> bool:
    try:
        return BOOLEANS[text.strip().lower()]
    except KeyError:
        raise click.BadParameter(
            f"{what} must be one of true, false, yes, no, 1, 0; got {text!r}", param_hint="--set"
        ) from None


def parse_int(text: str, what: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise click.BadParameter(f"{what} must be a whole number, got {text[:40]!r}", param_hint="--set") from None


def _base_type(annotation: Any) -> tuple[Any, bool]:
    """(the type, whether None is allowed) of a field annotation such as ``int | None``."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        nullable = len(args) < len(typing.get_args(annotation))
        return (args[0] if len(args) == 1 else str), nullable
    return annotation, False


def typed_value(field: str, raw: str) -> Any:
    """``--set FIELD=VALUE``'s VALUE typed by the policy field: ints, booleans, lists, JSON for scope."""
    settable = sorted(f for f in Policy.model_fields if f not in FIXED_FIELDS)
    if field in FIXED_FIELDS:
        raise click.BadParameter(f"policy field {field!r} cannot be changed", param_hint="--set")
    info = Policy.model_fields.get(field)
    if info is None:
        raise click.BadParameter(
            f"unknown policy field {field!r}; fields: {', '.join(settable)}, version", param_hint="--set"
        )
    base, nullable = _base_type(info.annotation)
    if nullable and raw.strip().lower() in ("", "none", "null", "default"):
        return None
    if base is bool:
        return parse_bool(raw, field)
    if base is int:
        return parse_int(raw, field)
    if typing.get_origin(base) is list:
        (item,) = typing.get_args(base) or (str,)
        items = [part.strip() for part in raw.split(",") if part.strip()]
        if item is int:
            try:
                return [int(part) for part in items]
            except ValueError:
                raise click.BadParameter(
                    f"{field} are whole numbers separated by commas, e.g. {field}=50,80,100; got {raw[:40]!r}",
                    param_hint="--set",
                ) from None
        return items
    if base is dict or (isinstance(base, type) and issubclass(base, BaseModel)):
        try:
            value = json.loads(raw) if raw.strip() else {}
        except (ValueError, RecursionError):
            value = None
        if not isinstance(value, dict):
            raise click.BadParameter(
                f'{field} is a JSON object, e.g. --set \'{field}={{"actor": "alice"}}\'; got {raw[:40]!r}',
                param_hint="--set",
            )
        return value
    return raw  # text, money (a decimal string) and choices: the policy checks them


def policy_changes(changes: tuple[str, ...], expected: int | None) -> tuple[dict[str, Any], int | None]:
    """The typed updates of ``--set`` and the expected version (``--version`` or ``--set version=N``)."""
    updates: dict[str, Any] = {}
    for field, raw in parse_pairs(changes, "--set").items():
        if field == "version":
            version = parse_int(raw, "version")
            if expected is not None and expected != version:
                raise click.BadParameter(
                    f"--set version={version} and --version {expected} disagree; give one", param_hint="--set"
                )
            expected = version
            continue
        updates[field] = typed_value(field, raw)
    if not updates:
        raise click.BadParameter("nothing to change: give a field other than version", param_hint="--set")
    return updates, expected


def write_file(path: str | Path, text: str, option: str) -> Path:
    """Write an export or chart; a path that cannot be written is a one-line error."""
    target = Path(path).expanduser()
    try:
        target.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot write the {option} file {str(path)!r}: {exc.strerror or exc}") from None
    return target


def emit(report: Any, fmt: str, output: str | None, title: str, table: Callable[[], Table]) -> None:
    """Print a report as a rich table, or render it in ``fmt`` to stdout or ``output``."""
    if fmt == "table":
        if output:
            raise click.BadParameter("--output needs --format json, csv, markdown or html", param_hint="--output")
        console.print(table())
        return
    text = render(report, fmt, title)
    if output:
        write_file(output, text, "--output")
        console.print(f"wrote {safe(output)}")
    else:
        click.echo(text, nl=False)


def generic_table(report: Any, title: str) -> Table:
    rows = rows_of(report)
    if len(rows) == 1 and not isinstance(report, list):  # one result: a field per line reads better
        table = Table("field", "value", title=lit(title))
        for key, value in rows[0].items():
            table.add_row(lit(key), lit(value))
        return table
    table = Table(*(safe(k) for k in (rows[0].keys() if rows else ["(empty)"])), title=lit(title))
    for row in rows:
        table.add_row(*(lit(v) for v in row.values()))
    return table


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
@click.option("--timezone", "tz", type=TIMEZONE, default="UTC", show_default=True)
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
    tz: str,
    thresholds: str,
    rollover_cap: str,
    currency: str,
) -> None:
    """Create a policy."""
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
    target = session.services.policies.target(found, datetime.now(timezone.utc))
    (standing,) = session.services.ledger.standings([target])
    if fmt == "table":
        console.print(
            f"this {safe(found.period)}: spent {money(from_units(standing.spent_units))}, "
            f"reserved {money(from_units(standing.reserved_units))} of "
            f"{money(from_units(standing.limit_units))} {safe(found.currency)}"
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


# -- alerts -------------------------------------------------------------------------------------


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


# -- usage and reports --------------------------------------------------------------------------


def parse_time(value: str, option: str, default_utc: bool = True) -> datetime:
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise click.BadParameter(
            f"{value[:60]!r} is not a date or time such as 2026-11-01 or 2026-11-01T09:00+00:00", param_hint=option
        ) from None
    if moment.tzinfo is None and default_utc:
        moment = moment.replace(tzinfo=timezone.utc)
    if moment.tzinfo is not None:
        try:
            moment.astimezone(timezone.utc)
        except OverflowError:
            raise click.BadParameter(f"{value[:60]!r} is out of range", param_hint=option) from None
    return moment


def parse_day(value: str | None, option: str) -> datetime | None:
    return None if value is None else parse_time(value, option)


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
@click.option("--limit", "count", type=ROWS, default=50, show_default=True)
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
    filters = {
        k: v
        for k, v in {"actor": who, "provider": provider, "model": model, "category": category}.items()
        if v is not None
    }
    records = session.services.tracking.list_usage(
        session.actor, count, filters, parse_day(since, "--since"), parse_day(until, "--until")
    )
    table = Table("recorded", "call", "actor", "provider/model", "tokens in/out", "cost", "price source", title="usage")
    for r in records:
        table.add_row(
            lit(r.recorded_at),
            lit(r.call_id),
            lit(r.actor or ""),
            lit(f"{r.provider}/{r.model}"),
            f"{r.input_tokens}/{r.output_tokens}",
            money(r.cost),
            lit(r.price_source),
        )
    emit(records, fmt, output, "usage", lambda: table)


@main.group()
def report() -> None:
    """Spend reports: summary, by dimension, trend, compare, projection."""


period_option = click.option("--period", default="month", show_default=True)
tz_option = click.option("--timezone", "tz", type=TIMEZONE, default="UTC", show_default=True)


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
    summary = session.services.tracking.get_usage_summary(
        parse_pairs(scope, "--scope"), period, actor=session.actor, timezone=tz
    )
    title = f"spend this {summary.period}"
    emit(summary, fmt, output, title, lambda: generic_table(summary, title))


@report.command("by")
@click.argument("dimension", type=click.Choice(CALL_DIMENSIONS))
@report_options
@pass_session
def report_by(
    session: Session, dimension: str, period: str, scope: tuple[str, ...], tz: str, fmt: str, output: str | None
) -> None:
    """Spend grouped by provider, model, category, actor or operation."""
    rows = session.services.tracking.get_spend_by(
        dimension, parse_pairs(scope, "--scope"), period, actor=session.actor, timezone=tz
    )

    def table() -> Table:
        t = Table(dimension, "calls", "cost", title=lit(f"spend by {dimension} this {period}"))
        for r in rows:
            t.add_row(lit(r.key or "-"), str(r.calls), money(r.total_cost))
        return t

    emit(rows, fmt, output, f"spend by {dimension}", table)


@report.command("trend")
@click.option("--granularity", type=click.Choice(["hour", "day", "week", "month"]), default="day", show_default=True)
@click.option("--periods", type=click.IntRange(1, 10_000), default=12, show_default=True)
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
    if chart and Path(chart).suffix.lower() not in (".svg", ".png"):
        raise click.BadParameter("the chart file must end in .svg or .png", param_hint="--chart")
    points = session.services.tracking.get_spend_trend(
        parse_pairs(scope, "--scope"), periods, granularity=granularity, actor=session.actor, timezone=tz
    )
    if chart:
        draw_chart(points, Path(chart), f"spend per {granularity}", granularity)

    def table() -> Table:
        t = Table(granularity, "calls", "cost", title=f"spend per {granularity}")
        peak = max((p.total_cost for p in points), default=Decimal(0)) or Decimal(1)
        for p in points:
            bar = "█" * int(20 * p.total_cost / peak)
            t.add_row(bucket_label(p.start, granularity), str(p.calls), f"{money(p.total_cost):>14} {bar}")
        return t

    emit(points, fmt, output, f"spend per {granularity}", table)


def draw_chart(points: list[Any], path: Path, title: str, granularity: str = "day") -> None:
    """Write the trend as SVG (built in) or PNG (with the optional ``chart`` extra, matplotlib)."""
    if path.suffix.lower() == ".svg":
        write_file(path, trend_svg(points, title, granularity), "--chart")
    else:
        try:
            import matplotlib

            matplotlib.use("Agg")
            from matplotlib import pyplot
        except ImportError:
            raise CliError(
                "PNG charts need matplotlib: pip install 'atlas-budget-plugin[chart]' (or use a .svg file)"
            ) from None
        figure, axes = pyplot.subplots(figsize=(8, 4))
        try:
            axes.bar([bucket_label(p.start, granularity) for p in points], [float(p.total_cost) for p in points])
            axes.set_title(title)
            axes.tick_params(axis="x", labelrotation=45)
            figure.tight_layout()
            figure.savefig(path.expanduser())
        except OSError as exc:
            raise CliError(f"cannot write the --chart file {str(path)!r}: {exc.strerror or exc}") from None
        finally:
            pyplot.close(figure)
    console.print(f"wrote {safe(path)}")


@report.command("compare")
@report_options
@pass_session
def report_compare(
    session: Session, period: str, scope: tuple[str, ...], tz: str, fmt: str, output: str | None
) -> None:
    """This period so far next to the previous one."""
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
    from . import plugin

    plugin.set_services(services)
    try:
        pm = load_plugins()  # the host side: finds us through the `atlas` entry point
        _run_demo(pm, services, random.Random(seed), max_calls)
    finally:
        plugin.set_services(None)
        services.close()
    console.print("\n[bold]Explore the demo's data[/] (the other commands read your own store unless told):")
    for command in explore_commands(database_url):
        console.print(f"  {safe(command)}")


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


if __name__ == "__main__":  # pragma: no cover
    main()
