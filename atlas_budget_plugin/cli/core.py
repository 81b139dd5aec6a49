"""The ``atlas-budget`` command group and what every command shares: one-line errors, the session
(settings, services, actor), argument types, output of reports, and user text made safe for a terminal.

Every user error is one line ``atlas-budget: error: ...`` on stderr and exit code 2 (``--debug`` adds the
traceback). User data (names, scopes, messages) is printed literally: never read as Rich markup, and with
control characters and terminal escape sequences made visible (:func:`lit` and :func:`safe`).
"""

from __future__ import annotations

import json
import math
import re
import traceback
import types
import typing
from collections.abc import Callable
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import click
import pydantic
from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from .. import __version__
from ..bootstrap import BudgetServices, bootstrap
from ..exceptions import BudgetError, ValidationError
from ..export import FORMATS, render, rows_of, visible
from ..periods import parse_timezone
from ..settings import CONFIG_ENV, ENV_PREFIX, BudgetSettings
from ..types import Actor, Policy

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
