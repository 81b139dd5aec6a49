"""BudgetSettings: arguments, then ATLAS_BUDGET_* env vars, then the TOML settings file, then defaults."""

from __future__ import annotations

import difflib
import hashlib
import logging
import os
import re
import tomllib
from contextvars import ContextVar
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import platformdirs
import pydantic
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationInfo, field_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)
from pydantic_settings import SettingsError as SourceError

from .exceptions import SettingsError
from .money import Money, parse_money
from .types import Actor, AlertConfig, Policy

log = logging.getLogger("atlas_budget_plugin")

ENV_PREFIX = "ATLAS_BUDGET_"
CONFIG_ENV = "ATLAS_BUDGET_CONFIG"

#: The allowed range of every number a user can set: name -> (lowest, highest, unit).
BOUNDS: dict[str, tuple[float, float, str]] = {
    "evaluation_interval": (0, 86_400, "seconds"),
    "reservation_ttl": (1, 7 * 86_400, "seconds"),
    "default_max_output_tokens": (0, 10_000_000, "tokens"),
    "default_input_tokens": (0, 10_000_000, "tokens"),
    "retention_days": (0, 36_500, "days"),
    "delivery_attempts": (1, 50, "attempts"),
    "delivery_backoff": (0.001, 86_400, "seconds"),
    "store_connect_timeout": (0.1, 600, "seconds"),
    "store_statement_timeout": (0.1, 3_600, "seconds"),
    "store_lock_timeout": (0.1, 3_600, "seconds"),
}


def default_config_file() -> Path:
    """``$ATLAS_BUDGET_CONFIG``, else ``budget.toml`` in the user's config dir for ``atlas``."""
    explicit = os.environ.get(CONFIG_ENV)
    if explicit:
        return Path(explicit).expanduser()
    return Path(platformdirs.user_config_dir("atlas")) / "budget.toml"


def default_database_url() -> str:
    return "sqlite:///" + str(Path(platformdirs.user_data_dir("atlas")) / "budget.db")


class PriceOverride(BaseModel):
    """Prices per million tokens (and per call) that win over the catalogue."""

    model_config = ConfigDict(extra="forbid")

    input: Money = Decimal(0)
    output: Money = Decimal(0)
    cache_read: Money | None = None
    cache_write: Money | None = None
    per_call: Money = Decimal(0)
    per_unit: dict[str, Money] = Field(default_factory=dict)

    @field_validator("input", "output", "cache_read", "cache_write", "per_call")
    @classmethod
    def _not_negative(cls, value: Decimal | None) -> Decimal | None:
        if value is not None and value < 0:
            raise ValueError(f"prices must not be negative, got {value}")
        return value

    @field_validator("per_unit")
    @classmethod
    def _units_not_negative(cls, value: dict[str, Decimal]) -> dict[str, Decimal]:
        for name, price in value.items():
            if price < 0:
                raise ValueError(f"per_unit price of {name!r} must not be negative, got {price}")
        return value


class PolicySpec(Policy):
    """A policy declared in the settings file; applied idempotently at start (matched by name)."""

    limit: Money


class ScopeLinkSpec(BaseModel):
    """A scope hierarchy link declared in the settings file: ``child`` belongs to ``parent``."""

    model_config = ConfigDict(extra="forbid")

    child: str = Field(min_length=3, max_length=250)  # e.g. "actor=alice", "tag.agent=planner"
    parent: str = Field(min_length=3, max_length=250)  # e.g. "team=red"
    tenant: str = Field(default="default", min_length=1, max_length=200)


_config_file: ContextVar[Path | None] = ContextVar("atlas_budget_config_file", default=None)
_file_data: ContextVar[dict[str, Any] | None] = ContextVar("atlas_budget_file_data", default=None)


class BudgetSettings(BaseSettings):
    """All settings of the budget plugin. Build with :meth:`load` to get readable errors."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    database_url: str = Field(default_factory=default_database_url)
    default_enforcement: Literal["block", "warn"] = "block"
    on_store_error: Literal["deny", "allow"] = "deny"
    store_connect_timeout: float = Field(default=5.0, allow_inf_nan=False)
    store_statement_timeout: float = Field(default=10.0, allow_inf_nan=False)
    store_lock_timeout: float = Field(default=10.0, allow_inf_nan=False)
    durability: Literal["full", "normal"] = "full"
    evaluation_interval: int = 60
    reservation_ttl: int = 600
    default_max_output_tokens: int = 1024
    default_input_tokens: int = 1024
    unknown_model: str = "block"
    retention_days: int = 0
    spool_path: Path | None = None
    delivery_attempts: int = 5
    delivery_backoff: float = Field(default=30.0, allow_inf_nan=False)
    tenant: str = "default"
    actor: str = "system"
    roles: dict[str, Literal["budget:read", "budget:write", "budget:admin"]] = Field(default_factory=dict)
    global_ceiling: bool = True
    scope_links: list[ScopeLinkSpec] = Field(default_factory=list, max_length=10_000)
    policies: list[PolicySpec] = Field(default_factory=list)
    alerts: list[AlertConfig] = Field(default_factory=list)
    sinks: dict[str, dict[str, Any]] = Field(default_factory=dict)
    prices: dict[str, PriceOverride] = Field(default_factory=dict)

    _config_path: Path | None = PrivateAttr(default=None)

    @field_validator(*BOUNDS)
    @classmethod
    def _in_bounds(cls, value: float, info: ValidationInfo) -> float:
        low, high, unit = BOUNDS[str(info.field_name)]
        if not low <= value <= high:  # NaN is refused too
            raise ValueError(f"must be between {low:g} and {high:g} {unit}")
        return value

    @field_validator("unknown_model")
    @classmethod
    def _unknown_model(cls, value: str) -> str:
        if value in ("block", "allow_unpriced"):
            return value
        try:
            price = parse_money(value, "unknown_model")
        except ValueError:
            raise ValueError(
                f"unknown_model must be 'block', 'allow_unpriced' or a default price per million "
                f'tokens such as "1.00", got {value!r}'
            ) from None
        if price < 0:
            raise ValueError(f"unknown_model is a price and must not be negative, got {value!r}")
        return value

    @field_validator("policies")
    @classmethod
    def _unique_names(cls, value: list[PolicySpec]) -> list[PolicySpec]:
        seen: set[tuple[str, str]] = set()
        for spec in value:
            key = (spec.tenant, spec.name)
            if key in seen:
                raise ValueError(f"policy name {spec.name!r} is declared twice in tenant {spec.tenant!r}")
            seen.add(key)
        return value

    def actor_for(self, actor: str | None = None, tenant: str | None = None) -> Actor:
        """The actor the command line acts as: ``system`` is the tenant's admin; others get ``[roles]``."""
        name = actor or self.actor
        where = tenant or self.tenant
        if name == Actor.SYSTEM_ID:
            return Actor.system(where)
        role = self.roles.get(name)
        return Actor(id=name, tenant=where, roles=frozenset({role}) if role else frozenset())

    @property
    def spool_file(self) -> Path:
        """Where usage waits while the database is unreachable (one file per database)."""
        if self.spool_path is not None:
            return self.spool_path.expanduser()
        digest = hashlib.sha256(self.database_url.encode()).hexdigest()[:12]
        return Path(platformdirs.user_data_dir("atlas")) / f"budget-spool-{digest}.jsonl"

    @property
    def unknown_model_price(self) -> Decimal | None:
        """The default price per million tokens for unknown models, when one is set."""
        if self.unknown_model in ("block", "allow_unpriced"):
            return None
        return parse_money(self.unknown_model, "unknown_model")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        file_data = _file_data.get()
        if file_data is not None:  # load() has read (and checked) the file already: use what it read
            return (init_settings, env_settings, InitSettingsSource(settings_cls, init_kwargs=file_data))
        path = _config_file.get() or default_config_file()
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file=path))

    @classmethod
    def load(cls, config_file: str | Path | None = None, **overrides: Any) -> BudgetSettings:
        """Build settings; any problem is one :class:`SettingsError` naming the file and key.

        A settings file that is named (``config_file``, ``--config`` or ``$ATLAS_BUDGET_CONFIG``)
        must exist; only the default location may be absent (then the defaults apply).
        """
        if config_file:
            path = Path(config_file).expanduser()
            named_by: str | None = "the config_file argument (--config)"
        else:
            path = default_config_file()
            named_by = CONFIG_ENV if os.environ.get(CONFIG_ENV) else None
        if named_by and not path.exists():
            raise SettingsError(
                f"settings file {path} named by {named_by} does not exist; check its spelling, create it "
                f"(atlas-budget init writes a template), or unset {CONFIG_ENV} to use the default location"
            )
        file_data = _read_toml(path)
        _warn_unknown_env()
        tokens = (_config_file.set(path), _file_data.set(file_data))
        try:
            settings = cls(**overrides)
        except pydantic.ValidationError as exc:
            raise SettingsError(_explain(exc, path, file_data, overrides)) from None
        except SourceError as exc:
            raise SettingsError(_explain_source(exc)) from None
        finally:
            _file_data.reset(tokens[1])
            _config_file.reset(tokens[0])
        settings._config_path = path
        return settings

    @property
    def config_file(self) -> Path:
        """The settings file these settings were read from (it may not exist)."""
        return self._config_path or default_config_file()


def _read_toml(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(
            f"settings file {path} is not valid TOML: {exc}. Fix the syntax (strings need quotes, "
            'e.g. limit = "20.00") or point ATLAS_BUDGET_CONFIG at another file.'
        ) from None
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise SettingsError(
            f"settings file {path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} on line {line}); "
            "save it as UTF-8 (e.g. iconv -f latin1 -t utf-8) or point ATLAS_BUDGET_CONFIG at another file."
        ) from None
    except OSError as exc:
        raise SettingsError(
            f"settings file {path} cannot be read: {exc.strerror}. Check its permissions or point "
            "ATLAS_BUDGET_CONFIG at another file."
        ) from None


def _loc_text(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + str(part)
    return text


def _source_of(top: str, file_data: dict[str, Any], overrides: dict[str, Any], path: Path) -> str:
    if top in overrides:
        return "arguments"
    env_name = f"{ENV_PREFIX}{top}".upper()
    if any(k.upper() == env_name or k.upper().startswith(env_name + "__") for k in os.environ):
        return f"environment variable {env_name}"
    if top in file_data:
        return f"settings file {path}"
    return "defaults"


def _explain(exc: pydantic.ValidationError, path: Path, file_data: dict[str, Any], overrides: dict[str, Any]) -> str:
    allowed = ", ".join(BudgetSettings.model_fields)
    problems = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
        key = _loc_text(loc) or "(root)"
        source = _source_of(str(loc[0]) if loc else "", file_data, overrides, path)
        if err["type"] == "extra_forbidden":
            if len(loc) == 1:
                problems.append(f"unknown key {key!r} in {source}; allowed keys: {allowed}")
            else:
                problems.append(f"unknown key {key!r} in {source}; remove it or check its spelling")
            continue
        message = str(err["msg"]).removeprefix("Value error, ")
        got = err.get("input")
        shown = "" if isinstance(got, (dict, list)) else f" (got {got!r})"
        problems.append(f"{key}: {message}{shown} in {source}")
    return "invalid budget settings: " + "; ".join(problems)


_SOURCE_ERROR = re.compile(r'error parsing value for field "(?P<field>[^"]+)" from source "(?P<source>[^"]+)"')


def _explain_source(exc: SourceError) -> str:
    """pydantic-settings could not read a value (a variable that is not JSON, mostly)."""
    match = _SOURCE_ERROR.search(str(exc))
    field = match.group("field") if match else "(unknown)"
    cause = exc.__cause__ or exc.__context__
    why = f" ({cause})" if cause else ""
    if match and match.group("source") == "EnvSettingsSource":
        name = f"{ENV_PREFIX}{field}".upper()
        return (
            f"invalid budget settings: environment variable {name} is not valid JSON{why}; tables and lists "
            f'in variables are written as JSON, e.g. {ENV_PREFIX}ROLES=\'{{"alice": "budget:read"}}\', '
            f"or set one key at a time with __, e.g. {ENV_PREFIX}ROLES__alice=budget:read"
        )
    return f"invalid budget settings: {field}: cannot be read{why}: {exc}"


def unknown_env_variables(environ: dict[str, str] | None = None) -> list[str]:
    """One line per ``ATLAS_BUDGET_*`` variable that matches no setting (they are otherwise ignored).

    Each line names the variable and, when one is close, the setting it probably meant:
    ``ATLAS_BUDGET_RESERVATIONTTL matches no setting; did you mean ATLAS_BUDGET_RESERVATION_TTL?``
    """
    env = os.environ if environ is None else environ
    fields = list(BudgetSettings.model_fields)
    squashed = {name.replace("_", ""): name for name in fields}
    problems = []
    for variable in sorted(env):
        upper = variable.upper()
        if not upper.startswith(ENV_PREFIX) or upper == CONFIG_ENV:
            continue
        key = upper[len(ENV_PREFIX) :].split("__", 1)[0].lower()
        if key in fields:
            continue
        guess = squashed.get(key.replace("_", "")) or next(
            iter(difflib.get_close_matches(key, [*fields, "config"], n=1, cutoff=0.75)), None
        )
        rest = upper[len(ENV_PREFIX) + len(key) :]
        hint = f"; did you mean {ENV_PREFIX}{guess.upper()}{rest}?" if guess else ""
        problems.append(f"{variable} matches no setting and is ignored{hint}")
    return problems


_warned: set[str] = set()


def _warn_unknown_env() -> None:
    """Log each unknown ATLAS_BUDGET_* variable once per process."""
    for line in unknown_env_variables():
        if line not in _warned:
            _warned.add(line)
            log.warning("%s", line)
